from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from config import EnvConfig, load_config
from rl.reward import (
    REWARDS,
    CorrectnessReward,
    PerplexityReward,
    RewardFn,
    make_reward,
    relative_correctness,
)

ROOT = Path(__file__).resolve().parents[1]

SPARSITIES = np.linspace(0.0, 1.0, 11)
WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)
PPLS = (1.0, 20.0, 44.0, 45.0, 74.0, 1e3, 1e9, math.inf, math.nan, 0.0, -3.0)


def test_perplexity_hand_computed() -> None:
    reward = PerplexityReward(0.5)
    assert reward(44.0, 44.0, 0.0) == 0.0
    assert reward(74.0, 44.0, 0.2) == pytest.approx(math.tanh(0.2 - 0.5 * math.log(74 / 44)))
    assert reward(74.0, 44.0, 0.2) == pytest.approx(-0.05986, abs=1e-4)
    assert PerplexityReward(0.25, alpha=2.0)(88.0, 44.0, 0.5) == pytest.approx(
        math.tanh(2.0 * (2 * 0.75 * 0.5 - 0.25 * math.log(2.0)))
    )


def test_perplexity_trade_off_at_half_weight() -> None:
    reward = PerplexityReward(0.5)
    dense = reward(44.0, 44.0, 0.0)
    mild = reward(45.3, 44.0, 0.05)
    uniform20 = reward(74.0, 44.0, 0.2)
    broken = reward(5e3, 44.0, 1.0)
    assert mild > dense > uniform20 > broken
    assert mild - uniform20 > 0.08
    assert broken < -0.85


@pytest.mark.parametrize("weight", WEIGHTS)
@pytest.mark.parametrize("name", sorted(REWARDS))
def test_bounded_and_finite(name: str, weight: float) -> None:
    reward = make_reward(name, weight)
    metrics = PPLS if name == "perplexity" else (0.0, 0.25, 1.0, math.nan)
    denses = (1.0, 44.0) if name == "perplexity" else (0.0, 1.0)
    values = np.array([reward(m, d, s) for m in metrics for d in denses for s in SPARSITIES])
    assert np.isfinite(values).all()
    assert values.min() >= -1.0 and values.max() <= 1.0


@pytest.mark.parametrize("weight", (0.0, 0.3, 0.5, 0.9))
def test_perplexity_increases_with_sparsity(weight: float) -> None:
    reward = PerplexityReward(weight)
    values = [reward(60.0, 44.0, s) for s in SPARSITIES]
    assert np.all(np.diff(values) > 0)


@pytest.mark.parametrize("weight", (0.1, 0.5, 1.0))
def test_perplexity_decreases_with_ppl(weight: float) -> None:
    reward = PerplexityReward(weight)
    values = [reward(p, 44.0, 0.3) for p in (10.0, 44.0, 50.0, 100.0, 1e3)]
    assert np.all(np.diff(values) < 0)
    worst = [reward(p, 44.0, 0.3) for p in (1e30, math.inf, math.nan, 0.0)]
    assert worst[1:] == [-1.0, -1.0, -1.0]
    assert min(values) > worst[0] >= -1.0


def test_perplexity_weight_extremes() -> None:
    quality_only = PerplexityReward(1.0)
    assert quality_only(88.0, 44.0, 0.0) == quality_only(88.0, 44.0, 1.0)
    assert quality_only(88.0, 44.0, 0.5) == pytest.approx(-math.tanh(math.log(2.0)))
    sparsity_only = PerplexityReward(0.0)
    expected = math.tanh(2 * 0.4)
    assert [sparsity_only(p, 44.0, 0.4) for p in (44.0, 1e6, math.inf, math.nan)] == [expected] * 4


def test_full_pruning_loses_to_dense_when_ppl_blows_up() -> None:
    for weight in (0.3, 0.5, 0.9):
        reward = PerplexityReward(weight)
        assert reward(44.0 * 1e6, 44.0, 1.0) < reward(44.0, 44.0, 0.0)
    # the documented break-even blow-up at w = 0.5: r = e^2
    assert PerplexityReward(0.5)(44.0 * math.exp(2.0), 44.0, 1.0) == pytest.approx(0.0, abs=1e-12)


def test_correctness_hand_computed() -> None:
    reward = CorrectnessReward(0.75)
    assert reward(1.0, 1.0, 0.0) == 0.0 and reward(0.0, 0.0, 0.0) == 0.0  # dense scores 0
    assert reward(1.0, 1.0, 0.4) == pytest.approx(0.25 * 0.4 / 1.75)
    assert reward(0.0, 1.0, 0.5) == pytest.approx((0.125 - 1.5) / 1.75)  # -0.785714
    assert reward(1.0, 0.0, 1.0) == pytest.approx(1.0)
    assert reward(math.nan, 1.0, 1.0) == pytest.approx(-1.25 / 1.75)  # NaN counts as wrong
    assert reward(0.5, 1.0, 0.5) == pytest.approx((0.125 - 0.75) / 1.75)
    assert CorrectnessReward(1.0)(0.0, 1.0, 0.0) == -1.0  # the lower bound, -2w / (1 + w)


