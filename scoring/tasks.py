"""Tasks: what is scored for each item, and how log-likelihoods become metrics.

A task splits scoring so that `scoring.batched.score_samples` can share forward passes between items
and allocations: `requests(i)` gives the (context, targets) token windows of item i,
`metric(i, logliks)` turns their log-likelihoods into the item's metric (the reward's input),
and `summary(indices, logliks)` aggregates items into the reported metrics (corpus word
perplexity as lm-eval, accuracy). `score_task` scores items of a task under allocations,
`score_allocation` summarizes a whole task under one, `window_fitness` is the search's fitness.

`context_rows(i)` says what each request may look at to choose its neurons (`env.neurons:
context`): token rows the dense model reads, and per request how many leading rows are its
context. It never includes a request's own targets, so the scored tokens stay unseen.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np
import torch

from pruning.allocation import sparsity_of
from pruning.context_importance import context_orderings
from pruning.importance import CriterionName
from pruning.prunable_llm import PrunableLLM
from scoring.batched import Orderings, score_samples
from scoring.metrics import PerplexityCalculator
from scoring.mmlu import MMLULoglikelihoodCalculator
from scoring.windows import Window, model_input, rolling_windows, safe_exp, token_perplexity

ContextRows = tuple[list[list[int]], list[int]]  # (token rows, leading rows per request)


class Task(Protocol):
    max_length: int
    batch_size: int

    def __len__(self) -> int: ...

    def requests(self, idx: int) -> list[Window]: ...

    def metric(self, idx: int, logliks: Sequence[float]) -> float: ...

    def summary(self, indices: Sequence[int], logliks: Sequence[Sequence[float]]) -> dict: ...

    def context_rows(self, idx: int) -> ContextRows: ...


class WindowTask:
    """Token perplexity of training windows (token lists), each scored after `prefix_token`."""

    def __init__(
        self,
        token_lists: Sequence[Sequence[int]],
        prefix_token: int,
        max_length: int,
        batch_size: int = 8,
        contexts: Sequence[Sequence[Sequence[int]]] | None = None,
    ) -> None:
        """contexts[i]: the windows of item i's document before it (context neurons only).
        Items whose contexts are prefixes of one list of the same window objects (the windows of
        one document) share one list of context rows, so their statistics are collected once."""
        self.max_length, self.batch_size = max_length, batch_size
        self._requests = [rolling_windows(list(t), prefix_token, max_length) for t in token_lists]
        self._counts = [max(len(t), 1) for t in token_lists]
        self._prefix = prefix_token
        self._plans: list[tuple[list[list[int]], int]] | None = None
        if contexts is not None:
            longest: dict[int, Sequence[Sequence[int]]] = {}
            for ctx in contexts:
                if ctx and len(ctx) > len(longest.get(id(ctx[0]), ())):
                    longest[id(ctx[0])] = ctx
            shared = {key: self._rows(ctx) for key, ctx in longest.items()}
            self._plans = []
            for ctx in contexts:
                full = longest.get(id(ctx[0])) if ctx else None
                n = sum(1 for w in ctx if w)
                if full is not None and full[len(ctx) - 1] is ctx[-1]:
                    self._plans.append((shared[id(ctx[0])], n))
                else:  # not a prefix of its document's list: rows of its own
                    self._plans.append((self._rows(ctx), n))

    def _rows(self, windows: Sequence[Sequence[int]]) -> list[list[int]]:
        """Context windows as the model reads them: each after the prefix token."""
        return [[self._prefix, *w][: self.max_length] for w in windows if w]

    def __len__(self) -> int:
        return len(self._requests)

    def requests(self, idx: int) -> list[Window]:
        return self._requests[idx]

    def metric(self, idx: int, logliks: Sequence[float]) -> float:
        return safe_exp(-sum(logliks) / self._counts[idx])

    def summary(self, indices: Sequence[int], logliks: Sequence[Sequence[float]]) -> dict:
        counts = [self._counts[i] for i in indices]
        return {"token_perplexity": token_perplexity([sum(ll) for ll in logliks], counts)}

    def context_rows(self, idx: int) -> ContextRows:
        """The earlier windows of the item's document, each read after the prefix token as
        the window itself is; the first window of a document has none. Items of one document
        get the same rows object (its windows) and use its leading rows."""
        if self._plans is None:
            raise ValueError("this WindowTask was built without contexts (context neurons)")
        rows, n = self._plans[idx]
        return rows, [n] * len(self._requests[idx])


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

    def context_rows(self, idx: int) -> ContextRows:
        """Window j's context: the input rows of windows 0..j-1 (all document tokens before its
        targets but the last target of window j-1); the first window has none."""
        windows = self.requests(idx)
        rows = [model_input(c, t, self.max_length) for c, t in windows[:-1]]
        return rows, list(range(len(windows)))


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

    def context_rows(self, idx: int) -> ContextRows:
        """The prompt (the context of the question's requests), as the model reads it."""
        requests = self.requests(idx)
        prompt = list(requests[0][0])
        return [prompt[-self.max_length :] if self.max_length else prompt], [1] * len(requests)


def task_orderings(
    model: PrunableLLM, task: Task, indices: Sequence[int], criterion: CriterionName
) -> tuple[list[list[torch.Tensor | None]], int]:
    """Context orderings per item per request (`score_task`'s `orderings`), computed once on the
    dense model, and how many requests had no context (they fall back to the global order)."""
    plans = [task.context_rows(i) for i in indices]
    orderings = context_orderings(model, plans, criterion, task.batch_size)
    return orderings, sum(o is None for item in orderings for o in item)


def item_tokens(task: Task, idx: int, requests: Sequence[int] | None = None) -> int:
    """Tokens the model reads for item idx (its distinct input rows; only those of `requests`,
    indices into its requests, if given): the weight of its sparsity in a token-weighted mean."""
    windows = task.requests(idx)
    chosen = windows if requests is None else [windows[j] for j in requests]
    return sum(len(r) for r in {tuple(model_input(c, t, task.max_length)) for c, t in chosen})


def score_task(
    model: PrunableLLM,
    task: Task,
    indices: Sequence[int],
    kept: np.ndarray,
    orderings: Orderings | None = None,
) -> list[list[float]]:
    """Log-likelihoods of the requests of items `indices` of `task`, item k under kept[k]
    ([n, n_layers], or one [n_layers] allocation for all; dense: full width); `orderings` per
    item (`task_orderings`): context neurons, None: the global order."""
    if np.ndim(kept) == 1:
        kept = np.broadcast_to(kept, (len(indices), len(kept)))
    requests = [task.requests(i) for i in indices]
    return score_samples(model, requests, kept, task.batch_size, task.max_length, orderings)


def score_allocation(
    model: PrunableLLM, task: Task, kept: np.ndarray, orderings: Orderings | None = None
) -> dict[str, Any]:
    """Task summary of every item under one allocation (kept [n_layers]; dense: full width),
    with context neurons when `orderings` (per item, `task_orderings`) are given: what `score`
    reports, by the same code as `eval`'s arms and the environment (`score_task`)."""
    start = time.perf_counter()
    indices = list(range(len(task)))
    metrics = task.summary(indices, score_task(model, task, indices, kept, orderings))
    seconds = time.perf_counter() - start
    tokens = metrics.get("num_tokens")
    return {
        **metrics,
        "sparsity": float(sparsity_of(kept, model.intermediate_size)),
        "seconds": round(seconds, 3),
        "num_items": len(indices),
        "items_per_second": round(len(indices) / seconds, 3),
        "tokens_per_second": round(tokens / seconds, 1) if tokens else None,
    }


Fitness = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (kept [n, L], windows [w]) -> [n]


def window_fitness(model: PrunableLLM, task: Task, criterion: CriterionName | None) -> Fitness:
    """The search's fitness(kept [n, L], windows [w]) -> summed NLL [n]: n * w samples in one
    batched call. criterion: None = global neurons, else each window's context neurons
    (computed once)."""
    orderings = None
    if criterion is not None:
        orderings, _ = task_orderings(model, task, list(range(len(task))), criterion)

    def fitness(kept: np.ndarray, windows: np.ndarray) -> np.ndarray:
        requests = [task.requests(int(w)) for _ in kept for w in windows]
        per_sample = np.repeat(kept, len(windows), axis=0)  # [n * w, L]
        orders = None if orderings is None else [orderings[int(w)] for _ in kept for w in windows]
        t = task
        logliks = score_samples(model, requests, per_sample, t.batch_size, t.max_length, orders)
        nll = -np.array([sum(ll) for ll in logliks])  # [n * w]
        return nll.reshape(len(kept), len(windows)).sum(1)

    return fitness
