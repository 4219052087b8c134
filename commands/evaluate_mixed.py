"""`eval` on the mixed task (`data.dataset: mixed`): every arm per kind and overall, at matched
token-weighted mean sparsity, beside the hindsight oracle of per-input total budgets.

For each target t and each neuron choice (global, context):
1. the oracle: every item scored at the budgets t + `ORACLE_OFFSETS` (first/last-2-dense shape);
   with hindsight, each item takes one, the cheapest set whose token-weighted mean sparsity
   reaches t (`pruning.budgets.oracle_budgets`; cost: the item's share of the overall figure);
   its reached mean m is reported;
2. every other arm at exactly m: uniform, first/last-2-dense, the searched profile (`--profile`),
   and with an agent its mean profile and its per-input decisions (`policy_input`);
3. with `eval.fit_items`, `fitted_input`: each unit's budget from a cost model fitted on that
   many training items of each kind, every unit of them scored at the oracle's budgets
   (`pruning.budgets.fit_cost_model`: the embedding of what the decision may read -> the unit's
   cost per token at each budget), chosen as the oracle chooses but from predicted costs; and
   `fitted_within_kind`, the same with each kind's mean held at m on its own (the kind guessed
   from the same embedding), so no kind pays for another.
A per-input decision reads only what a deployment knows before the scored tokens: each window of
a page or file is decided from the text of the window before it ("" for the first) and, with the
stats lever, from its context ordering (its earlier windows); a question from its prompt.
Each row holds the per-kind summaries, the token-weighted sparsity and the overall figure
(`scoring.mixed.overall_figure`, 0 = dense, lower is better). `--agent none`: no policy arms.
"""

from __future__ import annotations

import argparse
import json
import math
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from commands.allocations import agent_env, read_profile
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
from commands.evaluate import agent_path_of, check_profile
from config import Config
from data.mixed import prompts_before
from models import LoadedModels, load_models
from pruning.allocation import (
    BASELINES,
    baseline_kept,
    fractions_of,
    mean_profile,
    project_to_target,
    ranks_of,
    sparsity_of,
)
from pruning.budgets import (
    BUDGET_SHAPE,
    BudgetRule,
    budget_grid,
    budget_kept,
    fit_cost_model,
    nearest_centroid,
    oracle_budgets,
    oracle_price,
    project_budgets,
    weighted_mean,
)
from rl.checkpoints import check_agent, read_agent
from rl.env import observe
from rl.levers import action_dim, blend_orderings, global_ordering, item_features, split_actions
from scoring.batched import score_samples
from scoring.mixed import MixedTask, kind_loss, overall_figure
from scoring.tasks import item_tokens, task_orderings

ORACLE_OFFSETS = (-0.1, -0.05, 0.0, 0.05, 0.1)  # per-item budgets around the target


def oracle_grid(target: float) -> list[float]:
    """The budgets an input may take around `target` (oracle and fitted arms)."""
    return sorted({round(min(max(target + o, 0.0), 0.95), 6) for o in ORACLE_OFFSETS})


