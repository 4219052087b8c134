"""A pruned model as a standalone checkpoint: narrowed MLP weights and the config that loads them.

Pure functions (state dict + config dict in, state dict + config dict out) and one adapter,
`build_pruned_model`, that puts them into the exported class (a subclass of the source model's
own class: LLaMA, Qwen2, Mistral, Gemma-3, ...) without allocating the dense model. Layer l keeps
its `kept[l]` most important neurons, in importance order: the first `kept[l]` rows of gate/up
and columns of down once neurons are sorted (what `PrunableLLM` does), so the exported model
computes exactly what the pruned `PrunableLLM` computes.
"""

from __future__ import annotations

import re
import sys
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pruning.allocation import check_kept

TEMPLATE = Path(__file__).with_name("modeling_pruned.py")
# loaded from a GGUF, the source config names the quantized file: the export holds plain weights
_DROPPED_KEYS = (
    "model_type", "architectures", "auto_map", "transformers_version", "quantization_config",
)  # fmt: skip
_SOURCE_IMPORTS = (
    ("from transformers import LlamaConfig as SourceConfig", "SourceConfig"),
    ("from transformers import LlamaForCausalLM as SourceForCausalLM", "SourceForCausalLM"),
)


@dataclass(frozen=True)
class ModelingFile:
    """The modeling file of an export: the template with the source classes filled in."""

    source_type: str  # config.model_type of the source, e.g. "qwen2", "gemma3_text"
    name: str  # file name, e.g. "modeling_pruned_qwen2.py"
    text: str

    @property
    def model_type(self) -> str:
        return f"pruned_{self.source_type}"

    @property
    def auto_map(self) -> dict[str, str]:
        module = self.name.removesuffix(".py")
        return {
            "AutoConfig": f"{module}.PrunedConfig",
            "AutoModelForCausalLM": f"{module}.PrunedForCausalLM",
        }


def modeling_file(config_class: str, model_class: str, source_type: str) -> ModelingFile:
    """Fill the template with the source's transformers classes (importable from `transformers`,
    e.g. `Qwen2Config`, `Qwen2ForCausalLM`); ValueError for classes transformers does not export."""
    import transformers

    for name in (config_class, model_class):
        if not hasattr(transformers, name):
            raise ValueError(f"cannot export a {name}: transformers has no class of that name")
    text = TEMPLATE.read_text()
    for (line, alias), cls in zip(_SOURCE_IMPORTS, (config_class, model_class)):
        assert text.count(line) == 1, f"template line {line!r} moved"
        text = text.replace(line, f"from transformers import {cls} as {alias}")
    type_line = 'MODEL_TYPE = "pruned_llama"'
    assert text.count(type_line) == 1, "template MODEL_TYPE moved"
    text = text.replace(type_line, f'MODEL_TYPE = "pruned_{source_type}"')
    slug = re.sub(r"[^a-z0-9_]+", "_", source_type.lower())
    return ModelingFile(source_type, f"modeling_pruned_{slug}.py", text)


def modeling_file_for(model: torch.nn.Module) -> ModelingFile:
    """The modeling file that rebuilds `model`'s architecture with per-layer MLP widths."""
    config = model.config
    return modeling_file(type(config).__name__, type(model).__name__, config.model_type)


def load_modeling(modeling: ModelingFile) -> types.ModuleType:
    """Import the filled-in modeling file (from its text) as a module of its own."""
    name = f"_pruned_modeling_{modeling.source_type}_{abs(hash(modeling.text)):x}"
    if name not in sys.modules:
        module = types.ModuleType(name)
        sys.modules[name] = module  # before exec: dataclass machinery looks the module up
        exec(compile(modeling.text, modeling.name, "exec"), module.__dict__)
    return sys.modules[name]


def mlp_keys(layer: int) -> tuple[str, str, str]:
    prefix = f"model.layers.{layer}.mlp"
    return f"{prefix}.gate_proj.weight", f"{prefix}.up_proj.weight", f"{prefix}.down_proj.weight"


