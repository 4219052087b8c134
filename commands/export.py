"""`export`: write a pruned model as a standalone Hugging Face checkpoint (MLPs narrowed)."""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from commands.allocations import add_allocation_argument, agent_env, parse_allocation, policy_kept
from commands.build import Pruner, make_action_map, make_pruner
from commands.common import (
    decision_texts,
    observations,
    remove_stale_temporaries,
    seed_everything,
    staged_run_dir,
    training_items,
    warn,
    write_json,
)
from config import Config, ConfigError, resolve_path
from export.gguf import (
    OUTTYPES,
    check_outtype,
    check_supported,
    source_architecture,
    source_fields,
    write_gguf,
)
from export.hf import (
    ModelingFile,
    Size,
    build_pruned_model,
    modeling_file_for,
    narrow_state_dict,
    pruned_config,
    removed_mlp_parameters,
    size_of,
)
from models import LoadedModels, load_models, model_shape, peek_shape, resolve_source
from pruning.allocation import fractions_of, mean_profile, sparsity_of
from rl.checkpoints import check_agent, read_agent

HELP = (
    "Export a pruned model (each layer's MLP physically narrowed) as a Hugging Face folder that "
    "AutoModelForCausalLM loads with trust_remote_code=True: ALLOCATION as `score` takes it, or "
    "--agent PATH --target T (the budget policy's mean profile at sparsity T). --format gguf "
    "writes one GGUF file that llama.cpp, Ollama and LM Studio run (LLaMA-family models)."
)
FORMATS = ("hf", "gguf")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_allocation_argument(parser, None)  # or --agent
    parser.add_argument("--agent", default=None, help="budget agent .zip (needs --target)")
    parser.add_argument("--target", type=float, default=None, help="MLP sparsity for --agent")
    parser.add_argument(
        "--output", default=None, help="model folder (default: runs/export_<time>/model)"
    )
    parser.add_argument("--force", action="store_true", help="replace an existing --output")
    parser.add_argument(
        "--max-shard-size", default="5GB", help="largest safetensors file (%(default)s)"
    )
    parser.add_argument("--format", default="hf", help=f"{' or '.join(FORMATS)} (%(default)s)")
    parser.add_argument(
        "--outtype", default=None, help=f"GGUF weight type: {', '.join(OUTTYPES)} (default: f16)"
    )


# ---- which allocation ------------------------------------------------------------------------


def check_arguments(args: argparse.Namespace) -> None:
    if (args.allocation is None) == (args.agent is None):
        raise ConfigError("give an ALLOCATION or --agent PATH --target T (one of the two)")
    if (args.agent is None) != (args.target is None):
        raise ConfigError("--agent and --target go together: --agent PATH --target T")
    if args.format not in FORMATS:
        raise ConfigError(f"unknown --format {args.format!r}; use {' or '.join(FORMATS)}")
    if args.outtype is not None:
        if args.format != "gguf":
            raise ConfigError("--outtype is for --format gguf")
        try:
            check_outtype(args.outtype)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None


def gguf_source(cfg: Config) -> Path:
    """The source GGUF file whose tokenizer and chat template the export carries over, checked
    before the model loads: a supported architecture, and a GGUF file (not a folder)."""
    m = cfg.model
    source = resolve_source(m.llm, m.cache_dir, m.llm_sha256, m.llm_bytes)  # parts: joined once
    if source.gguf_file is None:
        config = Path(source.location) / "config.json"
        if config.is_file():
            check_supported(json.loads(config.read_text()).get("model_type", "?"))
        raise ConfigError(
            f"--format gguf carries the tokenizer over from a GGUF source, and {cfg.model.llm} "
            "is a Hugging Face model: convert it once with llama.cpp's convert_hf_to_gguf.py "
            "(--outtype f32) and set model.llm to that file"
        )
    path = Path(source.location) / source.gguf_file
    check_supported(source_architecture(path))
    return path


def output_folder(args: argparse.Namespace) -> Path | None:
    """--output, checked before any work: an existing folder is replaced only with --force."""
    if args.output is None:
        return None
    path = resolve_path(args.output)
    if path.exists() and not (args.force and path.is_dir()):
        fix = "pass --force to replace it" if path.is_dir() else "it is not a folder"
        raise ConfigError(f"--output {path} already exists; {fix}")
    return path


