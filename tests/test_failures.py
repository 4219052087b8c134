"""Bad input as a new user types it: one line on stderr, exit 2, nothing written, before the
model loads; and fallbacks that are printed and recorded instead of swallowed."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

import commands.export
from commands.allocations import parse_allocation
from config import ConfigError
from main import main
from pruning.generation import GreedyDecoder
from tests.fixtures import D_FF, N_LAYERS, fails_cleanly, last_json, make_tiny_project, runs


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_project(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def trained(project: Path) -> Path:
    """A finished train run (8 steps) of the tiny project."""
    assert main(["train", "--config", str(project)]) == 0
    (run,) = [r for r in runs(project) if r.name.startswith("train_")]
    return run


def write(folder: Path, name: str, text: str) -> str:
    path = folder / name
    path.write_text(text)
    return str(path)


def loads_no_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make loading the LLM an error: a case that reaches it was not checked early enough."""

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("the model loaded before the bad input was refused")

    modules = ("score", "export", "generate", "evaluate", "evaluate_mixed")
    for module in [f"commands.{name}" for name in modules]:
        monkeypatch.setattr(f"{module}.load_models", refuse)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["score", "--set", "env.max_length=[1,"], "is not a YAML value"),
        (["score", "--set", "seed=-1"], "config key 'seed'"),
        (["train", "--set", "sac.target_entropy=foo"], "sac.target_entropy='foo' is not"),
        (["train", "--set", "sac.net_arch=[]"], "config key 'sac.net_arch'"),
        (["train", "--set", "sac.net_arch=[0]"], "config key 'sac.net_arch.0'"),
        (["train", "--set", "sac.net_arch=[-5]"], "config key 'sac.net_arch.0'"),
        (["train", "--set", "sac.ent_coef=-1"], "sac.ent_coef=-1.0 must be positive"),
        (["train", "--set", "sac.learning_rate=.inf"], "config key 'sac.learning_rate'"),
        (["train", "--set", "model.device=gpu"], "model.device='gpu' is not a torch device"),
        (["train", "--set", "sac.gamma=0.99"], "'sac.gamma' was removed: every transition"),
        (["train", "--set", "sac.tau=0.01"], "'sac.tau' was removed: every transition"),
        (["score", "--set", "env.align=7", "uniform:0.5"], f"divide the MLP width {D_FF}"),
        (["train", "--set", "env.align=48"], f"use a divisor of {D_FF}, e.g. 32"),
        (["score", "uniform:1.2"], "use [0,1]"),
        (["score", "uniform:nan"], "use [0,1]"),
        (["score", "0.1,nan"], "use [0,1]"),
        (["score", "0.1,0.2,0.3"], f"needs {N_LAYERS} fractions"),
        (["export", "0.1,0.2,0.3"], f"needs {N_LAYERS} fractions"),
        (["generate", "--prompt", "the", "uniform:1.2"], "use [0,1]"),
        (["score", "uniform:0.3", "--target", "0.5"], "'uniform:0.3' is not one: drop --target"),
        (["generate", "--prompt", "the", "--target", "0.5"], "drop --target"),
    ],
)
def test_bad_values_fail_before_the_model_loads(
    project: Path,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
    message: str,
) -> None:
    loads_no_model(monkeypatch)
    monkeypatch.setattr("commands.train.load_models", lambda *_a, **_k: pytest.fail("loaded"))
    fails_cleanly(capsys, [argv[0], "--config", str(project), *argv[1:]], message, project)


# profiles as `search` writes them (kept counts): one layer short, and one count past the width
KEPT_SHORT = json.dumps({"profiles": [{"target": 0.3, "kept": [8] * (N_LAYERS - 1)}]})
KEPT_WIDE = json.dumps({"profiles": [{"target": 0.3, "kept": [8] * (N_LAYERS - 1) + [D_FF + 8]}]})


