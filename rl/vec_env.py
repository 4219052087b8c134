"""`BatchedPruningVecEnv`: n_envs one-step bandit episodes scored in one forward pass.

Stable-Baselines3 sees n_envs copies of `LLMPruningEnv`; here they share one model, and a step
scores every (item, action) pair together with per-sample activation masks (`rl.batched`),
which equals pruning each sample's model separately (a test proves it). Every step ends all
episodes, so each step also resets: `infos[i]["terminal_observation"]` holds the scored item.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.vec_env.base_vec_env import VecEnv, VecEnvIndices

from pruning.prunable_llm import PrunableLLM
from rl.batched import score_samples
from rl.env import action_to_fractions
from rl.mask_adapter import FractionMaskAdapter
from rl.reward import RewardFn


class BatchedPruningVecEnv(VecEnv):
    """Vectorized `LLMPruningEnv`: same spaces, rewards and info keys; one forward per step."""

    def __init__(
        self,
        model: PrunableLLM,
        scorer: Any,  # rl.tasks scorer: requests(i), metric(i, logliks), score(i), len()
        embeddings: np.ndarray,
        adapter: FractionMaskAdapter,
        reward_fn: RewardFn,
        n_envs: int,
    ) -> None:
        self.model, self.scorer, self.adapter, self.reward_fn = model, scorer, adapter, reward_fn
        self.embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)  # [n_items, dim]
        if self.embeddings.shape[0] != len(scorer):
            raise ValueError(f"{self.embeddings.shape[0]} embeddings for {len(scorer)} items")
        obs_space = spaces.Box(-np.inf, np.inf, self.embeddings.shape[1:], np.float32)
        act_space = spaces.Box(-1.0, 1.0, (model.n_layers,), np.float32)
        self.render_mode = None
        super().__init__(n_envs, obs_space, act_space)
        self.np_random = np.random.default_rng()
        self._dense = np.full(len(scorer), np.nan)  # [n_items] metric of the unpruned model
        self._indices = np.zeros(n_envs, dtype=np.int64)
        self._actions: np.ndarray | None = None

    def dense_metric(self, index: int) -> float:
        """Unpruned metric of an item, scored once and cached."""
        if np.isnan(self._dense[index]):
            self._dense[index] = self.scorer.score(index)
        return float(self._dense[index])

    def reset(self) -> np.ndarray:
        if self._seeds[0] is not None:
            self.np_random = np.random.default_rng(self._seeds[0])
        self._reset_seeds()
        self._indices = self.np_random.integers(len(self.scorer), size=self.num_envs)
        return self.embeddings[self._indices].copy()

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = np.asarray(actions, dtype=np.float32)

    def step_wait(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[dict[str, Any]]]:
        fractions = action_to_fractions(self._actions)  # [n_envs, n_layers]
        indices = self._indices
        dense = [self.dense_metric(int(i)) for i in indices]
        masks = torch.stack([self.adapter.masks(f) for f in fractions])  # [n_envs, L, d_ff]
        requests = [self.scorer.requests(int(i)) for i in indices]
        logliks, sparsity = score_samples(self.model, requests, masks, self.scorer.max_length)
        rewards, infos = np.zeros(self.num_envs, dtype=np.float32), []
        for k, i in enumerate(indices):
            metric = self.scorer.metric(int(i), logliks[k])
            rewards[k] = self.reward_fn(metric, dense[k], sparsity[k])
            infos.append(
                {
                    "index": int(i),
                    "metric": metric,
                    "dense_metric": dense[k],
                    "sparsity": sparsity[k],
                    "fractions": fractions[k],
                    "terminal_observation": self.embeddings[i].copy(),
                    "TimeLimit.truncated": False,
                }
            )
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
