"""Per-input neuron orderings from the DENSE model's MLP activations over an input's context.

An item's context is a list of token rows (for a rolling window of a document: the input rows
of the document's earlier windows). Each row's per-neuron statistic (`pruning.importance`'s
criterion: sum over tokens of |a| or a^2, a = act(gate(x)) * up(x)) is collected once with its
`statistic_hooks`; a request's context statistic is the sum over its
leading rows, so running statistics over a document cost one dense pass over the document.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from pruning.importance import CRITERIA, CriterionName, statistic_hooks
from pruning.prunable_llm import PrunableLLM
from scoring.metrics import pad_rows, without_head

ROWS_PER_CHUNK = 256  # rows whose statistics are held at once ([rows, n_layers, d_ff] float32)


@torch.inference_mode()
def row_statistics(
    model: PrunableLLM,
    rows: Sequence[Sequence[int]],
    criterion: CriterionName,
    batch_size: int = 8,
) -> torch.Tensor:
    """sums [n_rows, n_layers, d_ff] float32 (CPU, current neuron layout): per row, the sum
    over its tokens of the criterion's token statistic of each neuron's activation."""
    if any(not r for r in rows):
        raise ValueError("a context row is empty")
    out = torch.zeros(len(rows), model.n_layers, model.intermediate_size)
    index = {"rows": torch.empty(0, dtype=torch.long)}  # rows of the coming batch

    def store(layer: int, stats: torch.Tensor) -> None:
        out[index["rows"], layer] = stats.sum(dim=1).cpu()

    device = model.get_input_embeddings().weight.device
    body = without_head(model) or model  # the hooks read the MLPs: no LM head needed
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]), reverse=True)
    with statistic_hooks(model, CRITERIA[criterion].token_stat, store) as current:
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            ids, mask = pad_rows([rows[i] for i in chunk], device)
            index["rows"], current["mask"] = torch.tensor(chunk), mask
            body(input_ids=ids, attention_mask=mask.long(), use_cache=False)
    return out


def orderings_from_statistics(
    model: PrunableLLM, sums: torch.Tensor, criterion: CriterionName
) -> torch.Tensor:
    """sums [n, n_layers, d_ff] (current layout) -> orderings [n, n_layers, d_ff] in ORIGINAL
    neuron ids, most important first (stable on ties); int16 when d_ff fits, else int32.

    Only the order matters, so mean |a| is left as a sum (the token count is one per row)."""
    finalize = CRITERIA[criterion].finalize
    downs = [layer.mlp.down_proj.weight for layer in model.model.layers]
    # on the weights' device: copying every W_down to the CPU (only wanda reads it) would move
    # 3.7 GB per call on an 8B model; the sort runs there too (14k MMLU prompts at 28 x 8,960)
    device = downs[0].device
    scores = torch.stack(
        [finalize(sums[:, i].to(w.device), 1, w).to(device) for i, w in enumerate(downs)], dim=1
    )  # [n, n_layers, d_ff], current layout
    perm = model.permutation
    if perm is not None:
        perm = perm.to(device).expand_as(scores)
        scores = torch.empty_like(scores).scatter_(2, perm, scores)
    dtype = torch.int16 if scores.shape[-1] <= torch.iinfo(torch.int16).max else torch.int32
    return torch.argsort(scores, dim=2, descending=True, stable=True).to(dtype).cpu()


def context_orderings(
    model: PrunableLLM,
    plans: Sequence[tuple[Sequence[Sequence[int]], Sequence[int]]],
    criterion: CriterionName,
    batch_size: int = 8,
) -> list[list[torch.Tensor | None]]:
    """Per item, per request: the ordering [n_layers, d_ff] (original ids) of its context.

    plans[i] = (rows, uses): the item's context rows, and for each of its requests how many
    leading rows form its context (0: no context, None: the caller falls back to the global
    order). Items may share one rows object (training windows of one document): its leading rows
    are then read once, as far as any of them uses. Requests with the same count share one tensor
    object. Row sets are processed in chunks so at most about ROWS_PER_CHUNK rows of statistics
    are held at once.
    """
    groups: dict[int, tuple[Sequence[Sequence[int]], list[int]]] = {}  # id(rows) -> rows, items
    for i, (rows, _) in enumerate(plans):
        groups.setdefault(id(rows), (rows, []))[1].append(i)
    units = [
        (rows[: max((u for i in items for u in plans[i][1]), default=0)], items)
        for rows, items in groups.values()
    ]
    result: list[list[torch.Tensor | None]] = [[] for _ in plans]
    start = 0
    while start < len(units):
        stop, n_rows = start, 0
        while stop < len(units) and (
            stop == start or n_rows + len(units[stop][0]) <= ROWS_PER_CHUNK
        ):
            n_rows += len(units[stop][0])
            stop += 1
        rows = [row for unit_rows, _ in units[start:stop] for row in unit_rows]
        sums = row_statistics(model, rows, criterion, batch_size) if rows else None
        offset = 0
        for unit_rows, items in units[start:stop]:
            wanted = sorted({u for i in items for u in plans[i][1] if u > 0})
            by_use: dict[int, torch.Tensor] = {}
            if wanted:
                cumulative = sums[offset : offset + len(unit_rows)].cumsum(dim=0)
                ords = orderings_from_statistics(
                    model, cumulative[[u - 1 for u in wanted]], criterion
                )
                by_use = dict(zip(wanted, ords, strict=True))
            for i in items:
                result[i] = [by_use[u] if u > 0 else None for u in plans[i][1]]
            offset += len(unit_rows)
        start = stop
    return result
