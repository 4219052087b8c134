"""`search`: an evolutionary search of one static per-layer allocation per target sparsity.

EvoPress-style (`pruning.search.evolve`): fitness (`scoring.tasks.window_fitness`) is the summed
negative log-likelihood of `search.calibration` training windows. All candidates of a stage go
through one `scoring.batched.score_samples` call (every (candidate, window) pair is a sample with
its own row masks), so several allocations share each forward pass.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np
from tqdm import tqdm

from commands.build import make_pruner, make_task
from commands.common import (
    new_run_dir,
    seed_everything,
    training_items,
    write_json,
)
from commands.plots import plot_fitness
from config import Config, ConfigError
from models import load_models
from pruning.search import Fitness, SearchResult, evolve
from scoring.tasks import window_fitness

HELP = (
    "Search a static per-layer allocation at each of search.targets (EvoPress-style evolution on "
    "training windows); writes a profile.json that score, eval --profile and train read."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    del parser  # everything is in the `search:` config section


def calibration_items(cfg: Config, tokenizer: Any) -> list[Any]:
    """A seeded sample of `search.calibration` training windows (all of them if fewer)."""
    if cfg.data.dataset != "wikitext":
        raise ConfigError(
            "search scores WikiText windows (fitness = negative log-likelihood); "
            "set data.dataset=wikitext"
        )
    items = [item for item in training_items(cfg, tokenizer) if item.token_ids]
    if not items:
        raise ConfigError(f"split {cfg.data.train_split!r} gave no calibration windows")
    n = min(cfg.search.calibration, len(items))
    chosen = np.random.default_rng(cfg.seed).choice(len(items), size=n, replace=False)
    return [items[i] for i in sorted(chosen)]


def profile_entry(target: float, result: SearchResult, width: int, seconds: float) -> dict:
    kept = result.kept
    return {
        "target": target,
        "kept": kept.tolist(),
        "fractions": (1 - kept / width).tolist(),
        "sparsity": float(1 - kept.sum() / (len(kept) * width)),
        "fitness": result.fitness,
        "start_fitness": result.start_fitness,
        "evaluations": result.evaluations,
        "tokens_scored": result.tokens_scored,
        "seconds": round(seconds, 2),
        "evaluations_per_second": round(result.evaluations / seconds, 3),
        "tokens_per_second": round(result.tokens_scored / seconds, 1),  # stage 1 and 2 alike
        "history": result.history,
    }


def print_table(profiles: list[dict]) -> None:
    head = ("target", "start NLL", "searched NLL", "evals", "evals/s", "tokens/s")
    print(f"{head[0]:>7} {head[1]:>14} {head[2]:>14} {head[3]:>7} {head[4]:>8} {head[5]:>9}")
    for p in profiles:
        print(
            f"{p['target']:>7.3f} {p['start_fitness']:>14.2f} {p['fitness']:>14.2f} "
            f"{p['evaluations']:>7d} {p['evaluations_per_second']:>8.2f} "
            f"{p['tokens_per_second']:>9.1f}"
        )


def search_target(
    cfg: Config, fitness: Fitness, target: float, shape: tuple[int, int, int], tokens: np.ndarray
) -> dict:
    n_layers, width, align = shape
    rng = np.random.default_rng([cfg.seed, round(target * 1e6)])  # same draws whatever the list
    bar = tqdm(total=cfg.search.generations, desc=f"search {target:.2f}", unit="gen")
    start = time.perf_counter()

    def progress(row: dict) -> None:
        if row["generation"]:
            bar.update(1)
        bar.set_postfix(nll=f"{row['fitness']:.1f}", evals=row["evaluations"])

    try:
        result = evolve(fitness, target, n_layers, width, align, tokens, cfg.search, rng, progress)
    finally:
        bar.close()
    return profile_entry(target, result, width, time.perf_counter() - start)


def run(cfg: Config, args: argparse.Namespace) -> int:
    del args
    seed_everything(cfg.seed)
    models = load_models(cfg.model)
    pruner = make_pruner(cfg, models)
    items = calibration_items(cfg, models.tokenizer)
    task = make_task(cfg, models.tokenizer, items)
    tokens = np.array([sum(len(t) for _, t in task.requests(i)) for i in range(len(task))])
    shape = (pruner.llm.n_layers, pruner.width, pruner.align)
    run_dir = new_run_dir(cfg, "search")
    criterion = cfg.importance.criterion if cfg.env.neurons == "context" else None
    fitness = window_fitness(pruner.llm, task, criterion)
    profiles = [search_target(cfg, fitness, t, shape, tokens) for t in cfg.search.targets]
    result = {
        "model": cfg.model.llm,
        "n_layers": shape[0],
        "width": shape[1],
        "align": shape[2],
        "importance_file": str(pruner.orderings_file),
        "calibration": len(items),
        "start": cfg.search.start,
        "neurons": cfg.env.neurons,
        "tokens_per_evaluation": int(tokens.sum()),
        "profiles": profiles,
    }
    write_json(run_dir / "profile.json", result)
    plot_fitness(profiles, run_dir / "fitness.png")
    print_table(profiles)
    print(f"wrote {run_dir / 'profile.json'}")
    headline = [
        {k: p[k] for k in ("target", "start_fitness", "fitness", "evaluations_per_second")}
        for p in profiles
    ]
    print(json.dumps({"run": str(run_dir), "profiles": headline}))
    return 0
