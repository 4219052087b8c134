"""Reversible, zero-copy pruning of the MLP neurons of a LLaMA-layout causal LM.

Pruning never moves or modifies the original weights: each MLP Linear gets new weights made of
the kept neurons, and undo re-assigns the original Parameter objects (exact by construction).
The wrapper sorts each layer's neurons by importance once, when it is built; an allocation is
then just `kept[n_layers]`, the number of leading neurons each layer keeps, and the pruned
weights are plain views (`W_gate[:k]`, `W_down[:, :k]`): nothing is copied.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
from torch import nn

from pruning.allocation import check_kept, keep_masks, ranks_of, validate_orderings

MaskFn = Callable[[int], torch.Tensor]  # layer index -> bool [d_ff], True = keep, original indices
Kept = Sequence[int] | np.ndarray | torch.Tensor  # [n_layers] leading neurons kept per layer
_MAX_CACHED_VIEWS = 16_384  # (layer, kept count) pairs whose weight views are kept for reuse


@dataclass(frozen=True, slots=True)
class Dims:
    n_layers: int
    hidden_size: int
    intermediate_size: int


class LayerUndoEntry(NamedTuple):  # a NamedTuple: 3x cheaper to build than a frozen dataclass
    """One pruned layer: the original Parameters stay where they were (same device, same memory)."""

    layer: int
    n_kept: int
    is_view: bool  # True: pruned weights alias the originals; False: gathered copies
    gate: nn.Parameter  # [d_ff, hidden]
    up: nn.Parameter  # [d_ff, hidden]
    down: nn.Parameter  # [hidden, d_ff]


@dataclass(frozen=True, slots=True)
class UndoPack:
    """Everything `undo_prune` needs; layers that kept all neurons are untouched and not listed."""

    entries: tuple[LayerUndoEntry, ...]
    n_pruned: int  # neurons removed over all layers


def _find_mlps(model: nn.Module) -> list[tuple[nn.Linear, nn.Linear, nn.Linear]]:
    try:
        layers = model.model.layers
    except AttributeError as err:
        raise ValueError("expected a LLaMA-layout model with model.model.layers") from err
    mlps = []
    for i, layer in enumerate(layers):
        lins = (layer.mlp.gate_proj, layer.mlp.up_proj, layer.mlp.down_proj)
        if any(not isinstance(lin, nn.Linear) or lin.bias is not None for lin in lins):
            raise ValueError(f"layer {i}: MLP projections must be nn.Linear without bias")
        mlps.append(lins)
    return mlps


def _read_dims(mlps: list[tuple[nn.Linear, nn.Linear, nn.Linear]]) -> Dims:
    hidden, d_ff = mlps[0][0].in_features, mlps[0][0].out_features
    for i, (gate, up, down) in enumerate(mlps):
        shapes = (tuple(gate.weight.shape), tuple(up.weight.shape), tuple(down.weight.shape))
        if shapes != ((d_ff, hidden), (d_ff, hidden), (hidden, d_ff)):
            raise ValueError(f"layer {i}: MLP weight shapes {shapes} differ from layer 0")
    return Dims(n_layers=len(mlps), hidden_size=hidden, intermediate_size=d_ff)


def _kept_weights(
    gate: nn.Parameter, up: nn.Parameter, down: nn.Parameter, k: int, idx: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """gate/up rows and down columns of the kept neurons: views of a prefix, else gathered.

    Plain tensors, not Parameters: wrapping 3 per layer would cost ~40% of the prune (H100 host).
    """
    if idx is None:
        return gate[:k], up[:k], down[:, :k]
    return gate.index_select(0, idx), up.index_select(0, idx), down.index_select(1, idx)


def _set_weight(lin: nn.Linear, weight: torch.Tensor) -> None:
    # Writing the dict directly skips Module.__setattr__'s checks, and allows a plain tensor.
    lin._parameters["weight"] = weight


class PrunableLLM:
    """Wraps a LLaMA-layout HF model; forwards attributes, calls and `generate` to it.

    `orderings` [n_layers, d_ff] (original neuron ids, most important first) fix the neuron order
    once, here. `prune(kept)` then keeps each layer's first `kept[l]` neurons (views);
    `prune(mask_fn)` takes arbitrary keep-masks in original ids (a mask that is an importance
    prefix becomes a count, anything else is gathered). `undo_prune()` restores the originals.
    """

    def __init__(self, model: nn.Module, orderings: torch.Tensor | None = None) -> None:
        self._model = model
        self._mlps = _find_mlps(model)
        self.dims = _read_dims(self._mlps)
        d_ff = self.dims.intermediate_size
        self._order: torch.Tensor | None = None  # [n_layers, d_ff] original id at each position
        self._ranks = torch.arange(d_ff).expand(self.dims.n_layers, d_ff)  # position of neuron j
        self._undo: UndoPack | None = None
        self._views: dict[tuple[int, int], tuple[nn.Parameter, tuple]] = {}  # see _prefix
        if orderings is not None:
            self._reorder(orderings)

    # ---- behave like the wrapped model -------------------------------------------------------
    def __getattr__(self, name: str) -> Any:
        if name == "_model":  # not yet set (copy/unpickle): avoid infinite recursion
            raise AttributeError(name)
        return getattr(self._model, name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._model(*args, **kwargs)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self._model.forward(*args, **kwargs)

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        return self._model.generate(*args, **kwargs)

    @property
    def config(self) -> Any:
        return self._model.config

    @property
    def wrapped(self) -> nn.Module:
        return self._model

    def __repr__(self) -> str:
        return f"PrunableLLM({type(self._model).__name__}, sparsity={self.sparsity:.3f})"

    # ---- state -------------------------------------------------------------------------------
    @property
    def n_layers(self) -> int:
        return self.dims.n_layers

    @property
    def intermediate_size(self) -> int:
        return self.dims.intermediate_size

    @property
    def is_pruned(self) -> bool:
        return self._undo is not None

    @property
    def undo_pack(self) -> UndoPack | None:
        return self._undo

    @property
    def sparsity(self) -> float:
        """Fraction of all MLP neurons currently pruned (0.0 when unpruned)."""
        if self._undo is None:
            return 0.0
        return self._undo.n_pruned / (self.dims.n_layers * self.dims.intermediate_size)

    def keep_counts(self) -> list[int]:
        """Neurons currently kept per layer."""
        counts = [self.dims.intermediate_size] * self.dims.n_layers
        for entry in self._undo.entries if self._undo else ():
            counts[entry.layer] = entry.n_kept
        return counts

    @property
    def permutation(self) -> torch.Tensor | None:
        """[n_layers, d_ff] original neuron index stored at each position, None if not reordered."""
        return None if self._order is None else self._order.clone()

    def layout_keep_masks(self, orderings: torch.Tensor | None, kept: Kept) -> torch.Tensor:
        """bool [..., n_layers, d_ff] in the CURRENT layout: the neurons whose rank in
        `orderings` [..., n_layers, d_ff] (original ids, most important first; None: the global
        importance order, i.e. the leading positions) is below kept[..., l]. On the device of
        `orderings` (None: of `kept`, if a tensor)."""
        if orderings is None:
            counts = kept if torch.is_tensor(kept) else torch.from_numpy(np.array(kept, np.int64))
            positions = torch.arange(self.dims.intermediate_size, device=counts.device)
            return positions < counts[..., None]
        masks = keep_masks(orderings, kept)  # original ids
        if self._order is None:
            return masks
        order = self._order.to(masks.device)
        return torch.gather(masks, -1, order.expand_as(masks))

    # ---- neuron order --------------------------------------------------------------------------
    def _reorder(self, orderings: torch.Tensor | Sequence[torch.Tensor | Sequence[int]]) -> None:
        """Permute neurons in place so position i of layer l holds original neuron orderings[l][i].

        gate/up rows and down columns get the same permutation, so the function is unchanged.
        """
        if self._undo is not None:
            raise ValueError("cannot reorder a pruned model; call undo_prune() first")
        if not isinstance(orderings, torch.Tensor):
            orderings = torch.stack([torch.as_tensor(o) for o in orderings])
        order = orderings.to(device="cpu", dtype=torch.long, copy=True)
        validate_orderings(order, self.dims.n_layers, self.dims.intermediate_size)
        relative = torch.gather(self._ranks, 1, order)  # [n_layers, d_ff] current pos to take
        self._permute_in_place(relative)
        self._ranks = ranks_of(order)
        self._order = order

    @torch.no_grad()
    def _permute_in_place(self, relative: torch.Tensor) -> None:
        identity = (relative == torch.arange(relative.shape[1])).all(dim=1).tolist()
        for (gate, up, down), perm, skip in zip(self._mlps, relative, identity):
            if skip:
                continue
            idx = perm.to(gate.weight.device)
            gate.weight.copy_(gate.weight.index_select(0, idx))
            up.weight.copy_(up.weight.index_select(0, idx))
            down.weight.copy_(down.weight.index_select(1, idx))

    # ---- pruning -------------------------------------------------------------------------------
    def prune(
        self,
        allocation: Kept | MaskFn,
        storage: Literal["cpu", "gpu"] = "gpu",
        cast_dtype: torch.dtype | None = None,
    ) -> UndoPack:
        """Prune all layers at once.

        `allocation` is either kept counts [n_layers] (layer l keeps its first kept[l] neurons in
        importance order: views, the fast path) or a `mask_fn(layer)` giving a bool [d_ff]
        keep-mask in original neuron ids (the general path: an importance prefix becomes a count,
        anything else is gathered). While pruned, the MLP weights are plain tensors (views of a
        prefix, else gathered copies), not Parameters; don't train, move or cast the model until
        `undo_prune()`. All masks are validated before any layer changes.
        `storage` ("cpu" or "gpu") and `cast_dtype` do nothing now that pruning takes views: no
        removed slice is ever copied anywhere (they chose where and in which dtype it was kept).
        """
        if self._undo is not None:
            pruned = [e.layer for e in self._undo.entries]
            raise ValueError(f"already pruned (layers {pruned}); call undo_prune() first")
        if storage not in ("cpu", "gpu"):
            raise ValueError(f"storage must be 'cpu' or 'gpu', got {storage!r}")
        del cast_dtype  # see the docstring
        n_kept, gather_idx = self._plan(allocation)
        d_ff = self.dims.intermediate_size
        entries, weights = [], []
        with torch.no_grad():
            for layer, (k, (gate, up, down)) in enumerate(zip(n_kept, self._mlps)):
                if k == d_ff:
                    continue
                idx = gather_idx.get(layer)
                # _parameters: Module.__getattr__ costs as much as the rest of this loop
                originals = (
                    gate._parameters["weight"],
                    up._parameters["weight"],
                    down._parameters["weight"],
                )
                entries.append(LayerUndoEntry(layer, k, idx is None, *originals))
                weights.append(
                    self._prefix(layer, k, originals)
                    if idx is None
                    else _kept_weights(*originals, k, idx)
                )
        for entry, new in zip(entries, weights):  # nothing can fail from here on
            for lin, weight in zip(self._mlps[entry.layer], new):
                _set_weight(lin, weight)
        self._undo = UndoPack(tuple(entries), self.dims.n_layers * d_ff - sum(n_kept))
        return self._undo

    def undo_prune(self, device: torch.device | str | None = None) -> None:
        """Re-assign the original Parameters (bit-identical, same objects); no-op if unpruned.

        `device` does nothing: the originals never left their device (it chose where the removed
        slices were copied back from)."""
        if self._undo is None:
            return
        for entry in self._undo.entries:
            gate, up, down = self._mlps[entry.layer]
            _set_weight(gate, entry.gate)
            _set_weight(up, entry.up)
            _set_weight(down, entry.down)
        self._undo = None
        del device  # see the docstring

    @contextlib.contextmanager
    def pruned(
        self,
        allocation: Kept | MaskFn,
        storage: Literal["cpu", "gpu"] = "gpu",
        cast_dtype: torch.dtype | None = None,
    ) -> Iterator[PrunableLLM]:
        """`with llm.pruned(kept): ...` prunes for the body and always undoes afterwards."""
        del storage, cast_dtype  # see `prune`
        self.prune(allocation)
        try:
            yield self
        finally:
            self.undo_prune()

    @contextlib.contextmanager
    def rows_pruned(
        self, kept: np.ndarray, orderings: Sequence[torch.Tensor | None] | None = None
    ) -> Iterator[Callable[[Sequence[int]], None]]:
        """Per-row allocations for the forward passes of the body: yields `select(row_groups)`,
        which says that row r of the next forward pass keeps the neurons of group row_groups[r].

        Group g keeps kept[g] ([n_groups, n_layers]) neurons per layer: the leading ones
        (`orderings` None: the model is pruned to the union `kept.max(0)`, views), or the kept[g]
        first of its own ordering orderings[g] ([n_layers, d_ff] original ids; None: the global
        order) at full width. Where groups differ, row r's MLP activations (the input of
        `down_proj`) are multiplied by its group's 0/1 mask, which equals removing those neurons
        (a test proves it against `pruned(mask_fn)`); a layer whose masks keep everything gets no
        hook, so one allocation costs one plain pruned forward pass. Undone on exit."""
        kept = np.asarray(kept, dtype=np.int64)
        device = next(self._model.parameters()).device
        counts = torch.tensor(kept, device=device)  # [n_groups, n_layers]
        rows: dict[str, torch.Tensor | None] = {"index": None, "keep": None}  # this batch's rows
        if orderings is None:
            union = kept.max(axis=0)  # [n_layers]
            varying = np.flatnonzero((kept != union).any(axis=0)).tolist()
            full = bool((union == self.dims.intermediate_size).all())  # dense: nothing to prune
            narrowed = contextlib.nullcontext() if full else self.pruned(union)
            positions = {i: torch.arange(int(union[i]), device=device) for i in varying}

            def scale(layer: int) -> torch.Tensor:  # [rows, width_l]: the leading kept[g, l]
                return positions[layer] < counts[rows["index"], layer][:, None]
        else:
            # each row's mask is made on the device for the rows of the coming pass only (an
            # MMLU test set has 14,042 groups: their masks at once would be gigabytes)
            d_ff = self.dims.intermediate_size
            varying = np.flatnonzero((kept < d_ff).any(axis=0)).tolist()
            narrowed = contextlib.nullcontext()

            def keep_rows(row_groups: torch.Tensor) -> torch.Tensor:  # [rows, n_layers, d_ff]
                groups, inverse = torch.unique(row_groups, return_inverse=True)
                keep = self.layout_keep_masks(None, counts[groups])  # the global order
                own = [k for k, g in enumerate(groups.tolist()) if orderings[g] is not None]
                if own:
                    ords = torch.stack([orderings[g] for g in groups[own].tolist()]).to(device)
                    keep[own] = self.layout_keep_masks(ords, counts[groups[own]])
                return keep[inverse]

            def scale(layer: int) -> torch.Tensor:
                return rows["keep"][:, layer]

        handles = []
        with narrowed:
            try:
                for layer in varying:
                    down = self._mlps[layer][2]

                    def hook(_module: nn.Module, args: tuple, layer: int = layer) -> tuple:
                        acts = args[0]  # [rows, seq, width_l]
                        mask = scale(layer).to(device=acts.device, dtype=acts.dtype)
                        return (acts * mask[:, None, :], *args[1:])

                    handles.append(down.register_forward_pre_hook(hook))

                def select(row_groups: Sequence[int]) -> None:
                    if handles:  # nothing to do when every group keeps the same neurons
                        rows["index"] = torch.tensor(row_groups, device=device)
                        if orderings is not None:
                            rows["keep"] = keep_rows(rows["index"])

                yield select
            finally:
                for handle in handles:
                    handle.remove()

    def _prefix(self, layer: int, k: int, originals: tuple[nn.Parameter, ...]) -> tuple:
        """Views of layer's first k neurons, made once per (layer, k) and reused: building three
        views per layer costs more than the rest of a prune (a step re-prunes every item)."""
        cached = self._views.get((layer, k))
        if cached is None or cached[0] is not originals[0]:
            if len(self._views) >= _MAX_CACHED_VIEWS:
                self._views.clear()  # bounded: a few MB of Python objects, no tensor memory
            cached = (originals[0], _kept_weights(*originals, k, None))
            self._views[layer, k] = cached
        return cached[1]

    def _plan(self, allocation: Kept | MaskFn) -> tuple[list[int], dict[int, torch.Tensor]]:
        """Kept count per layer, and kept positions (on device) of layers that are no prefix."""
        if not callable(allocation):
            kept = allocation.cpu().numpy() if torch.is_tensor(allocation) else allocation
            return check_kept(kept, self.dims.n_layers, self.dims.intermediate_size).tolist(), {}
        masks = self._collect_masks(allocation)  # [n_layers, d_ff] bool, CPU
        n_kept_t = masks.sum(dim=1)  # [n_layers]
        is_prefix = ((self._ranks < n_kept_t[:, None]) == masks).all(dim=1)
        n_kept = n_kept_t.tolist()
        return n_kept, self._gather_indices(masks, n_kept, is_prefix.tolist())

    def _collect_masks(self, mask_fn: MaskFn) -> torch.Tensor:
        d_ff = self.dims.intermediate_size
        masks = []
        for layer in range(self.dims.n_layers):
            mask = mask_fn(layer)
            if not isinstance(mask, torch.Tensor):
                raise ValueError(f"layer {layer}: mask must be a torch.Tensor, got {type(mask)}")
            if mask.dtype != torch.bool:
                raise ValueError(f"layer {layer}: mask dtype must be torch.bool, got {mask.dtype}")
            if tuple(mask.shape) != (d_ff,):
                raise ValueError(
                    f"layer {layer}: mask length must be {d_ff}, got shape {tuple(mask.shape)}"
                )
            masks.append(mask.cpu())
        return torch.stack(masks)

    def _gather_indices(
        self, masks: torch.Tensor, n_kept: list[int], prefix: list[bool]
    ) -> dict[int, torch.Tensor]:
        """Kept positions (current layout) of non-prefix layers, moved once per device."""
        layers = [i for i, p in enumerate(prefix) if not p]
        if not layers:
            return {}
        flat = torch.cat([self._ranks[i][masks[i]].sort().values for i in layers])
        splits = [n_kept[i] for i in layers]
        per_device: dict[torch.device, tuple[torch.Tensor, ...]] = {}
        result = {}
        for j, layer in enumerate(layers):
            dev = self._mlps[layer][0].weight.device
            if dev not in per_device:
                per_device[dev] = flat.to(dev).split(splits)
            result[layer] = per_device[dev][j]
        return result
