"""Evolutionary search of one static allocation at a target sparsity, as EvoPress does it.

Pure NumPy, no model: the caller supplies `fitness(candidates [n, n_layers], windows) -> [n]`
(summed negative log-likelihood of those calibration windows; lower is better).

A (1 + offspring) loop: the parent starts at `search.start` (uniform or first/last 2 dense) at
the target. Each generation makes `offspring` mutants (each moves 1..mutation_blocks
`align`-blocks from one layer to another, so the total stays exactly on budget), ranks them on a
fresh random `subset` of the windows (stage 1, cheap), rescores the best `survivors` on all
windows (stage 2), and the best survivor replaces the parent only when its full-set fitness is
lower: the parent never gets worse.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from config import SearchConfig
from pruning.allocation import baseline_kept

Fitness = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (kept [n, L], windows [w]) -> [n]


def mutate(
    kept: np.ndarray, width: int, align: int, max_blocks: int, rng: np.random.Generator
) -> np.ndarray:
    """A copy of kept [n_layers] with 1..max_blocks blocks moved from one random layer to
    another (fewer if the donor runs empty or the receiver full); the total is unchanged."""
    blocks = np.asarray(kept, dtype=np.int64) // align  # [L]
    per_layer = width // align
    # valid[d, r]: layer d can give a block and a different layer r can take one
    valid = (blocks[:, None] > 0) & (blocks[None, :] < per_layer)
    np.fill_diagonal(valid, False)
    pairs = np.flatnonzero(valid)
    if len(pairs) == 0:  # one layer, or nothing movable
        return blocks * align
    donor, receiver = np.divmod(rng.choice(pairs), len(blocks))
    m = min(int(rng.integers(1, max_blocks + 1)), blocks[donor], per_layer - blocks[receiver])
    blocks[donor] -= m
    blocks[receiver] += m
    return blocks * align


@dataclass
class SearchResult:
    """The best allocation found and how the parent's full-set fitness fell."""

    kept: np.ndarray  # [n_layers] int64
    fitness: float  # full-set fitness of `kept`
    start_fitness: float  # full-set fitness of the starting allocation (`search.start`)
    evaluations: int  # candidate scorings (stage 1 and stage 2 alike, and the first parent)
    tokens_scored: int  # tokens scored over all evaluations
    history: list[dict] = field(default_factory=list)  # one row per generation (0 = start)


def evolve(
    fitness: Fitness,
    target: float,
    n_layers: int,
    width: int,
    align: int,
    window_tokens: np.ndarray,
    search: SearchConfig,
    rng: np.random.Generator,
    on_generation: Callable[[dict], None] | None = None,
) -> SearchResult:
    """Search kept counts [n_layers] at `target` (exactly its `target_blocks`).

    window_tokens [n_windows]: tokens of each calibration window (costs only; a window's index
    is what `fitness` receives). Stops after `search.generations`, or before a generation that
    would exceed `search.max_evaluations`.
    """
    n_windows = len(window_tokens)
    everything = np.arange(n_windows)
    subset = min(search.subset, n_windows)
    survivors = min(search.survivors, search.offspring)
    cost = {"evaluations": 0, "tokens": 0}

    def score(candidates: np.ndarray, windows: np.ndarray) -> np.ndarray:
        cost["evaluations"] += len(candidates)
        cost["tokens"] += len(candidates) * int(window_tokens[windows].sum())
        return np.asarray(fitness(candidates, windows), dtype=np.float64)

    parent = baseline_kept(search.start, target, n_layers, width, align)
    best = start = float(score(parent[None], everything)[0])
    history: list[dict] = []

    def record(generation: int) -> None:
        row = {
            "generation": generation,
            "evaluations": cost["evaluations"],
            "tokens_scored": cost["tokens"],
            "fitness": best,
        }
        history.append(row)
        if on_generation is not None:
            on_generation(row)

    record(0)
    per_generation = search.offspring + survivors
    for generation in range(1, search.generations + 1):
        budget = search.max_evaluations
        if budget is not None and cost["evaluations"] + per_generation > budget:
            break
        children = np.stack(
            [
                mutate(parent, width, align, search.mutation_blocks, rng)
                for _ in range(search.offspring)
            ]
        )  # [offspring, L]
        windows = np.sort(rng.choice(n_windows, size=subset, replace=False))
        stage1 = score(children, windows)
        finalists = children[np.argsort(stage1, kind="stable")[:survivors]]
        stage2 = score(finalists, everything)
        winner = int(np.argmin(stage2))
        if stage2[winner] < best:
            parent, best = finalists[winner], float(stage2[winner])
        record(generation)
    return SearchResult(parent, best, start, cost["evaluations"], cost["tokens"], history)