class MixedEvaluator:
    """Scores allocations of the mixed task's items; rows carry per-kind and overall figures.

    Allocations are given per decision unit (`units`): each rolling window of a page or file,
    each question whole; an allocation per item is the same for all its units."""

    def __init__(self, cfg: Config, models: LoadedModels, pruner: Pruner, items: list) -> None:
        self.pruner, self.n_layers = pruner, pruner.llm.n_layers
        self.items = items  # MixedItems, in the task's order
        self.task: MixedTask = make_task(cfg, models.tokenizer, items)  # type: ignore[assignment]
        self.weights = cfg.data.active_kinds
        self.tokens = np.array([item_tokens(self.task, i) for i in range(len(self.task))])
        self.units: list[tuple[int, list[int]]] = []  # (item, its requests)
        for i in range(len(self.task)):
            n = len(self.task.requests(i))
            if self.task.kind(i) == "mmlu":  # a question whole: its four letters share a row
                self.units.append((i, list(range(n))))
            else:  # each window of a page or file
                self.units += [(i, [j]) for j in range(n)]
        self.unit_item = np.array([i for i, _ in self.units])
        self.item_kind = np.array([self.task.kind(i) for i in range(len(self.task))])
        self.unit_tokens = np.array([item_tokens(self.task, i, reqs) for i, reqs in self.units])
        self.criterion = cfg.importance.criterion
        self.orderings: list | None = None
        self.context_fallbacks = 0

    @cached_property
    def dense(self) -> dict[str, dict]:
        """Each kind's dense summary (scored on first use: a training evaluator that is weighed
        with the eval split's `kind_scale` never needs it)."""
        lls, _ = self.score_lls(np.full(self.n_layers, self.pruner.width), False)
        return self.task.summary(range(len(self.task)), lls)["kinds"]

    def context(self, on: bool) -> list | None:
        if on and self.orderings is None:
            indices = list(range(len(self.task)))
            self.orderings, self.context_fallbacks = task_orderings(
                self.pruner.llm, self.task, indices, self.criterion
            )
        return self.orderings if on else None

    def unit_orderings(self) -> list[list]:
        """Each unit's context orderings, one per request (computed on first use)."""
        orderings = self.context(True)
        assert orderings is not None
        return [[orderings[i][j] for j in reqs] for i, reqs in self.units]

    def unit_prompts(self, tokenizer: Any) -> list[str]:
        """What each unit's decision may read: the text of the window before it, a prompt."""
        prompts: list[str] = []
        for i in range(len(self.task)):
            requests = self.task.requests(i)
            if self.task.kind(i) == "mmlu":
                prompts.append(self.items[i].text)  # the question's prompt
            else:
                prompts += prompts_before([t for _, t in requests], tokenizer.decode)
        return prompts

    def unit_lls(
        self, kept: np.ndarray, context: bool, blend: np.ndarray | None = None
    ) -> list[list[float]]:
        """Per unit, its requests' log-likelihoods under kept[u] ([n_units, L]); with context
        neurons, `blend` [n_units, L] mixes each unit's context ranking with the global one
        (`rl.levers`)."""
        requests = [[self.task.requests(i)[j] for j in reqs] for i, reqs in self.units]
        orderings = self.unit_orderings() if context else None
        if orderings is not None and blend is not None:
            ranks = ranks_of(global_ordering(self.pruner.llm))
            orderings = [
                [blend_orderings(o, ranks, blend[u]) for o in unit]
                for u, unit in enumerate(orderings)
            ]
        t = self.task
        return score_samples(self.pruner.llm, requests, kept, t.batch_size, t.max_length, orderings)

    def score_units(
        self, kept: np.ndarray, context: bool, blend: np.ndarray | None = None
    ) -> list[list[float]]:
        """Per item, its units' log-likelihoods in order (`unit_lls`)."""
        per_item: list[list[float]] = [[] for _ in range(len(self.task))]
        for (i, _), ll in zip(self.units, self.unit_lls(kept, context, blend), strict=True):
            per_item[i] += ll
        return per_item

    def grid_kept(self, budget: float) -> np.ndarray:
        """The oracle's allocation [L] of one budget (`budget_kept`; 0: dense)."""
        return budget_kept(budget, self.n_layers, self.pruner.width, self.pruner.align)

    def grid_reach(self, budgets: list[float], n: int) -> np.ndarray:
        """[n, G]: the sparsity each budget's allocation reaches, for n inputs alike."""
        _, reach = budget_grid(budgets, self.n_layers, self.pruner.width, self.pruner.align)
        return np.tile(reach, (n, 1))

    def score_lls(
        self, kept: np.ndarray, context: bool, blend: np.ndarray | None = None
    ) -> tuple[list, np.ndarray]:
        """Log-likelihoods under an allocation per item (kept [n, L] or one [L]; blend [n, L])."""
        kept = np.broadcast_to(kept, (len(self.task), self.n_layers))
        unit_blend = None if blend is None else blend[self.unit_item]
        return self.score_units(kept[self.unit_item], context, unit_blend), kept

    def row(self, lls: list, kept: np.ndarray, per_unit: bool = False) -> dict[str, Any]:
        """Per-kind summaries, overall figure and the token-weighted sparsity of kept (per item;
        per unit with `per_unit`), overall and per kind (where a per-input arm spends it)."""
        kinds = self.task.summary(range(len(self.task)), lls)["kinds"]
        sparsity = np.asarray(sparsity_of(kept, self.pruner.width)).reshape(-1)
        tokens = self.unit_tokens if per_unit else self.tokens
        kind = self.item_kind[self.unit_item] if per_unit else self.item_kind
        by_kind = {k: weighted_mean(sparsity[kind == k], tokens[kind == k]) for k in kinds}
        return {
            "overall": overall_figure(kinds, self.dense, self.weights),
            "sparsity": weighted_mean(sparsity, tokens),
            "kind_sparsity": {k: round(v, 4) for k, v in by_kind.items()},
            "kinds": kinds,
        }

    def arm(self, kept: np.ndarray, context: bool, blend: np.ndarray | None = None) -> dict:
        lls, kept = self.score_lls(kept, context, blend)
        return self.row(lls, kept)

    def unit_arm(self, kept: np.ndarray, context: bool, blend: np.ndarray | None = None) -> dict:
        """An allocation (and blend) per unit [n_units, L]."""
        return self.row(self.score_units(kept, context, blend), kept, per_unit=True)

    def kind_scale(self, kind: str) -> float:
        """What one unit of a kind's loss (a text's negative log-likelihood, a wrong answer)
        weighs in the overall figure: the kind's share over its words or over the dense
        model's smoothed wrong count."""
        share = self.weights[kind] / sum(self.weights.values())
        if kind == "mmlu":
            return share / (kind_loss(kind, self.dense[kind]) * (self.dense[kind]["n"] + 1))
        return share / sum(d.word_count for d in self.task.tasks[kind].docs)

    def item_cost(self, i: int, lls: list[float], scale: float | None = None) -> float:
        """Item i's (linearised) share of the overall figure, its loss times its kind's
        `kind_scale` (or `scale`). A unit's cost is the same with only its log-likelihoods (a
        question's are all of it)."""
        kind, local = self.task.index[i]
        scale = self.kind_scale(kind) if scale is None else scale
        if kind == "mmlu":
            return scale * (1.0 - self.task.tasks[kind].metric(local, lls))
        return -scale * sum(lls)

    def oracle(self, target: float, context: bool) -> dict[str, Any]:
        budgets = oracle_grid(target)
        scored = [self.score_lls(self.grid_kept(b), context) for b in budgets]
        n = len(self.task)
        cost = np.array([[self.item_cost(i, lls[i]) for lls, _ in scored] for i in range(n)])
        choice = oracle_budgets(cost, self.grid_reach(budgets, n), self.tokens, target)
        lls = [scored[g][0][i] for i, g in enumerate(choice)]
        kept = np.stack([scored[g][1][i] for i, g in enumerate(choice)])
        row = self.row(lls, kept)
        row["budgets"] = [budgets[g] for g in choice]
        return row


