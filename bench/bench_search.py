"""Speed of `search` (evaluations per second) on a random-weight model of a given shape.

Runs the real search loop (`pruning.search.evolve` with `commands.search.window_fitness`, the
batched scoring path) for a few generations on random calibration windows; speed does not depend
on weight values. One evaluation = one candidate allocation scored on one stage's windows
(stage 1: `subset` windows, stage 2: all `calibration` windows), as `search` counts them.

    python bench/bench_search.py --arch llama-3.1-8b --out $OUT/search.json        # GPU
    python bench/bench_search.py --arch tiny --generations 2 --calibration 8        # CPU smoke
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.common import (  # noqa: E402
    ARCHS,
    arch_dtype,
    build_model,
    device_name,
    random_orderings,
    resolve_device,
    sync,
    write_results,
)
from commands.search import window_fitness  # noqa: E402
from config import SearchConfig  # noqa: E402
from pruning.prunable_llm import PrunableLLM  # noqa: E402
from pruning.search import evolve  # noqa: E402
from scoring.tasks import WindowTask  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=list(ARCHS), default="llama-3.1-8b")
    parser.add_argument("--device", default="auto", help="auto: CUDA if present, else CPU")
    parser.add_argument("--target", type=float, default=0.3)
    parser.add_argument("--seq-len", type=int, default=256, help="tokens per calibration window")
    parser.add_argument("--batch-size", type=int, default=32, help="windows per forward pass")
    parser.add_argument("--generations", type=int, default=3)
    parser.add_argument("--offspring", type=int, default=16)
    parser.add_argument("--survivors", type=int, default=2)
    parser.add_argument("--subset", type=int, default=16)
    parser.add_argument("--calibration", type=int, default=128)
    parser.add_argument("--align", type=int, default=8)
    parser.add_argument("--out", type=Path, default=None, help="write the numbers as JSON")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    device = resolve_device(args.device)
    model = build_model(args.arch, device, arch_dtype(device))
    n_layers, width = model.config.num_hidden_layers, model.config.intermediate_size
    llm = PrunableLLM(model, orderings=random_orderings(n_layers, width))
    gen = torch.Generator().manual_seed(0)
    shape = (args.calibration, args.seq_len - 1)  # + the prefix token = seq_len per window
    windows = torch.randint(0, model.config.vocab_size, shape, generator=gen).tolist()
    task = WindowTask(windows, 0, args.seq_len, args.batch_size)
    search = SearchConfig(
        targets=[args.target], generations=args.generations, offspring=args.offspring,
        survivors=args.survivors, subset=min(args.subset, args.calibration),
        calibration=args.calibration,
    )  # fmt: skip
    fitness = window_fitness(llm, task, None)
    tokens = np.full(len(task), shape[1])
    warm = SearchConfig(**(search.model_dump() | {"generations": 1}))
    evolve(
        fitness, args.target, n_layers, width, args.align, tokens, warm, np.random.default_rng(1)
    )
    sync(device)
    start = time.perf_counter()
    result = evolve(
        fitness, args.target, n_layers, width, args.align, tokens, search, np.random.default_rng(0)
    )
    sync(device)
    seconds = time.perf_counter() - start
    row = {
        "arch": args.arch,
        "device": device_name(device),
        "dtype": str(arch_dtype(device)).removeprefix("torch."),
        **{k: v for k, v in vars(args).items() if k not in {"out", "device", "arch"}},
        "evaluations": result.evaluations,
        "tokens_scored": result.tokens_scored,
        "seconds": round(seconds, 3),
        "evaluations_per_second": round(result.evaluations / seconds, 3),
        "tokens_per_second": round(result.tokens_scored / seconds, 1),
        "evaluations_of_all_windows_per_second": round(
            result.tokens_scored / seconds / (args.calibration * shape[1]), 3
        ),
    }
    print(json.dumps(row))
    if args.out is not None:
        write_results(args.out, row)
    return row


if __name__ == "__main__":
    main()