@pytest.mark.parametrize(
    ("name", "text", "argv", "message"),
    [
        ("cut.json", "[0.1, 0.", ["score"], "is not valid JSON/YAML (truncated?)"),
        ("cut.json", '{"profiles": [{"target": 0.3, "fr', ["score"], "not valid JSON/YAML"),
        ("list.yml", "[0.1, 0.2, 0.3]", ["score"], f"needs {N_LAYERS} fractions"),
        ("nan.json", "[0.1, NaN]", ["score"], "use [0,1]"),
        ("bare.json", '{"profiles": [{"target": 0.3}]}', ["score"], "needs 'target' and 'fracti"),
        ("bare.json", '{"profiles": [{"fractions": [0, 0]}]}', ["score"], "entry 0 needs"),
        ("short.json", '{"profiles": [{"target": 0.3, "fractions": [0.1]}]}', ["score"], "needs 2"),
        ("bare.json", '{"profiles": [{"target": 0.3}]}', ["eval", "--profile"], "entry 0 needs"),
        ("kept.json", KEPT_SHORT, ["score"], f"needs {N_LAYERS} kept counts"),
        ("kept.json", KEPT_WIDE, ["score"], f"outside [0, {D_FF}]"),
        (
            "kept.json",
            KEPT_SHORT,
            ["eval", "--set", "data.dataset=mixed", "--agent", "none", "--profile"],
            f"needs {N_LAYERS} kept counts",
        ),  # fmt: skip
    ],
)
def test_bad_allocation_files_fail_before_the_model_loads(
    project: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    text: str,
    argv: list[str],
    message: str,
) -> None:
    loads_no_model(monkeypatch)
    path = write(tmp_path, name, text)
    extra = ["--target", "0.3"] if "profiles" in text and argv == ["score"] else []
    if argv[0] == "eval" and "none" not in argv:  # any readable agent: the profile is next
        extra = ["--agent", str(tmp_path / "agent.zip")]
        monkeypatch.setattr("commands.evaluate.read_agent", lambda _path: object())
    fails_cleanly(
        capsys, [argv[0], "--config", str(project), *argv[1:], path, *extra], message, project
    )


