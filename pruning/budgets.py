"""Per-input total budgets: how much of the model each input prunes, with the token-weighted mean
over the inputs held at a target.

Two pieces, both pure:
- `project_budgets`: a policy's raw per-input sparsities, shifted by one common offset (clipped
  to [low, high]) so that their token-weighted mean is the target: the batch projection that
  keeps a per-input budget on the mean, as `project_to_target` keeps a per-layer allocation on
  its total.
- `oracle_budgets`: the hindsight choice of one budget per input from a grid of scored budgets,
  minimising the summed cost at a token-weighted mean sparsity of at least the target (a price
  on sparsity, bisected: the smallest price whose choices reach the target).
"""

from __future__ import annotations

import numpy as np


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
    cost: np.ndarray, sparsity: np.ndarray, tokens: np.ndarray, target: float
) -> np.ndarray:
    """Index [n] of each input's budget among its G scored ones.

    cost [n, G] (lower is better), sparsity [n, G] reached, tokens [n]: input i takes
    argmin_g cost[i, g] - price * share_i * sparsity[i, g], share_i its token share; the price is
    the smallest (bisected) whose token-weighted mean sparsity reaches `target`. If no price
    reaches it, every input takes its sparsest budget."""
    cost, sparsity = np.asarray(cost, dtype=np.float64), np.asarray(sparsity, dtype=np.float64)
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