class FittedBudgets:
    """Per-input budgets from a cost model fitted on training items (`eval.fit_items` of each
    kind, never an eval item): every training unit is scored at the oracle's budgets, its cost
    at each (`MixedEvaluator.item_cost`) regressed on the embedding of what its decision may
    read; an eval unit takes the budget whose predicted cost is cheapest at the price that holds
    the token-weighted mean (`oracle_budgets` on predicted costs). `fitted_within_kind` holds
    the mean of each predicted kind on its own (`nearest_centroid` of the training units' kinds
    in the same features): sparsity moves between the inputs of a kind, never between kinds.

    A training unit's loss is weighed with the eval figure's `kind_scale` of its kind (the
    kind's total words or dense wrong answers in the eval split), not the training split's: the
    training stream is reweighted to the composition the figure judges. An eval unit's own kind
    is never read."""

    def __init__(
        self, cfg: Config, models: LoadedModels, pruner: Pruner, ev: MixedEvaluator
    ) -> None:
        items = load_items(cfg.data, cfg.data.train_split, cfg.eval.fit_items)
        self.ev = ev
        self.train = train = MixedEvaluator(cfg, models, pruner, items)
        self.features = observations(models, cfg.data, train.unit_prompts(models.tokenizer))
        self.eval_features = observations(models, cfg.data, ev.unit_prompts(models.tokenizer))
        self.scales = {k: ev.kind_scale(k) for k in ev.weights}  # the eval split's weighing
        kinds = train.item_kind[train.unit_item]
        self.kinds = nearest_centroid(self.features, kinds, self.eval_features)  # predicted
        truth = ev.item_kind[ev.unit_item]  # read only to report how often the guess is right
        self.kind_accuracy = weighted_mean(self.kinds == truth, ev.unit_tokens)
        self.scored: dict[tuple[float, bool], list[list[float]]] = {}  # (budget, context) -> lls
        self.rules: list[BudgetRule] = []  # one per target and neuron choice, for `generate`

    def costs(self, budget: float, context: bool) -> np.ndarray:
        """Each training unit's cost at one budget (scored once per budget and neuron choice)."""
        if (budget, context) not in self.scored:
            kept = np.tile(self.train.grid_kept(budget), (len(self.train.units), 1))
            self.scored[budget, context] = self.train.unit_lls(kept, context)
        lls, train = self.scored[budget, context], self.train
        return np.array(
            [
                train.item_cost(i, ll, self.scales[train.task.kind(i)])
                for (i, _), ll in zip(train.units, lls)
            ]
        )

    def arms(self, target: float, matched: float, context: bool) -> dict[str, dict]:
        """fitted_input (the oracle's choice on predicted costs, one price for all units) and
        fitted_within_kind (the same with each predicted kind's mean held at `matched`)."""
        budgets = oracle_grid(target)
        cost = np.stack([self.costs(b, context) for b in budgets], axis=1)  # [units, G]
        train, ev = self.train, self.ev
        model = fit_cost_model(self.features, cost, train.unit_tokens, train.unit_item)
        train_reach = train.grid_reach(budgets, len(train.units))
        price = oracle_price(model.predict(self.features), train_reach, train.unit_tokens, target)
        rule = BudgetRule(target, "context" if context else "global", budgets, price, model)
        self.rules.append(rule)
        predicted = model.predict(self.eval_features) * ev.unit_tokens[:, None]
        reach = ev.grid_reach(budgets, len(ev.units))
        alone = rule.choose(self.eval_features, reach[0])  # each unit on its own, no batch
        fit = {
            "ridge": model.ridge,
            "heldout": model.heldout,
            "heldout_constant": model.heldout_constant,
            "training_units": len(train.units),
            "kind_accuracy": self.kind_accuracy,
            "price": None if math.isinf(price) else price,  # per token, set on the training units
            "rule_sparsity": weighted_mean(reach[0][alone], ev.unit_tokens),
        }
        rows = {}
        for name, groups in (("fitted_input", None), ("fitted_within_kind", self.kinds)):
            choice = oracle_budgets(predicted, reach, ev.unit_tokens, matched, groups)
            kept = np.stack([ev.grid_kept(budgets[g]) for g in choice])
            rows[name] = ev.unit_arm(kept, context) | {"fit": fit}
        return rows


