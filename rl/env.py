"""The contextual bandit: see an input (and a target sparsity), prune each layer, get a reward.

`PruningBandit` is the one step implementation: it turns (item, target, action) triples into
allocations, scores them together (`scoring.tasks.score_task`) against a cached baseline (the
dense model, or the reference profile at the item's target) and pays rewards. `LLMPruningEnv`
(Gymnasium, one item per step) and `rl.vec_env`'s batched VecEnv (n_envs items in one forward
pass) are thin shells around it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from pruning.allocation import Profile, allocate, dense_kept, sparsity_of
from pruning.importance import CriterionName
from pruning.prunable_llm import PrunableLLM
from rl.reward import RewardFn
from scoring.tasks import Task, score_task, task_orderings


def action_to_fractions(
    action: np.ndarray, center: float | np.ndarray = 0.5, radius: float = 0.5
) -> np.ndarray:
    """Map actions in [-1, 1] to pruning fractions center + radius * a, clipped to [0, 1].
    The defaults give (a + 1) / 2: -1 prunes nothing, +1 everything. [..., L]"""
    action = np.asarray(action, dtype=np.float64)
    if not np.isfinite(action).all():
        raise ValueError(f"action must be finite, got {action}")
    return np.clip(center + radius * action, 0.0, 1.0)


@dataclass(frozen=True)
class ActionMap:
    """How actions become allocations (kept counts per layer).

    Trade-off mode (`targets=None`): the fractions (a + 1) / 2 are used as given, rounded to
    `align`. Budget mode (`targets=(low, high)`): each episode draws a target MLP sparsity
    uniformly from [low, high] (low == high: a fixed target; `step`: from the grid low,
    low + step, ..., high); the policy sees it as the last observation entry, and its fractions
    are projected onto that target exactly (`pruning.allocation.project_to_target`).

    With a `reference` profile (budget mode) the action is a per-input deviation around it:
    fractions = reference(target) + radius * a, so a = 0 is the reference allocation itself.
    """

    n_layers: int
    width: int
    align: int
    targets: tuple[float, float] | None = None
    step: float | None = None
    reference: Profile | None = None
    radius: float = 0.2  # as env.radius

    def __post_init__(self) -> None:
        if self.reference is not None:
            if self.targets is None:
                raise ValueError("a reference profile needs budget mode (targets)")
            if self.reference.n_layers != self.n_layers:
                raise ValueError(
                    f"reference profile has {self.reference.n_layers} layers, the model "
                    f"{self.n_layers}"
                )

    @property
    def budget(self) -> bool:
        return self.targets is not None

    @property
    def layer_actions(self) -> bool:
        """False when radius 0 pins every input to the reference's shape (`env.radius`)."""
        return self.reference is None or self.radius > 0

    def sample_targets(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """[n] targets of new episodes (NaN in trade-off mode)."""
        if self.targets is None:
            return np.full(n, np.nan)
        low, high = self.targets
        if self.step is None:
            return rng.uniform(low, high, size=n)
        grid = low + self.step * np.arange(round((high - low) / self.step) + 1)
        return np.round(rng.choice(grid, size=n), 9)

    def fractions(self, actions: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """actions [n, L] in [-1, 1], targets [n] -> prune fractions [n, L] (before projection)."""
        if self.reference is None:
            return action_to_fractions(actions)
        return action_to_fractions(actions, self.reference.at(targets), self.radius)

    def kept(self, actions: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """actions [n, L] in [-1, 1], targets [n] -> kept counts [n, L]."""
        budget = targets if self.budget else None
        return allocate(self.fractions(actions, targets), budget, self.width, self.align)


def observe(embeddings: np.ndarray, targets: np.ndarray | None) -> np.ndarray:
    """Policy input: embeddings [n, dim], with the target appended in budget mode -> float32."""
    if targets is None:
        return np.array(embeddings, dtype=np.float32)
    column = np.asarray(targets, dtype=np.float32).reshape(-1, 1)
    return np.concatenate([embeddings, column], axis=1, dtype=np.float32)


class PruningBandit:
    """Scores (item, target, action) triples together and pays rewards; caches dense metrics."""

    def __init__(
        self,
        model: PrunableLLM,
        task: Task,
        embeddings: np.ndarray,
        action_map: ActionMap,
        reward_fn: RewardFn,
        criterion: CriterionName | None = None,
    ) -> None:
        """criterion: None = global neurons; else each item keeps the neurons its context
        ranks first by this criterion (`env.neurons: context`)."""
        embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)  # [n_items, dim]
        if embeddings.ndim != 2 or embeddings.shape[0] == 0:
            raise ValueError(f"embeddings must be [n_items > 0, dim], got {embeddings.shape}")
        if embeddings.shape[0] != len(task):
            raise ValueError(f"{embeddings.shape[0]} embeddings for {len(task)} task items")
        if not np.isfinite(embeddings).all():
            raise ValueError("embeddings contain inf or NaN")
        self.model, self.task, self.reward_fn = model, task, reward_fn
        self.embeddings, self.action_map = embeddings, action_map
        self.dense = np.full(len(task), np.nan)  # [n_items] metric of the unpruned model
        self._reference: dict[tuple[int, float], float] = {}  # (item, target) -> metric
        self.criterion = criterion
        self._orderings: dict[int, list] = {}  # item -> context ordering per request, cached

    @property
    def n_items(self) -> int:
        return self.embeddings.shape[0]

    @property
    def observation_space(self) -> spaces.Box:
        dim = self.embeddings.shape[1] + self.action_map.budget
        return spaces.Box(-np.inf, np.inf, (dim,), np.float32)

    @property
    def action_space(self) -> spaces.Box:
        return spaces.Box(-1.0, 1.0, (self.action_map.n_layers,), np.float32)

    def observe(self, indices: np.ndarray, targets: np.ndarray) -> np.ndarray:
        return observe(self.embeddings[indices], targets if self.action_map.budget else None)

    def dense_metrics(self, indices: Sequence[int]) -> np.ndarray:
        """Unpruned metric of each item, scored once, then cached."""
        missing = sorted({int(i) for i in indices if np.isnan(self.dense[i])})
        if missing:
            if self.model.is_pruned:
                raise RuntimeError("model is pruned; the dense baseline needs the full model")
            dense = dense_kept(self.model.n_layers, self.model.intermediate_size)
            for i in missing:  # alone: a baseline must not depend on what it was batched with
                lls = score_task(self.model, self.task, [i], dense)
                self.dense[i] = self.task.metric(i, lls[0])
        return self.dense[np.asarray(indices, dtype=np.int64)]

    def orderings(self, indices: Sequence[int]) -> list[list] | None:
        """Context orderings of the items (computed once per item on the dense model), or None
        for global neurons."""
        if self.criterion is None:
            return None
        missing = sorted({int(i) for i in indices} - self._orderings.keys())
        if missing:
            found, _ = task_orderings(self.model, self.task, missing, self.criterion)
            self._orderings.update(zip(missing, found, strict=True))
        return [self._orderings[int(i)] for i in indices]

    def score(
        self,
        indices: np.ndarray,
        targets: np.ndarray,
        kept: np.ndarray,
        orderings: list[list] | None,
    ) -> tuple[list[float], np.ndarray]:
        """Metric of each item [n] under its allocation `kept` [n, L] (and context `orderings`),
        and the baseline each reward is paid against: the dense metric, or, with a reference
        profile, the reference allocation's metric on the same item at the same target (a
        constant per (item, target): it changes no optimum, only removes the item's own level
        from what the critic must learn). Reference rows are scored in the same forward pass on
        first use, then cached per (item, target)."""
        keys = [(int(i), round(float(t), 9)) for i, t in zip(indices, targets, strict=True)]
        missing = (
            [] if self.action_map.reference is None else sorted(set(keys) - self._reference.keys())
        )
        rows, kept_all = list(indices), kept
        if missing:
            zero = np.zeros((len(missing), self.action_map.n_layers))
            kept_ref = self.action_map.kept(zero, np.array([t for _, t in missing]))
            rows += [i for i, _ in missing]
            kept_all = np.concatenate([kept, kept_ref])
            if orderings is not None:
                orderings = orderings + (self.orderings([i for i, _ in missing]) or [])
        lls = score_task(self.model, self.task, rows, kept_all, orderings)
        for k, key in enumerate(missing):
            self._reference[key] = self.task.metric(key[0], lls[len(indices) + k])
        metrics = [self.task.metric(int(i), lls[k]) for k, i in enumerate(indices)]
        if self.action_map.reference is None:
            return metrics, self.dense_metrics(indices)
        return metrics, np.array([self._reference[key] for key in keys])

    def pay(
        self,
        indices: np.ndarray,
        targets: np.ndarray,
        kept: np.ndarray,
        orderings: list[list] | None,
    ) -> tuple[np.ndarray, list[dict[str, Any]]]:
        """Rewards [n] (`reward_fn` against `score`'s baseline) and infos for the allocations
        `kept` [n, L] of items `indices` at `targets`."""
        dense = self.dense_metrics(indices)
        metrics, base = self.score(indices, targets, kept, orderings)
        sparsity = sparsity_of(kept, self.action_map.width)
        rewards = np.zeros(len(indices), dtype=np.float32)
        infos = []
        for k, i in enumerate(indices):
            rewards[k] = self.reward_fn(metrics[k], float(base[k]), float(sparsity[k]))
            info = {"index": int(i), "metric": metrics[k], "dense_metric": float(dense[k])}
            info |= {"sparsity": float(sparsity[k]), "kept": kept[k], "target": float(targets[k])}
            if self.action_map.reference is not None:
                info["reference_metric"] = float(base[k])
            infos.append(info)
        return rewards, infos

    def step(
        self, indices: np.ndarray, targets: np.ndarray, actions: np.ndarray
    ) -> tuple[np.ndarray, list[dict[str, Any]]]:
        """Rewards [n] and infos for items `indices` [n] at `targets` [n] under `actions` [n, L]."""
        kept = self.action_map.kept(actions, targets)  # [n, L]
        return self.pay(indices, targets, kept, self.orderings(indices))


class LLMPruningEnv(gym.Env[np.ndarray, np.ndarray]):
    """Single-step contextual bandit: see one input, prune each layer's MLP, score the input.

    ## Action Space
    `Box(-1, 1, (n_layers,), float32)`, n_layers read from the model. Action a_l becomes the
    fraction (a_l + 1) / 2 of layer l's MLP neurons to prune: -1 prunes nothing, +1 the whole
    MLP. In budget mode the fractions are projected onto the episode's target sparsity
    (`ActionMap`). Kept counts are multiples of `align`; the most important neurons stay.

    ## Observation Space
    `Box(-inf, inf, (dim,), float32)`: the precomputed sentence embedding of the item; in budget
    mode `dim + 1`, the last entry being the episode's target MLP sparsity.

    ## Rewards
    `reward_fn(metric, dense_metric, sparsity)`: the item's metric on the pruned model against
    the same on the dense model (scored once per item, then cached) and the pruned fraction.

    ## Episode End
    Every episode is one step: `step` returns terminated=True, truncated=False. The observation
    it returns is the same item's (there is no next state); call `reset` for the next item.
    The model is unpruned again when `step` returns or raises.

    ## Info
    `reset`: {"index", "target"}. `step`: {"index", "target", "metric", "dense_metric",
    "sparsity", "kept"}. `reset(options={"index": i, "target": t})` pins the item / target.
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self, bandit: PruningBandit) -> None:
        super().__init__()
        self.bandit = bandit
        self.observation_space = bandit.observation_space
        self.action_space = bandit.action_space
        self._episode: tuple[int, float] | None = None

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        options = options or {}
        if "index" in options:
            index = int(options["index"])
            if not 0 <= index < self.bandit.n_items:
                raise IndexError(f"index {index} outside [0, {self.bandit.n_items})")
        else:
            index = int(self.np_random.integers(self.bandit.n_items))
        if "target" in options:
            target = float(options["target"])
        else:
            target = float(self.bandit.action_map.sample_targets(self.np_random, 1)[0])
        self._episode = (index, target)
        obs = self.bandit.observe(np.array([index]), np.array([target]))[0]
        return obs, {"index": index, "target": target}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if self._episode is None:
            raise RuntimeError("call reset() before step(): each episode is a single step")
        if np.shape(action) != self.action_space.shape:
            raise ValueError(f"action shape {np.shape(action)} != {self.action_space.shape}")
        (index, target), self._episode = self._episode, None
        indices, targets = np.array([index]), np.array([target])
        rewards, infos = self.bandit.step(indices, targets, np.asarray(action)[None])
        obs = self.bandit.observe(indices, targets)[0]
        return obs, float(rewards[0]), True, False, infos[0]
