"""Worker processes (`train.devices`): two workers x 2 envs give the transitions of one process
with 4 batched envs and the same seed."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from main import main
from rl.checkpoints import BUFFER, latest_checkpoint
from tests.fixtures import make_tiny_project

TOTAL = 16


def buffer(config: Path, runs: Path, *extra: str) -> dict[str, np.ndarray]:
    argv = ["train", "--config", str(config), "--set", f"train.runs_dir={runs}", *extra]
    assert main(argv) == 0
    checkpoint = latest_checkpoint(sorted(runs.glob("train_*"))[-1] / "checkpoints")
    assert checkpoint is not None
    data = pickle.loads((checkpoint / BUFFER).read_bytes())
    fields = ("observations", "actions", "rewards", "next_observations")
    return {name: getattr(data, name)[: data.pos] for name in fields}


@pytest.mark.parametrize("neurons", ["global", "context"])
def test_two_workers_equal_one_process(tmp_path: Path, neurons: str) -> None:
    config = make_tiny_project(
        tmp_path,
        train__total_steps=TOTAL,
        train__checkpoint_every=TOTAL,
        sac__learning_starts=8,  # half the steps act from the updated policy
        env__neurons=neurons,
    )
    one = buffer(config, tmp_path / "one", "--set", "train.n_envs=4")
    two = buffer(config, tmp_path / "two", "--set", "train.n_envs=2",
                 "--set", "train.devices=[cpu,cpu]")  # fmt: skip
    assert one["rewards"].shape == (TOTAL // 4, 4)  # [vector steps, env index]
    for name in ("observations", "next_observations", "actions", "rewards"):
        np.testing.assert_allclose(two[name], one[name], rtol=1e-5, atol=1e-6, err_msg=name)
    assert np.unique(one["rewards"]).size > 4  # the rewards differ per env: a real comparison