class Policy:
    """A trained agent's decisions on the eval units (each window of a page or file, each
    question), read from what precedes the scored tokens: per-layer fractions and, with its
    levers (`rl.levers`), each unit's total budget (projected so the token-weighted mean is the
    target) and per-layer blend of context and global ranking."""

    def __init__(
        self, cfg: Config, models: LoadedModels, ev: MixedEvaluator, path: Path, agent: Any,
        warnings: list[str],
    ) -> None:  # fmt: skip
        env, warning = agent_env(path, cfg.env)
        if warning:
            warn(warning, warnings)
        self.ev, self.levers, self.radius = ev, tuple(env.levers), env.budget_radius
        self.action_map = ev.pruner.action_map(env)
        obs = observations(models, cfg.data, ev.unit_prompts(models.tokenizer))
        if "stats" in self.levers:
            features = item_features(ev.unit_orderings(), global_ordering(ev.pruner.llm))
            obs = np.concatenate([obs, features], axis=1, dtype=np.float32)
        self.obs = obs
        n_actions = action_dim(ev.n_layers, self.levers, self.action_map.layer_actions)
        self.agent = check_agent(agent, path, obs.shape[1] + self.action_map.budget, n_actions)

    def arms(self, target: float, context: bool) -> dict[str, dict]:
        """policy_mean (its mean profile and mean blend for every unit) and policy_input (each
        unit its own allocation, budget and blend), both at token-weighted mean `target`."""
        targets = np.full(len(self.obs), target)
        actions, _ = self.agent.predict(observe(self.obs, targets), deterministic=True)
        layer, blend, budget = split_actions(
            actions, self.ev.n_layers, self.levers, self.action_map.layer_actions
        )
        at_target = self.action_map.kept(layer, targets)
        mean = mean_profile(at_target, target, self.action_map.width, self.action_map.align)
        n_items = len(self.ev.task)
        mean_blend = (
            None if blend is None else np.broadcast_to(blend.mean(0), (n_items, blend.shape[1]))
        )
        budgets = targets
        if budget is not None:
            budgets = project_budgets(target + self.radius * budget, self.ev.unit_tokens, target)
        per_unit = self.action_map.kept(layer, budgets)
        return {
            "policy_mean": self.ev.arm(mean, context, mean_blend),
            "policy_input": self.ev.unit_arm(per_unit, context, blend),
        }


