"""Log-likelihood scoring and WikiText perplexity that agree with lm-evaluation-harness.

`score_requests` is the batched scoring engine under `scoring.batched.score_samples`;
`PerplexityCalculator` holds what lm-eval's `wikitext` task does around it: the rolling windows
of `HFLM.loglikelihood_rolling` and the word/byte perplexity aggregated over the corpus
(`scoring.tasks.DocumentTask` scores through it). The window arithmetic lives in `scoring.windows`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F

from scoring.windows import (
    Window,
    aggregate,
    model_input,
    rolling_windows,
    token_perplexity,
)

PrefixRule = Literal["bos", "eos"]
# float32 elements of one log-softmax chunk: bounds the extra memory for large vocabularies
_CHUNK_ELEMENTS = 1 << 25


def resolve_prefix_token(tokenizer: Any, prefix: PrefixRule) -> int:
    """Token that conditions the first window of a document.

    "bos" is lm-eval's `prefix_token_id` rule (BOS, else EOS); "eos" is the seed's (EOS, else
    BOS). Falling back warns; a tokenizer with neither raises: any other token (pad, unk) would
    silently change the numbers.
    """
    if prefix not in ("bos", "eos"):
        raise ValueError(f"prefix must be 'bos' or 'eos', got {prefix!r}")
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    first, second = (bos, eos) if prefix == "bos" else (eos, bos)
    if first is not None:
        return int(first)
    if second is not None:
        other = "eos" if prefix == "bos" else "bos"
        warnings.warn(f"tokenizer has no {prefix} token; using {other} as prefix", stacklevel=2)
        return int(second)
    raise ValueError("tokenizer has neither a BOS nor an EOS token: set tokenizer.bos_token")


def encode_document(tokenizer: Any, text: str, prefix_token: int) -> list[int]:
    """Tokens of a document exactly as lm-eval 0.4.13's `HFLM.tok_encode` makes them.

    HFLM keeps the tokenizer's default special tokens (Llama-3 prepends BOS, which is then
    scored as the first target after the prefix token), except that a text that already starts
    with the decoded prefix token is encoded without them. SmolLM2 adds none: plain tokens.
    """
    if text.startswith(tokenizer.decode(prefix_token)):  # lm-eval's has_bos_prefix
        return list(tokenizer.encode(text, add_special_tokens=False))
    return list(tokenizer.encode(text))


def _token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target) per row, float64; logits [N, V], targets [N] -> [N].

    log_softmax runs in float32 on row chunks so bf16 models and 128k vocabularies never
    materialise a full float32 [N, V] copy.
    """
    step = max(1, _CHUNK_ELEMENTS // logits.shape[-1])
    parts = [
        -F.cross_entropy(logits[i : i + step].float(), targets[i : i + step], reduction="none")
        for i in range(0, logits.shape[0], step)
    ]
    return torch.cat(parts).double()


def pad_rows(
    rows: Sequence[Sequence[int]], device: torch.device | str = "cpu", pad_id: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded input_ids [B, T] (`pad_id`, masked out, never scored) and the bool mask of
    the real tokens [B, T]: the one padding helper of the project."""
    lengths = torch.tensor([len(r) for r in rows])
    width = int(lengths.max())
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.arange(width)[None, :] < lengths[:, None]  # [B, T]
    input_ids[mask] = torch.cat([torch.as_tensor(r, dtype=torch.long) for r in rows])
    return input_ids.to(device), mask.to(device)


def without_head(model: torch.nn.Module) -> torch.nn.Module | None:
    """The decoder stack under a causal LM's head (`model.model` beside `model.lm_head`: LLaMA,
    Qwen2, Gemma-3 ...), None for another layout. A pass that only reads activations runs it
    alone: the head over every position of 64 MMLU prompts of 2,048 tokens and a 152k
    vocabulary is an 18 GiB tensor."""
    body, head = getattr(model, "model", None), getattr(model, "lm_head", None)
    return body if body is not None and head is not None else None


def _target_logits(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    rows: torch.Tensor,
    positions: torch.Tensor,
) -> torch.Tensor:
    """Logits [N, V] at (rows[i], positions[i]) only.

    For a LLaMA-layout model the LM head runs on the scored positions alone: an MMLU prompt of
    500 tokens needs 1-4 of them, and a 128k vocabulary never makes a [B, T, V] tensor.
    """
    body = without_head(model)
    device = input_ids.device
    rows, positions = rows.to(device), positions.to(device)
    if body is None:
        return model(input_ids=input_ids, attention_mask=attention_mask).logits[rows, positions]
    hidden = body(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    return model.lm_head(hidden[rows, positions])


def score_rows(
    model: torch.nn.Module,
    rows: Sequence[Sequence[int]],
    wanted: Sequence[tuple[int, list[int]]],
) -> torch.Tensor:
    """One forward pass over `rows`; `wanted[k]` = (row, targets) -> [len(wanted)] sums, float64.

    The targets of request k follow the last len(targets) positions of its row.
    """
    device = next(model.parameters()).device
    input_ids, mask = pad_rows(rows, device)
    attention_mask = mask.long()
    if bool(attention_mask.all()):
        attention_mask = None  # no padding: lets attention take its plain causal fast path
    n_targets = torch.tensor([len(t) for _, t in wanted])  # [K]
    row_of = torch.tensor([r for r, _ in wanted])  # [K]
    row_end = torch.tensor([len(rows[r]) for r, _ in wanted])  # [K]
    request = torch.repeat_interleave(torch.arange(len(wanted)), n_targets)  # [N]
    first = torch.cumsum(n_targets, 0) - n_targets  # [K] offset of each request in [N]
    position = (row_end - n_targets)[request] + torch.arange(len(request)) - first[request]
    targets = torch.cat([torch.as_tensor(t, dtype=torch.long) for _, t in wanted])  # [N]
    picked = _target_logits(model, input_ids, attention_mask, row_of[request], position)  # [N, V]
    logp = _token_logprobs(picked, targets.to(device))  # [N]
    sums = torch.zeros(len(wanted), dtype=torch.float64, device=device)
    return sums.index_add_(0, request.to(device), logp).cpu()


@torch.inference_mode()
def score_requests(
    model: torch.nn.Module,
    requests: Sequence[Window],
    batch_size: int = 8,
    max_length: int | None = None,
    groups: Sequence[int] | None = None,
    on_batch: Callable[[list[int]], None] | None = None,
) -> list[float]:
    """Sum of log p(targets | context) for each (context, targets) request, batched.

    Inputs are built as lm-eval does (`model_input`); requests whose input rows are identical
    (e.g. the four one-token MMLU letters after one prompt) share a single row. Rows are sorted
    longest first so each batch pads little. `groups[i]` (e.g. which sample of a batched env a
    request belongs to) keeps rows of different groups apart; `on_batch(row_groups)` is called
    before each forward pass with the group of each of its rows (per-row pruning masks).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    row_of: dict[tuple[int, tuple[int, ...]], int] = {}
    owners: list[list[int]] = []  # [n_rows] -> request indices
    for i, (context, targets) in enumerate(requests):
        if not context or not targets:
            raise ValueError(f"request {i}: context and targets must be non-empty")
        key = (0 if groups is None else groups[i], tuple(model_input(context, targets, max_length)))
        if len(targets) > len(key[1]):
            raise ValueError(f"request {i}: {len(targets)} targets exceed max_length {max_length}")
        if key not in row_of:
            row_of[key] = len(owners)
            owners.append([])
        owners[row_of[key]].append(i)
    rows = sorted(row_of, key=lambda key: len(key[1]), reverse=True)
    result = [0.0] * len(requests)
    for start in range(0, len(rows), batch_size):
        batch = rows[start : start + batch_size]
        if on_batch is not None:
            on_batch([group for group, _ in batch])
        members = [(b, i) for b, key in enumerate(batch) for i in owners[row_of[key]]]
        wanted = [(b, list(requests[i][1])) for b, i in members]
        sums = score_rows(model, [row for _, row in batch], wanted)
        for k, (_, i) in enumerate(members):
            result[i] = float(sums[k])
    return result


class PerplexityCalculator:
    """lm-eval's `wikitext` task around the model: documents as rolling windows, and the corpus
    metrics of their log-likelihoods (`scoring.tasks.DocumentTask` scores them).

    Documents are tokenized once (cached by text) and cut into lm-eval's disjoint rolling
    windows. By default a document is
    tokenized as lm-eval's HFLM does (`encode_document`: the tokenizer's default special tokens,
    so Llama-3's BOS is scored too), which makes every number equal lm-eval's for any tokenizer;
    `add_special_tokens=False` / `True` forces plain tokens / the tokenizer's special tokens.
    """

    def __init__(
        self,
        tokenizer: Any,
        max_length: int,
        prefix: PrefixRule = "bos",
        batch_size: int = 8,
        add_special_tokens: bool | None = None,  # None: as lm-eval (encode_document)
    ) -> None:
        if max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length}")
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.batch_size = batch_size
        self.add_special_tokens = add_special_tokens
        self.prefix_token = resolve_prefix_token(tokenizer, prefix)
        self._tokens: dict[str, list[int]] = {}

    def tokens(self, text: str) -> list[int]:
        if text not in self._tokens:
            if self.add_special_tokens is None:
                ids = encode_document(self.tokenizer, text, self.prefix_token)
            else:
                ids = self.tokenizer.encode(text, add_special_tokens=self.add_special_tokens)
            self._tokens[text] = list(ids)
        return self._tokens[text]

    def windows(self, text: str) -> list[Window]:
        return rolling_windows(self.tokens(text), self.prefix_token, self.max_length)

    def corpus_metrics(
        self, docs: Sequence[Any], loglik_sums: Sequence[float]
    ) -> dict[str, float | int]:
        """lm-eval's `wikitext` aggregation of per-document log-likelihood sums: word and byte
        perplexity over the corpus. Each doc (`data.sources.WikiDocument`) brings its `text`
        (what the model reads) and `word_count` / `byte_count` (counted on the original page,
        never on `text`); an empty document adds 0 log-likelihood but still its words."""
        words = [d.word_count for d in docs]
        n_bytes = [d.byte_count for d in docs]
        n_tokens = [len(self.tokens(d.text)) for d in docs]
        metrics: dict[str, float | int] = dict(aggregate(loglik_sums, words, n_bytes))
        metrics["token_perplexity"] = token_perplexity(loglik_sums, n_tokens)
        metrics.update(max_length=self.max_length, num_docs=len(docs), num_tokens=sum(n_tokens))
        return metrics
