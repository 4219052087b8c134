"""Items of a mixed task: WikiText pages, CPython modules and MMLU questions, tagged by kind.

Splits: `validation` is each kind's training part (WikiText validation pages, MMLU dev + val
questions, the code corpus's train files), `test` its unseen part (WikiText test pages, MMLU test
questions, the code test files). No kind's test items are ever in `validation`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

MIXED_SPLITS = {
    "validation": {"wikitext": ["validation"], "mmlu": ["dev", "validation"], "code": ["train"]},
    "test": {"wikitext": ["test"], "mmlu": ["test"], "code": ["test"]},
}


@dataclass(frozen=True)
class MixedItem:
    kind: str  # wikitext | code | mmlu
    item: Any  # WikiDocument, CodeFile, TextChunk or MMLUQuestion
    # what a decision about this item may read (a training window: the text before it; a
    # question: its prompt); None for an evaluation page or file, decided window by window
    prompt: str | None = None

    @property
    def text(self) -> str:
        return self.item.text


def prompts_before(
    windows: Sequence[Sequence[int]], decode: Callable[[list[int]], str]
) -> list[str]:
    """What a deployment knows before each of a document's consecutive windows (token lists):
    the text of the window before it, "" for the first. Never a window's own tokens."""
    return [""] + [decode(list(w)) for w in windows[:-1]]


class MixedDataSource:
    """Items of every kind, in the loaders' order; one loader per kind: load(split) -> items."""

    name = "mixed"

    def __init__(self, loaders: dict[str, Callable[[str], Sequence[Any]]]) -> None:
        self.loaders = loaders

    def load(self, split: str) -> list[MixedItem]:
        if split not in MIXED_SPLITS:
            raise ValueError(f"unknown mixed split {split!r}; valid splits: validation, test")
        out: list[MixedItem] = []
        for kind, load in self.loaders.items():
            items = [item for part in MIXED_SPLITS[split][kind] for item in load(part)]
            if not items:
                raise ValueError(
                    f"data.kinds: kind {kind!r} has no items in split {split!r}; give it weight 0 "
                    "or fix its data"
                )
            out += [MixedItem(kind, item) for item in items]
        return out


def by_kind(items: Sequence[MixedItem]) -> dict[str, list[int]]:
    """Indices of each kind's items, kinds in order of first appearance."""
    groups: dict[str, list[int]] = {}
    for i, item in enumerate(items):
        groups.setdefault(item.kind, []).append(i)
    return groups


def cap_per_kind(items: Sequence[MixedItem], cap: int | None) -> list[MixedItem]:
    """`cap` evenly spaced items of each kind (all with None): MMLU, sorted by subject, then
    still spans subjects."""
    if cap is None:
        return list(items)
    keep = []
    for idx in by_kind(items).values():
        n = min(cap, len(idx))
        keep += [idx[(j * len(idx)) // n] for j in range(n)]
    return [items[i] for i in keep]
