from __future__ import annotations

import numpy as np
import pytest
import torch

from pruning.prunable_llm import PrunableLLM
from rl.env import ActionMap, LLMPruningEnv, PruningBandit
from rl.reward import LogPerplexityRatioReward, PerplexityReward
from rl.vec_env import BatchedPruningVecEnv
from scoring.batched import score_samples
from scoring.metrics import score_requests
from scoring.tasks import WindowTask
from scoring.windows import rolling_windows
from tests.fixtures import tiny_llama

N_LAYERS, D_FF, DIM = 3, 64, 5


def tiny_llm(seed: int = 0) -> PrunableLLM:
    gen = torch.Generator().manual_seed(1)
    orderings = torch.stack([torch.randperm(D_FF, generator=gen) for _ in range(N_LAYERS)])
    model = tiny_llama(seed, vocab_size=97, max_position_embeddings=128, initializer_range=0.2)
    return PrunableLLM(model, orderings)


def snapshot(llm: PrunableLLM) -> list[torch.Tensor]:
    return [p.detach().clone() for p in llm.parameters()]


def test_batched_scores_equal_pruned_path() -> None:
    llm = tiny_llm()
    before = snapshot(llm)  # before any scoring: the batched path must give the model back
    gen = torch.Generator().manual_seed(1)
    kept = np.array([[64, 0, 8], [16, 40, 64], [32, 40, 24], [8, 40, 56]])  # [S, L]; layer 1
    docs = [torch.randint(1, 97, (n,), generator=gen).tolist() for n in (20, 5, 33, 12)]
    requests = [rolling_windows(doc, 0, 16) for doc in docs]
    batched, sparsity = score_samples(llm, requests, kept, batch_size=3, max_length=16)
    assert not llm.is_pruned
    assert all(torch.equal(a, b) for a, b in zip(before, llm.parameters()))
    assert all(not d.mlp.down_proj._forward_pre_hooks for d in llm.model.layers)
    for s, reqs in enumerate(requests):
        with llm.pruned(kept[s]):
            expected = score_requests(llm, reqs, batch_size=1, max_length=16)
            assert sparsity[s] == pytest.approx(llm.sparsity)
        assert batched[s] == pytest.approx(expected, rel=1e-5, abs=1e-5)
    dense, zeros = score_samples(llm, requests[:1], None, max_length=16)
    assert dense[0] == pytest.approx(score_requests(llm, requests[0], max_length=16), rel=1e-6)
    assert zeros.tolist() == [0.0]
    assert sparsity.tolist() == pytest.approx([120 / 192, 72 / 192, 96 / 192, 88 / 192])


def test_batched_restores_on_error() -> None:
    llm = tiny_llm()
    before = snapshot(llm)
    with pytest.raises(IndexError):
        score_samples(llm, [[([0], [200])], [([1], [2])]], np.array([[8, 8, 8], [16, 8, 8]]))
    assert not llm.is_pruned
    assert all(not d.mlp.down_proj._forward_pre_hooks for d in llm.model.layers)
    assert all(torch.equal(a, b) for a, b in zip(before, llm.parameters()))


def make_bandit(llm: PrunableLLM, targets: tuple[float, float] | None) -> PruningBandit:
    gen = torch.Generator().manual_seed(3)
    tokens = [torch.randint(1, 97, (n,), generator=gen).tolist() for n in (9, 14, 6, 11, 16)]
    task = WindowTask(tokens, prefix_token=0, max_length=16, batch_size=4)
    embeddings = np.random.default_rng(0).normal(size=(len(tokens), DIM))
    reward = PerplexityReward(0.5) if targets is None else LogPerplexityRatioReward()
    return PruningBandit(llm, task, embeddings, ActionMap(N_LAYERS, D_FF, 8, targets), reward)


@pytest.mark.parametrize("targets", [None, (0.2, 0.6)])
def test_vec_env_attribution_and_rewards_equal_single_env(targets: tuple | None) -> None:
    llm = tiny_llm()
    vec = BatchedPruningVecEnv(make_bandit(llm, targets), n_envs=4)
    vec.seed(7)
    obs = vec.reset()
    single = LLMPruningEnv(make_bandit(llm, targets))
    rng = np.random.default_rng(1)
    for _ in range(3):
        indices, env_targets = vec._indices.copy(), vec._targets.copy()
        actions = rng.uniform(-1, 1, (4, N_LAYERS)).astype(np.float32)
        new_obs, rewards, dones, infos = vec.step(actions)
        assert dones.all()
        for k in range(4):
            info = infos[k]
            assert info["index"] == indices[k]
            assert np.array_equal(info["terminal_observation"], obs[k])  # what the action saw
            assert np.array_equal(obs[k][:DIM], single.bandit.embeddings[indices[k]])
            options = {"index": int(indices[k]), "target": float(env_targets[k])}
            single_obs, _ = single.reset(options=options)
            assert np.array_equal(single_obs, obs[k])
            _, reward, terminated, truncated, single_info = single.step(actions[k])
            assert terminated and not truncated
            assert rewards[k] == pytest.approx(reward, rel=1e-5, abs=1e-6)
            assert np.array_equal(info["kept"], single_info["kept"])
            if targets is not None:
                assert obs[k][-1] == pytest.approx(env_targets[k])
                assert info["sparsity"] == pytest.approx(env_targets[k], abs=4 / 192)
        obs = new_obs
    assert not llm.is_pruned


def test_vec_env_reset_is_seeded() -> None:
    llm = tiny_llm()
    first, second = (BatchedPruningVecEnv(make_bandit(llm, (0.1, 0.5)), 8) for _ in range(2))
    first.seed(3)
    second.seed(3)
    assert np.array_equal(first.reset(), second.reset())
    assert first.np_random.integers(1000) == second.np_random.integers(1000)
