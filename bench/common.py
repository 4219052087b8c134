"""Shared helpers of the bench scripts: random-weight models by arch name, timing, matmul rate.

Timings synchronize the device around the timed call (for CUDA), so they include the launch and
sync costs a caller really pays; `event_ms` uses CUDA events for pure kernel time.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import LlamaConfig, LlamaForCausalLM

ARCHS: dict[str, dict[str, Any]] = {
    "llama-3.1-8b": dict(
        hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8, vocab_size=128256, rope_theta=500000.0,
        max_position_embeddings=131072, tie_word_embeddings=False,
    ),
    "smollm2-135m": dict(
        hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
        num_key_value_heads=3, vocab_size=49152, rope_theta=100000.0,
        max_position_embeddings=8192, tie_word_embeddings=True,
    ),
    "tiny": dict(  # for tests of the bench scripts themselves
        hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=256, rope_theta=10000.0,
        max_position_embeddings=4096, tie_word_embeddings=False,
    ),
}  # fmt: skip
# 4 layers of the 8B: per-layer costs at the 8B's widths where compiling all 32 takes minutes
ARCHS["llama-3.1-8b-4l"] = ARCHS["llama-3.1-8b"] | dict(num_hidden_layers=4)


def resolve_device(name: str) -> torch.device:
    """`auto` = CUDA if present, else CPU; any other name as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def run_meta(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> dict:
    """What a result file records about its run: shape, device, dtype, versions, arguments."""
    return {
        "arch": args.arch,
        "device": device_name(device),
        "dtype": str(dtype),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
    }


def write_results(path: Path, data: dict) -> None:
    """Results as indented JSON at `path` (its folder created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


def arch_dtype(device: torch.device) -> torch.dtype:
    """bf16 on GPU (as deployed); float32 on CPU, where bf16 matmuls are emulated and slow."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def build_model(arch: str, device: torch.device, dtype: torch.dtype) -> LlamaForCausalLM:
    """Random-weight LLaMA built directly on `device` (sdpa attention), in eval mode."""
    cfg = LlamaConfig(**ARCHS[arch], attn_implementation="sdpa")
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # init in the target dtype: an fp32 8B copy would be 32 GB
    try:
        with torch.device(device):
            model = LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(previous)
    return model.to(dtype).eval()


def random_orderings(n_layers: int, d_ff: int, seed: int = 0) -> torch.Tensor:
    """[n_layers, d_ff] one random neuron permutation per layer (stands in for importance)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(d_ff, generator=gen) for _ in range(n_layers)])


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[Any, float]:
    """(fn(), wall ms) with the device synchronized before and after."""
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return out, (time.perf_counter() - start) * 1e3


def median_ms(fn: Callable[[], Any], device: torch.device, reps: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        timed(fn, device)
    return statistics.median(timed(fn, device)[1] for _ in range(reps))


def event_ms(fn: Callable[[], Any], device: torch.device, reps: int, warmup: int = 2) -> float:
    """Median kernel time of `fn` in ms: CUDA events on GPU, synchronized wall time elsewhere."""
    if device.type != "cuda":
        return median_ms(fn, device, reps, warmup)
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


@dataclass(frozen=True)
class MatmulRate:
    size: int
    dtype: str
    ms: float
    tflops: float


def matmul_rate(device: torch.device, dtype: torch.dtype, size: int, reps: int) -> MatmulRate:
    """Achieved TFLOP/s of one [size, size] @ [size, size] matmul (2 * size^3 FLOPs)."""
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(size, size, device=device, dtype=dtype, generator=gen)
    b = torch.randn(size, size, device=device, dtype=dtype, generator=gen)
    out = torch.empty(size, size, device=device, dtype=dtype)
    ms = event_ms(lambda: torch.matmul(a, b, out=out), device, reps)
    return MatmulRate(size, str(dtype).removeprefix("torch."), ms, 2 * size**3 / ms / 1e9)


FLOPS_FORMULA = (
    "2 * tokens * (L * attention projection params + 3 * hidden * kept MLP neurons"
    " + vocab * hidden) + L * rows * 4 * seq^2 * (heads * head_dim) / 2"
)


def forward_flops(config: Any, tokens_per_row: int, rows: int, kept: list[int]) -> float:
    """Matmul FLOPs of one causal forward with `kept[l]` MLP neurons in layer l.

    2 * tokens * (attention projections + kept MLP weights + lm head) + causal attention scores
    and values: 4 * seq^2 * (heads * head_dim) / 2 per layer and row. Norms, RoPE, softmax and
    the embedding lookup are not matmuls and are left out.
    """
    hidden = config.hidden_size
    head_dim = getattr(config, "head_dim", None) or hidden // config.num_attention_heads
    q_width, kv_width = config.num_attention_heads * head_dim, config.num_key_value_heads * head_dim
    attn_params = hidden * (q_width + 2 * kv_width) + q_width * hidden  # q, k, v, o
    params = config.num_hidden_layers * attn_params + 3 * hidden * sum(kept)
    params += config.vocab_size * hidden  # lm head (tied or not, it is a matmul)
    tokens = tokens_per_row * rows
    attention = 4 * config.num_hidden_layers * tokens_per_row**2 * q_width / 2 * rows
    return 2.0 * tokens * params + attention


def weights_read_per_token(model: torch.nn.Module) -> int:
    """Parameters a decode step reads: all but the embedding table (a lookup reads one row);
    with tied embeddings the table is the LM head and is read in full. The ideal decode speedup
    of a narrowed model is the dense count over its count (decode is bound by weight reads)."""
    embed = model.get_input_embeddings().weight
    seen = {id(p): p for p in model.parameters()}
    tied = model.get_output_embeddings().weight is embed
    return sum(p.numel() for p in seen.values() if tied or p is not embed)


def gpu_memory_gb(device: torch.device) -> float | None:
    """Peak allocated memory since the last `reset_peak(device)`, in GiB (None off CUDA)."""
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**30


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def is_oom(err: BaseException) -> bool:
    """CUDA (or CPU allocator) out-of-memory, as raised by torch."""
    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower()


def guarded(
    name: str,
    fn: Callable[[], Any],
    device: torch.device,
    cleanup: Callable[[], Any] | None = None,
) -> Any:
    """fn(), or {"error": ...} on any failure (OOM included): one config cannot sink a run."""
    try:
        return fn()
    except Exception as err:  # reported in the results instead
        kind = "OOM" if is_oom(err) else type(err).__name__
        error = f"{name}: {kind}: {(str(err).splitlines() or [''])[0][:300]}"
        print(error, file=sys.stderr, flush=True)
        if kind != "OOM":
            traceback.print_exc()
    # after the except block, so the error's frames (and the tensors they hold) are gone
    if cleanup is not None:
        cleanup()
    free_memory(device)
    return {"error": error}


@torch.inference_mode()
def bare_forward(model: Callable[..., Any], ids: torch.Tensor) -> torch.Tensor:
    """Logits only: the floor a scoring forward of the same tokens can reach. [B, T, V]"""
    return model(ids).logits


Column = tuple[str, str, str]  # (header, key of the row dict, format spec)


def _cell(value: Any, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def dict_table(rows: list[dict[str, Any]], cols: list[Column]) -> str:
    """Markdown table of dict rows; a row holding "error" shows it instead of its numbers."""
    lines = ["| " + " | ".join(c[0] for c in cols) + " |", "|" + "---|" * len(cols)]
    for row in rows:
        cells = [row["error"]] + [""] * (len(cols) - 1) if "error" in row else None
        cells = cells or [_cell(row.get(key), spec) for _, key, spec in cols]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
