"""Tasks: what is scored for each item, and how log-likelihoods become metrics.

A task splits scoring so that `rl.batched.score_samples` can share forward passes between items
and allocations: `requests(i)` gives the (context, targets) token windows of item i,
`metric(i, logliks)` turns their log-likelihoods into the item's metric (the reward's input),
and `summary(indices, logliks)` aggregates items into the reported metrics (corpus word
perplexity as lm-eval, accuracy). `score_task` scores items of a task under allocations.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from pruning.prunable_llm import PrunableLLM
from rl.batched import score_samples
from rl.metrics import PerplexityCalculator
from rl.mmlu import MMLULoglikelihoodCalculator
from rl.windows import Window, rolling_windows, safe_exp, token_perplexity


class Task(Protocol):
    max_length: int
    batch_size: int

    def __len__(self) -> int: ...

    def requests(self, idx: int) -> list[Window]: ...

    def metric(self, idx: int, logliks: Sequence[float]) -> float: ...

    def summary(self, indices: Sequence[int], logliks: Sequence[Sequence[float]]) -> dict: ...


class WindowTask:
    """Token perplexity of training windows (token lists), each scored after `prefix_token`."""

    def __init__(
        self,
        token_lists: Sequence[Sequence[int]],
        prefix_token: int,
        max_length: int,
        batch_size: int = 8,
    ) -> None:
        self.max_length, self.batch_size = max_length, batch_size
        self._requests = [rolling_windows(list(t), prefix_token, max_length) for t in token_lists]
        self._counts = [max(len(t), 1) for t in token_lists]

    def __len__(self) -> int:
        return len(self._requests)

    def requests(self, idx: int) -> list[Window]:
        return self._requests[idx]

    def metric(self, idx: int, logliks: Sequence[float]) -> float:
        return safe_exp(-sum(logliks) / self._counts[idx])

    def summary(self, indices: Sequence[int], logliks: Sequence[Sequence[float]]) -> dict:
        counts = [self._counts[i] for i in indices]
        return {"token_perplexity": token_perplexity([sum(ll) for ll in logliks], counts)}


class DocumentTask:
    """lm-eval's WikiText task: per-document word perplexity, corpus metrics as lm-eval."""

    def __init__(self, calculator: PerplexityCalculator, docs: Sequence[Any]) -> None:
        self.calculator, self.docs = calculator, list(docs)
        self.max_length, self.batch_size = calculator.max_length, calculator.batch_size

    def __len__(self) -> int:
        return len(self.docs)

    def requests(self, idx: int) -> list[Window]:
        return self.calculator.windows(self.docs[idx].text)

    def metric(self, idx: int, logliks: Sequence[float]) -> float:
        return safe_exp(-sum(logliks) / max(self.docs[idx].word_count, 1))

    def summary(self, indices: Sequence[int], logliks: Sequence[Sequence[float]]) -> dict:
        docs = [self.docs[i] for i in indices]
        return self.calculator.corpus_metrics(docs, [sum(ll) for ll in logliks])


class MMLUTask:
    """Correctness (1.0 or 0.0) of MMLU questions under the calculator's scoring mode."""

    def __init__(
        self, calculator: MMLULoglikelihoodCalculator, items: Sequence[Any], batch_size: int = 8
    ) -> None:
        self.calculator, self.items = calculator, list(items)
        self.max_length, self.batch_size = calculator.max_length, batch_size

    def __len__(self) -> int:
        return len(self.items)

    def requests(self, idx: int) -> list[Window]:
        return self.calculator.requests(self.items[idx])

    def metric(self, idx: int, logliks: Sequence[float]) -> float:
        item = self.items[idx]
        return float(self.calculator.judge(item, self.requests(idx), list(logliks))["correct"])

    def summary(self, indices: Sequence[int], logliks: Sequence[Sequence[float]]) -> dict:
        correct = [self.metric(i, ll) for i, ll in zip(indices, logliks, strict=True)]
        return {"acc": float(np.mean(correct)), "n": len(correct)}


def score_task(
    model: PrunableLLM, task: Task, indices: Sequence[int], kept: np.ndarray | None
) -> tuple[list[list[float]], np.ndarray]:
    """Log-likelihoods of items `indices` of `task`, item k under kept[k] ([n, n_layers] or
    one [n_layers] allocation for all; None = dense). Returns (logliks per item, sparsity [n])."""
    if kept is not None and np.ndim(kept) == 1:
        kept = np.broadcast_to(kept, (len(indices), len(kept)))
    requests = [task.requests(i) for i in indices]
    return score_samples(model, requests, kept, task.batch_size, task.max_length)
