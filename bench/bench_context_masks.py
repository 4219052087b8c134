"""Cost of per-row context masks for many inputs at once: what `score` with context neurons on
all 14,042 MMLU test questions asks of `PrunableLLM.rows_pruned` (one ordering per question).

Builds a model of the given MLP shape (random weights, small hidden size: only the masks are
timed), enters `rows_pruned` with --groups kept counts and orderings, selects one batch and
prints the time to enter, the time of one batch's masks and the process's peak memory.

    python3 bench/bench_context_masks.py --layers 28 --width 8960 --groups 14042
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from pruning.prunable_llm import PrunableLLM  # noqa: E402
from tiny import tiny_llama  # noqa: E402


def run(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=28)
    p.add_argument("--width", type=int, default=8960)
    p.add_argument("--groups", type=int, default=14042)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    model = tiny_llama(0, num_hidden_layers=args.layers, intermediate_size=args.width)
    gen = torch.Generator().manual_seed(0)
    orders = torch.stack([torch.randperm(args.width, generator=gen) for _ in range(args.layers)])
    llm = PrunableLLM(model.to(args.device), orders)
    distinct = [orders[:, torch.randperm(args.width, generator=gen)].to(torch.int16)
                for _ in range(8)]  # fmt: skip
    orderings = [distinct[g % 8] for g in range(args.groups)]
    kept = np.full((args.groups, args.layers), int(0.7 * args.width))
    start = time.perf_counter()
    with llm.rows_pruned(kept, orderings) as select:
        entered = time.perf_counter()
        select(list(range(min(args.batch, args.groups))))
        if args.device != "cpu":
            torch.cuda.synchronize()
        selected = time.perf_counter()
    result = {
        "shape": [args.layers, args.width], "groups": args.groups, "device": args.device,
        "enter_s": round(entered - start, 3), "batch_masks_s": round(selected - entered, 4),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2),
    }  # fmt: skip
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    run()
