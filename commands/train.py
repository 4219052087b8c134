"""`train`: SAC learns per-layer prune fractions from sentence embeddings."""

from __future__ import annotations

import argparse
import gc
import math
import time
import warnings
from pathlib import Path
from typing import Any

import torch
import yaml
from stable_baselines3 import SAC

from commands.build import make_pruner, make_vec_env
from commands.common import (
    decision_texts,
    json_line,
    new_run_dir,
    observations,
    resolve_path,
    seed_everything,
    training_items,
    write_json,
)
from config import Config, ConfigError, SACConfig
from models import load_models
from rl.checkpoints import (
    AGENT,
    BUFFER,
    RNG,
    CheckpointCallback,
    ProgressCallback,
    checkpoint_step,
    latest_checkpoint,
    load_agent,
    load_rng,
    restore_rng,
    save_checkpoint,
)

HELP = "Train the SAC pruning agent (train.total_steps env steps) with checkpoints."
FINAL_AGENT = "agent_final.zip"
# Keys that may change when resuming: how long to train and what happens after.
RESUMABLE_CHANGES = {("train", "total_steps"), ("train", "eval_after"), ("eval", "agent")}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--resume",
        metavar="RUN",
        default=None,
        help="continue a train run folder ('latest' = newest) from its last checkpoint",
    )


def make_agent(sac: SACConfig, env: Any, seed: int, residual: bool = False) -> SAC:
    """A fresh SAC agent whose deterministic action starts at prune fraction sac.init_action in
    every layer, or (`residual`: actions are deviations from a reference profile) at action 0
    for every input, i.e. at the reference. Set `agent.tensorboard_log` before learning to get
    TensorBoard logs."""
    agent = SAC(
        "MlpPolicy",
        env,
        learning_rate=sac.learning_rate,
        buffer_size=sac.buffer_size,
        learning_starts=sac.learning_starts,
        batch_size=sac.batch_size,
        gamma=0.0,  # every transition is terminal: the critic target is the reward alone
        train_freq=sac.train_freq,
        gradient_steps=sac.gradient_steps,
        ent_coef=sac.ent_coef,
        target_entropy=sac.target_entropy,
        policy_kwargs={"net_arch": list(sac.net_arch)},
        seed=seed,
        device="auto",
    )
    # Start the deterministic policy near init_action (tanh-squashed, then mapped to [0, 1]).
    with torch.no_grad():
        agent.actor.mu.bias.fill_(0.0 if residual else math.atanh(2 * sac.init_action - 1))
        if residual:  # the same (zero) deviation for every input until learning says otherwise
            agent.actor.mu.weight.zero_()
    return agent


def find_run(spec: str, runs_dir: Path, total_steps: int) -> Path:
    """A train run folder; 'latest' = the newest one with a complete checkpoint short of
    `total_steps` (if every run is there, the newest, which `check_unfinished` refuses)."""
    if spec == "latest":
        runs = [
            (run, checkpoint_step(ckpt))
            for run in sorted(runs_dir.glob("train_*"))
            if (ckpt := latest_checkpoint(run / "checkpoints")) is not None
        ]
        if not runs:
            raise FileNotFoundError(
                f"no train run with a complete checkpoint in {runs_dir} to resume; drop --resume"
            )
        unfinished = [run for run, step in runs if step < total_steps]
        return (unfinished or [runs[-1][0]])[-1]  # none: `check_unfinished` names the newest
    run = Path(spec)
    if not (run / "config.yaml").is_file():
        raise FileNotFoundError(f"{run} is not a train run folder (no config.yaml)")
    return run


def check_unfinished(run: Path, total_steps: int) -> None:
    """Resuming a run that already reached total_steps would only rewrite its results."""
    ckpt = latest_checkpoint(run / "checkpoints")
    step = -1 if ckpt is None else checkpoint_step(ckpt)
    if step >= total_steps:
        raise ConfigError(
            f"--resume: {run.name} already reached {step} steps (train.total_steps={total_steps}); "
            f"raise train.total_steps to train it further, e.g. --set train.total_steps={2 * step}"
        )


def check_same_config(cfg: Config, run: Path) -> None:
    """A resumed run must use the config it started with (bar RESUMABLE_CHANGES)."""
    old = yaml.safe_load((run / "config.yaml").read_text())
    new = cfg.model_dump()
    for section, values in new.items():
        if not isinstance(values, dict):
            if old.get(section) != values:
                raise ConfigError(
                    f"--resume: {section} changed ({old.get(section)!r} -> {values!r})"
                )
            continue
        for key, value in values.items():
            before = old.get(section, {}).get(key)
            if (section, key) not in RESUMABLE_CHANGES and before != value:
                raise ConfigError(
                    f"--resume: {section}.{key} changed ({before!r} -> {value!r}); "
                    f"resume with the run's config ({run / 'config.yaml'}) or start a new run"
                )


