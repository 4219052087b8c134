"""Several GPUs: env steps/s with one worker process per GPU (1 vs N), and a model spread over
GPUs with device_map that still prunes on every layer.

Builds a random-weight project on disk (SmolLM2-135M's architecture by default; `--arch
llama-3.1-8b` builds the 8B on the GPU and saves it in bf16), then runs `main.py train` with
`train.devices=[0]` and `[0, 1, ...]` at each of `--seq-lens`, `--n-envs` episodes per GPU per
vector step (N GPUs run N x `--steps` env steps). The main process holds no model.
Run: python3 bench/bench_multi_gpu.py --arch llama-3.1-8b --seq-lens 512 2048 --n-envs 8
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, LlamaConfig

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "bench"), str(ROOT)]

import common as cm  # noqa: E402

from pruning.prunable_llm import PrunableLLM  # noqa: E402
from tests.fixtures import make_tiny_project  # noqa: E402

ARCH = {  # SmolLM2-135M
    "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
    "num_attention_heads": 9, "num_key_value_heads": 3, "vocab_size": 49152,
    "tie_word_embeddings": True, "max_position_embeddings": 2048,
}  # fmt: skip


def replace_model(root: Path, arch: str) -> None:
    """Swap the project's tiny LLM for a random `arch` model (built on the GPU, saved in bf16)
    and its importance file for random orderings of that shape."""
    model = cm.build_model(arch, torch.device("cuda"), torch.bfloat16)
    for key, value in (("bos_token_id", 1), ("eos_token_id", 2), ("pad_token_id", 3)):
        setattr(model.config, key, value)
    model.save_pretrained(root / "llm")
    n_layers, d_ff = model.config.num_hidden_layers, model.config.intermediate_size
    del model
    torch.cuda.empty_cache()
    data = json.loads((root / "importance.json").read_text())
    data.update(n_layers=n_layers, intermediate_size=d_ff)
    data["orderings"] = cm.random_orderings(n_layers, d_ff).tolist()
    (root / "importance.json").write_text(json.dumps(data))


def train_rate(config: Path, devices: list[int], steps: int, seq: int, n_envs: int) -> dict:
    """`steps` env steps with `n_envs` episodes per GPU per vector step, on 64 training items
    (their dense baselines are cached within the first steps, as in a long run)."""
    overrides = [f"train.devices={devices}", f"train.total_steps={steps}", "model.device=cuda"]
    overrides += [f"env.max_length={seq}", "model.dtype=bfloat16", "sac.learning_starts=64"]
    overrides += [f"train.n_envs={n_envs}", "data.max_samples=64"]
    cmd = [sys.executable, "main.py", "train", "--config", str(config)]
    for o in overrides:
        cmd += ["--set", o]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"train failed:\n{proc.stderr[-3000:]}")
    wall = time.perf_counter() - start
    run = sorted((config.parent / "runs").glob("train_*"))[-1]
    info = json.loads((run / "train.json").read_text())
    return {"gpus": len(devices), "n_envs": n_envs, "steps": info["steps"],
            "learn_s": info["seconds"], "steps_per_s": info["steps"] / info["seconds"],
            "wall_s": round(wall, 1)}  # fmt: skip


def spread_check(llm_dir: Path) -> dict:
    """device_map=auto with a memory cap per GPU: layers land on several GPUs; prune them all."""
    n = torch.cuda.device_count()
    cap = {i: "200MiB" for i in range(n - 1)} | {n - 1: "20GiB"}
    model = AutoModelForCausalLM.from_pretrained(
        llm_dir, dtype=torch.bfloat16, device_map="auto", max_memory=cap
    )
    llm = PrunableLLM(model)
    devices = sorted({str(d.mlp.gate_proj.weight.device) for d in model.model.layers})
    ids = torch.randint(0, 100, (1, 64), device=model.get_input_embeddings().weight.device)
    width = llm.intermediate_size
    with torch.inference_mode(), llm.pruned(lambda _layer: torch.arange(width) % 2 == 0):
        out = model(ids).logits
        pruned_widths = {d.mlp.gate_proj.weight.shape[0] for d in model.model.layers}
        sparsity = llm.sparsity
    return {"layer_devices": devices, "sparsity": sparsity, "pruned_widths": sorted(pruned_widths),
            "finite": bool(torch.isfinite(out).all()), "restored": not llm.is_pruned}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=1024)
    p.add_argument("--n-envs", type=int, default=8, help="episodes per GPU per vector step")
    p.add_argument("--seq-lens", type=int, nargs="+", default=[512])
    p.add_argument("--arch", default=None, help="bench.common.ARCHS name (default SmolLM2-135M)")
    p.add_argument("--skip-spread", action="store_true", help="skip the device_map check")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    n = torch.cuda.device_count()
    root = Path(tempfile.mkdtemp())
    cfg = LlamaConfig(**ARCH, bos_token_id=1, eos_token_id=2, pad_token_id=3)
    pages = 40 if args.arch is None else 120  # up to ~3k words: windows of 2048 tokens
    config = make_tiny_project(root, cfg, pages=pages, sac__batch_size=64)
    if args.arch:
        replace_model(root, args.arch)
    rows = [
        train_rate(config, list(range(k)), args.steps * k, seq, args.n_envs) | {"seq_len": seq}
        for seq in args.seq_lens
        for k in (1, n)
    ]
    spread = None if args.skip_spread else spread_check(root / "llm")
    result = {"gpu": torch.cuda.get_device_name(0), "n_gpus": n, "arch": args.arch or "smollm2",
              "train": rows, "device_map": spread}  # fmt: skip
    print(json.dumps(result, indent=1))
    print("\n| tokens | GPUs | env steps | learn s | steps/s |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['seq_len']} | {r['gpus']} | {r['steps']} | {r['learn_s']} | "
              f"{r['steps_per_s']:.1f} |")  # fmt: skip
    for one, many in zip(rows[::2], rows[1::2]):
        scale = many["steps_per_s"] / one["steps_per_s"]
        print(f"{one['seq_len']} tokens: scaling {scale:.2f}x on {n} GPUs")
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
