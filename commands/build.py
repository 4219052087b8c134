"""Wiring shared by train, eval and score: the prunable model, masks, scorers, rewards, envs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv

from commands.common import importance_path, make_source
from config import Config, ConfigError
from models import LoadedModels, load_models, model_shape
from pruning.create_pruning_mask import PruningMaskGenerator
from pruning.prunable_llm import PrunableLLM
from rl.env import LLMPruningEnv
from rl.mask_adapter import FractionMaskAdapter
from rl.metrics import encode_document, resolve_prefix_token
from rl.mmlu import MMLULoglikelihoodCalculator
from rl.reward import RewardFn, make_reward
from rl.tasks import MMLUScorer, PerplexityScorer
from rl.vec_env import BatchedPruningVecEnv


@dataclass
class Pruner:
    """The wrapped LLM, reordered by importance so that pruning is a view, and its mask adapter."""

    llm: PrunableLLM
    adapter: FractionMaskAdapter
    orderings_file: Path


def make_pruner(cfg: Config, models: LoadedModels) -> Pruner:
    path = importance_path(cfg, models.llm_source)
    if not path.is_file():
        raise FileNotFoundError(
            f"importance file {path} not found; run `python3 main.py importance` with this "
            "config or set env.importance_file"
        )
    n_layers, width = model_shape(models.llm)
    generator = PruningMaskGenerator.from_json(path, n_layers, width, align=cfg.env.align)
    llm = PrunableLLM(models.llm, orderings=generator.orderings)
    return Pruner(llm, FractionMaskAdapter(generator), path)


def mmlu_calculator(cfg: Config, llm: Any, tokenizer: Any) -> MMLULoglikelihoodCalculator:
    env = cfg.env
    dev = make_source(cfg.data, cfg.seed).dev_examples() if env.mmlu_num_fewshot else None
    return MMLULoglikelihoodCalculator(
        llm, tokenizer, env.mmlu_mode, env.mmlu_num_fewshot, dev, env.max_length
    )


def make_scorer(cfg: Config, llm: PrunableLLM, tokenizer: Any, items: Sequence[Any]) -> Any:
    """Per-item metric: token perplexity (windows), word perplexity (documents), or correctness."""
    env = cfg.env
    if cfg.data.dataset == "mmlu":
        return MMLUScorer(mmlu_calculator(cfg, llm, tokenizer), items)
    prefix = resolve_prefix_token(tokenizer, env.prefix_token)
    if items and hasattr(items[0], "token_ids"):  # training windows
        tokens = [list(c.token_ids) for c in items]
        counts = [len(t) for t in tokens]
    else:  # documents: tokenized and words counted as lm-eval does
        tokens = [encode_document(tokenizer, d.text, prefix) for d in items]
        counts = [d.word_count for d in items]
    return PerplexityScorer(llm, tokens, counts, prefix, env.max_length, env.batch_size)


def make_reward_fn(cfg: Config) -> RewardFn:
    """Correctness reward for MMLU, perplexity reward for WikiText."""
    name = "correctness" if cfg.data.dataset == "mmlu" else "perplexity"
    return make_reward(name, cfg.env.quality_weight)


def make_single_env(
    cfg: Config, pruner: Pruner, tokenizer: Any, items: Sequence[Any], embeddings: np.ndarray
) -> LLMPruningEnv:
    scorer, reward = make_scorer(cfg, pruner.llm, tokenizer, items), make_reward_fn(cfg)
    return LLMPruningEnv(pruner.llm, scorer, embeddings, pruner.adapter.mask_fn, reward)


def _worker_env(cfg: Config, device: str, items: Sequence[Any], embeddings: np.ndarray) -> Any:
    """Runs inside a worker process: its own copy of the model on its own GPU."""
    cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"device": device})})
    models = load_models(cfg.model)
    return make_single_env(cfg, make_pruner(cfg, models), models.tokenizer, items, embeddings)


def _devices(spec: list[int] | str) -> list[str]:
    import torch

    ids = range(torch.cuda.device_count()) if spec == "auto" else spec
    devices = [f"cuda:{i}" for i in ids]
    if not devices:
        raise ConfigError("train.devices=auto but no CUDA device is visible; set it to null")
    return devices


def make_vec_env(
    cfg: Config,
    pruner: Pruner | None,
    tokenizer: Any,
    items: Sequence[Any],
    embeddings: np.ndarray,
) -> VecEnv:
    """One worker process per GPU (train.devices), batched (n_envs > 1), or a single env."""
    if cfg.train.devices is not None:
        fns = [
            lambda d=d: _worker_env(cfg, d, items, embeddings) for d in _devices(cfg.train.devices)
        ]
        return SubprocVecEnv(fns, start_method="spawn")
    assert pruner is not None
    if cfg.train.n_envs > 1:
        scorer, reward = make_scorer(cfg, pruner.llm, tokenizer, items), make_reward_fn(cfg)
        return BatchedPruningVecEnv(
            pruner.llm, scorer, embeddings, pruner.adapter, reward, cfg.train.n_envs
        )
    return DummyVecEnv([lambda: make_single_env(cfg, pruner, tokenizer, items, embeddings)])
