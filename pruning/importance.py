"""Per-neuron MLP importance from forward hooks on each layer's down_proj input.

The down_proj input is the neuron activation a = act(gate(x)) * up(x), [batch, seq, d_ff].
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Literal

import torch
from torch import nn

from pruning.prunable_llm import PrunableLLM

CriterionName = Literal["mean_abs_activation", "wanda"]


def _mean_abs_finalize(sums: torch.Tensor, n_tokens: int, _w_down: torch.Tensor) -> torch.Tensor:
    return sums / max(n_tokens, 1)


def _wanda_finalize(sums: torch.Tensor, _n_tokens: int, w_down: torch.Tensor) -> torch.Tensor:
    return sums.sqrt() * w_down.float().norm(dim=0)


@dataclass(frozen=True)
class Criterion:
    """score_j = finalize(sum over non-pad tokens t of token_stat(a_tj), n_tokens, W_down)."""

    token_stat: Callable[[torch.Tensor], torch.Tensor]
    finalize: Callable[[torch.Tensor, int, torch.Tensor], torch.Tensor]


CRITERIA: dict[str, Criterion] = {
    # score_j = mean_t |a_tj|
    "mean_abs_activation": Criterion(torch.abs, _mean_abs_finalize),
    # score_j = ||W_down[:, j]||_2 * ||a_:j||_2  (Wanda |W_ij| * ||X_j||, pooled over a neuron)
    "wanda": Criterion(torch.square, _wanda_finalize),
}


@dataclass(frozen=True)
class ImportanceResult:
    criterion: str
    scores: torch.Tensor  # [n_layers, d_ff] float32, CPU, original neuron indices
    orderings: torch.Tensor  # [n_layers, d_ff] int64, most important first (stable on ties)
    num_tokens: int  # non-padding tokens seen


class _Accumulator:
    """Forward pre-hooks summing token_stat(a) over the tokens that the current mask keeps."""

    def __init__(self, stat: Callable[[torch.Tensor], torch.Tensor], n_layers: int) -> None:
        self.stat = stat
        self.token_mask: torch.Tensor | None = None  # [batch, seq] bool, set per batch
        self.sums: list[torch.Tensor | None] = [None] * n_layers  # each [d_ff] float32

    def hook(self, layer: int) -> Callable[[nn.Module, tuple[Any, ...]], None]:
        def pre_hook(_module: nn.Module, args: tuple[Any, ...]) -> None:
            acts = args[0]  # [batch, seq, d_ff]
            mask = self.token_mask.to(acts.device)[..., None]  # [batch, seq, 1]
            # where, not multiply: padding positions may hold inf/NaN activations
            batch_sum = torch.where(mask, self.stat(acts.float()), 0.0).sum(dim=(0, 1))
            prev = self.sums[layer]
            self.sums[layer] = batch_sum if prev is None else prev + batch_sum

        return pre_hook


def _down_projs(model: nn.Module | PrunableLLM) -> list[nn.Linear]:
    if isinstance(model, PrunableLLM) and model.is_pruned:
        raise ValueError("collect importance on an unpruned model (call undo_prune() first)")
    return [layer.mlp.down_proj for layer in model.model.layers]


@torch.inference_mode()
def collect_importance(
    model: nn.Module | PrunableLLM,
    batches: Iterable[Mapping[str, torch.Tensor]],
    criterion: CriterionName,
) -> ImportanceResult:
    """Run `model` over `batches` ({input_ids, attention_mask} [batch, seq]) and score neurons."""
    if criterion not in CRITERIA:
        raise ValueError(f"unknown criterion {criterion!r}; choose from {sorted(CRITERIA)}")
    spec = CRITERIA[criterion]
    downs = _down_projs(model)
    acc = _Accumulator(spec.token_stat, len(downs))
    device = model.get_input_embeddings().weight.device
    handles = [down.register_forward_pre_hook(acc.hook(i)) for i, down in enumerate(downs)]
    n_tokens = torch.zeros((), dtype=torch.long)
    try:
        for batch in batches:
            input_ids = batch["input_ids"].to(device)
            attn = batch.get("attention_mask")
            attn = torch.ones_like(input_ids) if attn is None else attn.to(device)
            acc.token_mask = attn.bool()
            n_tokens = n_tokens + acc.token_mask.sum().cpu()
            model(input_ids=input_ids, attention_mask=attn, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    if any(s is None for s in acc.sums):
        raise ValueError("no batches: nothing to score")
    total = int(n_tokens)
    scores = torch.stack(
        [spec.finalize(s, total, d.weight).cpu() for s, d in zip(acc.sums, downs)]
    )  # [n_layers, d_ff], positions of the current layout
    if isinstance(model, PrunableLLM) and model.permutation is not None:
        scores = torch.empty_like(scores).scatter_(1, model.permutation, scores)
    orderings = torch.argsort(scores, dim=1, descending=True, stable=True)
    return ImportanceResult(criterion, scores.float(), orderings, total)


def importance_to_json(
    result: ImportanceResult, model_name: str, criterion: str, num_samples: int
) -> dict[str, Any]:
    """The importance file's JSON object (see pruning.create_pruning_mask for the format)."""
    n_layers, width = result.scores.shape
    return {
        "model": model_name,
        "criterion": criterion,
        "num_samples": num_samples,
        "num_tokens": result.num_tokens,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "n_layers": n_layers,
        "intermediate_size": width,
        "orderings": result.orderings.tolist(),
        "scores": result.scores.tolist(),
    }
