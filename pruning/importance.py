"""Per-neuron MLP importance from forward hooks on each layer's down_proj input, and its file.

The down_proj input is the neuron activation a = act(gate(x)) * up(x), [batch, seq, d_ff].
`statistic_hooks` is the one hook that collects it (here over calibration windows, in
`pruning.context_importance` per row of an input's context).

The importance file (JSON): {"model", "criterion", "num_samples", "num_tokens", "date",
"n_layers", "intermediate_size", "orderings": [[neuron ids, most important first] per layer],
optional "scores": [[...] per layer]}. The same in a compact `.npz` (chosen by the file's
suffix): `orderings` int16 (int32 past 32,767 neurons), `scores` float32, and the other fields
as a JSON string `meta`; the numbers are equal.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from pruning.allocation import validate_orderings
from pruning.prunable_llm import PrunableLLM
from scoring.metrics import pad_rows, without_head

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


Sink = Callable[[int, torch.Tensor], None]  # (layer, token statistics [batch, seq, d_ff])


@contextlib.contextmanager
def statistic_hooks(
    model: nn.Module | PrunableLLM, stat: Callable[[torch.Tensor], torch.Tensor], sink: Sink
) -> Iterator[dict[str, torch.Tensor | None]]:
    """Forward pre-hooks on every layer's down_proj: each forward pass calls sink(layer, s) with
    s = stat(a) at the real tokens and 0 at padding ([batch, seq, d_ff] float32). Yields the
    dict whose "mask" (bool [batch, seq], True = real token) the caller sets before each pass.
    The model must be dense; the hooks are removed on exit."""
    if isinstance(model, PrunableLLM) and model.is_pruned:
        raise ValueError("activation statistics need the unpruned model; call undo_prune() first")
    batch: dict[str, torch.Tensor | None] = {"mask": None}

    def hook_for(layer: int) -> Callable[[nn.Module, tuple[Any, ...]], None]:
        def hook(_module: nn.Module, args: tuple[Any, ...]) -> None:
            acts = args[0].float()  # [batch, seq, d_ff]
            mask = batch["mask"].to(acts.device)[..., None]  # [batch, seq, 1]
            # where, not multiply: padding positions may hold inf/NaN activations
            sink(layer, torch.where(mask, stat(acts), 0.0))

        return hook

    downs = [layer.mlp.down_proj for layer in model.model.layers]
    handles = [down.register_forward_pre_hook(hook_for(i)) for i, down in enumerate(downs)]
    try:
        yield batch
    finally:
        for handle in handles:
            handle.remove()


def calibration_windows(token_lists: Sequence[Sequence[int]], n: int, seed: int) -> list[list[int]]:
    """n windows drawn without replacement (seeded), longest first so batches pad little."""
    pick = torch.randperm(len(token_lists), generator=torch.Generator().manual_seed(seed))[:n]
    return sorted((list(token_lists[i]) for i in pick.tolist()), key=len, reverse=True)


def calibration_batches(
    windows: Sequence[Sequence[int]], batch_size: int, pad_id: int = 0
) -> Iterator[dict[str, torch.Tensor]]:
    """`collect_importance`'s batches: {input_ids, attention_mask} [batch, seq], right-padded."""
    for start in range(0, len(windows), batch_size):
        ids, mask = pad_rows(windows[start : start + batch_size], pad_id=pad_id)
        yield {"input_ids": ids, "attention_mask": mask.long()}


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
    sums: list[torch.Tensor | None] = [None] * len(model.model.layers)  # each [d_ff] float32

    def accumulate(layer: int, stats: torch.Tensor) -> None:
        batch_sum = stats.sum(dim=(0, 1))
        sums[layer] = batch_sum if sums[layer] is None else sums[layer] + batch_sum

    device = model.get_input_embeddings().weight.device
    n_tokens = torch.zeros((), dtype=torch.long)
    body = without_head(model) or model  # the hooks read the MLPs: no LM head needed
    with statistic_hooks(model, spec.token_stat, accumulate) as current:
        for batch in batches:
            input_ids = batch["input_ids"].to(device)
            attn = batch.get("attention_mask")
            attn = torch.ones_like(input_ids) if attn is None else attn.to(device)
            current["mask"] = attn.bool()
            n_tokens = n_tokens + current["mask"].sum().cpu()
            body(input_ids=input_ids, attention_mask=attn, use_cache=False)
    if any(s is None for s in sums):
        raise ValueError("no batches: nothing to score")
    total = int(n_tokens)
    downs = [layer.mlp.down_proj for layer in model.model.layers]
    scores = torch.stack(
        [spec.finalize(s, total, d.weight).cpu() for s, d in zip(sums, downs)]
    )  # [n_layers, d_ff], positions of the current layout
    if isinstance(model, PrunableLLM) and model.permutation is not None:
        scores = torch.empty_like(scores).scatter_(1, model.permutation, scores)
    orderings = torch.argsort(scores, dim=1, descending=True, stable=True)
    return ImportanceResult(criterion, scores.float(), orderings, total)


