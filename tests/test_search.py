from __future__ import annotations

import itertools
import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from commands.build import make_action_map
from commands.train import make_agent
from config import SearchConfig, load_config
from main import main
from pruning.allocation import project_to_target, target_blocks, uniform_at_target
from pruning.search import evolve, mutate
from tests.fixtures import D_FF, N_LAYERS, fails_cleanly, last_json, make_tiny_project


def test_mutation_stays_on_budget_and_in_range() -> None:
    rng = np.random.default_rng(0)
    width, align, n_layers = 64, 8, 6
    kept = uniform_at_target(0.3, n_layers, width, align)
    total = kept.sum()
    moved = edges = 0
    for _ in range(2000):
        child = mutate(kept, width, align, 4, rng)
        assert child.sum() == total and child.dtype == np.int64
        assert ((child >= 0) & (child <= width) & (child % align == 0)).all()
        diff = np.abs(child - kept) // align
        assert diff.sum() % 2 == 0 and diff.max() <= 4 and (diff > 0).sum() in (0, 2)
        moved += int(diff.sum() > 0)
        edges += int((child == 0).any() and (child == width).any())
        kept = child  # a random walk: it also visits empty and full layers
    assert moved == 2000  # with 6 layers some pair can always move a block
    assert edges > 100


def test_mutation_pins_exact_draw() -> None:
    child = mutate(np.array([32, 32, 32, 32]), 64, 8, 4, np.random.default_rng(1))
    assert child.tolist() == [32, 8, 32, 56]  # 3 blocks from layer 1 to layer 3


def test_mutation_of_a_single_layer_is_a_copy() -> None:
    assert mutate(np.array([24]), 64, 8, 4, np.random.default_rng(0)).tolist() == [24]


def separable_fitness(weights: np.ndarray, width: int):  # noqa: ANN201
    """Per-window loss sum_l w_l * (1 - kept_l / width)^2: layers with large w want neurons."""

    def fitness(kept: np.ndarray, windows: np.ndarray) -> np.ndarray:
        per_window = (weights * (1 - kept / width) ** 2).sum(-1)  # [n]
        return per_window * len(windows)

    return fitness


def test_evolve_never_gets_worse_and_beats_uniform() -> None:
    width, align, n_layers, target = 64, 8, 6, 0.5
    weights = np.array([8.0, 1.0, 1.0, 1.0, 4.0, 0.5])
    search = SearchConfig(targets=[target], generations=60, offspring=8, survivors=2, subset=3)
    result = evolve(
        separable_fitness(weights, width), target, n_layers, width, align,
        np.full(10, 5), search, np.random.default_rng(0),
    )  # fmt: skip
    fits = [row["fitness"] for row in result.history]
    assert all(b <= a for a, b in zip(fits, fits[1:], strict=False))
    assert result.kept.sum() == target_blocks(target, n_layers, width, align) * align
    # the exact optimum on the block grid, by brute force over all on-budget allocations
    grid = np.array(list(itertools.product(range(9), repeat=n_layers)))
    grid = grid[grid.sum(1) == 24] * align
    best = separable_fitness(weights, width)(grid, np.arange(10)).min()
    assert result.start_fitness == pytest.approx(38.75)
    assert result.fitness == pytest.approx(best) == pytest.approx(17.1875)
    assert result.kept.tolist() == [56, 24, 24, 32, 56, 0]
    assert len(result.history) == 61
    # 1 start + 60 x (8 offspring + 2 survivors); tokens: 5 per window
    assert result.evaluations == 1 + 60 * 10
    assert result.tokens_scored == 5 * (10 + 60 * (8 * 3 + 2 * 10))
    assert result.history[-1]["evaluations"] == result.evaluations


def test_evolve_starts_from_the_ends_dense_baseline() -> None:
    search = SearchConfig(start="ends_dense", generations=0)
    result = evolve(
        separable_fitness(np.ones(6), 64), 0.3, 6, 64, 8, np.ones(4), search,
        np.random.default_rng(0),
    )  # fmt: skip
    # generations 0: the start itself, first and last 2 layers dense, the middle on budget
    assert result.kept.tolist() == [64, 64, 8, 8, 64, 64]
    assert result.evaluations == 1 and result.fitness == result.start_fitness


