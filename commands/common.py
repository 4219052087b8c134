"""Orchestration helpers shared by the commands: seeding, run folders, data, embeddings."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import random
import shutil
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from config import Config, ConfigError, DataConfig, resolve_path
from data.code import CodeDataSource
from data.embeddings import cached_embeddings
from data.mixed import MixedDataSource, MixedItem, cap_per_kind
from data.sources import DataSource, chunk_documents, make_data_source
from models import LoadedModels, ModelSource, peek_shape
from pruning.importance import importance_file_name

ENCODER_MAX_TOKENS = 512


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def utc_stamp() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def _free_run_name(base: Path, command: str) -> Path:
    run_dir = base / f"{command}_{utc_stamp()}"
    suffix = 1
    while run_dir.exists():
        run_dir = base / f"{command}_{utc_stamp()}_{suffix}"
        suffix += 1
    return run_dir


def new_run_dir(cfg: Config, command: str) -> Path:
    """runs/<command>_<UTC time>/ with the resolved config in it."""
    run_dir = _free_run_name(resolve_path(cfg.train.runs_dir), command)
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(), sort_keys=False))
    return run_dir


def remove_stale_temporaries(folder: Path, pattern: str) -> None:
    """Delete `pattern` entries named `...-<pid>` whose process is gone (a killed run's)."""
    for path in folder.glob(pattern):
        pid = path.name.rpartition("-")[2]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


@contextlib.contextmanager
def staged_run_dir(cfg: Config, command: str) -> Iterator[tuple[Path, Path]]:
    """(staging folder, final run folder) for a run whose outputs are large and slow to write:
    everything goes into runs/.<name>.tmp-<pid>/, renamed to runs/<name>/ when the block ends
    without error and removed when it fails; leftovers of killed runs are removed first."""
    base = resolve_path(cfg.train.runs_dir)
    base.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(base, f".{command}_*.tmp-*")
    final = _free_run_name(base, command)
    stage = base / f".{final.name}.tmp-{os.getpid()}"
    stage.mkdir()
    try:
        (stage / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(), sort_keys=False))
        yield stage, final
        os.replace(stage, final)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def check_align(cfg: Config) -> None:
    """env.align must divide the LLM's MLP width: checked on its config file, before the load."""
    width, align = peek_shape(cfg.model.llm)[1], cfg.env.align
    if width is not None and width % align:
        fit = max(d for d in range(1, align + 1) if width % d == 0)
        raise ConfigError(
            f"env.align={align} does not divide the MLP width {width} of {cfg.model.llm}; "
            f"use a divisor of {width}, e.g. {fit}"
        )


def warn(message: str, record: list[str]) -> None:
    """Print a warning and keep it for the run's JSON (a fallback is never silent)."""
    print(f"warning: {message}", file=sys.stderr)
    record.append(message)


def write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically (temporary file, then rename)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=_json_default) + "\n")
    os.replace(tmp, path)


def json_line(obj: Any) -> str:
    """One line of JSON (numpy values as plain numbers): a command's last stdout line."""
    return json.dumps(obj, default=_json_default)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def written_importance_path(cfg: Config, llm: ModelSource) -> Path:
    """Where `importance` writes: <importance.output_dir>/<llm slug>_<criterion>.<format>."""
    name = importance_file_name(llm.slug, cfg.importance.criterion, cfg.importance.format)
    return resolve_path(cfg.importance.output_dir) / name


def importance_path(cfg: Config, llm: ModelSource) -> Path:
    """Orderings file the env uses: env.importance_file, else what `importance` writes."""
    if cfg.env.importance_file:
        return resolve_path(cfg.env.importance_file)
    return written_importance_path(cfg, llm)


def make_source(data: DataConfig, seed: int = 0) -> DataSource:
    if data.dataset == "mixed":
        return mixed_source(data, seed)
    path = resolve_path(data.path) if data.path else None
    if path is not None and not path.is_dir():
        key = f"data.{data.dataset}_path"
        raise FileNotFoundError(f"{key}={data.path} is not a folder; point it at the data folder")
    options: dict[str, Any] = {}
    if data.dataset == "mmlu":  # a seeded sample across subjects, not the first subjects
        options = {"subjects": data.subjects, "max_samples": data.max_samples, "seed": seed}
    return make_data_source(data.dataset, path, **options)


def mixed_source(data: DataConfig, seed: int = 0) -> MixedDataSource:
    """One source per active kind of `data.kinds` (code: the shipped corpus, or data.code_path)."""
    loaders = {}
    for kind in data.active_kinds:
        if kind == "code":
            file = resolve_path(data.code_path) if data.code_path else None
            loaders[kind] = CodeDataSource(file).load
        else:
            loaders[kind] = make_source(data.model_copy(update={"dataset": kind}), seed).load
    return MixedDataSource(loaders)


def load_split(data: DataConfig, split: str, seed: int = 0) -> list[Any]:
    try:
        items = list(make_source(data, seed).load(split))
    except ValueError as exc:  # e.g. an unknown MMLU subject, with the closest valid one
        raise ConfigError(str(exc)) from None
    if not items:
        raise ConfigError(f"split {split!r} of {data.dataset} has no items; check the data folder")
    return items


def check_limit(limit: int | None) -> int | None:
    """--limit: None (all items) or a positive number of items."""
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit must be a positive number of items, got {limit}")
    return limit


def load_items(data: DataConfig, split: str, limit: int | None = None) -> list[Any]:
    """Items of one split, capped by data.max_samples and `limit` (first N)."""
    items = load_split(data, split)
    if data.dataset == "mixed":  # the first N of each kind
        return cap_per_kind(items, min((x for x in (data.max_samples, limit) if x), default=None))
    cap = min(x for x in (data.max_samples, limit, len(items)) if x is not None)
    return items[:cap]


def training_items(cfg: Config, tokenizer: Any) -> list[Any]:
    """WikiText documents are cut into max_length-token windows; MMLU questions are used as is."""
    if cfg.data.dataset == "mixed":
        from commands.mixed import mixed_training_items  # it imports this module

        return mixed_training_items(cfg, tokenizer)
    items = load_split(cfg.data, cfg.data.train_split, cfg.seed)
    if cfg.data.dataset == "wikitext":
        items = chunk_documents(items, tokenizer, cfg.env.max_length)
    if cfg.data.max_samples:
        order = np.random.default_rng(cfg.seed).permutation(len(items))[: cfg.data.max_samples]
        items = [items[i] for i in sorted(order)]
    return items


def decision_texts(items: Sequence[Any]) -> list[str]:
    """What each training item's decision may read: a mixed-task item's `prompt` (the text
    before its scored tokens), else the item's own text (the WikiText and MMLU tasks)."""
    texts = [item.prompt if isinstance(item, MixedItem) else item.text for item in items]
    if any(t is None for t in texts):
        raise ValueError("a mixed-task page or file is decided window by window, not whole")
    return texts


def observations(models: LoadedModels, data: DataConfig, texts: Sequence[str]) -> np.ndarray:
    """Encoder embeddings of `texts` [n, dim], computed once and cached on disk by content."""
    cache = None if data.embedding_cache is None else resolve_path(data.embedding_cache)
    return cached_embeddings(
        models.encoder,
        models.encoder_tokenizer,
        texts,
        models.encoder_spec,
        cache,
        data.embedding_batch_size,
        ENCODER_MAX_TOKENS,
    )
