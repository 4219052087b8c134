"""Training callbacks: a tqdm progress bar with running stats, and atomic checkpoints.

A checkpoint is a folder `checkpoints/step_<N>/` (agent.zip + replay_buffer.pkl + rng_state.pkl)
that is written as `step_<N>.tmp/` and renamed when complete, so killing training at any moment
leaves the last complete checkpoint loadable. Older checkpoints, and `.tmp` folders a killed run
left, are removed after a newer one is in place (one process writes a run's checkpoints).

Resuming continues the run instead of replaying it: the checkpoint holds every random state
(Python, NumPy, torch, the action spaces' samplers and each env's item sampler `np_random`), and
it is taken between two SB3 iterations (the last transition stored, its gradient steps done).
The env has already drawn the next items by then, so the checkpoint keeps its sampler as it was
one draw earlier: the resumed run's first `reset()` redraws exactly those items.
"""

from __future__ import annotations

import copy
import os
import pickle
import random
import shutil
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from tqdm import tqdm

from config import ConfigError

AGENT, BUFFER, RNG = "agent.zip", "replay_buffer.pkl", "rng_state.pkl"


class ProgressCallback(BaseCallback):
    """tqdm bar over env steps; postfix and TensorBoard get running reward, sparsity, metric."""

    def __init__(self, total_steps: int, window: int = 100) -> None:
        super().__init__()
        self.total_steps = total_steps
        self.stats = {k: deque(maxlen=window) for k in ("reward", "sparsity", "metric")}
        self.bar: tqdm | None = None

    def _on_training_start(self) -> None:
        self.bar = tqdm(
            total=self.total_steps, initial=self.num_timesteps, unit="step", desc="train"
        )

    def _on_step(self) -> bool:
        for reward, info in zip(self.locals["rewards"], self.locals["infos"]):
            self.stats["reward"].append(float(reward))
            self.stats["sparsity"].append(info["sparsity"])
            self.stats["metric"].append(info["metric"])
        means = {k: float(np.mean(v)) for k, v in self.stats.items()}
        for key, value in means.items():
            self.logger.record(f"env/{key}", value)
        assert self.bar is not None
        self.bar.update(self.num_timesteps - self.bar.n)
        self.bar.set_postfix(
            reward=f"{means['reward']:+.3f}",
            sparsity=f"{means['sparsity']:.3f}",
            metric=f"{means['metric']:.3g}",
            refresh=False,
        )
        return True

    def _on_training_end(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def summary(self) -> dict[str, float]:
        return {f"last_{k}": float(np.mean(v)) for k, v in self.stats.items() if v}


def env_samplers(env: Any) -> list[np.random.Generator]:
    """Copies of each env's item sampler (`np_random`, the contract of every env we train on)."""
    return copy.deepcopy(env.get_attr("np_random"))


def capture_rng(agent: BaseAlgorithm, env_rngs: list[np.random.Generator]) -> dict[str, Any]:
    """Every random state a resumed run needs; `env_rngs` as `env_samplers` gives them."""
    env = agent.get_env()
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "torch_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "agent_action_space": agent.action_space.np_random.bit_generator.state,
        "env_action_space": env.action_space.np_random.bit_generator.state if env else None,
        "env": list(env_rngs),
    }


