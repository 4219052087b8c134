"""Pure token-window arithmetic and perplexity aggregation, matching lm-evaluation-harness.

No model, no device, no I/O: these functions define *what* is scored; `scoring.metrics` scores it.
"""

from __future__ import annotations

import math
import re
import sys
import warnings
from collections.abc import Sequence

# exp() of anything above this overflows a float64
_MAX_EXP_ARG = math.log(sys.float_info.max)

Window = tuple[list[int], list[int]]  # (context tokens, target tokens)


def rolling_windows(tokens: Sequence[int], prefix_token: int, max_length: int) -> list[Window]:
    """Disjoint (context, targets) windows that score every token of `tokens` exactly once.

    Same windows as lm-eval's `get_rolling_token_windows(context_len=1)` followed by
    `make_disjoint_window`: the first window is conditioned on `prefix_token` alone and predicts up
    to `max_length` tokens; each later window predicts the next `max_length` tokens. The last,
    partial window is NOT conditioned on a single token: lm-eval fills its context back so that
    context + targets span `max_length + 1` tokens, i.e. it sees `max_length - n_targets + 1`
    tokens of context. Full windows get exactly one context token (the previous target).
    """
    if max_length < 1:
        raise ValueError(f"max_length must be >= 1, got {max_length}")
    tokens = list(tokens)
    if not tokens:
        return []
    first = min(max_length, len(tokens))
    windows: list[Window] = [([prefix_token], tokens[:first])]
    end = first
    while end < len(tokens):
        stop = min(end + max_length, len(tokens))
        # end >= max_length here, so stop - max_length - 1 >= 0
        windows.append((tokens[stop - max_length - 1 : end], tokens[end:stop]))
        end = stop
    return windows


def model_input(
    context: Sequence[int], targets: Sequence[int], max_length: int | None
) -> list[int]:
    """The token row a causal LM reads to score `targets` after `context`.

    As lm-eval: context + targets minus the last token, left-truncated to `max_length` tokens.
    """
    seq = list(context) + list(targets)
    if max_length is not None:
        seq = seq[-(max_length + 1) :]
    return seq[:-1]


def word_count(page: str) -> int:
    """lm-eval's word_perplexity denominator: `len(re.split(r"\\s+", page))`.

    Trap: count on the ORIGINAL page, not the detokenized text the model reads, and with
    `re.split`, not `str.split()`: leading/trailing whitespace adds empty "words" (raw WikiText
    pages start with " = " and end with newlines), so `""` counts as 1 word.
    """
    return len(re.split(r"\s+", page))


def byte_count(page: str) -> int:
    """UTF-8 bytes of the ORIGINAL page (byte_perplexity / bits_per_byte denominator)."""
    return len(page.encode("utf-8"))


def safe_exp(x: float) -> float:
    """exp(x) that returns inf (with a warning) instead of raising OverflowError; NaN stays NaN."""
    if math.isnan(x):
        return math.nan
    if x > _MAX_EXP_ARG:
        warnings.warn(f"perplexity overflows: exp({x:.4g}) is inf", RuntimeWarning, stacklevel=2)
        return math.inf
    return math.exp(x)


def _ratio(total_ll: float, total_count: int, what: str) -> float:
    if total_count <= 0:
        raise ValueError(f"nothing to score: total {what} is {total_count}")
    return total_ll / total_count


def aggregate(
    loglik_sums: Sequence[float], word_counts: Sequence[int], byte_counts: Sequence[int]
) -> dict[str, float]:
    """Corpus-level WikiText metrics, as lm-eval's `weighted_perplexity` / `bits_per_byte`.

    Sums log-likelihoods and counts over documents before dividing: never a mean of per-document
    perplexities (that would over-weight short documents).
    """
    if not (len(loglik_sums) == len(word_counts) == len(byte_counts)):
        raise ValueError("loglik_sums, word_counts and byte_counts must have the same length")
    total_ll = math.fsum(loglik_sums)
    per_word = _ratio(total_ll, sum(word_counts), "words")
    per_byte = _ratio(total_ll, sum(byte_counts), "bytes")
    return {
        "word_perplexity": safe_exp(-per_word),
        "byte_perplexity": safe_exp(-per_byte),
        "bits_per_byte": -per_byte / math.log(2),
    }


def token_perplexity(loglik_sums: Sequence[float], token_counts: Sequence[int]) -> float:
    """exp(-sum ll / sum tokens): tokenizer-dependent; for training windows, not lm-eval."""
    return safe_exp(-_ratio(math.fsum(loglik_sums), sum(token_counts), "tokens"))
