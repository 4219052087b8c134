from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from pruning.context_importance import context_orderings, row_statistics
from pruning.importance import collect_importance
from scoring.batched import score_samples
from scoring.metrics import score_requests
from scoring.tasks import DocumentTask, WindowTask, task_orderings
from scoring.windows import rolling_windows
from tests.fixtures import snapshot, tiny_llm

N_LAYERS, D_FF = 3, 64  # tiny_llm's shape


def original_mask(llm: object, order: torch.Tensor | None, kept: int, layer: int) -> torch.Tensor:
    """bool [d_ff] in ORIGINAL ids: what `llm.pruned(mask_fn)` takes."""
    ids = llm.permutation[layer] if order is None else order[layer].long()  # most important first
    ranks = torch.empty(D_FF, dtype=torch.long)
    ranks[ids] = torch.arange(D_FF)
    return ranks < kept


def test_context_batched_equals_gathered_pruning() -> None:
    llm = tiny_llm()
    before = snapshot(llm)
    gen = torch.Generator().manual_seed(4)
    kept = np.array([[64, 8, 32], [16, 40, 64], [32, 40, 24]])  # [S, L]
    docs = [torch.randint(1, 97, (n,), generator=gen).tolist() for n in (20, 5, 33)]
    requests = [rolling_windows(doc, 0, 16) for doc in docs]

    def random_order() -> torch.Tensor:
        return torch.stack([torch.randperm(D_FF, generator=gen) for _ in range(N_LAYERS)])

    shared = random_order()  # two requests of sample 2 share one ordering object
    orderings = [[None, random_order()], [random_order()], [shared, shared, None]]
    batched = score_samples(llm, requests, kept, 3, 16, orderings)
    assert not llm.is_pruned
    assert all(torch.equal(a, b) for a, b in zip(before, llm.parameters()))
    assert all(not d.mlp.down_proj._forward_pre_hooks for d in llm.model.layers)
    for s, reqs in enumerate(requests):
        for r, req in enumerate(reqs):
            order = orderings[s][r]

            def mask_fn(layer: int, o: torch.Tensor | None = order, s: int = s) -> torch.Tensor:
                return original_mask(llm, o, int(kept[s, layer]), layer)

            with llm.pruned(mask_fn):
                expected = score_requests(llm, [req], batch_size=1, max_length=16)
            assert batched[s][r] == pytest.approx(expected[0], rel=1e-5, abs=1e-5)
    # no context at all: the same numbers as the global (prefix) path
    plain = score_samples(llm, requests, kept, 3, 16)
    nones = [[None] * len(r) for r in requests]
    masked = score_samples(llm, requests, kept, 3, 16, nones)
    for a, b in zip(plain, masked, strict=True):
        assert a == pytest.approx(b, rel=1e-5, abs=1e-5)


def test_keep_masks_follow_layout() -> None:
    llm = tiny_llm()
    order = torch.stack([torch.arange(D_FF)] * N_LAYERS)  # original ids 0..k-1 most important
    masks = llm.layout_keep_masks(order, [8, 16, 0])  # current layout
    for layer, k in enumerate((8, 16, 0)):
        kept_ids = llm.permutation[layer][masks[layer]]
        assert sorted(kept_ids.tolist()) == list(range(k))


def test_statistics_match_importance_collection() -> None:
    """One row's context ordering equals the importance command's ordering on that row."""
    llm = tiny_llm()
    row = torch.randint(1, 97, (12,), generator=torch.Generator().manual_seed(2)).tolist()
    batches = [{"input_ids": torch.tensor([row])}]
    for criterion in ("mean_abs_activation", "wanda"):
        expected = collect_importance(llm, batches, criterion)
        (ordering,) = context_orderings(llm, [([row], [1])], criterion)[0]
        assert torch.equal(ordering.long(), expected.orderings), criterion
    sums = row_statistics(llm, [row, row[:5]], "mean_abs_activation", batch_size=2)
    alone = row_statistics(llm, [row[:5]], "mean_abs_activation")
    assert torch.allclose(sums[1], alone[0], rtol=1e-5, atol=1e-6)  # padding is not counted


