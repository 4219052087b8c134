"""`eval`: the trained policy against static allocations at matched sparsity, on the same items.

For each target sparsity (a budget policy: `eval.targets`; a trade-off policy: the sparsity it
reached) every arm prunes exactly the same share of MLP neurons of the same items:

| arm | allocation |
|---|---|
| dense | nothing pruned (once) |
| uniform | every layer alike |
| ends_dense | first and last 2 layers dense, the rest alike |
| searched | the `search` profile at this target (`eval.profile`), if given |
| policy_mean | the policy's own mean profile, the same for every item |
| policy_doc | the policy per document (embedding of its first 512 tokens) |
| policy_window | the policy per rolling window (embedding of the window's own text) |

`--agent none` scores the static arms only; `eval.static: false` only the policy's (their static
arms then come from an `--agent none` run on the same items: the GPU time of a large model).

Every arm is scored by the same code as `score` (`scoring.tasks.score_task`). With context neurons
(`env.neurons: context`, or `--neurons context|both`) every pruned arm is also scored with each
window choosing its neurons from its own context; those arms carry the suffix `_context`.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from commands.allocations import agent_env, policy_kept, read_profile, read_profiles
from commands.build import Pruner, make_pruner, make_task
from commands.common import (
    check_limit,
    load_items,
    new_run_dir,
    observations,
    resolve_path,
    seed_everything,
    warn,
    write_json,
)
from commands.plots import plot_profile, plot_sweep
from config import Config, EvalConfig
from models import LoadedModels, load_models, peek_shape
from pruning.allocation import (
    baseline_kept,
    dense_kept,
    fractions_of,
    mean_profile,
    project_to_target,
    sparsity_of,
    target_blocks,
)
from rl.checkpoints import check_agent, read_agent
from rl.env import ActionMap
from scoring.batched import score_samples
from scoring.tasks import DocumentTask, Task, score_task, task_orderings

HELP = (
    "Evaluate the policy on data.eval_split against dense, uniform, first/last-2-dense, the "
    "searched profile and its own mean profile, at matched sparsity on the same items."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--agent",
        default=None,
        help="agent .zip, or none: static arms only (default: "
        "eval.agent or the newest; mixed: none)",
    )
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N items")
    parser.add_argument("--profile", default=None, help="search profile.json (eval.profile)")
    parser.add_argument(
        "--neurons",
        choices=("global", "context", "both"),
        default=None,
        help="which neurons the arms keep (default: env.neurons); both: every arm twice",
    )


def newest_agent(runs_dir: Path) -> Path:
    agents = sorted(runs_dir.glob("train_*/agent_final.zip"))
    if not agents:
        raise FileNotFoundError(f"no trained agent in {runs_dir}; run train first or pass --agent")
    return agents[-1]


def agent_path_of(cfg: Config, spec: str | None) -> Path:
    """The agent `--agent` or `eval.agent` names, else the newest trained one in runs_dir."""
    return resolve_path(spec) if spec else newest_agent(resolve_path(cfg.train.runs_dir))


def check_profile(cfg: Config, profile: str | None) -> None:
    """Before the model loads: the profile file, its entries, and the shape where the model's
    config names it."""
    if profile:
        shape = (*peek_shape(cfg.model.llm), cfg.env.align)
        for target in cfg.eval.targets:
            read_profile(resolve_path(profile), shape, target, missing_ok=True)


def window_requests(task: Task) -> tuple[list[list[Any]], np.ndarray]:
    """Every rolling window of every item as its own sample, and the item of each [n_windows]."""
    requests, owner = [], []
    for i in range(len(task)):
        for window in task.requests(i):
            requests.append([window])
            owner.append(i)
    return requests, np.asarray(owner)


def summarize(task: Task, lls: Sequence[Sequence[float]], kept: np.ndarray, width: int) -> dict:
    """Task summary plus the mean MLP sparsity (over items, or windows for per-window arms)."""
    indices = list(range(len(task)))
    return task.summary(indices, lls) | {"sparsity": float(np.mean(sparsity_of(kept, width)))}


class Evaluator:
    """Scores arms of one eval run on the same items (documents and their windows)."""

    def __init__(
        self, cfg: Config, models: LoadedModels, pruner: Pruner, items: list[Any], policy: bool
    ) -> None:
        """policy: observe the items (and windows) for a policy's arms."""
        self.pruner, self.width = pruner, pruner.width
        self.task = make_task(cfg, models.tokenizer, items)
        self.doc_obs = np.empty((len(items), 0))
        if policy:
            self.doc_obs = observations(models, cfg.data, [item.text for item in items])
        self.windows: tuple[list[list[Any]], np.ndarray] | None = None
        self.window_obs: np.ndarray | None = None
        if policy and cfg.eval.per_window and isinstance(self.task, DocumentTask):
            self.windows = window_requests(self.task)
            texts = [models.tokenizer.decode(r[0][1]) for r in self.windows[0]]
            self.window_obs = observations(models, cfg.data, texts)
        self.criterion = cfg.importance.criterion
        self.orderings: list[list[Any]] | None = None  # per item per request, once
        self.context_fallbacks = 0
        self.warnings: list[str] = []  # printed once each, recorded in eval.json

    def warn_once(self, message: str) -> None:
        if message not in self.warnings:
            warn(message, self.warnings)

    def context(self, on: bool) -> list[list[Any]] | None:
        """The items' context orderings (computed on first use), or None for global neurons."""
        if on and self.orderings is None:
            indices = list(range(len(self.task)))
            self.orderings, self.context_fallbacks = task_orderings(
                self.pruner.llm, self.task, indices, self.criterion
            )
        return self.orderings if on else None

    def per_item(self, kept: np.ndarray, context: bool = False) -> dict:
        """Summary of every item under kept [n_items, L] (or one [L] for all)."""
        kept = np.broadcast_to(kept, (len(self.task), self.pruner.llm.n_layers))
        indices = list(range(len(self.task)))
        lls = score_task(self.pruner.llm, self.task, indices, kept, self.context(context))
        return summarize(self.task, lls, kept, self.width)

    def per_window(self, kept: np.ndarray, context: bool = False) -> dict:
        """kept [n_windows, L]: each rolling window under its own allocation."""
        assert self.windows is not None
        requests, owner = self.windows
        t = self.task
        item_orders = self.context(context)
        orders = None if item_orders is None else [[o] for item in item_orders for o in item]
        lls = score_samples(self.pruner.llm, requests, kept, t.batch_size, t.max_length, orders)
        per_item = [[] for _ in range(len(t))]
        for k, ll in enumerate(lls):
            per_item[owner[k]] += ll
        return summarize(t, per_item, kept, self.width)


