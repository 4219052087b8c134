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

import math
from dataclasses import dataclass

import numpy as np

from pruning.allocation import baseline_kept, sparsity_of

BUDGET_SHAPE = "ends_dense"  # the per-layer shape every per-input budget is spread with
RIDGES = (0.01, 0.1, 1.0, 10.0, 100.0, 1000.0)  # per unit weight; the held-out best is kept
HOLDOUT = 5  # every 5th group (an input's units together) is held out to choose the ridge


def budget_kept(budget: float, n_layers: int, width: int, align: int) -> np.ndarray:
    """The allocation [L] of one per-input budget: `BUDGET_SHAPE` at it (0: the dense width)."""
    if budget <= 0:
        return np.full(n_layers, width)
    return baseline_kept(BUDGET_SHAPE, budget, n_layers, width, align)


def budget_grid(
    budgets: list[float], n_layers: int, width: int, align: int
) -> tuple[np.ndarray, np.ndarray]:
    """Each budget's allocation [G, L] (`budget_kept`) and the sparsity it reaches [G]."""
    kept = np.stack([budget_kept(b, n_layers, width, align) for b in budgets])
    return kept, np.asarray(sparsity_of(kept, width), dtype=np.float64)


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


def choose_budgets(cost_per_token: np.ndarray, sparsity: np.ndarray, price: float) -> np.ndarray:
    """Index [n] of each input's budget: argmin_g cost_per_token[i, g] - price * sparsity[i, g]
    (an input's whole cost is its tokens times this, so the choice is per token); an infinite
    price takes every input's sparsest budget."""
    if math.isinf(price):
        return np.argmax(sparsity, axis=1)
    return np.argmin(cost_per_token - price * sparsity, axis=1)


def oracle_price(
    cost_per_token: np.ndarray, sparsity: np.ndarray, tokens: np.ndarray, target: float
) -> float:
    """The smallest price per token on sparsity (bisected) at which `choose_budgets` reaches a
    token-weighted mean sparsity of `target`; inf if no price does. cost_per_token [n, G] (lower
    is better), sparsity [n, G] reached, tokens [n] > 0 (each input's weight in the mean)."""
    per_token = np.asarray(cost_per_token, dtype=np.float64)
    sparsity = np.asarray(sparsity, dtype=np.float64)
    share = np.asarray(tokens, dtype=np.float64) / np.sum(tokens)

    def mean(price: float) -> float:
        choice = choose_budgets(per_token, sparsity, price)
        return float(np.dot(share, sparsity[np.arange(len(share)), choice]))

    step = float(np.min(np.diff(np.unique(sparsity)), initial=1.0))
    hi = (float(np.ptp(per_token)) + 1.0) / max(step, 1e-12)  # every input at its sparsest
    lo = -hi
    if mean(hi) < target - 1e-12:
        return math.inf
    for _ in range(200):
        mid = (lo + hi) / 2
        if mean(mid) < target - 1e-12:
            lo = mid
        else:
            hi = mid
    return hi


def oracle_budgets(
    cost: np.ndarray,
    sparsity: np.ndarray,
    tokens: np.ndarray,
    target: float,
    groups: np.ndarray | None = None,
) -> np.ndarray:
    """Index [n] of each input's budget among its G scored ones: the cheapest choice whose
    token-weighted mean sparsity reaches `target` (`oracle_price`, then `choose_budgets`).

    cost [n, G] each input's whole cost (lower is better), sparsity [n, G] reached, tokens [n].
    With `groups` [n], each group's mean is held at `target` on its own (a price per group: no
    group pays for another). A price stops only at the lower convex hull of each cost curve: on
    a straight curve (or inputs alike) it cannot stop in the middle, and the mean overshoots the
    target to the next hull point."""
    cost, sparsity = np.asarray(cost, dtype=np.float64), np.asarray(sparsity, dtype=np.float64)
    tokens = np.asarray(tokens, dtype=np.float64)
    if groups is not None:
        groups, choice = np.asarray(groups), np.zeros(len(cost), dtype=np.int64)
        for g in np.unique(groups):
            at = groups == g
            choice[at] = oracle_budgets(cost[at], sparsity[at], tokens[at], target)
        return choice
    per_token = cost / tokens[:, None]
    return choose_budgets(per_token, sparsity, oracle_price(per_token, sparsity, tokens, target))


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


@dataclass(frozen=True)
class BudgetRule:
    """A per-input budget decided from an input's features alone, for one target and neuron
    choice: the budget of `budgets` whose predicted cost per token less `price` times its
    sparsity is least (`choose_budgets`). `price` is the one that holds `target` on the inputs
    it was calibrated on (`oracle_price` on their predicted costs); on another stream the mean
    moves with the stream's mix."""

    target: float
    neurons: str
    budgets: list[float]
    price: float
    model: CostModel

    def choose(self, features: np.ndarray, reach: np.ndarray) -> np.ndarray:
        """features [n, d], reach [G] (each budget's sparsity on this model) -> index [n]."""
        predicted = self.model.predict(np.asarray(features, dtype=np.float64))
        reach = np.tile(np.asarray(reach, dtype=np.float64), (len(predicted), 1))
        return choose_budgets(predicted, reach, self.price)

    def kept(self, features: np.ndarray, n_layers: int, width: int, align: int) -> np.ndarray:
        """Each input's allocation [n, L] (`budget_kept` of its chosen budget)."""
        grid, reach = budget_grid(self.budgets, n_layers, width, align)
        return grid[self.choose(features, reach)]

    def to_dict(self) -> dict:
        """JSON-ready; an infinite price (no price reached the target) is None."""
        m = self.model
        arrays = {"mean": m.mean, "scale": m.scale, "coef": m.coef, "bias": m.bias}
        model = {k: v.tolist() for k, v in arrays.items()}
        model |= {"ridge": m.ridge, "heldout": m.heldout, "heldout_constant": m.heldout_constant}
        rule = {"target": self.target, "neurons": self.neurons, "budgets": list(self.budgets)}
        return rule | {"price": None if math.isinf(self.price) else self.price, "model": model}

    @classmethod
    def from_dict(cls, d: dict) -> BudgetRule:
        """The inverse of `to_dict`; ValueError / KeyError / TypeError on a malformed rule."""
        m = d["model"]
        mean, scale, coef, bias = (
            np.asarray(m[k], dtype=np.float64) for k in ("mean", "scale", "coef", "bias")
        )
        budgets = [float(b) for b in d["budgets"]]
        shapes = (mean.shape, scale.shape, coef.shape, bias.shape)
        if shapes != ((len(mean),), (len(mean),), (len(mean), len(budgets)), (len(budgets),)):
            raise ValueError(f"array shapes {shapes} do not fit {len(budgets)} budgets")
        scalars = (float(m["ridge"]), float(m["heldout"]), float(m["heldout_constant"]))
        model = CostModel(mean, scale, coef, bias, *scalars)
        price = math.inf if d["price"] is None else float(d["price"])
        return cls(float(d["target"]), str(d["neurons"]), budgets, price, model)