def evaluate_mixed(
    cfg: Config,
    models: LoadedModels,
    pruner: Pruner,
    items: list,
    agent_path: Path | None,
    profile: str | None = None,
    neurons: str | None = None,
    agent: Any = None,
) -> dict[str, Any]:
    """agent: the agent file read before the model (`read_agent`), or None to read it here."""
    neurons = neurons or cfg.env.neurons
    modes = {"global": [False], "context": [True], "both": [False, True]}[neurons]
    ev = MixedEvaluator(cfg, models, pruner, items)
    policy, warnings = None, []
    if agent_path is not None:
        agent = agent if agent is not None else read_agent(agent_path)
        policy = Policy(cfg, models, ev, agent_path, agent, warnings)
    fitted = FittedBudgets(cfg, models, pruner, ev) if cfg.eval.fit_items else None
    profile = profile or cfg.eval.profile
    sweep = []
    for target in cfg.eval.targets:
        for context in modes:
            suffix = "_context" if context else ""
            arms = {"oracle": ev.oracle(target, context)}
            matched = arms["oracle"]["sparsity"]
            for name in BASELINES:
                kept = baseline_kept(name, matched, ev.n_layers, pruner.width, pruner.align)
                arms[name] = ev.arm(kept, context)
            if profile:
                path = Path(resolve_path(profile))
                shape = (ev.n_layers, pruner.width, pruner.align)
                kept = read_profile(path, shape, round(target, 6), missing_ok=True)
                if kept is not None:  # the profile of this target, moved onto the mean
                    fractions = fractions_of(kept, pruner.width)
                    searched = project_to_target(fractions, matched, pruner.width, pruner.align)
                    arms["searched"] = ev.arm(searched, context)
            if policy is not None:
                arms |= policy.arms(matched, context)
            if fitted is not None:
                arms |= fitted.arms(target, matched, context)
            entry = {"target": target, "neurons": "context" if context else "global"}
            entry |= {"matched": matched, "arms": {a + suffix: r for a, r in arms.items()}}
            entry["gains"] = gains(arms)
            sweep.append(entry)
            print_table(entry, ev.dense)
    result = {
        "agent": None if agent_path is None else str(agent_path),
        "task": "mixed",
        "kinds": ev.weights,
        "split": cfg.data.eval_split,
        "max_length": cfg.env.max_length,
        "num_items": {k: len(t) for k, t in ev.task.tasks.items()},
        "oracle": {"shape": BUDGET_SHAPE, "offsets": list(ORACLE_OFFSETS)},
        "neurons": neurons,
        "fit_items": cfg.eval.fit_items,
        "context_fallbacks": ev.context_fallbacks if neurons != "global" else None,
        "warnings": warnings,
        "dense": ev.dense,
        "sweep": sweep,
    }
    run_dir = new_run_dir(cfg, "eval")
    write_json(run_dir / "eval.json", result)
    if fitted is not None:  # the fitted per-input budgets, for `generate --budget-rules`
        shape = {"n_layers": ev.n_layers, "width": pruner.width, "align": pruner.align}
        rules = {"llm": cfg.model.llm, "encoder": cfg.model.encoder} | shape
        rules["rules"] = [rule.to_dict() for rule in fitted.rules]
        write_json(run_dir / "budget_rules.json", rules)
    print(f"wrote {run_dir / 'eval.json'}")
    print(json.dumps({"run": str(run_dir), "sweep": headline(sweep)}))
    return result