def importance_to_json(
    result: ImportanceResult, model_name: str, criterion: str, num_samples: int
) -> dict[str, Any]:
    """The importance file's JSON object (the format: this module's docstring)."""
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


def importance_file_name(llm_slug: str, criterion: str, fmt: str = "json") -> str:
    """What `main.py importance` calls its file: <llm slug>_<criterion>.<fmt> (json or npz)."""
    return f"{llm_slug}_{criterion}.{fmt}"


@dataclass(frozen=True)
class ImportanceFile:
    model: str
    criterion: str
    num_samples: int
    num_tokens: int
    date: str
    orderings: torch.Tensor  # [n_layers, d_ff] int64, most important first
    scores: torch.Tensor | None  # [n_layers, d_ff] float32


def write_importance_json(path: Path, data: dict[str, Any]) -> None:
    """Write the importance file: JSON, or compact arrays when `path` ends in `.npz`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix != ".npz":
        path.write_text(json.dumps(data))
        return
    orderings = np.asarray(data["orderings"])
    small = orderings.max(initial=0) <= np.iinfo(np.int16).max
    arrays = {"orderings": orderings.astype(np.int16 if small else np.int32)}
    if data.get("scores") is not None:
        arrays["scores"] = np.asarray(data["scores"], dtype=np.float32)
    meta = {k: v for k, v in data.items() if k not in ("orderings", "scores")}
    with path.open("wb") as f:  # an open file: numpy would append .npz to a name
        np.savez_compressed(f, meta=np.array(json.dumps(meta)), **arrays)


def _read_raw(path: Path) -> dict[str, Any]:
    if Path(path).suffix != ".npz":
        return json.loads(Path(path).read_text())
    with np.load(path) as npz:
        data = json.loads(str(npz["meta"]))
        data["orderings"] = npz["orderings"].astype(np.int64)
        data["scores"] = npz["scores"] if "scores" in npz.files else None
    return data


def read_importance_json(
    path: Path, n_layers: int | None = None, intermediate_size: int | None = None
) -> ImportanceFile:
    """Load an importance file; when the model's sizes are given, check the orderings fit them."""
    data = _read_raw(path)
    orderings = torch.as_tensor(np.asarray(data["orderings"]), dtype=torch.long)
    n_layers = data["n_layers"] if n_layers is None else n_layers
    width = data["intermediate_size"] if intermediate_size is None else intermediate_size
    validate_orderings(orderings, n_layers, width)
    scores = data.get("scores")
    return ImportanceFile(
        model=data["model"],
        criterion=data["criterion"],
        num_samples=int(data["num_samples"]),
        num_tokens=int(data["num_tokens"]),
        date=data["date"],
        orderings=orderings,
        scores=None if scores is None else torch.as_tensor(np.asarray(scores), dtype=torch.float32),
    )
