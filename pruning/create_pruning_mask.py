"""Per-layer importance orderings: the JSON file format, validation, and keep-masks from counts.

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


def keep_masks(orderings: torch.Tensor, kept: np.ndarray | Sequence[int]) -> torch.Tensor:
    """Bool keep-masks [n_layers, d_ff] in original neuron ids: layer l keeps its top kept[l]."""
    ranks = torch.empty_like(orderings)  # [n_layers, d_ff] rank of neuron j in its layer
    ranks.scatter_(1, orderings, torch.arange(orderings.shape[1]).expand_as(orderings))
    return ranks < torch.as_tensor(np.asarray(kept), dtype=torch.long)[:, None]
