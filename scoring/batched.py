"""Score several (item, allocation) pairs together: the one scoring path of the project.

`score` and `eval` (every arm), the search's fitness and the environment's step all call
`score_samples`. Each sample s has its own kept counts kept[s] ([n_layers], leading neurons in
importance order). The model is pruned to the union `kept.max(0)` (views), and a layer whose
samples keep different counts multiplies row r's MLP activations (the input of `down_proj`) by
`arange(union) < kept[sample of r]`, which equals removing those neurons. A layer every sample
keeps alike gets no mask at all, so one allocation costs exactly one pruned forward pass.

Context neurons (`orderings`): each request may bring its own neuron ordering (original ids,
from its context); its row then keeps the neurons whose rank in that ordering is below kept[l].
Those are no prefix, so the model stays at full width and every layer that prunes anything
multiplies each row's activations by its own 0/1 mask `rank < kept` (the same as gathering the
kept neurons, `PrunableLLM.pruned(mask_fn)`). Without orderings nothing of this runs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch

from pruning.allocation import sparsity_of
from pruning.context_importance import layout_keep_masks
from pruning.prunable_llm import PrunableLLM
from scoring.metrics import score_requests
from scoring.windows import Window


@contextlib.contextmanager
def row_masks(model: PrunableLLM, kept: np.ndarray) -> Iterator[Callable[[list[int]], None]]:
    """Per-row activation masks for the layers where samples differ; kept [n_samples, n_layers].

    Yields `select(row_samples)`: the next forward pass's row r belongs to sample row_samples[r].
    """
    union = kept.max(axis=0)  # [n_layers]
    varying = np.flatnonzero((kept != union).any(axis=0)).tolist()
    rows = {"index": None}  # [rows] sample of each row of the coming batch, on the device
    handles = []
    try:
        for layer in varying:
            down = model.model.layers[layer].mlp.down_proj
            device, dtype = down.weight.device, down.weight.dtype
            keep = torch.arange(int(union[layer])) < torch.tensor(kept[:, layer])[:, None]
            scale = keep.to(device=device, dtype=dtype)  # [n_samples, union_l]

            def hook(_module: torch.nn.Module, args: tuple, scale: torch.Tensor = scale) -> tuple:
                return (args[0] * scale[rows["index"]][:, None, :], *args[1:])

            handles.append(down.register_forward_pre_hook(hook))
        device = next(model.parameters()).device

        def select(row_samples: list[int]) -> None:
            if handles:  # nothing to do when every sample keeps the same neurons
                rows["index"] = torch.tensor(row_samples, device=device)

        yield select
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def context_masks(model: PrunableLLM, keep: torch.Tensor) -> Iterator[Callable[[list[int]], None]]:
    """Per-row 0/1 activation masks at full width; keep: bool [n_groups, n_layers, d_ff] in the
    current layout. Yields `select(row_groups)` as `row_masks` does."""
    rows = {"index": None}  # [rows] group of each row of the coming batch, on the device
    handles = []
    try:
        for layer in np.flatnonzero((~keep).any(dim=(0, 2)).numpy()).tolist():
            down = model.model.layers[layer].mlp.down_proj
            scale = keep[:, layer].to(device=down.weight.device)  # [n_groups, d_ff] bool

            def hook(_module: torch.nn.Module, args: tuple, scale: torch.Tensor = scale) -> tuple:
                acts = args[0]  # [rows, seq, d_ff]
                return (acts * scale[rows["index"]][:, None, :].to(acts.dtype), *args[1:])

            handles.append(down.register_forward_pre_hook(hook))
        device = next(model.parameters()).device

        def select(row_groups: list[int]) -> None:
            rows["index"] = torch.tensor(row_groups, device=device)

        yield select
    finally:
        for handle in handles:
            handle.remove()


Orderings = Sequence[Sequence[torch.Tensor | None]]  # per sample, per request: [L, d_ff] or None


def context_groups(
    model: PrunableLLM, kept: np.ndarray, orderings: Orderings
) -> tuple[list[int], torch.Tensor]:
    """Group of each request (one per distinct (sample, ordering) pair, so requests that share
    a prompt still share a row) and the keep masks of the groups [n_groups, L, d_ff] bool."""
    index: dict[tuple[int, int], int] = {}
    groups, masks = [], []
    for s, sample in enumerate(orderings):
        for order in sample:
            key = (s, id(order))
            if key not in index:
                index[key] = len(masks)
                masks.append(layout_keep_masks(model, order, kept[s]))
            groups.append(index[key])
    return groups, torch.stack(masks)


@torch.inference_mode()
def score_samples(
    model: PrunableLLM,
    requests: Sequence[Sequence[Window]],
    kept: np.ndarray | None,
    batch_size: int = 8,
    max_length: int | None = None,
    orderings: Orderings | None = None,
) -> tuple[list[list[float]], np.ndarray]:
    """Log-likelihood of each sample's requests under that sample's allocation.

    requests: per sample, its (context, targets) windows; kept: [n_samples, n_layers] kept
    counts, None = dense; orderings: None = the global order (kept = leading neurons), else per
    sample per request a context ordering [n_layers, d_ff] in original ids (None: global).
    Returns (log-likelihood per request per sample, sparsity [n_samples]).
    The model is restored and the hooks removed on exit, also on error.
    """
    n_samples = len(requests)
    flat = [req for sample in requests for req in sample]
    groups = [s for s, sample in enumerate(requests) for _ in sample]
    if kept is None:
        sums = score_requests(model, flat, batch_size, max_length, groups)
        sparsity = np.zeros(n_samples)
    else:
        kept = np.asarray(kept, dtype=np.int64)
        if kept.shape != (n_samples, model.n_layers):
            raise ValueError(f"kept must be [{n_samples}, {model.n_layers}], got {kept.shape}")
        if orderings is None:
            with model.pruned(kept.max(axis=0)), row_masks(model, kept) as select:
                sums = score_requests(model, flat, batch_size, max_length, groups, select)
        else:
            if [len(o) for o in orderings] != [len(r) for r in requests]:
                raise ValueError("orderings must hold one entry per request of each sample")
            groups, keep = context_groups(model, kept, orderings)
            with context_masks(model, keep) as select:
                sums = score_requests(model, flat, batch_size, max_length, groups, select)
        width = model.intermediate_size
        sparsity = np.asarray(sparsity_of(kept, width), dtype=np.float64).reshape(n_samples)
    out, start = [], 0
    for sample in requests:
        out.append(sums[start : start + len(sample)])
        start += len(sample)
    return out, sparsity
