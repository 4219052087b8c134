"""Decode speed of the `generate` command's path (context neurons) vs dense, beside the ideal.

Each measured call is `pruning.generation.generate_narrowed`, what `main.py generate` runs per
prompt: a dense prefill of the prompt collects statistics, each layer keeps its top kept[l]
neurons for this prompt (uniform allocation: `kept_counts(s, width, align)`), the narrowed
weights are gathered once (`PrunableLLM.prune(mask_fn)`), then greedy decoding of batch 1 on a
static KV cache, each step one CUDA graph replay on GPU (eager on CPU). Dense: the same call
with no allocation. Random-weight model of the architecture (speed does not depend on values);
no EOS stop, so every call decodes exactly --new-tokens.

- decode tok/s: the steady decode rate (the replayed steps; the prompt pass, the warm-up steps
  and the capture are reported apart)
- ideal: dense / narrowed weights read per decode step (`bench.common.weights_read_per_token`)
- "+ select": selection (statistics + top-k) and gather amortized over --new-tokens:
  new_tokens / (select + gather + new_tokens / decode tok/s), vs the dense decode
- end to end: tokens / the whole call (selection, gather, prompt pass, capture, decode)
- --compile: decode steps through torch.compile, captured in the graph as before; the first
  call of each arm compiles (its "compile" phase is reported as compile s, apart from the
  timed calls), and one uncompiled call per arm checks the tokens (same_tokens_as_uncompiled)

    python bench/bench_generate.py --out $OUT/generate.json             # GPU: 8B shape, ~1 min
    python bench/bench_generate.py --compile --out $OUT/generate_compiled.json
    OMP_NUM_THREADS=1 python bench/bench_generate.py --tiny             # CPU smoke test, seconds
"""

from __future__ import annotations

import argparse
import json
import statistics
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
    build_model,
    dict_table,
    free_memory,
    guarded,
    resolve_device,
    run_meta,
    weights_read_per_token,
    write_results,
)
from pruning.allocation import dense_kept, kept_counts  # noqa: E402
from pruning.generation import (  # noqa: E402
    COMPILE_MODES,
    PHASES,
    Generation,
    generate_narrowed,
)
from pruning.prunable_llm import PrunableLLM  # noqa: E402

TINY = dict(arch="tiny", prompt_tokens=16, new_tokens=12, reps=1, warmup=0)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="llama-3.1-8b", help="bench.common.ARCHS name")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.3, 0.5])
    parser.add_argument("--align", type=int, default=8, help="kept counts a multiple of this")
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--neurons", choices=("context", "global"), default="context")
    parser.add_argument("--criterion", choices=("mean_abs_activation", "wanda"),
                        default="mean_abs_activation")  # fmt: skip
    parser.add_argument("--reps", type=int, default=3, help="timed calls per arm (median)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls per arm first")
    parser.add_argument("--eager", action="store_true", help="decode without CUDA graphs")
    parser.add_argument("--compile", nargs="?", const="default", default=None,
                        choices=COMPILE_MODES, metavar="MODE",
                        help=f"decode via torch.compile, MODE one of {COMPILE_MODES}")  # fmt: skip
    parser.add_argument("--tiny", action="store_true", help="tiny shapes: a CPU smoke test")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    args = parser.parse_args(argv)
    if args.tiny:  # tiny defaults; options given explicitly still win
        parser.set_defaults(**TINY)
        args = parser.parse_args(argv)
    return args


def one_call(
    llm: PrunableLLM, prompt: list[int], kept: Any, args: argparse.Namespace, compiled: bool = True
) -> Generation:
    return generate_narrowed(
        llm, prompt, kept, args.new_tokens, args.neurons, args.criterion,
        stop_at_eos=False, graph=not args.eager, compile_mode=args.compile if compiled else None,
    )  # fmt: skip


def same_prefix(a: list[int], b: list[int]) -> int:
    """How many tokens two greedy continuations share before they first differ."""
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def summarize(runs: list[Generation], new_tokens: int) -> dict[str, Any]:
    """Medians over calls: ms per phase, steady decode tok/s, end-to-end tok/s."""
    if any(len(r.tokens) != new_tokens for r in runs):
        raise RuntimeError(f"a call decoded {[len(r.tokens) for r in runs]}, not {new_tokens}")
    row: dict[str, Any] = {f"{k}_ms": statistics.median(r.phases[k] for r in runs) * 1e3
                           for k in PHASES}  # fmt: skip
    row["select_ms"] = row["statistics_ms"] + row["top_k_ms"]
    row["decode_tok_s"] = statistics.median(r.steady_tokens_per_second for r in runs)
    whole = [new_tokens / (r.prefill_seconds + r.decode_seconds) for r in runs]
    row["end_to_end_tok_s"] = statistics.median(whole)
    row["decode_mode"], row["replayed_tokens"] = runs[0].decode_mode, runs[0].replayed_tokens
    return row


def measure_arm(
    llm: PrunableLLM, prompt: list[int], kept: np.ndarray, args: argparse.Namespace
) -> dict[str, Any]:
    calls = [one_call(llm, prompt, kept, args) for _ in range(args.warmup + args.reps)]
    row = summarize(calls[args.warmup :], args.new_tokens)
    row["compile_s"] = calls[0].phases["compile"]  # the first call of this shape compiles
    if args.compile:  # bf16: fused kernels round differently; greedy tokens may part late
        plain = one_call(llm, prompt, kept, args, compiled=False).tokens
        row["same_tokens_as_uncompiled"] = same_prefix(calls[-1].tokens, plain)
    if (kept < llm.intermediate_size).any():
        with llm.pruned(kept):  # prefix views: only the shapes matter here
            row["weights_per_token"] = weights_read_per_token(llm.wrapped)
        row["kept_per_layer"] = sorted(set(kept.tolist()))
    else:
        row["weights_per_token"] = weights_read_per_token(llm.wrapped)
    free_memory(llm.get_input_embeddings().weight.device)
    return row


