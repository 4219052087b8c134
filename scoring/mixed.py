"""The mixed task: items of several kinds (WikiText pages, code files, MMLU questions) in one task.

Each kind keeps its own task (`scoring.tasks`) and metric: lm-eval word perplexity and bits per
byte for text and code, MMLU letter accuracy. `MixedTask` routes an item to its kind's task, so
every allocation of every kind still goes through the one scoring path (`score_samples`), items
of different kinds sharing forward passes.

One figure ranks an arm (`overall_figure`, lower is better, 0 = dense): the weighted mean over
kinds of log(metric / dense metric), with MMLU's metric its error rate, smoothed as
(wrong + 0.5) / (n + 1) so that a dense model that answers every question still gives a finite
ratio. It is always reported beside the per-kind numbers.

An item's `metric` (the reward's input) is perplexity-like for every kind, so one reward,
-log(metric / dense metric), serves them all: a window's or page's perplexity, and for an MMLU
question the perplexity of its right answer among the four (1 / softmax of the answer's
log-likelihood over the choices), a smooth stand-in for correctness.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from scoring.tasks import ContextRows, MMLUTask, Task
from scoring.windows import Window

TEXT_METRIC = "word_perplexity"


def answer_perplexity(logliks: Sequence[float], answer: int) -> float:
    """1 / p(answer) with p the softmax of the choices' log-likelihoods (1 = certain, 4 = chance
    for four choices)."""
    top = max(logliks)
    log_norm = top + math.log(math.fsum(math.exp(ll - top) for ll in logliks))
    return math.exp(log_norm - logliks[answer])


def kind_loss(kind: str, row: Mapping[str, Any]) -> float:
    """The metric of a kind's summary that `overall_figure` compares (lower is better)."""
    if kind == "mmlu":
        n = int(row["n"])
        return (n * (1.0 - float(row["acc"])) + 0.5) / (n + 1)
    return float(row[TEXT_METRIC])


def overall_figure(
    arm: Mapping[str, Mapping[str, Any]],
    dense: Mapping[str, Mapping[str, Any]],
    weights: Mapping[str, float],
) -> float:
    """sum_k w_k log(loss_k / dense loss_k) / sum_k w_k over the kinds of `weights`."""
    total = math.fsum(weights.values())
    ratios = {k: kind_loss(k, arm[k]) / kind_loss(k, dense[k]) for k in weights}
    terms = [w * math.log(ratios[k]) for k, w in weights.items()]
    return math.fsum(terms) / total


class MixedTask:
    """Items of several kinds; item i is item `index[i][1]` of the task of kind `index[i][0]`."""

    def __init__(self, tasks: Mapping[str, Task], index: Sequence[tuple[str, int]]) -> None:
        first = next(iter(tasks.values()))
        self.tasks, self.index = dict(tasks), list(index)
        self.max_length, self.batch_size = first.max_length, first.batch_size
        if any(t.max_length != self.max_length for t in self.tasks.values()):
            raise ValueError("every kind's task must score windows of the same max_length")

    def __len__(self) -> int:
        return len(self.index)

    def kind(self, idx: int) -> str:
        return self.index[idx][0]

    def _route(self, idx: int) -> tuple[Task, int]:
        kind, local = self.index[idx]
        return self.tasks[kind], local

    def requests(self, idx: int) -> list[Window]:
        task, local = self._route(idx)
        return task.requests(local)

    def metric(self, idx: int, logliks: Sequence[float]) -> float:
        task, local = self._route(idx)
        if isinstance(task, MMLUTask):
            return answer_perplexity(logliks, task.items[local].answer)
        return task.metric(local, logliks)

    def context_rows(self, idx: int) -> ContextRows:
        task, local = self._route(idx)
        return task.context_rows(local)

    def summary(self, indices: Sequence[int], logliks: Sequence[Sequence[float]]) -> dict:
        """{"kinds": {kind: that kind's task summary over its items among `indices`}}."""
        grouped: dict[str, tuple[list[int], list[Sequence[float]]]] = {}
        for i, ll in zip(indices, logliks, strict=True):
            kind, local = self.index[i]
            grouped.setdefault(kind, ([], []))
            grouped[kind][0].append(local)
            grouped[kind][1].append(ll)
        kinds = {k: self.tasks[k].summary(loc, lls) for k, (loc, lls) in grouped.items()}
        return {"kinds": kinds}