def restore_rng(agent: BaseAlgorithm, state: dict[str, Any]) -> None:
    """Put back what `capture_rng` saved; call after the agent has its env and buffer."""
    env = agent.get_env()
    if env is None or len(state["env"]) != env.num_envs:
        raise ConfigError(f"the checkpoint's random states are for {len(state['env'])} envs")
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["torch_cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["torch_cuda"])
    # random actions before learning_starts come from the agent's action space
    agent.action_space.np_random.bit_generator.state = state["agent_action_space"]
    if state["env_action_space"] is not None:
        env.action_space.np_random.bit_generator.state = state["env_action_space"]
    for i, generator in enumerate(state["env"]):
        env.set_attr("np_random", copy.deepcopy(generator), indices=i)


def save_checkpoint(
    agent: BaseAlgorithm, folder: Path, env_rngs: list[np.random.Generator] | None = None
) -> Path:
    """Write agent + replay buffer + random states for agent.num_timesteps atomically.

    `env_rngs`: the env samplers to store (see the module docstring); None = as they are now.
    Returns the checkpoint folder.
    """
    final = folder / f"step_{agent.num_timesteps:09d}"
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    agent.save(tmp / AGENT)
    agent.save_replay_buffer(tmp / BUFFER)
    env = agent.get_env()
    if env is not None:
        rngs = env_samplers(env) if env_rngs is None else env_rngs
        (tmp / RNG).write_bytes(pickle.dumps(capture_rng(agent, rngs)))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in folder.glob("step_*"):  # older checkpoints, and .tmp ones a kill left behind
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(folder: Path) -> Path | None:
    """The newest complete checkpoint folder (agent and replay buffer), None if there is none."""
    done = sorted(
        p
        for p in folder.glob("step_*")
        if not p.name.endswith(".tmp") and (p / AGENT).is_file() and (p / BUFFER).is_file()
    )
    return done[-1] if done else None


def checkpoint_step(checkpoint: Path) -> int:
    """The env steps a checkpoint folder `step_<N>` holds."""
    return int(checkpoint.name.removeprefix("step_"))


def load_rng(checkpoint: Path) -> dict[str, Any] | None:
    """The random states saved with a checkpoint; None for checkpoints written without them."""
    path = checkpoint / RNG
    return pickle.loads(path.read_bytes()) if path.is_file() else None


class CheckpointCallback(BaseCallback):
    """Every `every` env steps, an atomic checkpoint under `folder`.

    Checkpoints are taken when a rollout starts: the previous transitions are in the buffer and
    their gradient steps are done (SB3 calls `on_step` before storing the transition). The env
    samplers are kept one step back (`env_rngs`), as the module docstring explains.
    """

    def __init__(self, folder: Path, every: int) -> None:
        super().__init__()
        self.folder, self.every = folder, every
        self._last = 0
        self._samplers: deque[list[np.random.Generator]] = deque(maxlen=2)

    def _on_training_start(self) -> None:
        self._last = self.num_timesteps
        self._samplers.append(env_samplers(self.training_env))  # after learn()'s reset

    def _on_step(self) -> bool:
        self._samplers.append(env_samplers(self.training_env))  # each step redraws every item
        return True

    def _on_rollout_start(self) -> None:
        if self.num_timesteps - self._last >= self.every:
            save_checkpoint(self.model, self.folder, self.env_rngs())
            self._last = self.num_timesteps

    def env_rngs(self) -> list[np.random.Generator]:
        """Env samplers as they were before the items of the pending observation were drawn."""
        return self._samplers[0]


def read_agent(path: Path, device: str = "auto") -> BaseAlgorithm:
    """Load a SAC agent file (no model needed: call it before loading one); one-line errors,
    the cause chained (`--debug` shows it)."""
    from stable_baselines3 import SAC

    if not path.is_file():
        raise FileNotFoundError(f"agent {path} not found; train one or pass --agent PATH")
    try:
        return SAC.load(path, device=device)
    except Exception as exc:  # a truncated or foreign file fails in many ways inside SB3
        cause = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}" if str(exc) else ""
        raise ConfigError(
            f"agent {path} is corrupt or unreadable ({cause or type(exc).__name__}); "
            "--debug shows the traceback"
        ) from exc


def check_agent(agent: BaseAlgorithm, path: Path, obs_dim: int, n_actions: int) -> BaseAlgorithm:
    """The agent fits this model's actions (one per layer, plus its levers') and this encoder's
    observations."""
    got_obs, got_act = agent.observation_space.shape, agent.action_space.shape
    if got_obs != (obs_dim,) or got_act != (n_actions,):
        raise ConfigError(
            f"agent {path} was trained for {got_act[0]} actions and {got_obs[0]}-dim "
            f"observations; this model and its levers need {n_actions} actions and the encoder "
            f"gives {obs_dim} dims"
        )
    return agent


def load_agent(path: Path, obs_dim: int, n_actions: int, device: str = "auto") -> BaseAlgorithm:
    """`read_agent`, then `check_agent`."""
    return check_agent(read_agent(path, device), path, obs_dim, n_actions)
