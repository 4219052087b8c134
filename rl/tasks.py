"""Item scorers: the task metric of one item on the model as it is now (pruned or not).

A scorer splits scoring in two so that the batched path can share one forward pass between
items: `requests(i)` gives the (context, targets) token windows to score, `metric(i, logliks)`
turns their log-likelihoods into the item's metric. `score(i)` does both on the current model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from rl.metrics import score_requests
from rl.mmlu import MMLULoglikelihoodCalculator
from rl.windows import Window, rolling_windows, safe_exp


class PerplexityScorer:
    """Perplexity of token sequences: exp(-sum log-likelihood / denominator).

    Training windows use their token count as denominator (token perplexity); WikiText
    documents use the word count of the original page (lm-eval's word perplexity).
    """

    higher_is_better = False

    def __init__(
        self,
        model: torch.nn.Module,
        token_lists: Sequence[Sequence[int]],
        denominators: Sequence[int],
        prefix_token: int,
        max_length: int,
        batch_size: int = 8,
    ) -> None:
        if len(token_lists) != len(denominators):
            raise ValueError(f"{len(token_lists)} token lists but {len(denominators)} counts")
        self.model = model
        self.max_length = max_length
        self.batch_size = batch_size
        self._requests = [rolling_windows(list(t), prefix_token, max_length) for t in token_lists]
        self._denominators = [max(int(d), 1) for d in denominators]

    def __len__(self) -> int:
        return len(self._requests)

    def requests(self, idx: int) -> list[Window]:
        return self._requests[idx]

    def metric(self, idx: int, logliks: Sequence[float]) -> float:
        return safe_exp(-sum(logliks) / self._denominators[idx])

    def score(self, idx: int) -> float:
        reqs = self.requests(idx)
        return self.metric(idx, score_requests(self.model, reqs, self.batch_size, self.max_length))


class MMLUScorer:
    """Correctness (1.0 or 0.0) of one MMLU question under the calculator's scoring mode."""

    higher_is_better = True

    def __init__(self, calculator: MMLULoglikelihoodCalculator, items: Sequence[Any]) -> None:
        self.calculator = calculator
        self.model = calculator.model
        self.max_length = calculator.max_length
        self.batch_size = 8  # rows per forward pass: each question has at most 4
        self.items = list(items)

    def __len__(self) -> int:
        return len(self.items)

    def requests(self, idx: int) -> list[Window]:
        return self.calculator.requests(self.items[idx])

    def metric(self, idx: int, logliks: Sequence[float]) -> float:
        item = self.items[idx]
        return float(self.calculator.judge(item, self.requests(idx), list(logliks))["correct"])

    def score(self, idx: int) -> float:
        return float(self.calculator.score(self.items[idx])["correct"])
