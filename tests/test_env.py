from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from stable_baselines3 import SAC
from stable_baselines3.common.env_checker import check_env

from pruning.allocation import Profile
from pruning.prunable_llm import PrunableLLM
from rl.env import ActionMap, LLMPruningEnv, PruningBandit, action_to_fractions
from rl.reward import LogPerplexityRatioReward, PerplexityReward
from scoring.tasks import WindowTask
from tests.fixtures import tiny_llama

N_ITEMS, SEQ_LEN, EMBED_DIM, N_LAYERS, D_FF = 6, 12, 8, 3, 64


@pytest.fixture(scope="module")
def llm() -> PrunableLLM:
    return PrunableLLM(tiny_llama(intermediate_size=D_FF, num_hidden_layers=N_LAYERS))


class CountingTask(WindowTask):
    """Random token windows; a hook logs (is_pruned, layer-0 width) at every forward pass."""

    def __init__(self, llm: PrunableLLM, fail_when_pruned: bool = False) -> None:
        super().__init__(tokens(), prefix_token=0, max_length=SEQ_LEN, batch_size=8)
        self.llm, self.fail_when_pruned = llm, fail_when_pruned
        self.calls: list[tuple[bool, int]] = []

    def __enter__(self) -> CountingTask:
        def hook(module: torch.nn.Module, _args: tuple) -> None:
            self.calls.append((self.llm.is_pruned, module.weight.shape[1]))
            if self.fail_when_pruned and self.llm.is_pruned:
                raise RuntimeError("scoring failed")

        down = self.llm.model.layers[0].mlp.down_proj
        self._handle = down.register_forward_pre_hook(hook)
        return self

    def __exit__(self, *exc: object) -> None:
        self._handle.remove()


def make_env(
    llm: PrunableLLM, task: WindowTask | None = None, targets: tuple | None = None
) -> LLMPruningEnv:
    embeddings = np.random.default_rng(2).normal(size=(N_ITEMS, EMBED_DIM)).astype(np.float32)
    action_map = ActionMap(N_LAYERS, D_FF, 8, targets)
    task = task or WindowTask(tokens(), prefix_token=0, max_length=SEQ_LEN)
    return LLMPruningEnv(PruningBandit(llm, task, embeddings, action_map, PerplexityReward(0.5)))


def tokens() -> list[list[int]]:
    gen = torch.Generator().manual_seed(1)
    return torch.randint(0, 128, (N_ITEMS, SEQ_LEN), generator=gen).tolist()


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
    assert info["index"] == 4 and np.isnan(info["target"])
    np.testing.assert_array_equal(obs, env.bandit.embeddings[4])
    assert obs.dtype == np.float32
    obs[:] = 0.0  # the caller's copy, not the env's data
    assert np.abs(env.reset(options={"index": 4})[0]).sum() > 0
    with pytest.raises(IndexError):
        env.reset(options={"index": N_ITEMS})


def test_action_mapping_and_sparsity(llm: PrunableLLM) -> None:
    env = make_env(llm)
    env.reset(options={"index": 0})
    _, _, _, _, none = env.step(-np.ones(N_LAYERS, dtype=np.float32))
    np.testing.assert_array_equal(none["kept"], [D_FF] * N_LAYERS)
    assert none["sparsity"] == 0.0
    assert none["metric"] == pytest.approx(none["dense_metric"], rel=1e-6)
    env.reset(options={"index": 0})
    _, _, _, _, full = env.step(np.ones(N_LAYERS, dtype=np.float32))
    np.testing.assert_array_equal(full["kept"], np.zeros(N_LAYERS))
    assert full["sparsity"] == 1.0
    env.reset(options={"index": 0})
    _, _, _, _, mixed = env.step(np.array([-1.0, 0.0, 0.5], dtype=np.float32))
    np.testing.assert_array_equal(mixed["kept"], [64, 32, 16])
    assert mixed["sparsity"] == pytest.approx((0 + 32 + 48) / (N_LAYERS * D_FF))
    assert not llm.is_pruned and llm.sparsity == 0.0


def test_step_result_and_info(llm: PrunableLLM) -> None:
    env = make_env(llm)
    obs0, _ = env.reset(options={"index": 2})
    obs, reward, terminated, truncated, info = env.step(np.zeros(N_LAYERS, dtype=np.float32))
    assert (terminated, truncated) == (True, False)
    np.testing.assert_array_equal(obs, obs0)
    assert set(info) == {"index", "metric", "dense_metric", "sparsity", "kept", "target"}
    assert info["index"] == 2 and info["kept"].tolist() == [32, 32, 32]
    assert info["metric"] != info["dense_metric"]
    expected = PerplexityReward(0.5)(info["metric"], info["dense_metric"], info["sparsity"])
    assert isinstance(reward, float) and reward == pytest.approx(expected)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros(N_LAYERS, dtype=np.float32))


def test_pruning_reaches_the_task(llm: PrunableLLM) -> None:
    with CountingTask(llm) as task:
        env = make_env(llm, task)
        env.reset(options={"index": 1})
        env.step(np.array([0.5, 0.0, 1.0], dtype=np.float32))  # layer 0 prunes 3/4
    assert task.calls == [(False, 64), (True, 16)]


