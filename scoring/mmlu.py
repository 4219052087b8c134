"""MMLU accuracy by log-likelihood, in the seed's mode and in lm-evaluation-harness's.

- "letter": lm-eval's default `mmlu` task (`acc`): subject description, optional first-n dev
  examples, the lettered question ending in "Answer:", then the log-likelihood of " A" .. " D".
- "choice_text": the seed's: the item's zero-shot prompt, then each full answer text
  (" " + choice), its log-likelihood divided by its token count.
Context and continuation are tokenized as lm-eval's `_encode_pair` (encode the whole string,
split at the context's length) with the tokenizer's default special tokens, like HFLM.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch

from scoring.metrics import item_field, score_requests
from scoring.windows import Window

MMLUMode = Literal["choice_text", "letter"]
LETTERS = ("A", "B", "C", "D")
TARGET_DELIMITER = " "  # lm-eval's default between "Answer:" and the choice
FEWSHOT_DELIMITER = "\n\n"  # lm-eval's default after each few-shot answer

Item = Mapping[str, Any] | Any  # dict or data.sources.MMLUQuestion


def subject_description(subject: str) -> str:
    """The `description` of lm-eval's generated mmlu_<subject>.yaml."""
    name = subject.replace("_", " ")
    return f"The following are multiple choice questions (with answers) about {name}.\n\n"


def format_question(question: str, choices: Sequence[str]) -> str:
    """lm-eval's `doc_to_text`: the question is stripped, the choices are not."""
    lines = [question.strip()]
    lines += [f"{letter}. {choice}" for letter, choice in zip(LETTERS, choices, strict=True)]
    return "\n".join(lines) + "\nAnswer:"


def letter_context(item: Item, shots: Sequence[Item] = ()) -> str:
    """description + k solved dev questions + the question: lm-eval's plain-text fewshot_context."""
    examples = "".join(
        format_question(item_field(s, "question"), item_field(s, "choices"))
        + TARGET_DELIMITER
        + LETTERS[int(item_field(s, "answer"))]
        + FEWSHOT_DELIMITER
        for s in shots
    )
    question = format_question(item_field(item, "question"), item_field(item, "choices"))
    return subject_description(item_field(item, "subject")) + examples + question


def encode_pair(
    tokenizer: Any, context: str, continuation: str, add_special_tokens: bool | None = None
) -> tuple[list[int], list[int]]:
    """lm-eval's `_encode_pair` for causal LMs: trailing context spaces move to the continuation,
    the whole string is encoded and split at the length of the encoded context.
    """
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    kwargs = {} if add_special_tokens is None else {"add_special_tokens": add_special_tokens}
    whole = list(tokenizer.encode(context + continuation, **kwargs))
    context_enc = list(tokenizer.encode(context, **kwargs))
    return context_enc, whole[len(context_enc) :]


class MMLULoglikelihoodCalculator:
    """Scores MMLU items: the 4 choices of an item go through one batched forward pass.

    Encodings are cached per item (the RL env scores the same items many times). `max_length`
    left-truncates long prompts like lm-eval (None: no truncation). `add_special_tokens=None`
    uses the tokenizer default, as HFLM does.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        mode: MMLUMode,
        num_fewshot: int = 0,
        dev_items: Mapping[str, Sequence[Item]] | None = None,
        max_length: int | None = None,
        add_special_tokens: bool | None = None,
    ) -> None:
        if mode not in ("choice_text", "letter"):
            raise ValueError(f"mode must be 'choice_text' or 'letter', got {mode!r}")
        if num_fewshot < 0 or (num_fewshot and mode != "letter"):
            raise ValueError("num_fewshot > 0 needs mode='letter' (the seed's mode is zero-shot)")
        if num_fewshot and dev_items is None:
            raise ValueError("num_fewshot > 0 needs dev_items (subject -> dev questions)")
        self.model = model
        self.tokenizer = tokenizer
        self.mode = mode
        self.num_fewshot = num_fewshot
        self.dev_items = dev_items or {}
        self.max_length = max_length
        self.add_special_tokens = add_special_tokens
        self._cache: dict[tuple[str, tuple[str, ...]], list[Window]] = {}

    def prompt(self, item: Item) -> tuple[str, list[str]]:
        """(context string, 4 continuation strings) exactly as sent to the model."""
        choices = list(item_field(item, "choices"))
        if len(choices) != len(LETTERS):
            raise ValueError(f"an MMLU item needs 4 choices, got {len(choices)}")
        if self.mode == "choice_text":
            text = item_field(item, "text")
            if text is None:
                text = format_question(item_field(item, "question"), choices)
            return text, [TARGET_DELIMITER + c for c in choices]
        return letter_context(item, self._shots(item)), [TARGET_DELIMITER + x for x in LETTERS]

    def _shots(self, item: Item) -> Sequence[Item]:
        if not self.num_fewshot:
            return ()
        subject = item_field(item, "subject")
        pool = self.dev_items.get(subject, ())
        if len(pool) < self.num_fewshot:
            raise ValueError(
                f"{self.num_fewshot}-shot needs {subject!r} dev items, have {len(pool)}"
            )
        return pool[: self.num_fewshot]  # lm-eval's `first_n` sampler

    def requests(self, item: Item) -> list[Window]:
        context, continuations = self.prompt(item)
        key = (context, tuple(continuations))
        if key not in self._cache:
            pairs = [
                encode_pair(self.tokenizer, context, c, self.add_special_tokens)
                for c in continuations
            ]
            if any(not ctx or not cont for ctx, cont in pairs):
                raise ValueError("empty context or continuation encoding: cannot score item")
            self._cache[key] = pairs
        return self._cache[key]

    def judge(self, item: Item, requests: Sequence[Window], logliks: list[float]) -> dict:
        scores = logliks
        if self.mode == "choice_text":
            scores = [ll / len(cont) for ll, (_, cont) in zip(logliks, requests, strict=True)]
        pred = max(range(len(scores)), key=scores.__getitem__)
        return {
            "correct": pred == int(item_field(item, "answer")),
            "pred": pred,
            "logliks": logliks,
        }

    def score(self, item: Item) -> dict[str, Any]:
        """correct (bool), pred (0-3), logliks (raw sums per choice, before any normalization)."""
        requests = self.requests(item)
        logliks = score_requests(self.model, requests, len(requests), self.max_length)
        return self.judge(item, requests, logliks)

    def evaluate(self, items: Sequence[Item], batch_size: int = 8) -> dict[str, float | int]:
        """Mean accuracy; `batch_size` forward rows shared across items."""
        if not items:
            raise ValueError("evaluate() needs at least one item")
        per_item = [self.requests(item) for item in items]
        flat = [r for reqs in per_item for r in reqs]
        logliks = score_requests(self.model, flat, batch_size, self.max_length)
        n_correct, start = 0, 0
        for item, reqs in zip(items, per_item, strict=True):
            verdict = self.judge(item, reqs, logliks[start : start + len(reqs)])
            n_correct += verdict["correct"]
            start += len(reqs)
        return {"acc": n_correct / len(items), "n": len(items)}
