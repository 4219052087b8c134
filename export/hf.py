"""A pruned model as a standalone checkpoint: narrowed MLP weights and the config that loads them.

Pure functions (state dict + config dict in, state dict + config dict out) and one adapter,
`build_pruned_model`, that puts them into a `PrunedLlamaForCausalLM` without allocating the dense
model. Layer l keeps its `kept[l]` most important neurons, in importance order: the first
`kept[l]` rows of gate/up and columns of down once neurons are sorted (what `PrunableLLM` does),
so the exported model computes exactly what the pruned `PrunableLLM` computes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pruning.allocation import check_kept

MODELING_FILE = Path(__file__).with_name("modeling_pruned_llama.py")
AUTO_MAP = {
    "AutoConfig": "modeling_pruned_llama.PrunedLlamaConfig",
    "AutoModelForCausalLM": "modeling_pruned_llama.PrunedLlamaForCausalLM",
}
_DROPPED_KEYS = ("model_type", "architectures", "auto_map", "transformers_version")


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
    source: Mapping[str, Any], kept: Sequence[int] | np.ndarray, pruning: Mapping[str, Any]
) -> dict[str, Any]:
    """Config dict of the exported model from the source LlamaConfig's `to_dict()`.

    `intermediate_sizes` are the per-layer widths, `intermediate_size` the widest (what the
    modeling file builds before narrowing), `pruning` the provenance record.
    """
    config = {k: v for k, v in source.items() if k not in _DROPPED_KEYS}
    widths = [int(k) for k in kept]
    if len(widths) != config["num_hidden_layers"]:
        n = config["num_hidden_layers"]
        raise ValueError(f"kept needs {n} counts (one per layer), got {len(widths)}")
    pruning = {"source_intermediate_size": source["intermediate_size"], **pruning}
    return config | {
        "model_type": "pruned_llama",
        "architectures": ["PrunedLlamaForCausalLM"],
        "auto_map": dict(AUTO_MAP),
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
    config: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor], device: torch.device | str
) -> torch.nn.Module:
    """PrunedLlamaForCausalLM holding `state_dict`'s tensors (no copy, no dense allocation)."""
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    from export.modeling_pruned_llama import PrunedLlamaConfig, PrunedLlamaForCausalLM

    cfg = PrunedLlamaConfig(**{k: v for k, v in config.items() if k != "model_type"})
    with torch.device("meta"):
        model = PrunedLlamaForCausalLM(cfg)
    model.load_state_dict(state_dict, strict=True, assign=True)
    model.tie_weights()
    # rotary frequencies are a non-persistent buffer: not in the state dict, so compute them
    with torch.device(device):
        model.model.rotary_emb = LlamaRotaryEmbedding(cfg)
    return model.eval()
