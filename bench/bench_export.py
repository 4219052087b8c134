"""Speed of an exported (physically narrowed) model vs the dense one: prefill and decode.

The narrowed models are what `main.py export` writes (`export.hf`: narrowed state dict ->
PrunedLlamaForCausalLM), built here in memory from a random-weight dense model (speed does not
depend on weight values). Uniform allocations: every layer keeps `kept_counts(s, width, align)`.

- prefill: tokens/s of one forward over [batch, prefill_tokens] (all logits, no cache)
- decode: tokens/s of `new_tokens` greedy steps after a short prompt, batch rows each, with a
  static KV cache; each step is one CUDA graph replay on GPU (captured once per model and batch,
  capture time reported apart), eager on CPU. Same settings for dense and pruned.
- ideal speedups: prefill = dense / pruned matmul FLOPs (`bench.common.forward_flops`);
  decode = dense / pruned weights read per step (all parameters but the embedding table).

    python bench/bench_export.py --out bench/results/export_h100_llama-3.1-8b.json   # GPU
    python bench/bench_export.py --tiny --out /tmp/export_tiny.json                   # CPU smoke
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.common import (  # noqa: E402
    arch_dtype,
    bare_forward,
    build_model,
    dict_table,
    event_ms,
    forward_flops,
    free_memory,
    guarded,
    resolve_device,
    run_meta,
    sync,
    weights_read_per_token,
    write_results,
)
from export.hf import (  # noqa: E402
    build_pruned_model,
    modeling_file_for,
    narrow_state_dict,
    pruned_config,
)
from pruning.allocation import kept_counts  # noqa: E402
from pruning.generation import GreedyDecoder  # noqa: E402

TINY = dict(
    arch="tiny", aligns=[8, 16], prefill_tokens=32, prefill_batches=[1, 2], decode_batches=[1, 2],
    new_tokens=4, prompt_tokens=8, reps=1,
)  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="llama-3.1-8b", help="bench.common.ARCHS name")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.3, 0.5])
    parser.add_argument("--aligns", type=int, nargs="+", default=[8, 128])
    parser.add_argument("--prefill-tokens", type=int, default=2048)
    parser.add_argument("--prefill-batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--decode-batches", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--prompt-tokens", type=int, default=128, help="prompt before decoding")
    parser.add_argument("--reps", type=int, default=3, help="timed repetitions (median)")
    parser.add_argument("--eager", action="store_true", help="decode without CUDA graphs")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes: a CPU smoke test")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    args = parser.parse_args(argv)
    if args.tiny:  # tiny defaults; options given explicitly still win
        parser.set_defaults(**TINY)
        args = parser.parse_args(argv)
    return args


# ---- ideal speedups ---------------------------------------------------------------------------


def prefill_flops(model: torch.nn.Module, tokens: int) -> float:
    kept = [layer.mlp.gate_proj.out_features for layer in model.model.layers]
    return forward_flops(model.config, tokens, 1, kept)


# ---- measurements -----------------------------------------------------------------------------


@torch.inference_mode()
def prefill_tok_s(model: Any, batch: int, tokens: int, reps: int, device: torch.device) -> float:
    gen = torch.Generator(device=device).manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (batch, tokens), device=device, generator=gen)
    ms = event_ms(lambda: bare_forward(model, ids), device, reps)
    return batch * tokens / ms * 1e3


def decode_tok_s(
    model: Any, batch: int, args: argparse.Namespace, device: torch.device
) -> dict[str, Any]:
    """Greedy decode speed after a random prompt (`pruning.generation.GreedyDecoder`, the
    `generate` command's decoder): each timed run rewinds to the end of the prompt."""
    decoder = GreedyDecoder(model, batch, args.prompt_tokens + args.new_tokens + 4)
    gen = torch.Generator(device=device).manual_seed(0)
    vocab = model.config.vocab_size
    decoder.prefill(
        torch.randint(0, vocab, (batch, args.prompt_tokens), device=device, generator=gen)
    )
    start = time.perf_counter()
    if not args.eager:
        decoder.capture(warmup=3)
        sync(device)
    capture_s = time.perf_counter() - start
    if decoder.capture_error:
        print(f"CUDA graph capture failed, decoding eagerly: {decoder.capture_error}")

    def run(d: GreedyDecoder = decoder) -> None:  # bound now: `del decoder` below
        d.rewind(args.prompt_tokens)
        d.steps(args.new_tokens)

    ms = event_ms(run, device, args.reps, warmup=1)
    result = {"tok_s": batch * args.new_tokens / ms * 1e3, "mode": decoder.mode}
    result |= {"capture_s": round(capture_s, 2), "capture_error": decoder.capture_error}
    del decoder, run
    free_memory(device)
    return result


def measure(
    name: str, model: Any, dense: dict[str, float] | None, args: argparse.Namespace, dev: Any
) -> dict[str, Any]:
    row: dict[str, Any] = {"name": name}
    row["mlp_widths"] = sorted({layer.mlp.gate_proj.out_features for layer in model.model.layers})
    row["weights_per_token"] = weights_read_per_token(model)
    row["prefill_flops"] = prefill_flops(model, args.prefill_tokens)
    base = dense or row
    row["ideal_prefill"] = base["prefill_flops"] / row["prefill_flops"]
    row["ideal_decode"] = base["weights_per_token"] / row["weights_per_token"]
    for b in args.prefill_batches:
        row[f"prefill_b{b}_tok_s"] = prefill_tok_s(model, b, args.prefill_tokens, args.reps, dev)
    for b in args.decode_batches:
        got = decode_tok_s(model, b, args, dev)
        row[f"decode_b{b}_tok_s"], row["decode_mode"] = got["tok_s"], got["mode"]
        row[f"decode_b{b}_capture_s"] = got["capture_s"]
        if got["capture_error"]:
            row[f"decode_b{b}_capture_error"] = got["capture_error"]
    if dense is not None:
        for key in [k for k in row if k.endswith("_tok_s")]:
            row[key.replace("_tok_s", "_speedup")] = row[key] / dense[key]
    print(json.dumps(row), flush=True)
    return row


def narrowed(dense: Any, sparsity: float, align: int, device: torch.device) -> tuple[Any, float]:
    """The exported model at uniform `sparsity` (built as `export` builds it), and seconds."""
    start = time.perf_counter()
    n_layers, width = dense.config.num_hidden_layers, dense.config.intermediate_size
    kept = kept_counts(np.full(n_layers, sparsity), width, align)
    state = narrow_state_dict(dense.state_dict(), kept)
    modeling = modeling_file_for(dense)
    config = pruned_config(dense.config.to_dict(), kept, {"bench": True}, modeling)
    model = build_pruned_model(config, state, modeling, dict(dense.named_buffers()))
    sync(device)
    return model, time.perf_counter() - start


def table(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    cols = [("model", "name", "s"), ("MLP widths", "mlp_widths", "")]
    for kind, batches, ideal in (
        ("prefill", args.prefill_batches, "ideal_prefill"),
        ("decode", args.decode_batches, "ideal_decode"),
    ):
        for b in batches:
            cols.append((f"{kind} b{b} tok/s", f"{kind}_b{b}_tok_s", ",.0f"))
            cols.append((f"{kind} b{b} speedup", f"{kind}_b{b}_speedup", ".2f"))
        cols.append((f"{kind} ideal", ideal, ".2f"))
    return dict_table(rows, cols)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    device = resolve_device(args.device)
    dtype = arch_dtype(device)
    dense_model = build_model(args.arch, device, dtype)
    build_s = time.perf_counter() - start
    print(f"{args.arch} on {device} ({dtype}), built in {build_s:.1f} s", flush=True)
    dense = measure("dense", dense_model, None, args, device)
    rows = [dense]
    for sparsity in args.sparsities:
        for align in args.aligns:
            name = f"sparsity {sparsity} align {align}"

            def one(sparsity: float = sparsity, align: int = align, name: str = name) -> dict:
                model, seconds = narrowed(dense_model, sparsity, align, device)
                row = measure(name, model, dense, args, device)
                return row | {"sparsity": sparsity, "align": align, "narrow_s": round(seconds, 2)}

            rows.append({"name": name} | guarded(name, one, device))
            free_memory(device)
    print(table(rows, args))
    total = time.perf_counter() - start
    print(f"total {total:.0f} s; decode mode {dense.get('decode_mode')}")
    if args.out:
        meta = run_meta(args, device, dtype)
        meta |= {"build_s": round(build_s, 1), "total_s": round(total, 1)}
        write_results(args.out, {"meta": meta, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
