from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import numpy as np
import pytest
import torch
from stable_baselines3 import SAC
from stable_baselines3.common.env_checker import check_env

from pruning.prunable_llm import PrunableLLM
from rl.env import LLMPruningEnv, action_to_fractions
from rl.reward import PerplexityReward
from tests.fixtures import tiny_llama

N_ITEMS, SEQ_LEN, EMBED_DIM, N_LAYERS, D_FF = 6, 12, 8, 3, 64


@pytest.fixture(scope="module")
def llm() -> PrunableLLM:
    return PrunableLLM(tiny_llama(intermediate_size=D_FF, num_hidden_layers=N_LAYERS))


class PerplexityScorer:
    """Perplexity of a fixed random token sequence per item; logs what the model looked like."""

    def __init__(self, llm: PrunableLLM, fail_when_pruned: bool = False) -> None:
        self.llm = llm
        self.tokens = torch.randint(
            0, 128, (N_ITEMS, SEQ_LEN), generator=torch.Generator().manual_seed(1)
        )
        self.fail_when_pruned = fail_when_pruned
        self.calls: list[tuple[int, bool, float]] = []  # (idx, is_pruned, sparsity)

    def __len__(self) -> int:
        return N_ITEMS

    @torch.inference_mode()
    def score(self, idx: int) -> float:
        self.calls.append((idx, self.llm.is_pruned, self.llm.sparsity))
        if self.fail_when_pruned and self.llm.is_pruned:
            raise RuntimeError("scoring failed")
        ids = self.tokens[idx : idx + 1]  # [1, T]
        logits = self.llm(input_ids=ids).logits[0, :-1]  # [T - 1, vocab]
        return math.exp(torch.nn.functional.cross_entropy(logits, ids[0, 1:]).item())


def prefix_masks(fractions: np.ndarray) -> Callable[[int], torch.Tensor]:
    """Keep the first round((1 - f) * d_ff) neurons of each layer."""
    n_kept = torch.from_numpy(np.rint((1.0 - fractions) * D_FF)).long()  # [n_layers]
    masks = torch.arange(D_FF)[None, :] < n_kept[:, None]  # [n_layers, d_ff] keep
    return masks.__getitem__


def make_env(llm: PrunableLLM, scorer: PerplexityScorer | None = None) -> LLMPruningEnv:
    embeddings = np.random.default_rng(2).normal(size=(N_ITEMS, EMBED_DIM)).astype(np.float32)
    return LLMPruningEnv(
        model=llm,
        scorer=scorer or PerplexityScorer(llm),
        embeddings=embeddings,
        make_mask_fn=prefix_masks,
        reward_fn=PerplexityReward(0.5),
    )


def test_check_env_without_warnings(llm: PrunableLLM) -> None:
    env = make_env(llm)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env)
    assert [str(w.message) for w in caught] == []
    assert env.action_space.shape == (N_LAYERS,)
    assert env.observation_space.shape == (EMBED_DIM,)
    assert not llm.is_pruned


def test_reset_is_reproducible(llm: PrunableLLM) -> None:
    env = make_env(llm)

    def draws(seed: int) -> list[int]:
        first = env.reset(seed=seed)[1]["index"]
        return [first] + [env.reset()[1]["index"] for _ in range(9)]

    assert draws(123) == draws(123)
    assert draws(123) != draws(7)
    assert set(draws(0)) <= set(range(N_ITEMS))


def test_reset_pins_index_and_returns_embedding(llm: PrunableLLM) -> None:
    env = make_env(llm)
    obs, info = env.reset(options={"index": 4})
    assert info == {"index": 4}
    np.testing.assert_array_equal(obs, env._embeddings[4])
    assert obs.dtype == np.float32
    obs[:] = 0.0  # the caller's copy, not the env's data
    assert np.abs(env.reset(options={"index": 4})[0]).sum() > 0
    with pytest.raises(IndexError):
        env.reset(options={"index": N_ITEMS})