def agent_kept(
    cfg: Config, models: LoadedModels, agent_path: Path, target: float, agent: Any
) -> tuple[np.ndarray, dict[str, Any]]:
    """Kept counts of the policy's mean profile at `target` over the training items; `agent`
    as `read_agent` gives it."""
    env, warning = agent_env(agent_path, cfg.env)
    warnings: list[str] = []
    if warning:
        warn(warning, warnings)
    trained = env.targets
    if trained is None:
        raise ConfigError(
            f"agent {agent_path} is a trade-off agent (no env.target_sparsity): it cannot take "
            "--target; export its profile with `score`-style fractions instead"
        )
    if not trained[0] - 1e-9 <= target <= trained[1] + 1e-9:
        raise ConfigError(
            f"--target {target} is outside the range agent {agent_path} was trained for "
            f"[{trained[0]}, {trained[1]}]"
        )
    n_layers, width = model_shape(models.llm)
    items = training_items(cfg, models.tokenizer)
    emb = observations(models, cfg.data, decision_texts(items))  # [n_items, dim]
    check_agent(agent, agent_path, emb.shape[1] + 1, n_layers)
    action_map = make_action_map(env, n_layers, width)
    kept = mean_profile(policy_kept(agent, emb, target, action_map), target, width, env.align)
    record = {"agent": str(agent_path), "target": target, "num_items": len(items)}
    record["warnings"] = warnings
    return kept, record


def allocation_kept(
    cfg: Config, models: LoadedModels, args: argparse.Namespace, agent: Any = None
) -> tuple[np.ndarray, dict[str, Any]]:
    if args.agent is not None:
        return agent_kept(cfg, models, resolve_path(args.agent), args.target, agent)
    n_layers, width = model_shape(models.llm)
    kept = parse_allocation(args.allocation, (n_layers, width, cfg.env.align))
    return kept, {"spec": args.allocation, "fractions": fractions_of(kept, width).tolist()}


# ---- writing ---------------------------------------------------------------------------------


def importance_file(pruner: Pruner) -> str:
    """The orderings file the neurons were sorted by (the one place that reads the pruner's)."""
    return str(pruner.orderings_file)