def test_correctness_monotone_and_extremes() -> None:
    reward = CorrectnessReward(0.75)
    assert np.all(np.diff([reward(1.0, 1.0, s) for s in SPARSITIES]) > 0)
    assert reward(0.0, 1.0, 0.3) < reward(1.0, 1.0, 0.3)
    assert CorrectnessReward(1.0)(1.0, 1.0, 0.0) == CorrectnessReward(1.0)(1.0, 1.0, 1.0) == 0.0
    assert CorrectnessReward(0.0)(0.0, 1.0, 0.2) == CorrectnessReward(0.0)(1.0, 0.0, 0.2) == 0.2


def expected_rewards(reward: RewardFn, actions: dict[str, tuple[float, float]]) -> dict:
    """Expected reward of each action (sparsity, P(right)) on a question the dense model gets
    right; the reward is linear in the correctness, so E[reward] = reward(P(right))."""
    return {
        name: acc * reward(1.0, 1.0, s) + (1 - acc) * reward(0.0, 1.0, s)
        for name, (s, acc) in actions.items()
    }


def test_default_weight_does_not_reward_pruning_everything() -> None:
    weight = EnvConfig().quality_weight
    assert weight == load_config(ROOT / "config.yml").env.quality_weight == 0.5
    actions = {  # (sparsity, accuracy) on a question the dense model answers right
        "dense": (0.0, 1.0),
        "mild": (0.2, 1.0),  # keeps the answer
        "half": (0.5, 0.6),
        "all": (1.0, 0.25),  # a 1-in-4 guess
    }
    expected = expected_rewards(make_reward("correctness", weight), actions)
    assert max(expected, key=expected.get) == "mild"
    assert expected["all"] < expected["dense"] == 0.0
    assert expected["all"] == pytest.approx(-1 / 6)
    assert expected["mild"] == pytest.approx(0.5 * 0.2 / 1.5)
    # the documented break-even of pruning everything: w = 2/5
    at_break_even = expected_rewards(CorrectnessReward(0.4), actions)
    assert at_break_even["all"] == pytest.approx(0.0, abs=1e-12)


def test_quality_only_is_relative_correctness() -> None:
    quality_only = CorrectnessReward(1.0)
    for metric, dense in ((1.0, 1.0), (0.0, 1.0), (1.0, 0.0), (0.25, 1.0), (math.nan, 0.0)):
        expected = relative_correctness(metric, dense)
        assert [quality_only(metric, dense, s) for s in (0.0, 0.7)] == [expected] * 2
    assert relative_correctness(0.25, 1.0) == -0.75 and relative_correctness(1.0, 0.0) == 1.0
    assert relative_correctness(math.nan, 1.0) == -1.0
    with pytest.raises(ValueError, match="dense_metric"):
        relative_correctness(1.0, math.nan)


@pytest.mark.parametrize("name", sorted(REWARDS))
@pytest.mark.parametrize("weight", (-0.1, 1.5, math.nan))
def test_weight_outside_unit_interval(name: str, weight: float) -> None:
    with pytest.raises(ValueError, match="quality_weight"):
        make_reward(name, weight)


def test_invalid_inputs() -> None:
    with pytest.raises(ValueError, match="sparsity"):
        PerplexityReward(0.5)(44.0, 44.0, 1.2)
    with pytest.raises(ValueError, match="sparsity"):
        CorrectnessReward(0.5)(1.0, 1.0, math.nan)
    with pytest.raises(ValueError, match="dense"):
        PerplexityReward(0.5)(44.0, math.nan, 0.1)
    with pytest.raises(ValueError, match="metric"):
        CorrectnessReward(0.5)(2.0, 1.0, 0.1)
    with pytest.raises(ValueError, match="alpha"):
        PerplexityReward(0.5, alpha=0.0)
    with pytest.raises(ValueError, match="unknown reward"):
        make_reward("bleu", 0.5)
    assert PerplexityReward(0.5)(44.0, 44.0, 1.0 + 1e-9) == pytest.approx(math.tanh(1.0))


def test_registry_satisfies_protocol() -> None:
    fn: RewardFn = make_reward("perplexity", 0.5)
    assert isinstance(fn, PerplexityReward)
    assert isinstance(make_reward("correctness", 0.5), CorrectnessReward)