def test_action_mapping_and_sparsity(llm: PrunableLLM) -> None:
    env = make_env(llm)
    env.reset(options={"index": 0})
    _, _, _, _, none = env.step(-np.ones(N_LAYERS, dtype=np.float32))
    np.testing.assert_array_equal(none["fractions"], np.zeros(N_LAYERS))
    assert none["sparsity"] == 0.0
    assert none["metric"] == pytest.approx(none["dense_metric"], rel=1e-6)
    env.reset(options={"index": 0})
    _, _, _, _, full = env.step(np.ones(N_LAYERS, dtype=np.float32))
    np.testing.assert_array_equal(full["fractions"], np.ones(N_LAYERS))
    assert full["sparsity"] == 1.0
    env.reset(options={"index": 0})
    _, _, _, _, mixed = env.step(np.array([-1.0, 0.0, 0.5], dtype=np.float32))
    np.testing.assert_allclose(mixed["fractions"], [0.0, 0.5, 0.75])
    assert mixed["sparsity"] == pytest.approx((0 + 32 + 48) / (N_LAYERS * D_FF))
    assert not llm.is_pruned and llm.sparsity == 0.0


def test_step_result_and_info(llm: PrunableLLM) -> None:
    env = make_env(llm)
    obs0, _ = env.reset(options={"index": 2})
    obs, reward, terminated, truncated, info = env.step(np.zeros(N_LAYERS, dtype=np.float32))
    assert (terminated, truncated) == (True, False)
    np.testing.assert_array_equal(obs, obs0)
    assert set(info) == {"index", "metric", "dense_metric", "sparsity", "fractions"}
    assert info["index"] == 2 and isinstance(info["fractions"], np.ndarray)
    assert info["metric"] != info["dense_metric"]
    expected = PerplexityReward(0.5)(info["metric"], info["dense_metric"], info["sparsity"])
    assert isinstance(reward, float) and reward == pytest.approx(expected)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros(N_LAYERS, dtype=np.float32))


def test_pruning_reaches_the_scorer(llm: PrunableLLM) -> None:
    scorer = PerplexityScorer(llm)
    env = make_env(llm, scorer)
    env.reset(options={"index": 1})
    env.step(np.full(N_LAYERS, 0.5, dtype=np.float32))
    assert scorer.calls == [(1, False, 0.0), (1, True, pytest.approx(0.75))]


def test_dense_baseline_is_cached(llm: PrunableLLM) -> None:
    scorer = PerplexityScorer(llm)
    env = make_env(llm, scorer)
    action = np.zeros(N_LAYERS, dtype=np.float32)
    for _ in range(3):
        env.reset(options={"index": 3})
        env.step(action)
    assert [c[:2] for c in scorer.calls] == [(3, False), (3, True), (3, True), (3, True)]
    dense = env.precompute_dense()
    assert dense.shape == (N_ITEMS,) and len(scorer.calls) == 4 + N_ITEMS - 1
    np.testing.assert_array_equal(env.precompute_dense(), dense)
    assert len(scorer.calls) == 4 + N_ITEMS - 1
    assert dense[3] == env.dense_metric(3)


def test_failing_scorer_leaves_model_unpruned(llm: PrunableLLM) -> None:
    env = make_env(llm, PerplexityScorer(llm, fail_when_pruned=True))
    env.reset(options={"index": 0})
    with pytest.raises(RuntimeError, match="scoring failed"):
        env.step(np.zeros(N_LAYERS, dtype=np.float32))
    assert not llm.is_pruned and llm.sparsity == 0.0


def test_invalid_actions_and_inputs(llm: PrunableLLM) -> None:
    env = make_env(llm)
    env.reset(seed=0)
    with pytest.raises(ValueError, match="shape"):
        env.step(np.zeros(N_LAYERS + 1, dtype=np.float32))
    with pytest.raises(ValueError, match="finite"):
        env.step(np.full(N_LAYERS, np.nan, dtype=np.float32))
    with pytest.raises(ValueError, match="embeddings"):
        LLMPruningEnv(
            llm, PerplexityScorer(llm), np.zeros((2, 4)), prefix_masks, PerplexityReward(1)
        )
    assert not llm.is_pruned


def test_action_to_fractions_clips() -> None:
    np.testing.assert_array_equal(
        action_to_fractions(np.array([-2.0, -1.0, 0.0, 0.5, 1.0, 3.0])),
        [0.0, 0.0, 0.5, 0.75, 1.0, 1.0],
    )


def test_sac_runs_on_the_env(llm: PrunableLLM) -> None:
    env = make_env(llm)
    agent = SAC("MlpPolicy", env, learning_starts=6, batch_size=6, policy_kwargs={"net_arch": [8]})
    agent.set_random_seed(0)
    agent.learn(total_timesteps=12)
    rewards = agent.replay_buffer.rewards[: agent.replay_buffer.pos]  # [12, 1]
    assert rewards.shape == (12, 1) and np.all(np.abs(rewards) <= 1.0)
    assert agent.replay_buffer.dones[:12].all()
    assert not llm.is_pruned
