from __future__ import annotations

import pytest
import torch

from pruning.prunable_llm import PrunableLLM
from rl.batched import score_samples
from rl.metrics import score_requests
from rl.windows import rolling_windows
from tests.fixtures import tiny_llama


def tiny_llm(seed: int = 0) -> PrunableLLM:
    return PrunableLLM(tiny_llama(seed, vocab_size=97, max_position_embeddings=128))


def prefix_masks(orderings: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """Keep the first kept[s, l] neurons of each layer's ordering -> [S, L, d_ff] bool."""
    ranks = torch.empty_like(orderings)
    ranks.scatter_(1, orderings, torch.arange(orderings.shape[1]).expand_as(orderings))
    return ranks[None] < kept[:, :, None]


@pytest.mark.parametrize("reordered", [True, False])
def test_batched_scores_equal_pruned_path(reordered: bool) -> None:
    llm = tiny_llm()
    gen = torch.Generator().manual_seed(1)
    orderings = torch.stack([torch.randperm(64, generator=gen) for _ in range(3)])
    if reordered:
        llm.reorder(orderings)
    kept = torch.tensor([[64, 0, 8], [16, 40, 64], [32, 32, 24], [8, 64, 56]])  # [S, L]
    masks = prefix_masks(orderings, kept)
    masks[1, 0] = torch.rand(64, generator=gen) < 0.5  # one arbitrary (non-prefix) layer
    docs = [torch.randint(1, 97, (n,), generator=gen).tolist() for n in (20, 5, 33, 12)]
    requests = [rolling_windows(doc, 0, 16) for doc in docs]
    batched, sparsity = score_samples(llm, requests, masks, max_length=16)
    before = [p.clone() for p in llm.parameters()]
    for s, reqs in enumerate(requests):
        with llm.pruned(lambda layer, s=s: masks[s, layer]):
            expected = score_requests(llm, reqs, batch_size=1, max_length=16)
            assert sparsity[s] == pytest.approx(llm.sparsity)
        assert batched[s] == pytest.approx(expected, rel=1e-4, abs=1e-4)
    assert not llm.is_pruned
    assert all(torch.equal(a, b) for a, b in zip(before, llm.parameters()))


def test_batched_restores_on_error() -> None:
    llm = tiny_llm()
    masks = torch.ones(1, 3, 64, dtype=torch.bool)
    masks[0, :, :10] = False
    with pytest.raises(IndexError):
        score_samples(llm, [[([0], [200])]], masks)  # token id outside the vocabulary
    assert not llm.is_pruned
    assert all(not d.mlp.down_proj._forward_pre_hooks for d in llm.model.layers)
