"""`score`: evaluate a fixed allocation (no agent) on the configured task and split."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from commands.allocations import add_allocation_argument, parse_allocation
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
from pruning.allocation import fractions_of
from pruning.prunable_llm import PrunableLLM
from scoring.tasks import score_allocation, task_orderings

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


def run(cfg: Config, args: argparse.Namespace) -> int:
    seed_everything(cfg.seed)
    split = args.split or cfg.data.eval_split
    items = load_items(cfg.data, split, check_limit(args.limit))
    shape = (*peek_shape(cfg.model.llm), cfg.env.align)
    parse_allocation(args.allocation, shape, args.target)  # checked before the load
    models = load_models(cfg.model)
    n_layers, width = model_shape(models.llm)
    kept = parse_allocation(args.allocation, (n_layers, width, cfg.env.align), args.target)
    dense = bool((kept == width).all())
    # The importance order also for dense, when there is one: every arm of every command then
    # runs the same (permuted) weights, so dense numbers agree to the last bit.
    if not dense or importance_path(cfg, models.llm_source).is_file():
        model: Any = make_pruner(cfg, models).llm
    else:
        model = PrunableLLM(models.llm)
    task = make_task(cfg, models.tokenizer, items)
    context: dict[str, Any] = {}
    orderings = None
    if cfg.env.neurons == "context" and not dense:
        start = time.perf_counter()
        orderings, fallbacks = task_orderings(
            model, task, list(range(len(task))), cfg.importance.criterion
        )
        context = {
            "criterion": cfg.importance.criterion,
            "context_fallbacks": fallbacks,  # requests without context: global order
            "context_seconds": round(time.perf_counter() - start, 3),
        }
    result = score_allocation(model, task, kept, orderings)
    result = {
        "task": cfg.data.dataset,
        "split": split,
        "max_length": cfg.env.max_length,
        "allocation": args.allocation,
        "kept": kept.tolist(),
        "fractions": fractions_of(kept, width).tolist(),
        "neurons": cfg.env.neurons,
        **context,
        **result,
    }
    run_dir = new_run_dir(cfg, "score")
    write_json(run_dir / "score.json", result)
    print(json.dumps(result))
    return 0
