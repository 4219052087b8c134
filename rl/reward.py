"""Rewards for one pruned forward pass: trade the fraction of MLP neurons pruned against quality.

Every reward is a pure function of (metric, dense_metric, sparsity) with a `quality_weight` w in
[0, 1]: w = 1 scores quality only, w = 0 scores sparsity only. Both score the dense model 0 and
both price sparsity at 2 * (1 - w) per unit against the quality lost relative to the dense model
(w * log of the perplexity ratio; 4 * w per right answer lost), so the same w means the same
price of sparsity.
"""

from __future__ import annotations

import math
from typing import Protocol

_SPARSITY_TOLERANCE = 1e-6  # float round-off in a measured fraction of pruned neurons


class RewardFn(Protocol):
    def __call__(self, metric: float, dense_metric: float, sparsity: float) -> float:
        """Reward in [-1, 1] for `metric` of the pruned model, given the dense model's metric."""
        ...


def _check_weight(quality_weight: float) -> float:
    if not 0.0 <= quality_weight <= 1.0:
        raise ValueError(f"quality_weight must be in [0, 1], got {quality_weight}")
    return float(quality_weight)


def _check_sparsity(sparsity: float) -> float:
    if not -_SPARSITY_TOLERANCE <= sparsity <= 1.0 + _SPARSITY_TOLERANCE:
        raise ValueError(f"sparsity must be in [0, 1], got {sparsity}")
    return min(max(float(sparsity), 0.0), 1.0)


class PerplexityReward:
    """Reward for perplexity (lower is better), relative to the dense model's perplexity.

    With r = ppl / dense_ppl, s the sparsity and w the quality weight::

        reward = tanh(alpha * (2 * (1 - w) * s - w * log(r)))

    Why this form:
      * The dense model scores exactly 0, so a positive reward means "a better trade than not
        pruning at all". Pruning s pays off iff r < exp(2 * s * (1 - w) / w): at w = 0.5, 10 %
        sparsity is worth up to a 22 % perplexity increase, 20 % up to 49 %. A uniform 20 %
        pruning that takes SmolLM2 from 44 to 74 (r = 1.68) scores tanh(-0.06) < 0, below both
        the dense model and mild pruning (5 % at r = 1.03 scores +0.03).
      * log(r) is unbounded, so a perplexity blow-up outweighs the bounded sparsity gain:
        pruning everything loses to the dense model once r > exp(2 * (1 - w) / w), i.e. 7.4x
        at w = 0.5, far below what removing every MLP does. (The bounded alternative
        w * (-tanh(log r)) + (1 - w) * (2s - 1) scores full pruning at 1 - 2w, above the dense
        model's w - 1 for any w < 2/3: a degenerate bandit.)
      * tanh squashes into (-1, 1) once, keeping the ordering; alpha (default 1) sets how far
        from the dense trade-off the reward saturates. Keep it small enough that heavily
        pruned actions still get a gradient (at alpha = 1, log r = 3 with s = 0.5, w = 0.5
        gives -0.76, not -1).

    Monotone: increasing in s, decreasing in ppl. An inf, NaN or non-positive ppl means a broken
    model: the worst reward, -1 (the limit r -> inf), unless w = 0, where quality is ignored.
    """

    def __init__(self, quality_weight: float, alpha: float = 1.0) -> None:
        self.quality_weight = _check_weight(quality_weight)
        if not alpha > 0.0 or not math.isfinite(alpha):
            raise ValueError(f"alpha must be positive and finite, got {alpha}")
        self.alpha = float(alpha)

    def __call__(self, metric: float, dense_metric: float, sparsity: float) -> float:
        if not (math.isfinite(dense_metric) and dense_metric > 0.0):
            raise ValueError(f"dense perplexity must be positive and finite, got {dense_metric}")
        s = _check_sparsity(sparsity)
        w = self.quality_weight
        gain = 2.0 * (1.0 - w) * s
        if w > 0.0:
            if not (math.isfinite(metric) and metric > 0.0):
                return -1.0
            gain -= w * math.log(metric / dense_metric)
        return math.tanh(self.alpha * gain)

    def __repr__(self) -> str:
        return f"PerplexityReward(quality_weight={self.quality_weight}, alpha={self.alpha})"


def relative_correctness(metric: float, dense_metric: float) -> float:
    """Quality relative to the dense model on the same item: metric - dense_metric, in [-1, 1].

    -1: pruning turned a right answer wrong; 0: no change; +1: pruning turned a wrong answer
    right. Per item the dense value is a constant, so maximising the expectation of this
    quality-only reward maximises accuracy (e.g. under a sparsity budget enforced elsewhere).
    A NaN metric counts as wrong; the dense metric must be a correctness in [0, 1].
    """
    if not (math.isnan(metric) or 0.0 <= metric <= 1.0):
        raise ValueError(f"metric must be a correctness in [0, 1], got {metric}")
    if not 0.0 <= dense_metric <= 1.0:  # False for NaN too
        raise ValueError(f"dense_metric must be a correctness in [0, 1], got {dense_metric}")
    correct = 0.0 if math.isnan(metric) else float(metric)
    return correct - float(dense_metric)