def test_dense_baseline_is_cached(llm: PrunableLLM) -> None:
    with CountingTask(llm) as task:
        env = make_env(llm, task)
        action = np.zeros(N_LAYERS, dtype=np.float32)
        for _ in range(3):
            env.reset(options={"index": 3})
            env.step(action)
        assert task.calls == [(False, 64), (True, 32), (True, 32), (True, 32)]
        dense = env.bandit.dense_metrics(range(N_ITEMS))  # the 5 others, one at a time
        assert dense.shape == (N_ITEMS,) and task.calls[4:] == [(False, 64)] * 5
        np.testing.assert_array_equal(env.bandit.dense_metrics(range(N_ITEMS)), dense)
        assert len(task.calls) == 9


def test_failing_task_leaves_model_unpruned(llm: PrunableLLM) -> None:
    with CountingTask(llm, fail_when_pruned=True) as task:
        env = make_env(llm, task)
        env.reset(options={"index": 0})
        with pytest.raises(RuntimeError, match="scoring failed"):
            env.step(np.zeros(N_LAYERS, dtype=np.float32))
    assert not llm.is_pruned and llm.sparsity == 0.0


def test_budget_mode_meets_the_target(llm: PrunableLLM) -> None:
    env = make_env(llm, targets=(0.25, 0.5))
    assert env.observation_space.shape == (EMBED_DIM + 1,)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env)
    assert [str(w.message) for w in caught] == []
    rng = np.random.default_rng(0)
    for _ in range(5):
        obs, info = env.reset()
        assert 0.25 <= info["target"] <= 0.5 and obs[-1] == np.float32(info["target"])
        _, _, _, _, step = env.step(rng.uniform(-1, 1, N_LAYERS).astype(np.float32))
        blocks = round((1 - info["target"]) * N_LAYERS * D_FF / 8)
        assert step["kept"].sum() == 8 * blocks  # exactly on target, in align blocks
    env.reset(options={"index": 0, "target": 0.5})
    _, _, _, _, step = env.step(np.array([-1.0, -1.0, 1.0], dtype=np.float32))
    assert step["kept"].tolist() == [48, 48, 0]  # one common shift, clipped to [0, 1]


def test_invalid_actions_and_inputs(llm: PrunableLLM) -> None:
    env = make_env(llm)
    env.reset(seed=0)
    with pytest.raises(ValueError, match="shape"):
        env.step(np.zeros(N_LAYERS + 1, dtype=np.float32))
    with pytest.raises(ValueError, match="finite"):
        env.step(np.full(N_LAYERS, np.nan, dtype=np.float32))
    with pytest.raises(ValueError, match="embeddings"):
        task = WindowTask(tokens(), 0, SEQ_LEN)
        PruningBandit(llm, task, np.zeros((2, 4)), ActionMap(3, D_FF, 8), PerplexityReward(1))
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
    assert rewards.shape == (12, 1) and len(np.unique(rewards)) > 6  # actions change rewards
    assert agent.replay_buffer.dones[:12].all()
    assert not llm.is_pruned


REFERENCE = Profile(np.array([0.25, 0.5]), np.array([[0.0, 0.25, 0.5], [0.25, 0.5, 0.75]]))


def test_profile_interpolates_between_targets_and_clamps_outside() -> None:
    np.testing.assert_allclose(REFERENCE.at([0.375])[0], [0.125, 0.375, 0.625])
    np.testing.assert_allclose(REFERENCE.at([0.1, 0.9]), REFERENCE.fractions)
    with pytest.raises(ValueError, match="ascending"):
        Profile(np.array([0.5, 0.25]), REFERENCE.fractions)


def test_target_grid_draws_only_grid_points() -> None:
    action_map = ActionMap(N_LAYERS, D_FF, 8, (0.1, 0.5), step=0.1)
    drawn = action_map.sample_targets(np.random.default_rng(0), 200)
    assert sorted(set(drawn.tolist())) == [0.1, 0.2, 0.3, 0.4, 0.5]


def test_reference_mode_pays_relative_to_the_reference_on_the_same_item(llm: PrunableLLM) -> None:
    action_map = ActionMap(N_LAYERS, D_FF, 8, (0.25, 0.5), 0.25, REFERENCE, radius=0.25)
    embeddings = np.zeros((N_ITEMS, EMBED_DIM), np.float32)
    task = CountingTask(llm)
    bandit = PruningBandit(llm, task, embeddings, action_map, LogPerplexityRatioReward())
    indices, targets = np.array([0, 1, 1]), np.array([0.25, 0.25, 0.5])
    zero = np.zeros((3, N_LAYERS))
    # a = 0 is the reference allocation: reward 0 (scored in the same forward pass)
    np.testing.assert_array_equal(action_map.kept(zero, targets)[0], [64, 48, 32])
    rewards, infos = bandit.step(indices, targets, zero)
    np.testing.assert_allclose(rewards, 0.0, atol=1e-5)
    assert [i["reference_metric"] for i in infos] == pytest.approx([i["metric"] for i in infos])
    assert len(bandit._reference) == 3
    # deviations are paid against the cached reference metric (no new reference rows)
    with task:
        action = np.tile([1.0, 0.0, -1.0], (3, 1))  # layer 0 prunes 25% more, layer 2 25% less
        rewards, infos = bandit.step(indices, targets, action)
    assert len(bandit._reference) == 3 and len(task.calls) == 1
    np.testing.assert_array_equal(infos[0]["kept"], [48, 48, 48])
    for r, info in zip(rewards, infos, strict=True):
        assert r == pytest.approx(-np.log(info["metric"] / info["reference_metric"]), rel=1e-5)
        assert info["sparsity"] == pytest.approx(info["target"], abs=8 / (N_LAYERS * D_FF))
    assert not llm.is_pruned