def gains(arms: dict[str, dict]) -> dict[str, Any]:
    """The best static arm, and how much of the oracle's gain over it each other arm captures
    (fraction of the overall figure's improvement; 1 = all of it)."""
    static = {a: arms[a]["overall"] for a in (*BASELINES, "searched") if a in arms}
    best = min(static, key=static.get)
    room = static[best] - arms["oracle"]["overall"]
    captured = {
        a: (static[best] - arms[a]["overall"]) / room if room > 0 else None
        for a in ("policy_mean", "policy_input", "fitted_input", "fitted_within_kind")
        if a in arms
    }
    return {"best_static": best, "oracle_gain": room, "captured": captured}


def headline(sweep: list[dict]) -> list[dict]:
    return [
        {"target": s["target"], "matched": round(s["matched"], 4)}
        | {a: round(r["overall"], 4) for a, r in s["arms"].items()}
        for s in sweep
    ]


def print_table(entry: dict, dense: dict) -> None:
    kinds = list(dense)
    cols = [f"{k} {'acc' if k == 'mmlu' else 'wppl'}" for k in kinds]
    print(f"\ntarget {entry['target']:.2f}, {entry['neurons']} neurons, matched mean sparsity "
          f"{entry['matched']:.4f} (token-weighted)")  # fmt: skip
    print(f"{'arm':<22}{'sparsity':>9}{'overall':>9}" + "".join(f"{c:>16}" for c in cols))
    rows = {"dense": {"overall": 0.0, "sparsity": 0.0, "kinds": dense}, **entry["arms"]}
    for arm, row in rows.items():
        values = [row["kinds"][k]["acc" if k == "mmlu" else "word_perplexity"] for k in kinds]
        print(f"{arm:<22}{row['sparsity']:>9.4f}{row['overall']:>9.4f}"
              + "".join(f"{v:>16.4f}" for v in values))  # fmt: skip


def run_mixed(cfg: Config, args: argparse.Namespace) -> int:
    seed_everything(cfg.seed)
    limit = check_limit(args.limit)
    items = load_items(cfg.data, cfg.data.eval_split, limit or cfg.eval.limit)  # before the model
    spec = args.agent or cfg.eval.agent
    agent_path = None
    if spec != "none":
        agent_path = agent_path_of(cfg, spec)
        if not agent_path.is_file():
            raise FileNotFoundError(f"agent {agent_path} not found; pass --agent PATH or none")
    agent = None if agent_path is None else read_agent(agent_path)  # before the model loads
    check_profile(cfg, args.profile or cfg.eval.profile)
    models = load_models(cfg.model)
    pruner = make_pruner(cfg, models)
    evaluate_mixed(cfg, models, pruner, items, agent_path, args.profile, args.neurons, agent)
    return 0
