"""Generation with the neurons a prompt chooses: a dense prefill of the prompt collects each
neuron's statistic, every layer keeps its top kept[l] neurons for this prompt, the narrowed MLP
weights are gathered once (`PrunableLLM.pruned(mask_fn)`), and decoding runs on that model."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from pruning.context_importance import orderings_from_statistics, row_statistics
from pruning.importance import CriterionName
from pruning.prunable_llm import MaskFn, PrunableLLM


@dataclass(frozen=True)
class Generation:
    tokens: list[int]  # new tokens only
    prefill_seconds: float  # the dense statistics pass
    decode_seconds: float  # narrowing + HF generate (its own prefill included)

    @property
    def tokens_per_second(self) -> float:
        return len(self.tokens) / max(self.decode_seconds, 1e-9)


def prompt_mask_fn(ordering: torch.Tensor, kept: Sequence[int] | np.ndarray) -> MaskFn:
    """mask_fn in ORIGINAL ids: layer l keeps the kept[l] first neurons of `ordering`
    [n_layers, d_ff] (original ids, most important first)."""
    ranks = torch.empty_like(ordering, dtype=torch.long)
    ranks.scatter_(1, ordering.long(), torch.arange(ordering.shape[1]).expand_as(ranks))
    counts = torch.from_numpy(np.array(kept, dtype=np.int64))
    masks = ranks < counts[:, None]  # [n_layers, d_ff] bool, original ids
    return lambda layer: masks[layer]


@torch.inference_mode()
def generate_narrowed(
    model: PrunableLLM,
    prompt: list[int],
    kept: np.ndarray | None,
    max_new_tokens: int,
    neurons: str = "context",
    criterion: CriterionName = "mean_abs_activation",
) -> Generation:
    """Greedy continuation of `prompt` under kept [n_layers] (None: dense) with the prompt's own
    neurons (`neurons="context"`) or the global order's; the model is restored in finally."""
    start = time.perf_counter()
    allocation: np.ndarray | MaskFn | None = kept
    if kept is not None and neurons == "context":
        sums = row_statistics(model, [prompt], criterion)  # [1, L, d_ff]
        allocation = prompt_mask_fn(orderings_from_statistics(model, sums, criterion)[0], kept)
    prefill = time.perf_counter() - start
    device = model.get_input_embeddings().weight.device
    ids = torch.tensor([prompt], device=device)
    start = time.perf_counter()
    if allocation is not None:
        model.prune(allocation)
    try:
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=model.config.eos_token_id,
        )
    finally:
        model.undo_prune()
    return Generation(out[0, len(prompt) :].tolist(), prefill, time.perf_counter() - start)