class CorrectnessReward:
    """Reward for correctness in [0, 1] (1 = right answer; a fraction for several items),
    relative to the dense model's correctness on the same item.

    With d = relative_correctness(metric, dense_metric) in [-1, 1], s the sparsity, w the weight::

        reward = ((1 - w) * s + 2 * w * d) / (1 + w)        # in [-1, 1], no squashing needed

    i.e. the perplexity reward's sparsity gain 2 * (1 - w) * s against a quality loss of
    4 * w per right answer lost, divided by 2 * (1 + w) to stay in [-1, 1].

    Why this form:
      * The dense model scores exactly 0, as in `PerplexityReward`: the policy is paid for what
        pruning changes, not for questions the dense model already gets right or wrong.
      * One lost answer costs 2w / (1 - w) units of sparsity: at w = 0.5, twice the gain of
        pruning everything. Pruning everything makes a 4-way answer a 1-in-4 guess, an expected
        loss of 3/4 answer where the dense model is right, so it loses to the dense model for
        any w > 2/5; at the default w = 0.5 it scores -1/6 there, mild pruning that keeps the
        answer +(1 - w) * s / (1 + w) > 0. (The former w * (2c - 1) + (1 - w) * (2s - 1)
        priced one answer at w / (1 - w) and learned to prune everything for any w < 4/7.)
      * Linear in d and s: a fraction of right answers (several items) is scored as the
        expectation of the per-item rewards, and rewards order actions exactly as their
        expected trade-off does.

    On items the dense model gets wrong only sparsity (and lucky guesses) can be earned, so
    pruning hard there is the right answer. w = 1 is the quality-only reward
    `relative_correctness`; w = 0 scores sparsity only. A NaN metric counts as wrong.
    """

    def __init__(self, quality_weight: float) -> None:
        self.quality_weight = _check_weight(quality_weight)

    def __call__(self, metric: float, dense_metric: float, sparsity: float) -> float:
        d = relative_correctness(metric, dense_metric)
        s = _check_sparsity(sparsity)
        w = self.quality_weight
        return ((1.0 - w) * s + 2.0 * w * d) / (1.0 + w)

    def __repr__(self) -> str:
        return f"CorrectnessReward(quality_weight={self.quality_weight})"


class LogPerplexityRatioReward:
    """Budget mode (the sparsity is fixed by the target): quality only, relative to dense.

        reward = -log(ppl / dense_ppl), clipped to [-clip, clip]

    0 for the dense model's quality, negative for a worse one; additive over items (a sum of
    rewards is the log of a product of perplexity ratios) and free of the scale of each item's
    own perplexity. A broken model (inf / NaN perplexity) scores -clip.
    """

    def __init__(self, clip: float = 10.0) -> None:
        self.clip = float(clip)

    def __call__(self, metric: float, dense_metric: float, sparsity: float) -> float:
        del sparsity  # fixed by the target in budget mode
        if not (math.isfinite(dense_metric) and dense_metric > 0.0):
            raise ValueError(f"dense perplexity must be positive and finite, got {dense_metric}")
        if not (math.isfinite(metric) and metric > 0.0):
            return -self.clip
        return min(max(-math.log(metric / dense_metric), -self.clip), self.clip)

    def __repr__(self) -> str:
        return f"LogPerplexityRatioReward(clip={self.clip})"


class CorrectnessChangeReward:
    """Budget mode for correctness: pruned minus dense correctness, in [-1, 1] (0 = unchanged)."""

    def __call__(self, metric: float, dense_metric: float, sparsity: float) -> float:
        del sparsity  # fixed by the target in budget mode
        q = 0.0 if math.isnan(metric) else float(metric)
        return q - float(dense_metric)

    def __repr__(self) -> str:
        return "CorrectnessChangeReward()"


REWARDS: dict[str, type[PerplexityReward] | type[CorrectnessReward]] = {
    "perplexity": PerplexityReward,
    "correctness": CorrectnessReward,
}
BUDGET_REWARDS: dict[str, type[LogPerplexityRatioReward] | type[CorrectnessChangeReward]] = {
    "perplexity": LogPerplexityRatioReward,
    "correctness": CorrectnessChangeReward,
}


def make_reward(name: str, quality_weight: float) -> RewardFn:
    """Trade-off reward by registry name, e.g. make_reward("perplexity", 0.5)."""
    if name not in REWARDS:
        raise ValueError(f"unknown reward {name!r}; choose from {sorted(REWARDS)}")
    return REWARDS[name](quality_weight)


def make_budget_reward(name: str) -> RewardFn:
    """Quality-only reward of budget mode (the target fixes the sparsity)."""
    if name not in BUDGET_REWARDS:
        raise ValueError(f"unknown reward {name!r}; choose from {sorted(BUDGET_REWARDS)}")
    return BUDGET_REWARDS[name]()
