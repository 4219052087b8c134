"""A LLaMA whose MLP width differs per layer: what `main.py export` writes.

This file is copied into every exported model folder and named in its config's `auto_map`, so
`AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)` loads the model in any
transformers-based tool. It imports only transformers and torch: nothing from this project.
Layer l's MLP keeps `intermediate_sizes[l]` neurons; everything else is LLaMA unchanged.
"""

from __future__ import annotations

import copy
from typing import Any

from transformers import LlamaConfig, LlamaForCausalLM
from transformers.models.llama.modeling_llama import LlamaMLP


class PrunedLlamaConfig(LlamaConfig):
    """LlamaConfig plus `intermediate_sizes` (one MLP width per layer) and `pruning` (provenance:
    source model, allocation, importance file). `intermediate_size` is the widest layer."""

    model_type = "pruned_llama"

    intermediate_sizes: list[int] | None = None  # None: every layer `intermediate_size` wide
    pruning: dict | None = None

    def __post_init__(self, **kwargs: Any) -> None:
        n_layers = self.num_hidden_layers
        if self.intermediate_sizes is None:
            self.intermediate_sizes = [self.intermediate_size] * n_layers
        self.intermediate_sizes = [int(s) for s in self.intermediate_sizes]
        if len(self.intermediate_sizes) != n_layers:
            got = len(self.intermediate_sizes)
            raise ValueError(f"intermediate_sizes needs {n_layers} widths, got {got}")
        self.pruning = self.pruning or {}
        super().__post_init__(**kwargs)


def _mlp_config(config: PrunedLlamaConfig, width: int) -> PrunedLlamaConfig:
    narrow = copy.copy(config)  # LlamaMLP reads only hidden/intermediate size, bias and act
    narrow.intermediate_size = width
    return narrow


class PrunedLlamaForCausalLM(LlamaForCausalLM):
    """LlamaForCausalLM whose layer l has an MLP of width `config.intermediate_sizes[l]`."""

    config_class = PrunedLlamaConfig

    def __init__(self, config: PrunedLlamaConfig) -> None:
        super().__init__(config)  # from_pretrained builds on the meta device: no memory wasted
        for layer, width in zip(self.model.layers, config.intermediate_sizes):
            if width != config.intermediate_size:
                layer.mlp = LlamaMLP(_mlp_config(config, width))
        self.post_init()