def test_evolve_stops_at_the_evaluation_budget() -> None:
    search = SearchConfig(generations=100, offspring=4, survivors=1, subset=2, max_evaluations=50)
    result = evolve(
        separable_fitness(np.ones(4), 64), 0.3, 4, 64, 8, np.ones(4), search,
        np.random.default_rng(0),
    )  # fmt: skip
    assert result.evaluations == 1 + 9 * 5 <= 50


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_project(tmp_path_factory.mktemp("tiny"))


def test_search_cli_writes_a_profile_that_score_reads(
    project: Path, capsys: pytest.CaptureFixture
) -> None:
    small = ["--set", "search.targets=[0.3,0.5]", "--set", "search.generations=3"]
    small += ["--set", "search.offspring=4", "--set", "search.subset=2"]
    assert main(["search", "--config", str(project), *small]) == 0
    summary = last_json(capsys)
    run_dir = Path(summary["run"])
    data = json.loads((run_dir / "profile.json").read_text())
    assert (run_dir / "fitness.png").is_file()
    assert data["n_layers"] == N_LAYERS and data["width"] == D_FF and data["align"] == 8
    assert [p["target"] for p in data["profiles"]] == [0.3, 0.5]
    for profile in data["profiles"]:
        kept = np.asarray(profile["kept"])
        assert kept.sum() == target_blocks(profile["target"], N_LAYERS, D_FF, 8) * 8
        assert np.allclose(profile["fractions"], 1 - kept / D_FF)
        assert profile["fitness"] <= profile["start_fitness"]
        assert profile["evaluations"] == 1 + 3 * (4 + 2)
        assert len(profile["history"]) == 4
        assert profile["tokens_scored"] == profile["history"][-1]["tokens_scored"]
        assert profile["tokens_per_second"] > 0
    path = str(run_dir / "profile.json")
    assert main(["score", "--config", str(project), path, "--target", "0.5"]) == 0
    scored = last_json(capsys)
    assert scored["fractions"] == pytest.approx(data["profiles"][1]["fractions"])


def test_residual_training_around_a_searched_profile_end_to_end(
    project: Path, capsys: pytest.CaptureFixture
) -> None:
    small = ["--set", "search.targets=[0.2,0.4]", "--set", "search.generations=2"]
    small += ["--set", "search.offspring=4", "--set", "search.subset=2"]
    assert main(["search", "--config", str(project), *small]) == 0
    profile = Path(last_json(capsys)["run"]) / "profile.json"
    train = ["train", "--config", str(project), "--set", f"env.reference={profile}"]
    train += ["--set", "env.target_sparsity=[0.2,0.4]", "--set", "env.target_step=0.2"]
    train += ["--set", "train.total_steps=16", "--set", "train.n_envs=4"]
    assert main(train) == 0
    agent = sorted((project.parent / "runs").glob("train_*/agent_final.zip"))[-1]
    # eval takes the reference from the agent's run (not from its own config) as searched arm
    evaluate = ["eval", "--config", str(project), "--agent", str(agent), "--limit", "1"]
    assert main([*evaluate, "--set", "eval.targets=[0.3,0.4]"]) == 0
    result = json.loads((Path(last_json(capsys)["run"]) / "eval.json").read_text())
    assert result["profile"] == str(profile)
    assert [row["target"] for row in result["sweep"]] == [0.3, 0.4]
    assert "searched" not in result["sweep"][0]["arms"]  # searched at 0.2 and 0.4 only
    assert "searched" in result["sweep"][1]["arms"]
    for row in result["sweep"]:
        sparsity = {round(arm["sparsity"], 6) for arm in row["arms"].values()}
        assert len(sparsity) == 1 and abs(sparsity.pop() - row["target"]) <= 8 / (N_LAYERS * D_FF)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--set", "search.targets=[1.5]"], "search.targets"),
        (["--set", "search.calibration=0"], "search.calibration"),
        (["--set", "search.survivors=5", "--set", "search.offspring=4"], "search.survivors"),
        (["--set", "data.dataset=mmlu"], "wikitext"),
    ],
)  # fmt: skip
def test_search_bad_input_is_one_line_exit_2(
    project: Path, capsys: pytest.CaptureFixture, extra: list[str], message: str
) -> None:
    fails_cleanly(capsys, ["search", "--config", str(project), *extra], message, project)