def compare(row: dict[str, Any], dense: dict[str, Any], new_tokens: int) -> dict[str, Any]:
    """Speedups over the dense decode, the ideal, and the fractions of the ideal achieved."""
    ideal = dense["weights_per_token"] / row["weights_per_token"]
    speedup = row["decode_tok_s"] / dense["decode_tok_s"]
    overhead_s = (row["select_ms"] + row["gather_ms"]) / 1e3
    with_select = new_tokens / (overhead_s + new_tokens / row["decode_tok_s"])
    speedup_select = with_select / dense["decode_tok_s"]
    end_to_end = row["end_to_end_tok_s"] / dense["end_to_end_tok_s"]
    return row | {
        "ideal": ideal, "speedup": speedup, "fraction_of_ideal": speedup / ideal,
        "tok_s_with_select": with_select, "speedup_with_select": speedup_select,
        "fraction_of_ideal_with_select": speedup_select / ideal,
        "speedup_end_to_end": end_to_end, "fraction_of_ideal_end_to_end": end_to_end / ideal,
    }  # fmt: skip


def fit_step_time(rows: list[dict[str, Any]], bytes_per_param: int) -> dict[str, float] | None:
    """Least squares of the decode step time over the weight bytes it reads, over the arms:
    step ms = fixed_ms + bytes / bandwidth. fixed_ms is what does not shrink with the MLP
    (per-kernel costs of the norms, RoPE, attention, sampling); the ideal assumes it is zero."""
    ok = [r for r in rows if "error" not in r]
    if len(ok) < 2:
        return None
    gb = np.array([r["weights_per_token"] * bytes_per_param / 1e9 for r in ok])
    ms = np.array([1e3 / r["decode_tok_s"] for r in ok])
    slope, fixed = np.polyfit(gb, ms, 1)
    return {"fixed_ms": float(fixed), "gb_per_s": float(1e3 / slope) if slope > 0 else None,
            "dense_step_ms": float(ms[0]), "dense_weight_gb": float(gb[0])}  # fmt: skip


COLS = [
    ("arm", "name", ""), ("select ms", "select_ms", ".1f"), ("stats ms", "statistics_ms", ".1f"),
    ("top-k ms", "top_k_ms", ".1f"), ("gather ms", "gather_ms", ".1f"),
    ("prompt ms", "prompt_ms", ".1f"), ("compile s", "compile_s", ".1f"),
    ("capture ms", "capture_ms", ".1f"),
    ("decode tok/s", "decode_tok_s", ",.1f"), ("speedup", "speedup", ".3f"),
    ("ideal", "ideal", ".3f"), ("of ideal", "fraction_of_ideal", ".1%"),
    ("+ select: speedup", "speedup_with_select", ".3f"),
    ("+ select: of ideal", "fraction_of_ideal_with_select", ".1%"),
    ("end to end tok/s", "end_to_end_tok_s", ",.1f"),
    ("end to end speedup", "speedup_end_to_end", ".3f"),
]  # fmt: skip


def run(args: argparse.Namespace, device: torch.device) -> tuple[list[dict], float]:
    start = time.perf_counter()
    llm = PrunableLLM(build_model(args.arch, device, arch_dtype(device)))
    build_s = time.perf_counter() - start
    print(f"{args.arch} on {device}, built in {build_s:.1f} s", flush=True)
    gen = torch.Generator().manual_seed(0)
    prompt = torch.randint(llm.config.vocab_size, (args.prompt_tokens,), generator=gen).tolist()
    full = dense_kept(llm.n_layers, llm.intermediate_size)
    dense = {"name": "dense"} | measure_arm(llm, prompt, full, args)
    rows = [compare(dense, dense, args.new_tokens)]
    for sparsity in args.sparsities:
        kept = kept_counts(np.full(llm.n_layers, sparsity), llm.intermediate_size, args.align)
        name = f"{args.neurons} {sparsity}"
        got = guarded(name, lambda kept=kept: measure_arm(llm, prompt, kept, args), device)
        row = {"name": name, "sparsity": sparsity} | got
        rows.append(row if "error" in row else compare(row, dense, args.new_tokens))
        print(json.dumps(rows[-1]), flush=True)
    return rows, build_s


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    device = resolve_device(args.device)
    rows, build_s = run(args, device)
    print(dict_table(rows, COLS))
    fit = fit_step_time(rows, arch_dtype(device).itemsize)
    if fit is not None:
        print(f"decode step fit over the arms: {fit['fixed_ms']:.2f} ms fixed + weight bytes at "
              f"{fit['gb_per_s'] or float('nan'):,.0f} GB/s (dense step {fit['dense_step_ms']:.2f} "
              f"ms, {fit['dense_weight_gb']:.2f} GB of weights)")  # fmt: skip
    total = time.perf_counter() - start
    print(f"total {total:.0f} s; decode mode {rows[0]['decode_mode']}, compile {args.compile}")
    if args.out:
        meta = run_meta(args, device, arch_dtype(device))
        meta |= {"phases": PHASES, "step_time_fit": fit}
        meta |= {"build_s": round(build_s, 1), "total_s": round(total, 1)}
        write_results(args.out, {"meta": meta, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