def evaluate_agent(
    cfg: Config,
    models: LoadedModels,
    pruner: Pruner,
    agent_path: Path | None,
    limit: int | None = None,
    profile: str | None = None,
    neurons: str | None = None,
    agent: Any = None,
) -> dict[str, Any]:
    """`agent`: the agent at `agent_path`, when already read (else it is read here);
    `agent_path` None: the static arms only."""
    env, warning = (cfg.env, None) if agent_path is None else agent_env(agent_path, cfg.env)
    neurons = neurons or env.neurons
    modes = {"global": [False], "context": [True], "both": [False, True]}[neurons]
    items = load_items(cfg.data, cfg.data.eval_split, limit or cfg.eval.limit)
    if agent is None and agent_path is not None:
        agent = read_agent(agent_path)  # before any embedding is cached
    ev = Evaluator(cfg, models, pruner, items, policy=agent is not None)
    if warning:
        ev.warn_once(warning)
    action_map = pruner.action_map(env)
    n_layers = pruner.llm.n_layers
    if agent is not None:
        check_agent(agent, agent_path, ev.doc_obs.shape[1] + action_map.budget, n_layers)
    profile = profile or cfg.eval.profile or env.reference
    dense = ev.per_item(dense_kept(n_layers, pruner.width))
    targets: list[float | None] = list(cfg.eval.targets)
    if agent is not None and not action_map.budget:
        targets = [None]  # a trade-off policy picks its own sparsity: match the others to it
    sweep, profiles = [], {}
    for target in targets:
        doc_kept = None if agent is None else policy_kept(agent, ev.doc_obs, target, action_map)
        arms: dict[str, dict] = {}
        for context in modes:
            arms |= score_arms(ev, agent, action_map, target, doc_kept, profile, context, cfg.eval)
        matched = target if target is not None else arms[next(iter(arms))]["sparsity"]
        sweep.append({"target": matched, "arms": arms})
        if doc_kept is not None:
            profiles[f"{matched:.4f}"] = {
                "mean_fractions": fractions_of(doc_kept.mean(0), pruner.width).round(4).tolist(),
                "std_fractions": (doc_kept.std(0) / pruner.width).round(4).tolist(),
            }
        print_table(matched, dense, arms)
    result = {
        "agent": None if agent_path is None else str(agent_path),
        "task": cfg.data.dataset,
        "split": cfg.data.eval_split,
        "max_length": cfg.env.max_length,
        "num_items": len(items),
        "profile": profile,
        "neurons": neurons,
        "static": cfg.eval.static,
        "context_fallbacks": ev.context_fallbacks if neurons != "global" else None,
        "warnings": ev.warnings,
        "dense": dense,
        "sweep": sweep,
        "policy_profiles": profiles,
    }
    run_dir = new_run_dir(cfg, "eval")
    write_json(run_dir / "eval.json", result)
    plot_sweep(result, run_dir / "sweep.png")
    if agent is not None:
        mid = sweep[len(sweep) // 2]["target"]
        mid_kept = policy_kept(agent, ev.doc_obs, mid if action_map.budget else None, action_map)
        plot_profile(fractions_of(mid_kept, pruner.width), run_dir / "profile.png")
    print(f"wrote {run_dir / 'eval.json'}")
    print(json.dumps({"run": str(run_dir), "sweep": headline(result)}))
    return result


def score_arms(
    ev: Evaluator,
    agent: Any,
    action_map: ActionMap,
    target: float | None,
    doc_kept: np.ndarray | None,
    profile: str | None,
    context: bool,
    settings: EvalConfig,
) -> dict[str, dict]:
    """Every pruned arm at `target` (a trade-off policy: at its own sparsity), with global or
    context neurons (then each arm's name ends in `_context`); `agent` None: the static arms
    only (`eval.baselines` and the profile), `eval.static` false: the policy's only."""
    suffix = "_context" if context else ""
    pruner, n_layers = ev.pruner, ev.pruner.llm.n_layers
    arms: dict[str, dict] = {}
    if doc_kept is not None:
        arms["policy_doc"] = ev.per_item(doc_kept, context)
    matched = target if target is not None else arms["policy_doc"]["sparsity"]
    if settings.static or agent is None:
        for name in settings.baselines:
            kept = baseline_kept(name, matched, n_layers, pruner.width, pruner.align)
            arms[name] = ev.per_item(kept, context)
        if profile:
            searched = searched_kept(Path(resolve_path(profile)), matched, n_layers, pruner)
            if searched is not None:
                arms["searched"] = ev.per_item(searched, context)
            else:
                missing = f"profile {profile} has no target {matched:.4f}"
                ev.warn_once(f"{missing}: no searched arm there")
    if doc_kept is not None:
        mean = mean_profile(doc_kept, target, action_map.width, action_map.align)
        arms["policy_mean"] = ev.per_item(mean, context)
    if ev.windows is not None:
        win_kept = policy_kept(agent, ev.window_obs, target, action_map)
        arms["policy_window"] = ev.per_window(win_kept, context)
    return {name + suffix: row for name, row in arms.items()}


def searched_kept(path: Path, target: float, n_layers: int, pruner: Pruner) -> np.ndarray | None:
    """The profile's kept counts at `target` (None if it has none there), as `search` wrote
    them; a profile off the target (hand-written fractions, another align) has its fractions
    projected onto it, as `mean_profile` projects a policy's mean."""
    shape = (n_layers, pruner.width, pruner.align)
    kept = read_profile(path, shape, round(target, 6), missing_ok=True)
    if kept is None or kept.sum() == target_blocks(target, *shape) * pruner.align:
        return kept
    fractions = read_profiles(path, *shape).at(target)[0]
    return project_to_target(fractions, target, pruner.width, pruner.align)


def metric_name(row: dict) -> str:
    """The headline metric of a summary: accuracy, word perplexity, else the first one."""
    for key in ("acc", "word_perplexity"):
        if key in row:
            return key
    return next(k for k in row if k != "sparsity")


def headline(result: dict) -> list[dict]:
    """Target -> arm -> main metric, for the final JSON line."""
    key = metric_name(result["dense"])
    return [
        {"target": round(s["target"], 4)} | {a: round(r[key], 4) for a, r in s["arms"].items()}
        for s in result["sweep"]
    ]


def print_table(target: float, dense: dict, arms: dict[str, dict]) -> None:
    key = metric_name(dense)
    print(f"\ntarget sparsity {target:.3f}")
    print(f"{'allocation':<16}{'sparsity':>10}{key:>18}")
    for arm, row in {"dense": dense, **arms}.items():
        print(f"{arm:<16}{row['sparsity']:>10.4f}{row[key]:>18.4f}")


def run(cfg: Config, args: argparse.Namespace) -> int:
    if cfg.data.dataset == "mixed":
        from commands.evaluate_mixed import run_mixed  # imported here: it imports this module

        return run_mixed(cfg, args)
    seed_everything(cfg.seed)
    limit = check_limit(args.limit)
    spec = args.agent or cfg.eval.agent
    agent_path = None if spec == "none" else agent_path_of(cfg, spec)
    # a broken agent or profile fails before the model loads
    agent = None if agent_path is None else read_agent(agent_path)
    check_profile(cfg, args.profile or cfg.eval.profile)
    models = load_models(cfg.model)
    pruner = make_pruner(cfg, models)
    evaluate_agent(cfg, models, pruner, agent_path, limit, args.profile, args.neurons, agent)
    return 0
