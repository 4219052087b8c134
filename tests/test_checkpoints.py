from __future__ import annotations

from pathlib import Path

import pytest
from stable_baselines3 import SAC

from config import ConfigError
from rl.checkpoints import (
    AGENT,
    BUFFER,
    RNG,
    latest_checkpoint,
    load_agent,
    load_rng,
    save_checkpoint,
)


@pytest.fixture()
def agent() -> SAC:
    return SAC("MlpPolicy", "Pendulum-v1", buffer_size=64, learning_starts=8, seed=0,
               policy_kwargs={"net_arch": [8]})  # fmt: skip


def test_checkpoints_are_atomic_and_only_the_newest_is_kept(agent: SAC, tmp_path: Path) -> None:
    first = save_checkpoint(agent, tmp_path)
    agent.learn(16)
    second = save_checkpoint(agent, tmp_path)
    assert second.name == "step_000000016" and not first.exists()
    # a checkpoint killed while being written stays a .tmp folder and is never picked
    (tmp_path / "step_000000032.tmp").mkdir()
    (tmp_path / "step_000000032.tmp" / AGENT).write_bytes(b"half a zip")
    assert latest_checkpoint(tmp_path) == second
    assert (second / BUFFER).is_file()
    loaded = load_agent(second / AGENT, obs_dim=3, n_actions=1, device="cpu")
    assert loaded.num_timesteps == 16
    # the next checkpoint clears what the killed one left (about 32 MB each on a real run)
    agent.learn(8)
    third = save_checkpoint(agent, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [third.name]


def test_load_agent_refuses_broken_or_mismatched(agent: SAC, tmp_path: Path) -> None:
    path = save_checkpoint(agent, tmp_path) / AGENT
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ConfigError, match="corrupt or unreadable") as info:
        load_agent(truncated, 3, 1, "cpu")
    assert info.value.__cause__ is not None  # the reason SB3 gave, shown by --debug
    with pytest.raises(ConfigError, match="trained for 1 actions and 3-dim observations"):
        load_agent(path, obs_dim=384, n_actions=30, device="cpu")
    with pytest.raises(FileNotFoundError):
        load_agent(tmp_path / "missing.zip", 3, 1, "cpu")
    assert latest_checkpoint(tmp_path / "nothing") is None


def test_incomplete_checkpoint_folders_are_skipped(agent: SAC, tmp_path: Path) -> None:
    done = save_checkpoint(agent, tmp_path)
    assert (done / RNG).is_file() and load_rng(done)["env"]
    no_buffer = tmp_path / "step_000000099"
    no_buffer.mkdir()
    (no_buffer / AGENT).write_bytes((done / AGENT).read_bytes())
    assert latest_checkpoint(tmp_path) == done
