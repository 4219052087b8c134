"""`score`: evaluate a fixed allocation (no agent) on the configured task and split."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from commands.build import Pruner, make_pruner, mmlu_calculator
from commands.common import load_items, new_run_dir, seed_everything, write_json
from config import Config, ConfigError
from models import LoadedModels, load_models, model_shape
from rl.metrics import PerplexityCalculator

HELP = (
    "Score a fixed allocation without an agent: 'dense', 'uniform:<fraction>', a comma list of "
    "per-layer fractions, or a JSON/YAML file holding that list. Prints one JSON line last."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "allocation",
        nargs="?",
        default="dense",
        help="dense | uniform:F | F1,F2,...  (one per layer) | file.json/.yml (default: dense)",
    )
    parser.add_argument("--limit", type=int, default=None, help="score only the first N items")
    parser.add_argument("--split", default=None, help="data split (default: data.eval_split)")


def parse_allocation(spec: str, n_layers: int) -> np.ndarray | None:
    """None for dense, else one prune fraction per layer [n_layers]; ValueError in one line."""
    spec = spec.strip()
    if spec == "dense":
        return None
    if spec.startswith("uniform:"):
        values: Any = [_number(spec.removeprefix("uniform:"))] * n_layers
    elif Path(spec).suffix in {".json", ".yml", ".yaml"}:
        path = Path(spec)
        if not path.is_file():
            raise ConfigError(f"allocation file {spec} does not exist")
        values = yaml.safe_load(path.read_text())  # YAML is a superset of JSON
        values = values.get("fractions", values) if isinstance(values, dict) else values
    else:
        values = [_number(v) for v in spec.split(",")]
    if not isinstance(values, list) or len(values) != n_layers:
        got = len(values) if isinstance(values, list) else type(values).__name__
        raise ConfigError(f"allocation needs {n_layers} fractions (one per layer), got {got}")
    fractions = np.asarray([_number(v) for v in values], dtype=np.float64)
    bad = np.flatnonzero(~((fractions >= 0) & (fractions <= 1)))
    if len(bad):
        layer = int(bad[0])
        raise ConfigError(f"allocation fraction of layer {layer} is {fractions[layer]}; use [0,1]")
    return fractions


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"allocation value {value!r} is not a number") from None


def evaluate_items(cfg: Config, models: LoadedModels, llm: Any, items: Sequence[Any]) -> dict:
    """Task metrics of `items` on the model as it is now (dense or pruned)."""
    env = cfg.env
    if cfg.data.dataset == "mmlu":
        return mmlu_calculator(cfg, llm, models.tokenizer).evaluate(items, env.batch_size)
    calc = PerplexityCalculator(
        llm, models.tokenizer, env.max_length, env.prefix_token, env.batch_size
    )
    return calc.evaluate(items)


def score_allocation(
    cfg: Config, models: LoadedModels, pruner: Pruner | None, fractions: np.ndarray | None, items
) -> dict[str, Any]:
    start = time.perf_counter()
    if fractions is None or pruner is None:
        metrics, sparsity = evaluate_items(cfg, models, models.llm, items), 0.0
    else:
        with pruner.llm.pruned(pruner.adapter.mask_fn(fractions)):
            sparsity = pruner.llm.sparsity
            metrics = evaluate_items(cfg, models, pruner.llm, items)
    seconds = time.perf_counter() - start
    tokens = metrics.get("num_tokens")
    return {
        **metrics,
        "sparsity": sparsity,
        "seconds": round(seconds, 3),
        "num_items": len(items),
        "items_per_second": round(len(items) / seconds, 3),
        "tokens_per_second": round(tokens / seconds, 1) if tokens else None,
    }


def run(cfg: Config, args: argparse.Namespace) -> int:
    seed_everything(cfg.seed)
    split = args.split or cfg.data.eval_split
    if args.limit is not None and args.limit < 1:
        raise ConfigError(f"--limit must be a positive number of items, got {args.limit}")
    items = load_items(cfg.data, split, args.limit)
    models = load_models(cfg.model)
    n_layers, _ = model_shape(models.llm)
    fractions = parse_allocation(args.allocation, n_layers)
    pruner = make_pruner(cfg, models) if fractions is not None else None
    result = score_allocation(cfg, models, pruner, fractions, items)
    result = {
        "task": cfg.data.dataset,
        "split": split,
        "max_length": cfg.env.max_length,
        "allocation": args.allocation,
        "fractions": None if fractions is None else fractions.tolist(),
        **result,
    }
    run_dir = new_run_dir(cfg, "score")
    write_json(run_dir / "score.json", result)
    print(json.dumps(result))
    return 0
