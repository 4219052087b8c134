"""Gymnasium environment: choose per-layer MLP pruning fractions for one input, get one reward."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, Protocol

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces

from rl.reward import RewardFn

MaskFn = Callable[[int], torch.Tensor]


class ItemScorer(Protocol):
    """Quality metric of each data item on the model as it is now (pruned or not)."""

    def __len__(self) -> int: ...

    def score(self, idx: int) -> float:
        """Metric of item `idx`, e.g. its perplexity or 1.0 / 0.0 for a right / wrong answer."""
        ...


class PrunableModel(Protocol):
    """The part of PrunableLLM the environment uses."""

    @property
    def n_layers(self) -> int: ...

    @property
    def sparsity(self) -> float: ...

    @property
    def is_pruned(self) -> bool: ...

    def pruned(self, mask_fn: MaskFn) -> AbstractContextManager[Any]: ...


def action_to_fractions(action: np.ndarray) -> np.ndarray:
    """Map actions in [-1, 1] to pruning fractions in [0, 1]: (a + 1) / 2, clipped. [n_layers]"""
    action = np.asarray(action, dtype=np.float64)
    if not np.isfinite(action).all():
        raise ValueError(f"action must be finite, got {action}")
    return np.clip((action + 1.0) / 2.0, 0.0, 1.0)


class LLMPruningEnv(gym.Env[np.ndarray, np.ndarray]):
    """Single-step contextual bandit: see one input, prune each layer's MLP, score the input.

    ## Action Space
    `Box(-1, 1, (n_layers,), float32)`, n_layers read from the model. Action a_l becomes the
    fraction (a_l + 1) / 2 of layer l's MLP neurons to prune, clipped to [0, 1]: -1 prunes
    nothing, +1 prunes the whole MLP. `make_mask_fn` turns the fractions into a mask function,
    so which neurons go is its choice.

    ## Observation Space
    `Box(-inf, inf, (dim,), float32)`: the precomputed embedding of the current item, returned
    as given (L2-normalised sentence embeddings already lie in [-1, 1]; no further scaling).

    ## Rewards
    `reward_fn(metric, dense_metric, sparsity)` in [-1, 1], where metric is the scorer's value
    for the item on the pruned model, dense_metric the same on the unpruned model (computed once
    per item, then cached) and sparsity the fraction of all MLP neurons the model reports pruned.

    ## Episode End
    Every episode is one step: `step` returns terminated=True, truncated=False. The observation
    it returns is the same item's embedding (there is no next state); call `reset` for the next
    item. The model is unpruned again when `step` returns or raises.

    ## Info
    `reset`: {"index"}. `step`: {"index", "metric", "dense_metric", "sparsity", "fractions"}.
    `reset(options={"index": i})` pins item i, e.g. to evaluate every item in turn.
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(
        self,
        model: PrunableModel,
        scorer: ItemScorer,
        embeddings: np.ndarray,
        make_mask_fn: Callable[[np.ndarray], MaskFn],
        reward_fn: RewardFn,
    ) -> None:
        super().__init__()
        embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)  # [n_items, dim]
        if embeddings.ndim != 2 or embeddings.shape[0] == 0:
            raise ValueError(f"embeddings must be [n_items > 0, dim], got {embeddings.shape}")
        if embeddings.shape[0] != len(scorer):
            raise ValueError(f"{embeddings.shape[0]} embeddings for {len(scorer)} scorer items")
        if not np.isfinite(embeddings).all():
            raise ValueError("embeddings contain inf or NaN")
        self._model = model
        self._scorer = scorer
        self._embeddings = embeddings
        self._make_mask_fn = make_mask_fn
        self._reward_fn = reward_fn
        self._dense: dict[int, float] = {}
        self._index: int | None = None
        dim = embeddings.shape[1]
        self.observation_space = spaces.Box(-np.inf, np.inf, (dim,), np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, (model.n_layers,), np.float32)

    @property
    def n_items(self) -> int:
        return self._embeddings.shape[0]

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        if options is not None and "index" in options:
            index = int(options["index"])
            if not 0 <= index < self.n_items:
                raise IndexError(f"index {index} outside [0, {self.n_items})")
        else:
            index = int(self.np_random.integers(self.n_items))
        self._index = index
        return self._observation(index), {"index": index}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if self._index is None:
            raise RuntimeError("call reset() before step(): each episode is a single step")
        index = self._index
        if np.shape(action) != self.action_space.shape:
            raise ValueError(f"action shape {np.shape(action)} != {self.action_space.shape}")
        fractions = action_to_fractions(action)  # [n_layers]
        dense = self.dense_metric(index)
        mask_fn = self._make_mask_fn(fractions)
        with self._model.pruned(mask_fn):
            metric = float(self._scorer.score(index))
            sparsity = float(self._model.sparsity)
        reward = float(self._reward_fn(metric, dense, sparsity))
        self._index = None
        info = {
            "index": index,
            "metric": metric,
            "dense_metric": dense,
            "sparsity": sparsity,
            "fractions": fractions,
        }
        return self._observation(index), reward, True, False, info

    def dense_metric(self, index: int) -> float:
        """Metric of item `index` on the unpruned model; scored on first use, then cached."""
        if index not in self._dense:
            if self._model.is_pruned:
                raise RuntimeError("model is pruned; the dense baseline needs the full model")
            self._dense[index] = float(self._scorer.score(index))
        return self._dense[index]

    def precompute_dense(self) -> np.ndarray:
        """Score every item not yet cached on the unpruned model. Returns [n_items] metrics."""
        return np.array([self.dense_metric(i) for i in range(self.n_items)], dtype=np.float64)

    def _observation(self, index: int) -> np.ndarray:
        return self._embeddings[index].copy()  # [dim]; a copy so callers cannot edit the data
