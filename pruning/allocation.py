"""Allocations: how many MLP neurons each layer keeps. The one home of that concept, no model.

An allocation is one vector `kept[n_layers]` of kept neurons per layer (int64), always a
multiple of `align` (tensor-core friendly widths); dense is `kept == width` everywhere. Because
`PrunableLLM` sorts every layer's neurons by importance once, `kept[l]` alone says which neurons
stay: the first `kept[l]`. Fractions (what the policy, `score uniform:0.3` and profile files
speak) become counts here, targets are met here (`project_to_target`), the static baselines are
made here, and `keep_masks` turns (ordering, kept) into the neurons each layer keeps.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

ArrayLike = np.ndarray | Sequence[float]


def check_align(width: int, align: int) -> None:
    if align < 1 or width % align:
        raise ValueError(f"align must be >= 1 and divide the MLP width {width}, got {align}")


def check_fractions(fractions: ArrayLike, n_layers: int) -> np.ndarray:
    """float64 [..., n_layers] in [0, 1]; ValueError naming the first bad layer."""
    frac = np.asarray(fractions, dtype=np.float64)
    if frac.ndim == 0 or frac.shape[-1] != n_layers:
        raise ValueError(f"expected {n_layers} fractions (one per layer), got shape {frac.shape}")
    bad = np.argwhere(~((frac >= 0) & (frac <= 1)))  # also catches NaN
    if len(bad):
        layer = int(bad[0][-1])
        raise ValueError(f"layer {layer}: fraction must be in [0, 1], got {frac[tuple(bad[0])]}")
    return frac


def kept_counts(fractions: ArrayLike, width: int, align: int = 8) -> np.ndarray:
    """Neurons kept per layer when pruning `fractions` [..., n_layers] of each layer -> int64.

    (1 - f) * width rounded to the nearest multiple of `align` (ties to even), in [0, width].
    """
    check_align(width, align)
    frac = np.asarray(fractions, dtype=np.float64)
    frac = check_fractions(frac, frac.shape[-1] if frac.ndim else 1)
    kept = align * np.rint((1 - frac) * width / align)
    return np.clip(kept, 0, width).astype(np.int64)


def check_kept(kept: ArrayLike, n_layers: int, width: int) -> np.ndarray:
    """int64 [n_layers] counts in [0, width]; ValueError naming the first bad layer."""
    arr = np.asarray(kept)
    if arr.shape != (n_layers,):
        raise ValueError(f"expected {n_layers} kept counts (one per layer), got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"kept counts must be integers, got dtype {arr.dtype}")
    bad = np.flatnonzero((arr < 0) | (arr > width))
    if len(bad):
        raise ValueError(f"layer {bad[0]}: kept count {arr[bad[0]]} outside [0, {width}]")
    return arr.astype(np.int64)


def dense_kept(n_layers: int, width: int) -> np.ndarray:
    """The dense allocation: every layer keeps all `width` neurons -> int64 [n_layers]."""
    return np.full(n_layers, width, dtype=np.int64)


def fractions_of(kept: np.ndarray, width: int) -> np.ndarray:
    """Prune fractions 1 - kept / width [..., n_layers] (float64)."""
    return 1.0 - np.asarray(kept, dtype=np.float64) / width


def sparsity_of(kept: np.ndarray, width: int) -> np.ndarray | float:
    """Fraction of all MLP neurons pruned: 1 - sum(kept) / (n_layers * width); [...]."""
    kept = np.asarray(kept)
    out = 1.0 - kept.sum(-1) / (kept.shape[-1] * width)
    return float(out) if np.ndim(out) == 0 else out


def target_blocks(
    target: float | np.ndarray, n_layers: int, width: int, align: int
) -> int | np.ndarray:
    """Total kept `align`-blocks for MLP sparsity `target` [...]; ValueError if out of (0, 1)."""
    check_align(width, align)
    t = np.asarray(target, dtype=np.float64)
    if not ((t > 0.0) & (t < 1.0)).all():
        raise ValueError(f"target sparsity must be in (0, 1), got {target}")
    blocks = np.rint((1.0 - t) * n_layers * width / align).astype(np.int64)
    return int(blocks) if blocks.ndim == 0 else blocks


def project_to_target(
    fractions: ArrayLike, target: float | np.ndarray, width: int, align: int = 8
) -> np.ndarray:
    """Kept counts [..., n_layers] closest to `fractions` whose total meets `target` exactly.

    The projection: shift every layer's fraction by one common amount, clipped to [0, 1]
    (the Euclidean projection onto {f in [0, 1]^L : mean(f) = target}), then round to
    `align` blocks by largest remainder. The total kept is exactly `target_blocks(...)` blocks,
    i.e. the target to within one `align` block over the whole model, and each layer is
    within one block of its projected fraction. `target` is one number or one per row [...].
    """
    frac = np.asarray(fractions, dtype=np.float64)
    n_layers = frac.shape[-1]
    frac = check_fractions(frac, n_layers)
    per_layer = width // align  # blocks in a full layer
    total = np.asarray(target_blocks(target, n_layers, width, align))
    total = np.broadcast_to(total, frac.shape[:-1])[..., None]  # [..., 1]
    # Bisection on the common shift d in [-1, 1]: mean(clip(f - d, 0, 1)) falls as d grows.
    lo = np.full(frac.shape[:-1] + (1,), -1.0)
    hi = np.full_like(lo, 1.0)
    goal = 1.0 - total / (n_layers * per_layer)  # the target as the blocks can express it
    for _ in range(64):
        mid = (lo + hi) / 2
        above = np.clip(frac - mid, 0, 1).mean(-1, keepdims=True) > goal
        lo, hi = np.where(above, mid, lo), np.where(above, hi, mid)
    blocks = (1.0 - np.clip(frac - (lo + hi) / 2, 0, 1)) * per_layer  # [..., L] real-valued
    base = np.floor(blocks + 1e-9).clip(0, per_layer)
    missing = total - base.sum(-1, keepdims=True)  # [..., 1] blocks still to hand out
    remainder = np.where(base < per_layer, blocks - base, -np.inf)
    rank = np.argsort(np.argsort(-remainder, axis=-1, kind="stable"), axis=-1)
    base += rank < missing
    return (base * align).astype(np.int64)


def allocate(
    fractions: ArrayLike, targets: float | np.ndarray | None, width: int, align: int = 8
) -> np.ndarray:
    """Kept counts [..., n_layers] of `fractions`: rounded to `align` (targets None or NaN:
    no budget, the trade-off mode), else projected onto `targets` [...] exactly."""
    if targets is None or np.isnan(np.asarray(targets, dtype=np.float64)).all():
        return kept_counts(fractions, width, align)
    return project_to_target(fractions, targets, width, align)


def uniform_at_target(target: float, n_layers: int, width: int, align: int = 8) -> np.ndarray:
    """Kept counts that prune every layer alike and meet `target` exactly (earlier layers get
    the leftover blocks)."""
    return project_to_target(np.full(n_layers, target), target, width, align)


@dataclass(frozen=True, eq=False)
class Profile:
    """Static allocations searched at several targets: fractions [m, n_layers] at ascending
    targets [m]. Between two targets the fractions are interpolated linearly; outside, the
    nearest profile is used (`project_to_target` then meets any target exactly)."""

    targets: np.ndarray  # [m] ascending
    fractions: np.ndarray  # [m, n_layers]

    def __post_init__(self) -> None:
        t, f = np.asarray(self.targets, np.float64), np.asarray(self.fractions, np.float64)
        if t.ndim != 1 or f.ndim != 2 or len(t) != len(f) or len(t) == 0:
            raise ValueError(
                f"profile needs targets [m] and fractions [m, L], got {t.shape}, {f.shape}"
            )
        if np.any(np.diff(t) <= 0):
            raise ValueError(f"profile targets must be strictly ascending, got {t.tolist()}")
        check_fractions(f, f.shape[1])
        object.__setattr__(self, "targets", t)
        object.__setattr__(self, "fractions", f)

    @property
    def n_layers(self) -> int:
        return self.fractions.shape[1]

    def at(self, targets: float | np.ndarray) -> np.ndarray:
        """Fractions [n, n_layers] at `targets` [n] (one number: [1, n_layers])."""
        t = np.asarray(targets, dtype=np.float64).reshape(-1)
        if len(self.targets) == 1:
            return np.repeat(self.fractions, len(t), axis=0)
        hi = np.clip(np.searchsorted(self.targets, t), 1, len(self.targets) - 1)
        lo = hi - 1
        span = self.targets[hi] - self.targets[lo]
        w = np.clip((t - self.targets[lo]) / span, 0.0, 1.0)[:, None]
        return (1 - w) * self.fractions[lo] + w * self.fractions[hi]


def ends_dense(n_layers: int, n_ends: int = 2) -> np.ndarray:
    """Fraction shape [n_layers] that keeps the first and last `n_ends` layers dense (fewer
    when the model is too shallow to prune anything else)."""
    n_ends = min(n_ends, (n_layers - 1) // 2)
    shape = np.ones(n_layers)
    shape[:n_ends] = 0.0
    shape[n_layers - n_ends :] = 0.0
    return shape


BASELINES = ("uniform", "ends_dense")


def baseline_kept(name: str, target: float, n_layers: int, width: int, align: int) -> np.ndarray:
    """Static baselines at exactly `target`: 'uniform' or 'ends_dense' (first/last 2 dense)."""
    if name == "uniform":
        return uniform_at_target(target, n_layers, width, align)
    if name == "ends_dense":
        shape = ends_dense(n_layers)
        fractions = np.minimum(shape * target * n_layers / shape.sum(), 1.0)
        return project_to_target(fractions, target, width, align)
    raise ValueError(f"unknown baseline {name!r}; choose from {BASELINES}")


def mean_profile(kept: np.ndarray, target: float | None, width: int, align: int) -> np.ndarray:
    """The same allocation for every item: the mean fractions of `kept` [n, L], on `target`
    (None: rounded to `align` only)."""
    return allocate(fractions_of(kept.mean(axis=0), width), target, width, align)


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


def ranks_of(orderings: torch.Tensor) -> torch.Tensor:
    """Rank of each neuron (by original id) in `orderings` [..., n_layers, d_ff] (original ids,
    most important first) -> int64, same shape."""
    order = orderings.long()  # on the orderings' device
    ranks = torch.empty_like(order)
    positions = torch.arange(order.shape[-1], device=order.device).expand_as(order)
    return ranks.scatter_(-1, order, positions)


def keep_masks(orderings: torch.Tensor, kept: ArrayLike) -> torch.Tensor:
    """Bool keep-masks [..., n_layers, d_ff] in original neuron ids: layer l keeps the kept[l]
    first neurons of its ordering (`orderings` [..., n_layers, d_ff], kept [..., n_layers])."""
    ranks = ranks_of(orderings)
    counts = kept if torch.is_tensor(kept) else torch.from_numpy(np.array(kept, dtype=np.int64))
    return ranks < counts.to(device=ranks.device, dtype=torch.int64)[..., None]
