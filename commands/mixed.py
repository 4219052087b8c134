"""Wiring of the mixed task (`data.dataset: mixed`): its items, task and reward.

Evaluation items are whole pages, files and questions; training items cut pages and files into
`env.max_length`-token windows (as WikiText training does) and keep MMLU questions whole; a
window's context (context neurons) is the windows of its page or file before it, and what its
decision reads (`MixedItem.prompt`) is the text of the window before it (a question: its prompt).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from commands.common import load_split
from config import Config
from data.mixed import MixedItem, by_kind, prompts_before
from data.sources import chunk_documents, earlier_windows
from rl.reward import RewardFn, make_budget_reward
from scoring.metrics import PerplexityCalculator
from scoring.mixed import MixedTask
from scoring.mmlu import MMLULoglikelihoodCalculator
from scoring.tasks import DocumentTask, MMLUTask, Task, WindowTask


def mixed_training_items(cfg: Config, tokenizer: Any) -> list[MixedItem]:
    """Windows of every training page and file, and every training question; with
    data.max_samples, a seeded sample of that many per kind."""
    items = load_split(cfg.data, cfg.data.train_split, cfg.seed)
    out: list[MixedItem] = []
    rng = np.random.default_rng(cfg.seed)
    for kind, idx in by_kind(items).items():
        docs = [items[i].item for i in idx]
        if kind == "mmlu":
            units = [MixedItem(kind, q, q.text) for q in docs]
        else:
            chunks = chunk_documents(docs, tokenizer, cfg.env.max_length)
            by_doc: dict[int, list[Any]] = {}
            for chunk in chunks:
                by_doc.setdefault(chunk.doc_index, []).append(chunk)
            units = [
                MixedItem(kind, chunk, prompt)
                for doc in by_doc.values()
                for chunk, prompt in zip(
                    doc, prompts_before([c.token_ids for c in doc], tokenizer.decode), strict=True
                )
            ]
        if cfg.data.max_samples and len(units) > cfg.data.max_samples:
            units = [units[i] for i in sorted(rng.permutation(len(units))[: cfg.data.max_samples])]
        out += units
    return out


def make_mixed_task(cfg: Config, tokenizer: Any, items: Sequence[MixedItem]) -> Task:
    """One task per kind (windows or whole pages/files; MMLU questions), routed by MixedTask."""
    env = cfg.env
    calc = PerplexityCalculator(tokenizer, env.max_length, env.prefix_token, env.batch_size)
    tasks: dict[str, Task] = {}
    index = []
    for kind, idx in by_kind(items).items():
        units = [items[i].item for i in idx]
        if kind == "mmlu":
            mmlu = MMLULoglikelihoodCalculator(tokenizer, env.mmlu_mode, 0, None, env.max_length)
            tasks[kind] = MMLUTask(mmlu, units, env.batch_size)
        elif hasattr(units[0], "token_ids"):  # training windows
            contexts = None
            if env.neurons == "context":
                split = load_split(cfg.data, cfg.data.train_split, cfg.seed)
                docs = [m.item for m in split if m.kind == kind]
                contexts = earlier_windows(docs, tokenizer, env.max_length, units)
            tokens = [list(u.token_ids) for u in units]
            tasks[kind] = WindowTask(
                tokens, calc.prefix_token, env.max_length, env.batch_size, contexts
            )
        else:
            tasks[kind] = DocumentTask(calc, units)
        index += [(kind, j) for j in range(len(units))]
    order = [i for idx in by_kind(items).values() for i in idx]
    if order != list(range(len(items))):
        raise ValueError("mixed items must come grouped by kind (as data.mixed loads them)")
    return MixedTask(tasks, index)


def mixed_reward(cfg: Config) -> RewardFn:
    """-log(metric / dense metric) for every kind (MMLU: the right answer's perplexity)."""
    if cfg.env.reward != "budget":
        raise NotImplementedError("data.dataset=mixed trains in budget mode; set env.reward=budget")
    return make_budget_reward("perplexity")