def test_statistics_never_run_the_lm_head() -> None:
    """Both statistics passes read the MLPs only: the LM head (a [B, T, vocab] tensor) stays off."""
    llm = tiny_llm()
    calls = []
    llm.lm_head.register_forward_hook(lambda *_: calls.append(1))
    row = list(range(1, 13))
    row_statistics(llm, [row, row[:5]], "mean_abs_activation", batch_size=2)
    collect_importance(llm, [{"input_ids": torch.tensor([row])}], "mean_abs_activation")
    assert calls == []
    llm(input_ids=torch.tensor([row]))
    assert calls == [1]  # the hook sees a full forward pass


class _Calc:
    """The part of PerplexityCalculator a DocumentTask uses, on pre-tokenized documents."""

    max_length, batch_size = 8, 4

    def windows(self, text: str) -> list:
        return rolling_windows([int(t) for t in text.split()], 0, self.max_length)


def document_masks(llm: object, tokens: list[int]) -> tuple[list, int]:
    doc = SimpleNamespace(text=" ".join(map(str, tokens)), word_count=len(tokens))
    task = DocumentTask(_Calc(), [doc])
    (orderings,), fallbacks = task_orderings(llm, task, [0], "mean_abs_activation")
    masks = [None if o is None else llm.layout_keep_masks(o, [32] * N_LAYERS) for o in orderings]
    return masks, fallbacks


def test_context_never_sees_scored_tokens() -> None:
    llm = tiny_llm()
    tokens = torch.randint(1, 97, (30,), generator=torch.Generator().manual_seed(5)).tolist()
    masks, fallbacks = document_masks(llm, tokens)  # windows: targets 0-7, 8-15, 16-23, 24-29
    assert fallbacks == 1 and masks[0] is None and len(masks) == 4
    changed = list(tokens)
    changed[10] = tokens[10] % 96 + 1  # a target of window 1
    other, _ = document_masks(llm, changed)
    assert torch.equal(other[1], masks[1])  # window 1 never looks at its own targets
    assert not torch.equal(other[2], masks[2])  # window 2 reads window 1 as context
    earlier = list(tokens)
    earlier[3] = tokens[3] % 96 + 1  # a token of window 0
    other, _ = document_masks(llm, earlier)
    assert all(not torch.equal(a, b) for a, b in zip(other[1:], masks[1:]))


def test_training_window_context_is_its_documents_earlier_windows() -> None:
    llm = tiny_llm()
    gen = torch.Generator().manual_seed(6)
    doc = [torch.randint(1, 97, (8,), generator=gen).tolist() for _ in range(3)]  # 3 windows
    contexts = [[], doc[:1], doc[:2]]
    task = WindowTask(doc, prefix_token=0, max_length=8, contexts=contexts)
    orderings, fallbacks = task_orderings(llm, task, [0, 1, 2], "mean_abs_activation")
    assert fallbacks == 1 and orderings[0] == [None]
    rows = [[0, *doc[0]][:8], [0, *doc[1]][:8]]
    expected = context_orderings(llm, [(rows, [1, 2])], "mean_abs_activation")[0]
    assert torch.equal(orderings[1][0], expected[0]) and torch.equal(orderings[2][0], expected[1])


def test_windows_of_one_document_read_its_rows_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Training windows of one document share its context rows: each row's statistics are
    collected once however many windows use it, with the orderings of separate rows."""
    llm = tiny_llm()
    gen = torch.Generator().manual_seed(7)
    doc = [torch.randint(1, 97, (8,), generator=gen).tolist() for _ in range(4)]
    task = WindowTask(doc, 0, 8, contexts=[doc[:i] for i in range(4)])
    read: list[int] = []
    real = row_statistics

    def counting(model: object, rows: list, *args: object) -> torch.Tensor:
        read.append(len(rows))
        return real(model, rows, *args)

    monkeypatch.setattr("pruning.context_importance.row_statistics", counting)
    shared, _ = task_orderings(llm, task, [3, 1, 2, 0], "mean_abs_activation")
    assert read == [3]  # windows 0-2 once, not 3 + 1 + 2
    assert shared[0][0] is not None and shared[3] == [None]
    for k, i in enumerate([3, 1, 2]):  # the same orderings as rows of its own
        alone = WindowTask([doc[i]], 0, 8, contexts=[list(doc[:i])])
        (own,), _ = task_orderings(llm, alone, [0], "mean_abs_activation")
        assert torch.equal(shared[k][0], own[0])
    two, _ = task_orderings(llm, task, [1], "mean_abs_activation")  # only as far as used
    assert read[-1] == 1 and torch.equal(two[0][0], shared[1][0])
