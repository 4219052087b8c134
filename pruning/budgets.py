"""Per-input total budgets: how much of the model each input prunes, with the token-weighted mean
over the inputs held at a target.

The pieces, all pure:
- `project_budgets`: a policy's raw per-input sparsities, shifted by one common offset (clipped
  to [low, high]) so that their token-weighted mean is the target: the batch projection that
  keeps a per-input budget on the mean, as `project_to_target` keeps a per-layer allocation on
  its total.
- `oracle_budgets`: the hindsight choice of one budget per input from a grid of scored budgets,
  minimising the summed cost at a token-weighted mean sparsity of at least the target (a price
  on sparsity, bisected: the smallest price whose choices reach the target).
- `fit_cost_model`: what a deployment can learn of that choice, a ridge regression from what an
  input's decision may read (its features) to its cost per token at each budget of the grid;
  `oracle_budgets` on the predicted costs is then a per-input budget decided before scoring;
  `nearest_centroid` names an input's likely kind from the same features, so a choice can hold
  each kind's mean on its own.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

RIDGES = (0.01, 0.1, 1.0, 10.0, 100.0, 1000.0)  # per unit weight; the held-out best is kept
HOLDOUT = 5  # every 5th group (an input's units together) is held out to choose the ridge


def weighted_mean(values: np.ndarray, tokens: np.ndarray) -> float:
    """sum(tokens * values) / sum(tokens); values [n], tokens [n] > 0."""
    tokens = np.asarray(tokens, dtype=np.float64)
    return float(np.dot(tokens, values) / tokens.sum())


def project_budgets(
    raw: np.ndarray, tokens: np.ndarray, target: float, low: float = 0.0, high: float = 0.95
) -> np.ndarray:
    """raw [n] sparsities -> clip(raw + c, low, high) [n] with token-weighted mean `target`.

    The mean is monotone in c, so c is found by bisection (to 1e-12)."""
    raw = np.asarray(raw, dtype=np.float64)
    if not low <= target <= high:
        raise ValueError(f"target {target} outside [{low}, {high}]")
    lo, hi = low - raw.max(), high - raw.min()  # every input at low / at high
    for _ in range(100):
        mid = (lo + hi) / 2
        if weighted_mean(np.clip(raw + mid, low, high), tokens) < target:
            lo = mid
        else:
            hi = mid
    return np.clip(raw + hi, low, high)


def oracle_budgets(
    cost: np.ndarray,
    sparsity: np.ndarray,
    tokens: np.ndarray,
    target: float,
    groups: np.ndarray | None = None,
) -> np.ndarray:
    """Index [n] of each input's budget among its G scored ones.

    cost [n, G] (lower is better), sparsity [n, G] reached, tokens [n]: input i takes
    argmin_g cost[i, g] - price * share_i * sparsity[i, g], share_i its token share; the price is
    the smallest (bisected) whose token-weighted mean sparsity reaches `target`. If no price
    reaches it, every input takes its sparsest budget. With `groups` [n], each group's mean is
    held at `target` on its own (a price per group: no group pays for another)."""
    cost, sparsity = np.asarray(cost, dtype=np.float64), np.asarray(sparsity, dtype=np.float64)
    if groups is not None:
        groups, choice = np.asarray(groups), np.zeros(len(cost), dtype=np.int64)
        for g in np.unique(groups):
            at = groups == g
            choice[at] = oracle_budgets(cost[at], sparsity[at], np.asarray(tokens)[at], target)
        return choice
    share = np.asarray(tokens, dtype=np.float64) / np.sum(tokens)

    def choose(price: float) -> np.ndarray:
        return np.argmin(cost - price * share[:, None] * sparsity, axis=1)

    def mean(choice: np.ndarray) -> float:
        return float(np.dot(share, sparsity[np.arange(len(share)), choice]))

    span = float(np.ptp(cost)) + 1.0
    step = float(np.min(np.diff(np.unique(sparsity)), initial=1.0)) * float(share.min())
    lo, hi = -span / max(step, 1e-12), span / max(step, 1e-12)
    if mean(choose(hi)) < target - 1e-12:
        return np.argmax(sparsity, axis=1)
    for _ in range(200):
        mid = (lo + hi) / 2
        if mean(choose(mid)) < target - 1e-12:
            lo = mid
        else:
            hi = mid
    return choose(hi)


def nearest_centroid(features: np.ndarray, labels: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Each query's label [m]: the label whose training features' mean is nearest (Euclidean);
    features [n, d] with labels [n], queries [m, d]."""
    labels = np.asarray(labels)
    names = np.unique(labels)
    centroids = np.stack([np.asarray(features)[labels == name].mean(0) for name in names])
    distance = ((np.asarray(queries)[:, None, :] - centroids[None]) ** 2).sum(-1)
    return names[np.argmin(distance, axis=1)]


