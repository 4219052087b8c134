"""Score several (item, per-layer mask) pairs in one forward pass.

Each sample gets its own keep-masks by multiplying the MLP activations (the input of `down_proj`)
by a per-row 0/1 mask, which equals removing those neurons. The model is first pruned to the
union of the samples' kept sets, so neurons no sample keeps cost nothing; with importance-ordered
weights that union is a leading slice (views) and the forward pass shrinks with the least
aggressive sample.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch

from pruning.prunable_llm import PrunableLLM
from rl.metrics import score_rows
from rl.windows import Window, model_input


def current_layout(model: PrunableLLM, masks: torch.Tensor) -> torch.Tensor:
    """Masks in original neuron ids [..., n_layers, d_ff] -> the model's current neuron layout."""
    order = model.permutation  # [n_layers, d_ff] original id at each position
    if order is None:
        return masks
    return masks.gather(-1, order.expand(*masks.shape[:-2], -1, -1))


@contextlib.contextmanager
def row_masks(model: PrunableLLM, keep: Sequence[torch.Tensor]) -> Iterator[None]:
    """Inside the body, scale layer l's MLP activations of row r by keep[l][r] ([rows, width_l])."""
    handles = []
    try:
        for mlp_keep, decoder in zip(keep, model.model.layers, strict=True):
            down = decoder.mlp.down_proj
            scale = mlp_keep.to(device=down.weight.device, dtype=down.weight.dtype)[:, None, :]

            def hook(_module: torch.nn.Module, args: tuple, scale: torch.Tensor = scale) -> tuple:
                return (args[0] * scale, *args[1:])

            handles.append(down.register_forward_pre_hook(hook))
        yield
    finally:
        for handle in handles:
            handle.remove()


@torch.inference_mode()
def score_samples(
    model: PrunableLLM,
    requests: Sequence[Sequence[Window]],
    masks: torch.Tensor,
    max_length: int | None = None,
) -> tuple[list[list[float]], list[float]]:
    """Log-likelihood of each sample's requests under that sample's masks, in one forward pass.

    requests: per sample, (context, targets) windows; masks: [n_samples, n_layers, d_ff] bool keep
    masks in original neuron ids. Returns (log-likelihood per request per sample, sparsity per
    sample). Pruning is undone and hooks removed on exit, also on error.
    """
    n_samples = len(requests)
    if masks.shape[:2] != (n_samples, model.n_layers):
        raise ValueError(f"masks must be [{n_samples}, {model.n_layers}, d_ff], got {masks.shape}")
    masks = masks.cpu()
    union = masks.any(dim=0)  # [n_layers, d_ff], original ids
    rows, wanted, row_sample = [], [], []
    for s, sample in enumerate(requests):
        row_of: dict[tuple[int, ...], int] = {}  # equal inputs of one sample share a row
        for context, targets in sample:
            key = tuple(model_input(context, targets, max_length))
            if key not in row_of:
                row_of[key] = len(rows)
                rows.append(key)
                row_sample.append(s)
            wanted.append((row_of[key], list(targets)))
    per_layer = current_layout(model, masks)  # [n_samples, n_layers, d_ff]
    kept_cols = current_layout(model, union)  # [n_layers, d_ff]
    owner = torch.tensor(row_sample)
    keep = [per_layer[owner, layer][:, kept_cols[layer]] for layer in range(model.n_layers)]
    with model.pruned(lambda layer: union[layer]), row_masks(model, keep):
        sums = score_rows(model, rows, wanted).tolist()
    out: list[list[float]] = []
    for sample in requests:
        out.append(sums[: len(sample)])
        sums = sums[len(sample) :]
    sparsity = (1.0 - masks.float().mean(dim=(1, 2))).tolist()
    return out, sparsity
