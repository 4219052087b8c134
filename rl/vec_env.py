"""`BatchedPruningVecEnv`: n_envs one-step bandit episodes scored in one forward pass.

Stable-Baselines3 sees n_envs copies of `LLMPruningEnv`; here they share one model and one
`PruningBandit`, whose step scores every (item, target, action) triple together (per-row
activation masks, `scoring.batched`). Every step ends all episodes, so each step also resets:
`infos[k]["terminal_observation"]` is the observation the action of env k answered.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3.common.vec_env.base_vec_env import VecEnv, VecEnvIndices

from rl.env import PruningBandit


class BatchedPruningVecEnv(VecEnv):
    """Vectorized `LLMPruningEnv`: same spaces, rewards and info keys; one forward per step.

    `np_random` samples the items and targets of new episodes (saved with checkpoints).
    """

    def __init__(self, bandit: PruningBandit, n_envs: int) -> None:
        self.bandit = bandit
        self.render_mode = None
        super().__init__(n_envs, bandit.observation_space, bandit.action_space)
        self.np_random = np.random.default_rng()
        self._indices = np.zeros(n_envs, dtype=np.int64)
        self._targets = np.zeros(n_envs)
        self._actions: np.ndarray | None = None

    def reset(self) -> np.ndarray:
        if self._seeds[0] is not None:
            self.np_random = np.random.default_rng(self._seeds[0])
        self._reset_seeds()
        self._indices = self.np_random.integers(self.bandit.n_items, size=self.num_envs)
        self._targets = self.bandit.action_map.sample_targets(self.np_random, self.num_envs)
        return self.bandit.observe(self._indices, self._targets)

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = np.asarray(actions, dtype=np.float32)

    def step_wait(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[dict[str, Any]]]:
        assert self._actions is not None, "step_async() first"
        terminal = self.bandit.observe(self._indices, self._targets)
        rewards, infos = self.bandit.step(self._indices, self._targets, self._actions)
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
