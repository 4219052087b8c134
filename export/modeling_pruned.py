"""A decoder LLM whose MLP width differs per layer: what `main.py export` writes.

`export` copies this file into every exported model folder as `modeling_pruned_<type>.py`,
with the two `Source*` imports below pointing at the source model's own classes (LLaMA, Qwen2,
Mistral, Gemma-3, ...), and names it in the config's `auto_map`, so
`AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)` loads the model in any
transformers-based tool. It imports only transformers and torch: nothing from this project.
Layer l's MLP keeps `intermediate_sizes[l]` neurons; everything else is the source model.
"""

from __future__ import annotations

import copy
from typing import Any

from transformers import LlamaConfig as SourceConfig  # source config class
from transformers import LlamaForCausalLM as SourceForCausalLM  # source model class

MODEL_TYPE = "pruned_llama"  # "pruned_" + the source model type


class PrunedConfig(SourceConfig):
    """The source config plus `intermediate_sizes` (one MLP width per layer) and `pruning`
    (provenance: source model, allocation, importance file). `intermediate_size` is the widest
    layer."""

    model_type = MODEL_TYPE

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


def _mlp_config(config: PrunedConfig, width: int) -> PrunedConfig:
    narrow = copy.copy(config)  # the MLP classes read only sizes and the activation from it
    narrow.intermediate_size = width
    return narrow


class PrunedForCausalLM(SourceForCausalLM):
    """The source causal LM whose layer l has an MLP of width `config.intermediate_sizes[l]`."""

    config_class = PrunedConfig

    def __init__(self, config: PrunedConfig) -> None:
        super().__init__(config)  # from_pretrained builds on the meta device: no memory wasted
        for layer, width in zip(self.model.layers, config.intermediate_sizes):
            if width != layer.mlp.gate_proj.out_features:
                layer.mlp = type(layer.mlp)(_mlp_config(config, width))
        self.post_init()
