"""Resuming continues a run: N steps in one go equal N/2 steps, a resume, and N/2 more."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from main import main
from rl.checkpoints import BUFFER, RNG, latest_checkpoint
from tests.fixtures import make_tiny_project

TOTAL = 16  # learning_starts 4 < TOTAL / 2: the resumed half samples from the policy too


def train(config: Path, runs: Path, *extra: str) -> Path:
    argv = ["train", "--config", str(config), "--set", f"train.runs_dir={runs}", *extra]
    assert main(argv) == 0
    return sorted(runs.glob("train_*"))[-1]


def transitions(run: Path) -> dict[str, np.ndarray]:
    checkpoint = latest_checkpoint(run / "checkpoints")
    assert checkpoint is not None and (checkpoint / RNG).is_file()
    buffer = pickle.loads((checkpoint / BUFFER).read_bytes())
    n = buffer.pos
    fields = ("observations", "actions", "rewards", "next_observations", "dones")
    return {name: getattr(buffer, name)[:n] for name in fields}


@pytest.mark.parametrize("n_envs", [2, 1])  # batched VecEnv, DummyVecEnv
def test_resume_continues_instead_of_replaying(tmp_path: Path, n_envs: int) -> None:
    config = make_tiny_project(
        tmp_path,
        sac__learning_starts=4,
        train__n_envs=n_envs,
        train__total_steps=TOTAL,
        train__checkpoint_every=TOTAL // 2,
    )
    whole = transitions(train(config, tmp_path / "whole"))
    half = train(config, tmp_path / "halves", "--set", f"train.total_steps={TOTAL // 2}")
    resumed = train(
        config, tmp_path / "halves", "--resume", str(half), "--set", f"train.total_steps={TOTAL}"
    )
    assert resumed == half
    halves = transitions(half)
    assert len(whole["rewards"]) == TOTAL // n_envs
    for name, values in whole.items():
        np.testing.assert_array_equal(halves[name], values, err_msg=name)
    # the second half is not the first half again
    first, second = np.split(whole["actions"], 2)
    assert not np.allclose(first, second)
