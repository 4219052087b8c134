"""Wiring shared by the commands: the prunable model, tasks, rewards and environments."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv

from commands.allocations import read_profiles
from commands.common import importance_path, load_split, make_source
from commands.mixed import make_mixed_task, mixed_reward
from config import Config, ConfigError, EnvConfig, resolve_path
from data.sources import earlier_windows
from models import LoadedModels, load_models, model_shape
from pruning.allocation import check_align
from pruning.importance import read_importance_json
from pruning.prunable_llm import PrunableLLM
from rl.env import ActionMap, LLMPruningEnv, PruningBandit
from rl.levers import LeverBandit
from rl.reward import RewardFn, make_budget_reward, make_reward
from rl.vec_env import BatchedPruningVecEnv, ShardedPruningVecEnv
from scoring.metrics import PerplexityCalculator
from scoring.mmlu import MMLULoglikelihoodCalculator
from scoring.tasks import DocumentTask, MMLUTask, Task, WindowTask


@dataclass
class Pruner:
    """The wrapped LLM, its neurons sorted by importance once (pruning = views), and the
    importance file the order came from."""

    llm: PrunableLLM
    orderings_file: Path
    align: int

    @property
    def width(self) -> int:
        return self.llm.intermediate_size

    def action_map(self, env: EnvConfig) -> ActionMap:
        return make_action_map(env, self.llm.n_layers, self.width)


def make_action_map(env: EnvConfig, n_layers: int, width: int) -> ActionMap:
    """How `env` turns actions into kept counts (budget targets, reference profile, align)."""
    reference = None
    if env.reference is not None and env.targets is not None:
        reference = read_profiles(resolve_path(env.reference), n_layers, width, env.align)
    return ActionMap(
        n_layers, width, env.align, env.targets, env.target_step, reference, env.radius
    )


def make_pruner(cfg: Config, models: LoadedModels) -> Pruner:
    path = importance_path(cfg, models.llm_source)
    if not path.is_file():
        raise FileNotFoundError(
            f"importance file {path} not found; run `python3 main.py importance` with this "
            "config or set env.importance_file"
        )
    n_layers, width = model_shape(models.llm)
    try:
        check_align(width, cfg.env.align)
        orderings = read_importance_json(path, n_layers, width).orderings
    except ValueError as exc:
        raise ConfigError(f"{exc} (env.align / env.importance_file)") from None
    return Pruner(PrunableLLM(models.llm, orderings=orderings), path, cfg.env.align)


def mmlu_calculator(cfg: Config, tokenizer: Any) -> MMLULoglikelihoodCalculator:
    env = cfg.env
    dev = make_source(cfg.data, cfg.seed).dev_examples() if env.mmlu_num_fewshot else None
    return MMLULoglikelihoodCalculator(
        tokenizer, env.mmlu_mode, env.mmlu_num_fewshot, dev, env.max_length
    )


def perplexity_calculator(cfg: Config, tokenizer: Any) -> PerplexityCalculator:
    env = cfg.env
    return PerplexityCalculator(tokenizer, env.max_length, env.prefix_token, env.batch_size)


def make_task(cfg: Config, tokenizer: Any, items: Sequence[Any]) -> Task:
    """Token perplexity (training windows), word perplexity (documents), or MMLU correctness."""
    if cfg.data.dataset == "mixed":
        return make_mixed_task(cfg, tokenizer, items)
    if cfg.data.dataset == "mmlu":
        return MMLUTask(mmlu_calculator(cfg, tokenizer), items, cfg.env.batch_size)
    if items and hasattr(items[0], "token_ids"):  # training windows
        calc, env = perplexity_calculator(cfg, tokenizer), cfg.env
        tokens = [list(c.token_ids) for c in items]
        contexts = None
        if env.neurons == "context":
            docs = load_split(cfg.data, cfg.data.train_split, cfg.seed)
            contexts = earlier_windows(docs, tokenizer, env.max_length, items)
        return WindowTask(tokens, calc.prefix_token, env.max_length, env.batch_size, contexts)
    return DocumentTask(perplexity_calculator(cfg, tokenizer), items)


def make_reward_fn(cfg: Config) -> RewardFn:
    """Correctness reward for MMLU, perplexity reward for WikiText; budget or trade-off."""
    if cfg.data.dataset == "mixed":
        return mixed_reward(cfg)
    name = "correctness" if cfg.data.dataset == "mmlu" else "perplexity"
    if cfg.env.reward == "budget":
        return make_budget_reward(name)
    return make_reward(name, cfg.env.quality_weight)


def make_bandit(
    cfg: Config, pruner: Pruner, tokenizer: Any, items: Sequence[Any], embeddings: np.ndarray
) -> PruningBandit:
    task = make_task(cfg, tokenizer, items)
    action_map = pruner.action_map(cfg.env)
    criterion = cfg.importance.criterion if cfg.env.neurons == "context" else None
    if cfg.env.levers:
        return LeverBandit(pruner.llm, task, embeddings, action_map, make_reward_fn(cfg),
                           criterion, levers=cfg.env.levers, budget_radius=cfg.env.budget_radius,
                           price_lr=cfg.env.price_lr)  # fmt: skip
    return PruningBandit(pruner.llm, task, embeddings, action_map, make_reward_fn(cfg), criterion)


def make_env(
    cfg: Config, pruner: Pruner, tokenizer: Any, items: Sequence[Any], embeddings: np.ndarray
) -> VecEnv:
    """`train.n_envs` episodes per step: batched in one forward pass, or one Gymnasium env."""
    bandit = make_bandit(cfg, pruner, tokenizer, items, embeddings)
    if cfg.train.n_envs > 1:
        return BatchedPruningVecEnv(bandit, cfg.train.n_envs)
    return DummyVecEnv([lambda: LLMPruningEnv(bandit)])


def _worker_bandit(
    cfg: Config, device: str, items: Sequence[Any], embeddings: np.ndarray
) -> PruningBandit:
    """Runs inside a worker process: its own model on its own device."""
    cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"device": device})})
    models = load_models(cfg.model)
    return make_bandit(cfg, make_pruner(cfg, models), models.tokenizer, items, embeddings)


def _devices(spec: list[int | Literal["cpu"]] | str) -> list[str]:
    import torch

    ids = range(torch.cuda.device_count()) if spec == "auto" else spec
    devices = [d if d == "cpu" else f"cuda:{d}" for d in ids]
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
    """`train.n_envs` episodes per step on each worker process of `train.devices` (the main
    process holds no model), or in-process (`make_env`)."""
    if cfg.train.devices is None:
        assert pruner is not None
        return make_env(cfg, pruner, tokenizer, items, embeddings)
    fns = [partial(_worker_bandit, cfg, d, items, embeddings) for d in _devices(cfg.train.devices)]
    return ShardedPruningVecEnv(fns, cfg.train.n_envs, embeddings)