def write_atomically(dest: Path, write: Callable[[Path], None]) -> None:
    """write(tmp) into a temporary sibling folder, then rename it to `dest` (replacing an old one
    only once the new one is complete); an interrupted export leaves no half-written `dest`."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(dest.parent, f".{dest.name}.tmp-*")  # left by a killed export
    remove_stale_temporaries(dest.parent, f".{dest.name}.old-*")
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        write(tmp)
        if dest.exists():
            os.replace(dest, old)
        os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def save_model(
    model: Any, tokenizer: Any, modeling: ModelingFile, folder: Path, max_shard_size: str
) -> None:
    model.save_pretrained(folder, max_shard_size=max_shard_size)  # config, weights, generation
    (folder / modeling.name).write_text(modeling.text)
    tokenizer.save_pretrained(folder)


def save_gguf(
    folder: Path,
    final: Path,
    source: Path,
    state: dict[str, Any],
    config: dict[str, Any],
    kept: np.ndarray,
    outtype: str,
) -> dict[str, Any]:
    """`folder`/<source name>-pruned-<outtype>.gguf, written atomically; what was written (its
    path as it will be once the run is in place: under `final`)."""
    name = f"{source.stem.split('.')[0]}-pruned-{outtype}.gguf"
    out: dict[str, Any] = {}

    def write(tmp: Path) -> None:
        tmp.mkdir(parents=True)
        written = write_gguf(
            tmp / name, state, config, kept.tolist(), outtype, source_fields(source)
        )
        out.update(
            gguf_file=str(final / name),
            gguf_arch=written.arch,
            gguf_widths=written.widths,  # kept, padded to whole quantization blocks
            outtype=outtype,
            gguf_bytes=written.bytes,
            tensor_types=dict(Counter(written.tensor_types.values())),
            fallbacks=written.fallbacks,  # tensors kept in f16: rows not whole q8_0 blocks
        )

    write_atomically(folder, write)
    padded = int(np.sum(out["gguf_widths"]) - np.sum(kept))
    if padded:
        print(f"{padded} zero neurons added in all so that MLP widths are whole {outtype} blocks")
    if out["fallbacks"]:
        print(
            f"{len(out['fallbacks'])} tensors written as F16 (rows not whole blocks): "
            f"{', '.join(out['fallbacks'][:4])}{' ...' if len(out['fallbacks']) > 4 else ''}"
        )
    return out


def size_record(size: Size) -> dict[str, int]:
    return {"parameters": size.parameters, "bytes": size.bytes}


def print_sizes(before: Size, after: Size, mlp_before: int) -> None:
    removed = before.parameters - after.parameters
    print(f"{'':10s} {'parameters':>15s} {'bytes':>17s}")
    print(f"{'source':10s} {before.parameters:>15,d} {before.bytes:>17,d}")
    print(f"{'exported':10s} {after.parameters:>15,d} {after.bytes:>17,d}")
    print(
        f"removed: {removed:,d} parameters ({removed / before.parameters:.1%} of the model, "
        f"{removed / mlp_before:.1%} of the MLP parameters)"
    )


def run(cfg: Config, args: argparse.Namespace) -> int:
    start = time.perf_counter()
    seed_everything(cfg.seed)
    check_arguments(args)
    output = output_folder(args)
    source_gguf = gguf_source(cfg) if args.format == "gguf" else None
    agent = None  # the allocation or the agent is checked before the load
    if args.allocation is not None:
        parse_allocation(args.allocation, (*peek_shape(cfg.model.llm), cfg.env.align))
    else:
        agent = read_agent(resolve_path(args.agent))
    models = load_models(cfg.model)
    n_layers, width = model_shape(models.llm)
    hidden = models.llm.config.hidden_size
    kept, allocation = allocation_kept(cfg, models, args, agent)  # before anything is written
    pruner = make_pruner(cfg, models)  # sorts every layer's neurons by importance, in place
    before = size_of(models.llm.state_dict())
    state = narrow_state_dict(pruner.llm.wrapped.state_dict(), kept)  # kept = sorted prefix
    after = size_of(state)
    mlp_removed = removed_mlp_parameters(hidden, width, kept)
    assert before.parameters - after.parameters == mlp_removed, "only MLP neurons are removed"
    sparsity = float(sparsity_of(kept, width))
    provenance = {
        "source_model": cfg.model.llm,
        "allocation": allocation,
        "kept": kept.tolist(),
        "mlp_sparsity": sparsity,
        "align": cfg.env.align,
        "importance_file": importance_file(pruner),
    }
    if source_gguf is None:
        modeling = modeling_file_for(models.llm)
        config = pruned_config(models.llm.config.to_dict(), kept, provenance, modeling)
        config["dtype"] = str(models.dtype).removeprefix("torch.")
        model = build_pruned_model(config, state, modeling, dict(models.llm.named_buffers()))
        model.generation_config = copy.deepcopy(models.llm.generation_config)

    mlp_before = 3 * hidden * width * n_layers
    with staged_run_dir(cfg, "export") as (stage, run_dir):  # a killed export leaves no run
        written, dest = (output, output) if output else (stage / "model", run_dir / "model")
        if source_gguf is None:
            write_atomically(
                written,
                lambda tmp: save_model(model, models.tokenizer, modeling, tmp, args.max_shard_size),
            )
            record = {"dtype": config["dtype"]}
        else:
            config = models.llm.config.to_dict()
            outtype = args.outtype or "f16"
            record = save_gguf(written, dest, source_gguf, state, config, kept, outtype)
        result = {
            "model_dir": str(dest),
            "format": args.format,
            **provenance,
            **record,
            "before": size_record(before),
            "after": size_record(after),
            "removed": size_record(
                Size(before.parameters - after.parameters, before.bytes - after.bytes)
            ),
            "mlp_parameters_before": mlp_before,
            "files": sorted(p.name for p in written.iterdir()),
            "seconds": round(time.perf_counter() - start, 2),
        }
        write_json(stage / "export.json", result)
    print_sizes(before, after, mlp_before)
    print(f"wrote {dest}")
    print(json.dumps({"run": str(run_dir), "model_dir": str(dest), "mlp_sparsity": sparsity}))
    return 0
