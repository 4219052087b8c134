"""Turn an action (one pruning fraction per layer) into the `mask_fn` that PrunableLLM expects."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from pruning.create_pruning_mask import PruningMaskGenerator, TopKMasks


class FractionMaskAdapter:
    """`adapter(fractions)` -> mask_fn(layer) giving that layer's bool keep-mask [d_ff]."""

    def __init__(self, generator: PruningMaskGenerator) -> None:
        self.generator = generator

    @property
    def n_layers(self) -> int:
        return self.generator.n_layers

    def keep_counts(self, fractions: np.ndarray | Sequence[float]) -> np.ndarray:
        """Neurons kept per layer, int64 [n_layers]; ValueError on wrong length or range."""
        return self.generator.keep_counts(fractions)

    def masks(self, fractions: np.ndarray | Sequence[float]) -> torch.Tensor:
        """All keep-masks at once, bool [n_layers, d_ff]."""
        return self.generator.get_pruning_masks(fractions)

    def mask_fn(self, fractions: np.ndarray | Sequence[float]) -> TopKMasks:
        """Validated now; masks are built lazily, or never when PrunableLLM takes the top-k path."""
        return self.generator.mask_fn(fractions)

    __call__ = mask_fn