def narrow_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    kept: Sequence[int] | np.ndarray,
    orderings: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Copy of `state_dict` whose layer l MLP keeps neurons `orderings[l][:kept[l]]`.

    `orderings` [n_layers, d_ff] holds the original neuron index at each importance rank; None
    means the weights are already sorted by importance (a `PrunableLLM` after `reorder`), so the
    kept neurons are a prefix. Narrowed tensors are fresh contiguous copies (in importance
    order); all other tensors are the caller's, shared (tied weights stay tied).
    """
    out = dict(state_dict)
    width = state_dict[mlp_keys(0)[0]].shape[0]
    kept = check_kept(np.asarray(kept), len(kept), width)
    for layer, k in enumerate(kept.tolist()):
        gate_key, up_key, down_key = mlp_keys(layer)
        gate, up, down = (
            out[gate_key],
            out[up_key],
            out[down_key],
        )  # [d_ff, h], [d_ff, h], [h, d_ff]
        if orderings is None:
            idx = torch.arange(k, device=gate.device)
        else:
            idx = orderings[layer, :k].to(device=gate.device, dtype=torch.long)
        out[gate_key] = gate.index_select(0, idx)
        out[up_key] = up.index_select(0, idx)
        out[down_key] = down.index_select(1, idx)
    return out


def pruned_config(
    source: Mapping[str, Any],
    kept: Sequence[int] | np.ndarray,
    pruning: Mapping[str, Any],
    modeling: ModelingFile,
) -> dict[str, Any]:
    """Config dict of the exported model from the source config's `to_dict()`.

    `intermediate_sizes` are the per-layer widths, `intermediate_size` the widest (what the
    modeling file builds before narrowing), `pruning` the provenance record; a GGUF source's
    `quantization_config` is dropped (the export holds plain weights).
    """
    config = {k: v for k, v in source.items() if k not in _DROPPED_KEYS}
    widths = [int(k) for k in kept]
    if len(widths) != config["num_hidden_layers"]:
        n = config["num_hidden_layers"]
        raise ValueError(f"kept needs {n} counts (one per layer), got {len(widths)}")
    pruning = {"source_intermediate_size": source["intermediate_size"], **pruning}
    return config | {
        "model_type": modeling.model_type,
        "architectures": ["PrunedForCausalLM"],
        "auto_map": modeling.auto_map,
        "intermediate_size": max(widths),
        "intermediate_sizes": widths,
        "pruning": pruning,
    }


@dataclass(frozen=True)
class Size:
    parameters: int
    bytes: int


def size_of(state_dict: Mapping[str, torch.Tensor]) -> Size:
    """Parameters and bytes of a state dict, each storage counted once (tied weights once)."""
    seen: dict[tuple[int, int, tuple[int, ...]], torch.Tensor] = {}
    for tensor in state_dict.values():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        seen.setdefault(key, tensor)
    params = sum(t.numel() for t in seen.values())
    return Size(params, sum(t.numel() * t.element_size() for t in seen.values()))


def removed_mlp_parameters(hidden: int, width: int, kept: Sequence[int] | np.ndarray) -> int:
    """3 * hidden per removed neuron (its gate row, up row and down column)."""
    return 3 * hidden * int(len(kept) * width - int(np.sum(kept)))


def build_pruned_model(
    config: Mapping[str, Any],
    state_dict: Mapping[str, torch.Tensor],
    modeling: ModelingFile,
    buffers: Mapping[str, torch.Tensor],
) -> torch.nn.Module:
    """The exported class holding `state_dict`'s tensors (no copy, no dense allocation).

    `buffers` are the source model's `named_buffers()`: the non-persistent ones (rotary
    frequencies, Gemma's embedding scale) are not in the state dict and do not depend on the
    MLP widths, so the source's own tensors are reused.
    """
    module = load_modeling(modeling)
    cfg = module.PrunedConfig(**{k: v for k, v in config.items() if k != "model_type"})
    with torch.device("meta"):
        model = module.PrunedForCausalLM(cfg)
    model.load_state_dict(state_dict, strict=True, assign=True)
    model.tie_weights()
    own = dict(model.named_buffers())
    for name, buf in buffers.items():
        if name in own and own[name].is_meta:
            owner, _, attr = name.rpartition(".")
            model.get_submodule(owner)._buffers[attr] = buf
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise ValueError(f"exported model has tensors without values: {left[:3]}")
    return model.eval()