@dataclass(frozen=True)
class CostModel:
    """Standardised features -> cost per token at each of G budgets, up to a constant per input
    (all that a choice among the budgets needs). `heldout` / `heldout_constant`: the held-out
    weighted squared error of this ridge and of the features-blind model (every input the mean
    curve), so a model that learns nothing shows it."""

    mean: np.ndarray  # [d]
    scale: np.ndarray  # [d]
    coef: np.ndarray  # [d, G]
    bias: np.ndarray  # [G]
    ridge: float
    heldout: float
    heldout_constant: float

    def predict(self, features: np.ndarray) -> np.ndarray:
        """[n, d] -> [n, G] predicted cost per token."""
        return ((features - self.mean) / self.scale) @ self.coef + self.bias


def _ridge(x: np.ndarray, y: np.ndarray, w: np.ndarray, ridge: float) -> tuple:
    """Weighted ridge on centred data: argmin sum_i w_i |y_i - x_i W - b|^2 + ridge sum(w) |W|^2."""
    share = w / w.sum()
    x_mean, y_mean = share @ x, share @ y
    xc = x - x_mean
    gram = xc.T @ (share[:, None] * xc) + ridge * np.eye(x.shape[1])
    coef = np.linalg.solve(gram, xc.T @ (share[:, None] * (y - y_mean)))
    return coef, y_mean - x_mean @ coef


def fit_cost_model(
    features: np.ndarray, cost: np.ndarray, tokens: np.ndarray, groups: np.ndarray
) -> CostModel:
    """features [n, d] of n training inputs, cost [n, G] each input's cost at each budget,
    tokens [n] > 0, groups [n] (inputs of one group are held out together).

    Regresses cost / tokens, centred per input, weighted by tokens; the ridge is the one of
    `RIDGES` with the least held-out error (every `HOLDOUT`-th group), refitted on all."""
    features = np.asarray(features, dtype=np.float64)
    tokens = np.asarray(tokens, dtype=np.float64)
    y = np.asarray(cost, dtype=np.float64) / tokens[:, None]
    y -= y.mean(axis=1, keepdims=True)
    mean, scale = features.mean(0), features.std(0) + 1e-8
    x = (features - mean) / scale
    unique = np.unique(groups)
    if len(unique) < HOLDOUT:
        raise ValueError(f"fit_cost_model needs at least {HOLDOUT} groups of inputs")
    held = np.isin(groups, unique[::HOLDOUT])

    def error(pred: np.ndarray) -> float:
        return float(tokens[held] @ ((y[held] - pred) ** 2).sum(1) / tokens[held].sum())

    fit = ~held
    errors = {}
    for ridge in RIDGES:
        coef, bias = _ridge(x[fit], y[fit], tokens[fit], ridge)
        errors[ridge] = error(x[held] @ coef + bias)
    constant = error(np.broadcast_to(tokens[fit] @ y[fit] / tokens[fit].sum(), y[held].shape))
    best = min(errors, key=errors.get)
    coef, bias = _ridge(x, y, tokens, best)
    return CostModel(mean, scale, coef, bias, best, errors[best], constant)