def test_one_parser_checks_before_the_load_and_counts_after() -> None:
    """Before the load the shape may be unknown (None): the spec is checked as far as it allows
    and nothing is returned; with the model's shape the same call returns kept counts."""
    for shape in [(None, None, 8), (N_LAYERS, None, 8), (None, D_FF, 8)]:
        assert parse_allocation("uniform:0.5", shape) is None
    with pytest.raises(ConfigError, match=f"needs {N_LAYERS} fractions"):
        parse_allocation(",".join(["0.1"] * (N_LAYERS + 1)), (N_LAYERS, None, 8))
    assert parse_allocation("dense", (N_LAYERS, D_FF, 8)).tolist() == [D_FF] * N_LAYERS
    assert parse_allocation("uniform:0.5", (N_LAYERS, D_FF, 8)).tolist() == [D_FF // 2] * N_LAYERS


def test_config_that_is_not_utf8(
    project: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    config = tmp_path / "latin1.yml"
    config.write_bytes(project.read_bytes() + b"# caf\xe9\n")
    fails_cleanly(capsys, ["score", "--config", str(config)], "is not UTF-8 text", project)


def test_finished_runs_are_not_resumed(
    project: Path, trained: Path, capsys: pytest.CaptureFixture
) -> None:
    files = {p: p.stat().st_mtime_ns for p in trained.rglob("*")}
    for spec in ("latest", str(trained)):
        argv = ["train", "--config", str(project), "--resume", spec]
        fails_cleanly(capsys, argv, f"{trained.name} already reached 8 steps", project)
    assert {p: p.stat().st_mtime_ns for p in trained.rglob("*")} == files  # untouched


def test_truncated_agent_fails_before_anything_is_written(
    project: Path, trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    agent = tmp_path / "agent.zip"
    agent.write_bytes((trained / "agent_final.zip").read_bytes()[:300])
    cache = project.parent / "cache"
    before = sorted(cache.rglob("*"))
    for argv in (
        ["generate", "--prompt", "the war", "--agent", str(agent), "--target", "0.3"],
        ["eval", "--agent", str(agent)],
        ["export", "--agent", str(agent), "--target", "0.3"],
    ):
        fails_cleanly(capsys, [argv[0], "--config", str(project), *argv[1:]], "corrupt", project)
        assert sorted(cache.rglob("*")) == before, argv[0]  # no embeddings cached
    with pytest.raises(ConfigError, match="corrupt") as info:  # --debug: the cause is kept
        main(["eval", "--config", str(project), "--agent", str(agent), "--debug"])
    assert info.value.__cause__ is not None


def test_eval_warns_about_a_lost_run_config_and_profile_gaps(
    project: Path, trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    agent = tmp_path / "lone" / "agent.zip"  # no train run config.yaml beside it
    agent.parent.mkdir()
    shutil.copy(trained / "agent_final.zip", agent)
    entry = {"target": 0.25, "fractions": [0.25] * N_LAYERS}
    profile = write(tmp_path, "profile.json", json.dumps({"profiles": [entry]}))
    argv = ["eval", "--config", str(project), "--agent", str(agent), "--profile", profile]
    assert main([*argv, "--set", "eval.targets=[0.25,0.5]"]) == 0
    captured = capsys.readouterr()
    run = Path(json.loads(captured.out.strip().splitlines()[-1])["run"])
    warnings = json.loads((run / "eval.json").read_text())["warnings"]
    assert len(warnings) == 2 and "has no train run config.yaml" in warnings[0]
    assert warnings[1] == f"profile {profile} has no target 0.5000: no searched arm there"
    assert captured.err.count("warning: ") == 2
    sweep = json.loads((run / "eval.json").read_text())["sweep"]
    assert "searched" in sweep[0]["arms"] and "searched" not in sweep[1]["arms"]


def test_generate_records_the_decode_mode_and_a_capture_fallback(
    project: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    argv = ["generate", "--config", str(project), "--prompt", "the war", "--max-new-tokens", "6"]
    assert main(argv) == 0
    run = Path(last_json(capsys)["run"])
    (row,) = json.loads((run / "generate.json").read_text())["results"]
    assert row["decode_mode"] == "eager" and not row["capture_failed"]
    assert row["eager_reason"] == "CUDA graphs need a CUDA device, the model is on cpu"

    def failing_capture(self: GreedyDecoder, warmup: int = 2) -> int:
        taken = self.steps(warmup)
        self.capture_error = "RuntimeError: capture refused"
        return taken

    monkeypatch.setattr(GreedyDecoder, "capture", failing_capture)
    assert main(argv) == 0
    captured = capsys.readouterr()
    run = Path(json.loads(captured.out.strip().splitlines()[-1])["run"])
    result = json.loads((run / "generate.json").read_text())
    (row,) = result["results"]
    reason = "CUDA graph capture failed (RuntimeError: capture refused)"
    assert row["capture_failed"] and row["eager_reason"] == reason
    assert result["warnings"] == [f"prompt 0 decoded eagerly: {reason}"]
    assert f"warning: prompt 0 decoded eagerly: {reason}" in captured.err
    assert f"eager decoding: {reason}" in captured.out


def test_an_interrupted_export_leaves_no_run(
    project: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = project.parent / "runs"
    base.mkdir(exist_ok=True)
    gone = subprocess.Popen(["true"])
    gone.wait()  # a pid whose process has ended: what a killed export leaves behind
    stale = base / f".export_20260101T000000Z.tmp-{gone.pid}"
    (stale / f".model.tmp-{gone.pid}").mkdir(parents=True)
    before = runs(project)

    def killed(*_args: object) -> None:
        raise KeyboardInterrupt

    real = commands.export.save_model
    monkeypatch.setattr(commands.export, "save_model", killed)
    with pytest.raises(KeyboardInterrupt):
        main(["export", "--config", str(project), "uniform:0.5"])
    assert runs(project) == [p for p in before if p != stale]  # the killed run's is gone too
    monkeypatch.setattr(commands.export, "save_model", real)
    assert main(["export", "--config", str(project), "uniform:0.5"]) == 0
    (run,) = set(runs(project)) - set(before)
    assert not [p for p in base.iterdir() if p.name.startswith(".")]
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml", "export.json", "model"]
    assert json.loads((run / "export.json").read_text())["model_dir"] == str(run / "model")
    capsys.readouterr()
