"""`eval`: the trained policy on the eval split against dense and uniform baselines."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from commands.build import Pruner, make_pruner, make_scorer
from commands.common import (
    load_items,
    new_run_dir,
    observations,
    resolve_path,
    seed_everything,
    write_json,
)
from commands.plots import plot_profile, plot_sparsity_vs_metric
from config import Config, ConfigError
from models import LoadedModels, load_models
from rl.checkpoints import load_agent
from rl.env import action_to_fractions
from rl.metrics import score_requests
from rl.windows import safe_exp

HELP = (
    "Run the deterministic policy over data.eval_split and compare it with the dense model and "
    "uniform allocations at the policy's mean sparsity and at each item's own sparsity."
)
ARMS = ("policy", "dense", "uniform_mean", "uniform_item")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--agent", default=None, help="agent .zip (default: eval.agent or newest)")
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N items")


def newest_agent(runs_dir: Path) -> Path:
    agents = sorted(runs_dir.glob("train_*/agent_final.zip"))
    if not agents:
        raise FileNotFoundError(f"no trained agent in {runs_dir}; run train first or pass --agent")
    return agents[-1]


def item_scores(pruner: Pruner, scorer: Any, fractions: np.ndarray | None) -> list[tuple]:
    """(summed log-likelihood, metric, sparsity) per item; fractions [n_items, n_layers] or None."""
    out = []
    for i in tqdm(range(len(scorer)), desc="eval", unit="item", leave=False):
        pruned = fractions is not None
        with pruner.llm.pruned(pruner.adapter.mask_fn(fractions[i])) if pruned else nullcontext():
            lls = score_requests(
                pruner.llm, scorer.requests(i), scorer.batch_size, scorer.max_length
            )
            out.append((sum(lls), scorer.metric(i, lls), pruner.llm.sparsity))
    return out


def aggregate(cfg: Config, items: Sequence[Any], scores: list[tuple]) -> dict[str, float]:
    """Word perplexity over all words (never a mean of perplexities), or accuracy."""
    sparsity = float(np.mean([s for _, _, s in scores]))
    if cfg.data.dataset == "mmlu":
        return {"acc": float(np.mean([m for _, m, _ in scores])), "sparsity": sparsity}
    total_ll = sum(ll for ll, _, _ in scores)
    words = sum(item.word_count for item in items)
    n_bytes = sum(item.byte_count for item in items)
    return {
        "word_perplexity": safe_exp(-total_ll / words),
        "byte_perplexity": safe_exp(-total_ll / n_bytes),
        "bits_per_byte": -total_ll / n_bytes / np.log(2),
        "sparsity": sparsity,
    }


def evaluate_agent(
    cfg: Config, models: LoadedModels, pruner: Pruner, agent_path: Path, limit: int | None = None
) -> dict[str, Any]:
    items = load_items(cfg.data, cfg.data.eval_split, limit or cfg.eval.limit)
    obs = observations(models, cfg.data, [item.text for item in items])  # [n_items, dim]
    agent = load_agent(agent_path, obs.shape[1], pruner.llm.n_layers)
    actions, _ = agent.predict(obs, deterministic=True)
    policy = action_to_fractions(actions)  # [n_items, n_layers]
    scorer = make_scorer(cfg, pruner.llm, models.tokenizer, items)
    scores = {
        "policy": item_scores(pruner, scorer, policy),
        "dense": item_scores(pruner, scorer, None),
    }
    item_sparsity = np.array([s for _, _, s in scores["policy"]])
    uniform = np.ones_like(policy)
    scores["uniform_mean"] = item_scores(pruner, scorer, uniform * item_sparsity.mean())
    scores["uniform_item"] = item_scores(pruner, scorer, uniform * item_sparsity[:, None])
    summary = {arm: aggregate(cfg, items, scores[arm]) for arm in ARMS}
    per_item = [
        {"index": i, "fractions": policy[i].round(4).tolist()}
        | {f"{arm}_metric": scores[arm][i][1] for arm in ARMS}
        | {f"{arm}_sparsity": scores[arm][i][2] for arm in ARMS}
        for i in range(len(items))
    ]
    result = {
        "agent": str(agent_path),
        "task": cfg.data.dataset,
        "split": cfg.data.eval_split,
        "max_length": cfg.env.max_length,
        "num_items": len(items),
        "summary": summary,
        "mean_fractions": policy.mean(0).tolist(),
        "std_fractions": policy.std(0).tolist(),
        "items": per_item,
    }
    run_dir = new_run_dir(cfg, "eval")
    write_json(run_dir / "eval.json", result)
    plot_profile(policy, run_dir / "profile.png")
    plot_sparsity_vs_metric(result, run_dir / "sparsity_vs_metric.png")
    print_table(summary)
    print(f"wrote {run_dir / 'eval.json'}")
    print(json.dumps({"run": str(run_dir), **{arm: summary[arm] for arm in ARMS}}))
    return result


def print_table(summary: dict[str, dict[str, float]]) -> None:
    keys = [k for k in summary["policy"] if k != "sparsity"]
    print(f"{'allocation':<14}{'sparsity':>10}" + "".join(f"{k:>18}" for k in keys))
    for arm, row in summary.items():
        print(f"{arm:<14}{row['sparsity']:>10.4f}" + "".join(f"{row[k]:>18.4f}" for k in keys))


def run(cfg: Config, args: argparse.Namespace) -> int:
    if args.limit is not None and args.limit < 1:
        raise ConfigError(f"--limit must be a positive number of items, got {args.limit}")
    seed_everything(cfg.seed)
    runs_dir = resolve_path(cfg.train.runs_dir)
    spec = args.agent or cfg.eval.agent
    agent_path = resolve_path(spec) if spec else newest_agent(runs_dir)
    if not agent_path.is_file():
        raise FileNotFoundError(f"agent {agent_path} not found; pass --agent PATH")
    models = load_models(cfg.model)
    evaluate_agent(cfg, models, make_pruner(cfg, models), agent_path, args.limit)
    return 0
