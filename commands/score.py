"""`score`: evaluate a fixed allocation (no agent) on the configured task and split."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np

from commands.allocations import add_allocation_argument, parse_allocation, to_kept
from commands.build import make_pruner, make_task
from commands.common import (
    check_limit,
    importance_path,
    load_items,
    new_run_dir,
    seed_everything,
    write_json,
)
from config import Config
from models import load_models, model_shape, peek_shape
from pruning.prunable_llm import PrunableLLM
from scoring.batched import Orderings
from scoring.tasks import Task, score_task, task_orderings

HELP = (
    "Score a fixed allocation without an agent: 'dense', 'uniform:<fraction>', a comma list of "
    "per-layer fractions, a JSON/YAML file holding that list, or a `search` profile file. "
    "Prints one JSON line last."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_allocation_argument(parser, "dense")
    parser.add_argument("--limit", type=int, default=None, help="score only the first N items")
    parser.add_argument("--split", default=None, help="data split (default: data.eval_split)")
    parser.add_argument("--target", type=float, default=None, help="target of a profile file")


def score_allocation(
    model: Any, task: Task, kept: np.ndarray | None, orderings: Orderings | None = None
) -> dict[str, Any]:
    """Task summary of every item under one allocation (kept [n_layers]; None = dense), with
    context neurons when `orderings` (per item, `scoring.tasks.task_orderings`) are given.

    The same scoring code as `eval`'s arms and the environment (`scoring.tasks.score_task`)."""
    start = time.perf_counter()
    indices = list(range(len(task)))
    lls, sparsity = score_task(model, task, indices, kept, orderings)
    metrics = task.summary(indices, lls)
    seconds = time.perf_counter() - start
    tokens = metrics.get("num_tokens")
    return {
        **metrics,
        "sparsity": float(sparsity.mean()),
        "seconds": round(seconds, 3),
        "num_items": len(indices),
        "items_per_second": round(len(indices) / seconds, 3),
        "tokens_per_second": round(tokens / seconds, 1) if tokens else None,
    }


def run(cfg: Config, args: argparse.Namespace) -> int:
    seed_everything(cfg.seed)
    split = args.split or cfg.data.eval_split
    items = load_items(cfg.data, split, check_limit(args.limit))
    parse_allocation(args.allocation, peek_shape(cfg.model.llm)[0], args.target)  # before the load
    models = load_models(cfg.model)
    n_layers, width = model_shape(models.llm)
    fractions = parse_allocation(args.allocation, n_layers, args.target)
    # The importance order also for dense, when there is one: every arm of every command then
    # runs the same (permuted) weights, so dense numbers agree to the last bit.
    if fractions is not None or importance_path(cfg, models.llm_source).is_file():
        model: Any = make_pruner(cfg, models).llm
    else:
        model = PrunableLLM(models.llm)
    task = make_task(cfg, model, models.tokenizer, items)
    context: dict[str, Any] = {}
    orderings = None
    if cfg.env.neurons == "context" and fractions is not None:
        start = time.perf_counter()
        orderings, fallbacks = task_orderings(
            model, task, list(range(len(task))), cfg.importance.criterion
        )
        context = {
            "criterion": cfg.importance.criterion,
            "context_fallbacks": fallbacks,  # requests without context: global order
            "context_seconds": round(time.perf_counter() - start, 3),
        }
    result = score_allocation(model, task, to_kept(fractions, width, cfg.env.align), orderings)
    result = {
        "task": cfg.data.dataset,
        "split": split,
        "max_length": cfg.env.max_length,
        "allocation": args.allocation,
        "fractions": None if fractions is None else fractions.tolist(),
        "neurons": cfg.env.neurons,
        **context,
        **result,
    }
    run_dir = new_run_dir(cfg, "score")
    write_json(run_dir / "score.json", result)
    print(json.dumps(result))
    return 0
