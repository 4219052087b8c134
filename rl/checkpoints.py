"""Training callbacks: a tqdm progress bar with running stats, and atomic checkpoints.

A checkpoint is a folder `checkpoints/step_<N>/` (agent.zip + replay_buffer.pkl) that is written
as `step_<N>.tmp/` and renamed when complete, so killing training at any moment leaves the last
complete checkpoint loadable. Older checkpoints are removed after a newer one is in place.
"""

from __future__ import annotations

import os
import shutil
from collections import deque
from pathlib import Path

import numpy as np
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from tqdm import tqdm

from config import ConfigError

AGENT, BUFFER = "agent.zip", "replay_buffer.pkl"


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


def save_checkpoint(agent: BaseAlgorithm, folder: Path) -> Path:
    """Write agent + replay buffer for agent.num_timesteps atomically; returns the folder."""
    final = folder / f"step_{agent.num_timesteps:09d}"
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    agent.save(tmp / AGENT)
    agent.save_replay_buffer(tmp / BUFFER)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in folder.glob("step_*"):
        if old != final and not old.name.endswith(".tmp"):
            shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(folder: Path) -> Path | None:
    """The newest complete checkpoint folder, None if there is none."""
    done = sorted(p for p in folder.glob("step_*") if not p.name.endswith(".tmp"))
    return done[-1] if done else None


class CheckpointCallback(BaseCallback):
    """Every `every` env steps, an atomic checkpoint under `folder`."""

    def __init__(self, folder: Path, every: int) -> None:
        super().__init__()
        self.folder, self.every = folder, every
        self._last = 0

    def _on_training_start(self) -> None:
        self._last = self.num_timesteps

    def _on_step(self) -> bool:
        if self.num_timesteps - self._last >= self.every:
            save_checkpoint(self.model, self.folder)
            self._last = self.num_timesteps
        return True


def load_agent(path: Path, obs_dim: int, n_layers: int, device: str = "auto") -> BaseAlgorithm:
    """Load a SAC agent and check it fits this model and encoder; one-line errors."""
    from stable_baselines3 import SAC

    if not path.is_file():
        raise FileNotFoundError(f"agent {path} not found; train one or pass --agent PATH")
    try:
        agent = SAC.load(path, device=device)
    except Exception as exc:  # a truncated or foreign file fails in many ways inside SB3
        raise ConfigError(f"agent {path} is corrupt or unreadable ({type(exc).__name__})") from None
    got_obs, got_act = agent.observation_space.shape, agent.action_space.shape
    if got_obs != (obs_dim,) or got_act != (n_layers,):
        raise ConfigError(
            f"agent {path} was trained for {got_act[0]} layers and {got_obs[0]}-dim observations; "
            f"this model has {n_layers} layers and the encoder gives {obs_dim} dims"
        )
    return agent
