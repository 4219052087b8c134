"""Benchmark PrunableLLM prune/undo against a copy-out/copy-back baseline, on random weights.

python bench/bench_prune.py --arch llama-3.1-8b                    # GPU
python bench/bench_prune.py --arch smollm2-135m --seq-len 256      # CPU, about a minute
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import ARCHS, arch_dtype, build_model, median_ms, sync  # noqa: E402
from pruning.allocation import (
    keep_masks,  # noqa: E402
    kept_counts,  # noqa: E402
)
from pruning.prunable_llm import PrunableLLM  # noqa: E402


class CopyOutPruner:
    """Seed design: copy removed slices to `storage`, keep gathered rows, copy back on undo."""

    def __init__(self, llm: PrunableLLM, storage: torch.device) -> None:
        self.mlps = [
            (ly.mlp.gate_proj, ly.mlp.up_proj, ly.mlp.down_proj) for ly in llm.model.layers
        ]
        self.storage = storage
        self.pack: list[tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]] = []

    @torch.no_grad()
    def prune(self, masks: torch.Tensor) -> None:  # masks [n_layers, d_ff] bool
        for lins, mask in zip(self.mlps, masks):
            dev = lins[0].weight.device
            keep, drop = (mask.nonzero().flatten().to(dev), (~mask).nonzero().flatten().to(dev))
            dims = (0, 0, 1)
            removed = [
                lin.weight.index_select(d, drop).to(self.storage) for lin, d in zip(lins, dims)
            ]
            for lin, d in zip(lins, dims):
                lin.weight.data = lin.weight.index_select(d, keep)
            self.pack.append((keep, drop, removed))

    @torch.no_grad()
    def undo(self) -> None:
        for lins, (keep, drop, removed) in zip(self.mlps, self.pack):
            for lin, d, rem in zip(lins, (0, 0, 1), removed):
                shape = list(lin.weight.shape)
                shape[d] = len(keep) + len(drop)
                full = lin.weight.new_empty(shape)
                full.index_copy_(d, keep, lin.weight)
                full.index_copy_(d, drop, rem.to(full.device))
                lin.weight.data = full
        self.pack = []


def copied_mb(llm: PrunableLLM) -> float:
    """Memory held by pruned weights that are copies rather than views of the originals."""
    total = 0
    for entry in llm.undo_pack.entries if llm.undo_pack else ():
        if not entry.is_view:
            per_neuron = 3 * entry.gate.shape[1] * entry.gate.element_size()
            total += entry.n_kept * per_neuron
    return total / 2**20


def time_cycles(
    prune: Callable[[], object], undo: Callable[[], object], dev: torch.device, reps: int
) -> tuple[float, float]:
    """Median ms of `prune` and of `undo` over `reps` prune/undo cycles (after 3 warm-ups)."""
    for _ in range(3):
        prune()
        undo()
    prunes, undos = [], []
    for _ in range(reps):
        prunes.append(median_ms(prune, dev, 1, warmup=0))
        undos.append(median_ms(undo, dev, 1, warmup=0))
    return statistics.median(prunes), statistics.median(undos)


def measure_ours(
    llm: PrunableLLM,
    mask_fn_of: Callable[[], Callable],
    ids: torch.Tensor,
    reps: int,
    fwd_reps: int,
) -> dict[str, float | None]:
    """Prune time includes building the masks from the fraction vector."""
    dev = ids.device
    prune_ms, undo_ms = time_cycles(lambda: llm.prune(mask_fn_of()), llm.undo_prune, dev, reps)
    mem0 = torch.cuda.memory_allocated(dev) if dev.type == "cuda" else 0
    with llm.pruned(mask_fn_of()):
        sync(dev)
        extra = (torch.cuda.memory_allocated(dev) - mem0) / 2**20 if dev.type == "cuda" else None
        entries = llm.undo_pack.entries
        return {
            "sparsity": llm.sparsity,
            "prune_ms": prune_ms,
            "undo_ms": undo_ms,
            "view_layers": sum(e.is_view for e in entries) / max(len(entries), 1),
            "copied_mb": copied_mb(llm),
            "cuda_extra_mb": extra,
            "forward_ms": forward_ms(llm, ids, fwd_reps),
        }


def measure_copy_out(
    llm: PrunableLLM, masks: torch.Tensor, storage: torch.device, reps: int
) -> dict[str, float]:
    pruner, dev = CopyOutPruner(llm, storage), llm.get_input_embeddings().weight.device
    prune_ms, undo_ms = time_cycles(lambda: pruner.prune(masks), pruner.undo, dev, reps)
    return {"prune_ms": prune_ms, "undo_ms": undo_ms}


@torch.inference_mode()
def forward_ms(model: PrunableLLM, ids: torch.Tensor, reps: int) -> float:
    # warm-up: lazy init and allocator on CPU, kernel choice for new shapes on GPU
    model(input_ids=ids if ids.device.type == "cuda" else ids[:, :16], use_cache=False)
    return median_ms(lambda: model(input_ids=ids, use_cache=False), ids.device, reps)


def fraction_vector(rng: np.random.Generator, mean: float, n_layers: int) -> np.ndarray:
    return np.clip(rng.normal(mean, 0.1, n_layers), 0.0, 0.95)


def run(args: argparse.Namespace) -> list[dict]:
    dev = torch.device(args.device)
    model = build_model(args.arch, dev, arch_dtype(dev))
    n_layers, d_ff = model.config.num_hidden_layers, model.config.intermediate_size
    gen = torch.Generator().manual_seed(0)
    orderings = torch.stack([torch.randperm(d_ff, generator=gen) for _ in range(n_layers)])
    other = torch.stack([torch.randperm(d_ff, generator=gen) for _ in range(n_layers)])
    llm = PrunableLLM(model, orderings=orderings)  # top-k masks of `orderings` are views
    gc.collect()
    gc.freeze()  # else full collections over the model's start-up objects land in the timings
    ids = torch.randint(0, model.config.vocab_size, (1, args.seq_len), generator=gen).to(dev)
    dense_ms = forward_ms(llm, ids, args.forward_reps)
    storages = [torch.device("cpu")] + ([dev] if dev.type == "cuda" else [])
    rows, rng = [], np.random.default_rng(0)
    for mean in args.means:
        fracs = fraction_vector(rng, mean, n_layers)
        for align in args.aligns:
            row: dict = {"mean_fraction": mean, "align": align, "dense_forward_ms": dense_ms}
            kept = kept_counts(fracs, model.config.intermediate_size, align)
            gather = keep_masks(other, kept)  # not the model's order: the gather path
            for path, allocation in (
                ("view", lambda: kept),
                ("gather", lambda: gather.__getitem__),
            ):
                ours = measure_ours(llm, allocation, ids, args.reps, args.forward_reps)
                row |= {f"{path}_{k}": v for k, v in ours.items()}
            masks = keep_masks(orderings, kept)
            for storage in storages:
                copy = measure_copy_out(llm, masks, storage, args.copy_reps)
                row |= {f"copyout_{storage.type}_{k}": v for k, v in copy.items()}
            rows.append(row)
            print(f"done mean={mean} align={align}", file=sys.stderr, flush=True)
    return rows


def _pair(row: dict, key: str, fmt: str) -> str:
    view, gather = row[f"view_{key}"], row[f"gather_{key}"]
    return "n/a" if view is None else f"{view:{fmt}} / {gather:{fmt}}"


def markdown(rows: list[dict], storages: list[str]) -> str:
    cols = ["mean frac", "align", "sparsity", "prune ms view/gather", "undo ms view/gather"]
    cols += ["fwd ms dense", "fwd ms view/gather", "copied MB view/gather", "cuda extra MB"]
    for s in storages:
        cols += [f"copy-out({s}) prune/undo ms", f"copy-out({s}) / view (prune+undo)"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        ours = r["view_prune_ms"] + r["view_undo_ms"]
        cells = [f"{r['mean_fraction']:.2f}", str(r["align"]), f"{r['view_sparsity']:.3f}"]
        cells += [_pair(r, "prune_ms", ".3f"), _pair(r, "undo_ms", ".3f")]
        cells += [f"{r['dense_forward_ms']:.1f}", _pair(r, "forward_ms", ".1f")]
        cells += [_pair(r, "copied_mb", ".1f"), _pair(r, "cuda_extra_mb", ".1f")]
        for s in storages:
            prune, undo = r[f"copyout_{s}_prune_ms"], r[f"copyout_{s}_undo_ms"]
            cells += [f"{prune:.2f} / {undo:.2f}", f"{(prune + undo) / ours:.0f}x"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=sorted(ARCHS), default="llama-3.1-8b")
    parser.add_argument("--device", default="cuda" if cuda else "cpu")
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--means", type=float, nargs="+", default=[0.2, 0.3, 0.5])
    parser.add_argument("--aligns", type=int, nargs="+", default=[8, 1])
    parser.add_argument("--reps", type=int, default=50 if cuda else 10, help="cycles per row")
    parser.add_argument("--copy-reps", type=int, default=3, help="copy-out cycles per row")
    parser.add_argument("--forward-reps", type=int, default=5 if cuda else 1)
    parser.add_argument("--out", type=Path, default=None, help="write rows as JSON here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.manual_seed(0)
    rows = run(args)
    storages = ["cpu"] + (["cuda"] if torch.device(args.device).type == "cuda" else [])
    print(f"{args.arch} on {args.device}, seq_len {args.seq_len}, random weights")
    print(markdown(rows, storages))
    if args.out is not None:
        meta = {"arch": args.arch, "device": args.device, "seq_len": args.seq_len}
        args.out.write_text(json.dumps({**meta, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
