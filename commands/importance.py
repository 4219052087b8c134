"""`importance`: rank each layer's MLP neurons on calibration text; write the orderings file."""

from __future__ import annotations

import argparse
from collections.abc import Iterator, Sequence

import torch
from tqdm import tqdm

from commands.common import (
    load_items,
    new_run_dir,
    seed_everything,
    write_json,
    written_importance_path,
)
from config import Config
from data.sources import chunk_documents
from models import load_models
from pruning.create_pruning_mask import write_importance_json
from pruning.importance import collect_importance, importance_to_json

HELP = (
    "Rank MLP neurons per layer (importance.criterion) over importance.num_samples calibration "
    "windows and write <importance.output_dir>/<llm slug>_<criterion>.json."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    del parser  # everything comes from the `importance` config section


def calibration_windows(token_lists: Sequence[Sequence[int]], n: int, seed: int) -> list[list[int]]:
    """n windows drawn without replacement (seeded), longest first so batches pad little."""
    pick = torch.randperm(len(token_lists), generator=torch.Generator().manual_seed(seed))[:n]
    return sorted((list(token_lists[i]) for i in pick.tolist()), key=len, reverse=True)


def batches(windows: list[list[int]], batch_size: int, pad_id: int) -> Iterator[dict]:
    for start in tqdm(range(0, len(windows), batch_size), desc="importance", unit="batch"):
        rows = windows[start : start + batch_size]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
        yield {"input_ids": ids, "attention_mask": mask}


def run(cfg: Config, args: argparse.Namespace) -> int:
    del args
    imp = cfg.importance
    seed_everything(cfg.seed)
    models = load_models(cfg.model)
    items = load_items(cfg.data, imp.split)
    if cfg.data.dataset == "wikitext":
        token_lists = [
            c.token_ids for c in chunk_documents(items, models.tokenizer, imp.max_length)
        ]
    else:
        token_lists = [models.tokenizer.encode(q.text)[-imp.max_length :] for q in items]
    windows = calibration_windows(token_lists, imp.num_samples, cfg.seed)
    pad_id = models.tokenizer.pad_token_id or 0
    result = collect_importance(models.llm, batches(windows, imp.batch_size, pad_id), imp.criterion)
    out = written_importance_path(cfg, models.llm_source)
    data = importance_to_json(result, cfg.model.llm, imp.criterion, len(windows))
    write_importance_json(out, data)
    run_dir = new_run_dir(cfg, "importance")
    summary = {"file": str(out), "num_samples": len(windows), "num_tokens": result.num_tokens}
    write_json(run_dir / "importance.json", {**summary, "criterion": imp.criterion})
    print(f"wrote {out} ({len(windows)} windows, {result.num_tokens} tokens)")
    return 0