def start_or_resume(
    cfg: Config, env: Any, resume: Path | None, obs_dim: int, n_actions: int
) -> tuple[SAC, Path]:
    """A fresh agent in a new run folder, or the last checkpoint of `resume` with its buffer and
    random states (the run continues where it stopped instead of replaying its first steps)."""
    if resume is None:
        residual = cfg.env.reference is not None  # config: a reference implies budget mode
        agent = make_agent(cfg.sac, env, cfg.seed, residual)
        run_dir = new_run_dir(cfg, "train")  # only once everything before could fail
        agent.tensorboard_log = str(run_dir / "tensorboard")
        return agent, run_dir
    ckpt = latest_checkpoint(resume / "checkpoints")
    if ckpt is None:
        raise FileNotFoundError(f"{resume} has no complete checkpoint to resume from")
    agent = load_agent(ckpt / AGENT, obs_dim, n_actions)
    agent.set_env(env)  # drops the last observation: learn() resets the env first
    agent.load_replay_buffer(ckpt / BUFFER)
    state = load_rng(ckpt)
    if state is None:
        warnings.warn(f"{ckpt} has no {RNG}: random states start afresh", stacklevel=2)
    else:
        restore_rng(agent, state)
    print(f"resuming {resume.name} at step {agent.num_timesteps}")
    return agent, resume


def save_final(
    agent: SAC, run_dir: Path, summary: dict[str, Any], env_rngs: list[Any] | None
) -> Path:
    """Last checkpoint (unless this process trained no step), the final agent (atomically) and
    train.json. `env_rngs`: the checkpoint callback's env samplers."""
    if env_rngs is not None:
        save_checkpoint(agent, run_dir / "checkpoints", env_rngs)
    final, tmp = run_dir / FINAL_AGENT, run_dir / f"tmp_{FINAL_AGENT}"
    agent.save(tmp)
    tmp.replace(final)
    record = {"steps": agent.num_timesteps, **summary}
    write_json(run_dir / "train.json", record)
    print(f"saved {final}")
    print(json_line({"run": str(run_dir), "agent": str(final), **record}))  # the last line
    return final


def run(cfg: Config, args: argparse.Namespace) -> int:
    runs_dir = resolve_path(cfg.train.runs_dir)
    resume = find_run(args.resume, runs_dir, cfg.train.total_steps) if args.resume else None
    if resume is not None:
        check_same_config(cfg, resume)
        check_unfinished(resume, cfg.train.total_steps)
    seed_everything(cfg.seed)
    in_process = cfg.train.devices is None  # else each GPU worker loads its own model
    models = load_models(cfg.model, llm=in_process)
    pruner = make_pruner(cfg, models) if in_process else None
    items = training_items(cfg, models.tokenizer)
    embeddings = observations(models, cfg.data, decision_texts(items))
    env = make_vec_env(cfg, pruner, models.tokenizer, items, embeddings)
    gc.freeze()  # the model's objects never die: keep the collector off them (steadier steps)
    obs_dim, n_actions = env.observation_space.shape[0], env.action_space.shape[0]
    agent, run_dir = start_or_resume(cfg, env, resume, obs_dim, n_actions)
    print(f"run folder: {run_dir}  ({len(items)} training items, {n_actions} actions per item)")
    progress = ProgressCallback(cfg.train.total_steps)
    checkpoints = CheckpointCallback(run_dir / "checkpoints", cfg.train.checkpoint_every)
    start = time.perf_counter()
    remaining = cfg.train.total_steps - agent.num_timesteps
    env_rngs = None
    if remaining > 0:
        callbacks = [progress, checkpoints]
        agent.learn(remaining, callbacks, reset_num_timesteps=resume is None, tb_log_name="sac")
        env_rngs = checkpoints.env_rngs()
    seconds = round(time.perf_counter() - start, 1)
    summary = {"seconds": seconds, "training_items": len(items), **progress.summary()}
    final = save_final(agent, run_dir, summary, env_rngs)
    env.close()
    if cfg.train.eval_after:
        from commands.evaluate import evaluate_agent

        if pruner is None:
            models = load_models(cfg.model)
            pruner = make_pruner(cfg, models)
        evaluate_agent(cfg, models, pruner, final)
    return 0