class _Bandit(gym.Env):
    """Just the spaces of the pruning env: an observation and one action per layer."""

    observation_space = gym.spaces.Box(-1, 1, (4,), np.float32)
    action_space = gym.spaces.Box(-1, 1, (N_LAYERS + 2,), np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple:
        super().reset(seed=seed, options=options)
        return np.zeros(4, np.float32), {}

    def step(self, action: np.ndarray) -> tuple:
        del action
        return np.zeros(4, np.float32), 0.0, True, False, {}


def test_residual_agent_starts_at_the_reference_profile(project: Path, tmp_path: Path) -> None:
    n_layers = N_LAYERS + 2
    profiles = [
        {"target": t, "fractions": np.linspace(0, 2 * t, n_layers).tolist()} for t in (0.1, 0.3)
    ]
    path = tmp_path / "profile.json"
    path.write_text(json.dumps({"profiles": profiles}))
    cfg = load_config(project, [f"env.reference={path}", "env.target_sparsity=[0.1,0.3]"])
    action_map = make_action_map(cfg.env, n_layers, 64)
    assert action_map.reference is not None and action_map.radius == cfg.env.radius
    # between two searched targets the reference is interpolated: 0.2 -> linspace(0, 0.4)
    assert action_map.reference.at(0.2)[0] == pytest.approx(np.linspace(0, 0.4, n_layers))
    agent = make_agent(cfg.sac, _Bandit(), 0, residual=True)
    obs = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    actions, _ = agent.predict(obs, deterministic=True)
    assert np.array_equal(actions, np.zeros_like(actions))  # every input: the reference itself
    targets = np.full(5, 0.2)
    expected = project_to_target(np.linspace(0, 0.4, n_layers), 0.2, 64, cfg.env.align)
    assert (action_map.kept(actions, targets) == expected).all()
    # without a reference: sac.init_action everywhere
    plain = make_agent(cfg.sac, _Bandit(), 0)
    with torch.no_grad():
        plain.actor.mu.weight.zero_()
    action, _ = plain.predict(np.zeros(4, np.float32), deterministic=True)
    assert (action + 1) / 2 == pytest.approx(np.full(n_layers, cfg.sac.init_action), abs=1e-4)


def test_train_with_a_missing_profile_is_one_line_exit_2(
    project: Path, capsys: pytest.CaptureFixture
) -> None:
    argv = ["train", "--config", str(project), "--set", "env.reference=/no/such/profile.json"]
    fails_cleanly(capsys, argv, "profile file", project)


def test_bench_search_counts_evaluations_as_search_does(tmp_path: Path) -> None:
    from bench.bench_search import main as bench_main

    argv = ["--arch", "tiny", "--device", "cpu", "--generations", "2", "--calibration", "8"]
    row = bench_main([*argv, "--subset", "4", "--seq-len", "32", "--out", str(tmp_path / "s.json")])
    # the first parent on all 8 windows, then per generation 16 mutants on 4 + 2 survivors on 8
    assert row["evaluations"] == 1 + 2 * (16 + 2)
    assert row["tokens_scored"] == 31 * (8 + 2 * (16 * 4 + 2 * 8))
    assert json.loads((tmp_path / "s.json").read_text())["evaluations"] == 37


def test_a_profile_off_its_target_projects_its_fractions_not_their_rounding(
    tmp_path: Path,
) -> None:
    # kept_counts rounds these to [40, 56, 64, 64] (0.125 pruned); projecting that rounding onto
    # 0.3 gives [32, 48, 48, 48], the fractions themselves [32, 40, 48, 56] (as a policy's mean)
    from types import SimpleNamespace

    from commands.evaluate import searched_kept
    from pruning.allocation import project_to_target

    fractions = [0.38, 0.16, 0.02, 0.01]
    path = tmp_path / "profile.json"
    path.write_text(json.dumps({"profiles": [{"target": 0.3, "fractions": fractions}]}))
    kept = searched_kept(path, 0.3, 4, SimpleNamespace(width=64, align=8))
    assert kept.tolist() == [32, 40, 48, 56]
    assert kept.tolist() == project_to_target(fractions, 0.3, 64, 8).tolist()
