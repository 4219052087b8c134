"""Per-layer importance orderings: the JSON file format, validation, and keep-masks from counts.

JSON: {"model", "criterion", "num_samples", "num_tokens", "date", "n_layers", "intermediate_size",
"orderings": [[neuron ids, most important first] per layer], optional "scores": [[...] per layer]}.
The same in a compact `.npz` (chosen by the file's suffix): `orderings` int16 (int32 past 32,767
neurons), `scores` float32, and the other fields as a JSON string `meta`; the numbers are equal.
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
    """Write the importance file: JSON, or compact arrays when `path` ends in `.npz`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix != ".npz":
        path.write_text(json.dumps(data))
        return
    orderings = np.asarray(data["orderings"])
    small = orderings.max(initial=0) <= np.iinfo(np.int16).max
    arrays = {"orderings": orderings.astype(np.int16 if small else np.int32)}
    if data.get("scores") is not None:
        arrays["scores"] = np.asarray(data["scores"], dtype=np.float32)
    meta = {k: v for k, v in data.items() if k not in ("orderings", "scores")}
    with path.open("wb") as f:  # an open file: numpy would append .npz to a name
        np.savez_compressed(f, meta=np.array(json.dumps(meta)), **arrays)


def _read_raw(path: Path) -> dict[str, Any]:
    if Path(path).suffix != ".npz":
        return json.loads(Path(path).read_text())
    with np.load(path) as npz:
        data = json.loads(str(npz["meta"]))
        data["orderings"] = npz["orderings"].astype(np.int64)
        data["scores"] = npz["scores"] if "scores" in npz.files else None
    return data


def read_importance_json(
    path: Path, n_layers: int | None = None, intermediate_size: int | None = None
) -> ImportanceFile:
    """Load an importance file; when the model's sizes are given, check the orderings fit them."""
    data = _read_raw(path)
    orderings = torch.as_tensor(np.asarray(data["orderings"]), dtype=torch.long)
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
        scores=None if scores is None else torch.as_tensor(np.asarray(scores), dtype=torch.float32),
    )


def keep_masks(orderings: torch.Tensor, kept: np.ndarray | Sequence[int]) -> torch.Tensor:
    """Bool keep-masks [n_layers, d_ff] in original neuron ids: layer l keeps its top kept[l]."""
    ranks = torch.empty_like(orderings)  # [n_layers, d_ff] rank of neuron j in its layer
    ranks.scatter_(1, orderings, torch.arange(orderings.shape[1]).expand_as(orderings))
    return ranks < torch.as_tensor(np.asarray(kept), dtype=torch.long)[:, None]
