"""Score several (item, allocation) pairs together: the one scoring path of the project.

`score` and `eval` (every arm), the search's fitness and the environment's step all call
`score_samples`. Each sample s has its own kept counts kept[s] ([n_layers], leading neurons in
importance order). The model is pruned to the union `kept.max(0)` (views), and a layer whose
samples keep different counts multiplies row r's MLP activations (the input of `down_proj`) by
`arange(union) < kept[sample of r]`, which equals removing those neurons. A layer every sample
keeps alike gets no mask at all, so one allocation costs exactly one pruned forward pass.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch

from pruning.allocation import sparsity_of
from pruning.prunable_llm import PrunableLLM
from rl.metrics import score_requests
from rl.windows import Window


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
            keep = torch.arange(int(union[layer])) < torch.from_numpy(kept[:, layer, None])
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


@torch.inference_mode()
def score_samples(
    model: PrunableLLM,
    requests: Sequence[Sequence[Window]],
    kept: np.ndarray | None,
    batch_size: int = 8,
    max_length: int | None = None,
) -> tuple[list[list[float]], np.ndarray]:
    """Log-likelihood of each sample's requests under that sample's allocation.

    requests: per sample, its (context, targets) windows; kept: [n_samples, n_layers] kept
    counts, None = dense. Returns (log-likelihood per request per sample, sparsity [n_samples]).
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
        with model.pruned(kept.max(axis=0)), row_masks(model, kept) as select:
            sums = score_requests(model, flat, batch_size, max_length, groups, select)
        width = model.intermediate_size
        sparsity = np.asarray(sparsity_of(kept, width), dtype=np.float64).reshape(n_samples)
    out, start = [], 0
    for sample in requests:
        out.append(sums[start : start + len(sample)])
        start += len(sample)
    return out, sparsity
