"""Vectorized bandits: many one-step episodes per SB3 step, scored together.

`BatchedPruningVecEnv`: n_envs episodes scored in one forward pass of one model. SB3 sees n_envs
copies of `LLMPruningEnv`; here they share one model and one `PruningBandit`, whose step scores
every (item, target, action) triple together (per-row activation masks, `scoring.batched`).

`ShardedPruningVecEnv`: n_workers x n_envs episodes per step, worker k (its own process and
model, e.g. one per GPU) scoring envs [k n_envs, (k + 1) n_envs) in one batched forward pass. The
main process holds no model: it samples every episode, so the transitions are those of one
`BatchedPruningVecEnv` with n_workers x n_envs envs and the same seed. While the agent updates
between steps, the workers already score what the next episodes need that no action changes
(dense baselines, context orderings).

Every step ends all episodes, so each step also resets: `infos[k]["terminal_observation"]` is
the observation the action of env k answered.
"""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3.common.vec_env.base_vec_env import CloudpickleWrapper, VecEnv, VecEnvIndices

from rl.env import ActionMap, PruningBandit, observe


class _SampledVecEnv(VecEnv):
    """Samples the items and targets of new episodes (`np_random`, saved with checkpoints);
    subclasses score them (`_score`)."""

    def __init__(
        self,
        n_envs: int,
        n_items: int,
        action_map: ActionMap,
        embeddings: np.ndarray,  # [n_items, dim]
        observation_space: gym.spaces.Box,
        action_space: gym.spaces.Box,
    ) -> None:
        self.render_mode = None
        super().__init__(n_envs, observation_space, action_space)
        self.n_items, self.action_map, self.embeddings = n_items, action_map, embeddings
        self.np_random = np.random.default_rng()
        self._indices = np.zeros(n_envs, dtype=np.int64)
        self._targets = np.zeros(n_envs)
        self._actions: np.ndarray | None = None

    def _score(
        self, indices: np.ndarray, targets: np.ndarray, actions: np.ndarray
    ) -> tuple[np.ndarray, list[dict[str, Any]]]:
        raise NotImplementedError

    def _observe(self) -> np.ndarray:
        targets = self._targets if self.action_map.budget else None
        return observe(self.embeddings[self._indices], targets)

    def reset(self) -> np.ndarray:
        if self._seeds[0] is not None:
            self.np_random = np.random.default_rng(self._seeds[0])
        self._reset_seeds()
        self._indices = self.np_random.integers(self.n_items, size=self.num_envs)
        self._targets = self.action_map.sample_targets(self.np_random, self.num_envs)
        return self._observe()

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = np.asarray(actions, dtype=np.float32)

    def step_wait(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[dict[str, Any]]]:
        assert self._actions is not None, "step_async() first"
        terminal = self._observe()
        rewards, infos = self._score(self._indices, self._targets, self._actions)
        for k, info in enumerate(infos):
            info["terminal_observation"] = terminal[k]
            info["TimeLimit.truncated"] = False
        obs = self.reset()
        return obs, rewards, np.ones(self.num_envs, dtype=bool), infos

    def close(self) -> None:
        pass

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        return [getattr(self, attr_name)] * len(self._get_indices(indices))

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        del indices
        setattr(self, attr_name, value)

    def env_method(
        self, method_name: str, *method_args: Any, indices: VecEnvIndices = None, **kwargs: Any
    ) -> list[Any]:
        result = getattr(self, method_name)(*method_args, **kwargs)
        return [result] * len(self._get_indices(indices))

    def env_is_wrapped(
        self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None
    ) -> list[bool]:
        del wrapper_class
        return [False] * len(self._get_indices(indices))

    def _get_indices(self, indices: VecEnvIndices) -> Sequence[int]:
        if indices is None:
            return range(self.num_envs)
        return [indices] if isinstance(indices, int) else list(indices)


class BatchedPruningVecEnv(_SampledVecEnv):
    """Vectorized `LLMPruningEnv`: same spaces, rewards and info keys; one forward per step."""

    def __init__(self, bandit: PruningBandit, n_envs: int) -> None:
        self.bandit = bandit
        super().__init__(n_envs, bandit.n_items, bandit.action_map, bandit.embeddings,
                         bandit.observation_space, bandit.action_space)  # fmt: skip

    def _score(
        self, indices: np.ndarray, targets: np.ndarray, actions: np.ndarray
    ) -> tuple[np.ndarray, list[dict[str, Any]]]:
        return self.bandit.step(indices, targets, actions)


def _serve(remote: Connection, parent: Connection, make_bandit: CloudpickleWrapper) -> None:
    """A worker: builds its bandit (its own model), then scores what the main process sends."""
    parent.close()
    bandit: PruningBandit = make_bandit.var()
    remote.send((bandit.n_items, bandit.action_map, bandit.observation_space,
                 bandit.action_space))  # fmt: skip
    while True:
        command, data = remote.recv()
        if command == "step":
            remote.send(bandit.step(*data))
        elif command == "prepare":  # action-free work of the next step: overlaps the update
            bandit.dense_metrics(data)
            bandit.orderings(data)
        else:
            remote.close()
            return


class ShardedPruningVecEnv(_SampledVecEnv):
    """`n_envs` episodes on each of `len(make_bandits)` worker processes per step."""

    def __init__(
        self,
        make_bandits: Sequence[Callable[[], PruningBandit]],
        n_envs: int,
        embeddings: np.ndarray,  # [n_items, dim]: the workers' bandits hold the same
        start_method: str = "spawn",
    ) -> None:
        ctx = mp.get_context(start_method)
        self.remotes, self.processes = [], []
        for fn in make_bandits:
            remote, work = ctx.Pipe()
            process = ctx.Process(target=_serve, args=(work, remote, CloudpickleWrapper(fn)),
                                  daemon=True)  # fmt: skip
            process.start()
            work.close()
            self.remotes.append(remote)
            self.processes.append(process)
        self.n_per_worker = n_envs
        n_items, action_map, obs_space, act_space = self.remotes[0].recv()
        for remote in self.remotes[1:]:
            if remote.recv()[0] != n_items:
                raise RuntimeError("workers built bandits over different items")
        super().__init__(n_envs * len(self.remotes), n_items, action_map, embeddings,
                         obs_space, act_space)  # fmt: skip

    def _shards(self, *arrays: np.ndarray) -> list[tuple[np.ndarray, ...]]:
        n = self.n_per_worker
        return [tuple(a[k * n : (k + 1) * n] for a in arrays) for k in range(len(self.remotes))]

    def _score(
        self, indices: np.ndarray, targets: np.ndarray, actions: np.ndarray
    ) -> tuple[np.ndarray, list[dict[str, Any]]]:
        for remote, shard in zip(self.remotes, self._shards(indices, targets, actions)):
            remote.send(("step", shard))
        results = [remote.recv() for remote in self.remotes]
        return np.concatenate([r for r, _ in results]), [i for _, infos in results for i in infos]

    def reset(self) -> np.ndarray:
        obs = super().reset()
        for remote, (indices,) in zip(self.remotes, self._shards(self._indices)):
            remote.send(("prepare", indices))
        return obs

    def close(self) -> None:
        for remote in self.remotes:
            remote.send(("close", None))
        for process in self.processes:
            process.join()
