"""Score several (item, allocation) pairs together: the one scoring path of the project.

`score` and `eval` (every arm), the search's fitness and the environment's step all call
`score_samples`. Each sample s has its own kept counts kept[s] ([n_layers], leading neurons in
importance order; dense: full width); `PrunableLLM.rows_pruned` prunes the model to the union
`kept.max(0)` (views) and masks row r's MLP activations to `arange(union) < kept[sample of r]`
where samples differ, so one allocation costs exactly one pruned forward pass.

Context neurons (`orderings`): each request may bring its own neuron ordering (original ids,
from its context); its row then keeps the neurons whose rank in that ordering is below kept[l]
(full width, one 0/1 mask per (sample, ordering) group). Without orderings nothing of this runs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from pruning.prunable_llm import PrunableLLM
from scoring.metrics import score_requests
from scoring.windows import Window

Orderings = Sequence[Sequence[torch.Tensor | None]]  # per sample, per request: [L, d_ff] or None


def context_groups(
    kept: np.ndarray, orderings: Orderings
) -> tuple[list[int], np.ndarray, list[torch.Tensor | None]]:
    """Group of each request (one per distinct (sample, ordering) pair, so requests that share
    a prompt still share a row), and each group's kept counts [n_groups, L] and ordering."""
    index: dict[tuple[int, int], int] = {}
    groups, owners, orders = [], [], []
    for s, sample in enumerate(orderings):
        for order in sample:
            key = (s, id(order))
            if key not in index:
                index[key] = len(orders)
                owners.append(s)
                orders.append(order)
            groups.append(index[key])
    return groups, kept[owners], orders


@torch.inference_mode()
def score_samples(
    model: PrunableLLM,
    requests: Sequence[Sequence[Window]],
    kept: np.ndarray,
    batch_size: int = 8,
    max_length: int | None = None,
    orderings: Orderings | None = None,
) -> list[list[float]]:
    """Log-likelihood of each sample's requests under that sample's allocation.

    requests: per sample, its (context, targets) windows; kept: [n_samples, n_layers] kept
    counts (dense: full width); orderings: None = the global order (kept = leading neurons),
    else per sample per request a context ordering [n_layers, d_ff] in original ids (None:
    global). The model is restored and the hooks removed on exit, also on error.
    """
    n_samples = len(requests)
    flat = [req for sample in requests for req in sample]
    groups = [s for s, sample in enumerate(requests) for _ in sample]
    kept = np.asarray(kept, dtype=np.int64)
    if kept.shape != (n_samples, model.n_layers):
        raise ValueError(f"kept must be [{n_samples}, {model.n_layers}], got {kept.shape}")
    group_kept, group_orders = kept, None
    if orderings is not None:
        if [len(o) for o in orderings] != [len(r) for r in requests]:
            raise ValueError("orderings must hold one entry per request of each sample")
        groups, group_kept, group_orders = context_groups(kept, orderings)
    with model.rows_pruned(group_kept, group_orders) as select:
        sums = score_requests(model, flat, batch_size, max_length, groups, select)
    out, start = [], 0
    for sample in requests:
        out.append(sums[start : start + len(sample)])
        start += len(sample)
    return out
