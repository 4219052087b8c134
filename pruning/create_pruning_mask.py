"""Keep-masks from per-layer importance orderings, and the importance JSON file format.

JSON: {"model", "criterion", "num_samples", "num_tokens", "date", "n_layers", "intermediate_size",
"orderings": [[neuron ids, most important first] per layer], optional "scores": [[...] per layer]}.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch


def _check_align(width: int, align: int) -> None:
    if align < 1 or width % align:
        raise ValueError(f"align must be >= 1 and divide the width {width}, got {align}")


def kept_count(fraction: float, width: int, align: int = 8) -> int:
    """Neurons kept when pruning `fraction` of `width`.

    (1 - fraction) * width rounded to the nearest multiple of `align` (ties to even, like Python's
    round), clipped to [0, width]; align=1 gives exactly round((1 - fraction) * width).
    """
    _check_align(width, align)
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    return min(max(align * round((1 - fraction) * width / align), 0), width)


def validate_orderings(orderings: torch.Tensor, n_layers: int, width: int) -> None:
    """Raise ValueError unless `orderings` is [n_layers, width] with a permutation per layer."""
    if orderings.ndim != 2 or orderings.shape[0] != n_layers:
        raise ValueError(
            f"orderings have shape {tuple(orderings.shape)}, model has {n_layers} layers"
        )
    if orderings.shape[1] != width:
        raise ValueError(f"orderings have width {orderings.shape[1]}, model MLP width is {width}")
    bad = (orderings.sort(dim=1).values != torch.arange(width)).any(dim=1).nonzero().flatten()
    if len(bad):
        raise ValueError(f"layer {int(bad[0])}: ordering is not a permutation of 0..{width - 1}")


@dataclass(frozen=True)
class ImportanceFile:
    model: str
    criterion: str
    num_samples: int
    num_tokens: int
    date: str
    orderings: torch.Tensor  # [n_layers, d_ff] int64, most important first
    scores: torch.Tensor | None  # [n_layers, d_ff] float32


def write_importance_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def read_importance_json(
    path: Path, n_layers: int | None = None, intermediate_size: int | None = None
) -> ImportanceFile:
    """Load an importance file; when the model's sizes are given, check the orderings fit them."""
    data = json.loads(Path(path).read_text())
    orderings = torch.tensor(data["orderings"], dtype=torch.long)
    n_layers = data["n_layers"] if n_layers is None else n_layers
    width = data["intermediate_size"] if intermediate_size is None else intermediate_size
    validate_orderings(orderings, n_layers, width)
    scores = data.get("scores")
    return ImportanceFile(
        model=data["model"],
        criterion=data["criterion"],
        num_samples=int(data["num_samples"]),
        num_tokens=int(data["num_tokens"]),
        date=data["date"],
        orderings=orderings,
        scores=None if scores is None else torch.tensor(scores, dtype=torch.float32),
    )


class TopKMasks:
    """mask_fn keeping layer l's top `top_k[l]` neurons of `orderings` ([n_layers, d_ff]).

    Masks are built only when called; PrunableLLM reads `orderings` and `top_k` directly (and
    builds no mask at all) when the orderings are its own neuron order.
    """

    __slots__ = ("orderings", "top_k", "_ranks")

    def __init__(self, orderings: torch.Tensor, ranks: torch.Tensor, top_k: list[int]) -> None:
        self.orderings = orderings  # [n_layers, d_ff] original ids, most important first
        self.top_k = top_k  # [n_layers] neurons kept per layer
        self._ranks = ranks  # [n_layers, d_ff] rank of neuron j in its layer

    def __call__(self, layer: int) -> torch.Tensor:
        return self._ranks[layer] < self.top_k[layer]


class PruningMaskGenerator:
    """Keep-masks that keep each layer's top-`kept_count` neurons of an importance ordering."""

    def __init__(self, orderings: torch.Tensor | Sequence[Sequence[int]], align: int = 8) -> None:
        order = torch.as_tensor(orderings, dtype=torch.long).cpu()  # [n_layers, d_ff]
        if order.ndim != 2:
            raise ValueError(f"orderings must be 2-D [n_layers, d_ff], got {tuple(order.shape)}")
        self.n_layers, self.width = order.shape
        validate_orderings(order, self.n_layers, self.width)
        _check_align(self.width, align)
        self.align = align
        self.orderings = order
        self._ranks = torch.empty_like(order)  # [n_layers, d_ff] rank of neuron j in its layer
        self._ranks.scatter_(1, order, torch.arange(self.width).expand_as(order))

    @classmethod
    def from_json(
        cls, path: Path, n_layers: int, intermediate_size: int, align: int = 8
    ) -> PruningMaskGenerator:
        return cls(read_importance_json(path, n_layers, intermediate_size).orderings, align)

    def keep_counts(self, fractions: np.ndarray | Sequence[float]) -> np.ndarray:
        """Vectorized `kept_count` for one fraction per layer -> int64 [n_layers]."""
        frac = np.asarray(fractions, dtype=np.float64)
        if frac.shape != (self.n_layers,):
            raise ValueError(f"expected {self.n_layers} fractions, got shape {frac.shape}")
        bad = np.flatnonzero(~((frac >= 0) & (frac <= 1)))  # also catches NaN
        if len(bad):
            raise ValueError(f"layer {bad[0]}: fraction must be in [0, 1], got {frac[bad[0]]}")
        # np.rint rounds ties to even, like the scalar kept_count, and uses the same float64 ops.
        kept = self.align * np.rint((1 - frac) * self.width / self.align)
        return np.clip(kept, 0, self.width).astype(np.int64)

    def get_pruning_mask(self, fraction: float, layer: int) -> torch.Tensor:
        """Bool [d_ff] mask (True = keep) for one layer, in original neuron indices."""
        if not 0 <= layer < self.n_layers:
            raise ValueError(f"layer {layer}: out of range [0, {self.n_layers})")
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"layer {layer}: fraction must be in [0, 1], got {fraction}")
        return self._ranks[layer] < kept_count(fraction, self.width, self.align)

    def get_pruning_masks(self, fractions: np.ndarray | Sequence[float]) -> torch.Tensor:
        """Bool [n_layers, d_ff] masks for one fraction per layer."""
        kept = torch.from_numpy(self.keep_counts(fractions))
        return self._ranks < kept[:, None]

    def mask_fn(self, fractions: np.ndarray | Sequence[float]) -> TopKMasks:
        """Lazy mask_fn for one fraction per layer (validated now)."""
        return TopKMasks(self.orderings, self._ranks, self.keep_counts(fractions).tolist())
