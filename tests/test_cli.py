from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from main import main
from tests.fixtures import N_LAYERS, fails_cleanly, last_json, make_tiny_project

ROOT = Path(__file__).resolve().parents[1]
ARMS = {"uniform", "ends_dense", "policy_mean", "policy_doc", "policy_window"}


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_project(tmp_path_factory.mktemp("tiny"))


def test_help_lists_commands() -> None:
    out = subprocess.run(
        [sys.executable, "main.py", "--help"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    for command in ("train", "eval", "importance", "score"):
        assert command in out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--set", "env.quality_weigth=0.3"], "did you mean 'quality_weight'"),
        (["--set", "env.quality_weight=3"], "env.quality_weight"),
        (["--set", "data.dataset=imagenet"], "data.dataset"),
        (["--set", "model.llm=./no/such/model"], "does not exist"),
        (["--set", "data.wikitext_path=/no/such/folder"], "is not a folder"),
        (["uniform:0.5,0.2"], "not a number"),
        (["0.1,0.2,0.3"], f"needs {N_LAYERS} fractions"),
        (["uniform:1.5"], "use [0,1]"),
    ],
)
def test_bad_input_is_one_line_exit_2(
    project: Path, capsys: pytest.CaptureFixture, extra: list[str], message: str
) -> None:
    fails_cleanly(capsys, ["score", "--config", str(project), *extra], message, project)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["eval", "--limit", "-1"], "--limit must be a positive number of items, got -1"),
        (["eval", "--limit", "0"], "--limit must be a positive number of items, got 0"),
        (["score", "--limit", "0"], "--limit must be a positive number of items, got 0"),
        (["train", "--set", "sac.init_action=1"], "sac.init_action=1.0 must be strictly"),
        (["train", "--set", "sac.ent_coef=banana"], "sac.ent_coef='banana'"),
        (["train", "--set", "env.importance_file=/no/such.json"], "importance file"),
        (["train", "--resume", "/no/such/run"], "is not a train run folder"),
        (["score", "--set", "env.neurons=context", "0.1,0.2,0.3"], f"needs {N_LAYERS} fractions"),
        (["score", "--set", "env.neurons=contxt"], "env.neurons"),
    ],
)
def test_bad_command_input_writes_nothing(
    project: Path, capsys: pytest.CaptureFixture, argv: list[str], message: str
) -> None:
    fails_cleanly(capsys, [argv[0], "--config", str(project), *argv[1:]], message, project)


def test_missing_or_malformed_config(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    fails_cleanly(capsys, ["score", "--config", str(tmp_path / "nope.yml")], "does not exist")
    bad = tmp_path / "bad.yml"
    bad.write_text("model: {llm: [\n")
    fails_cleanly(capsys, ["score", "--config", str(bad)], "not valid YAML")


def test_data_folder_without_files(
    project: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    fails_cleanly(
        capsys,
        ["score", "--config", str(project), "--set", f"data.wikitext_path={tmp_path}"],
        "wiki.test.raw",
    )


def test_score_dense_and_uniform(project: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["score", "--config", str(project)]) == 0
    dense = last_json(capsys)
    assert dense["sparsity"] == 0 and dense["num_docs"] == 4 and dense["max_length"] == 16
    assert main(["score", "--config", str(project), "uniform:0.5", "--limit", "2"]) == 0
    half = last_json(capsys)
    assert half["sparsity"] == pytest.approx(0.5) and half["num_docs"] == 2
    assert half["word_perplexity"] != dense["word_perplexity"]


def test_score_context_neurons(project: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["score", "--config", str(project), "uniform:0.5"]) == 0
    plain = last_json(capsys)
    argv = ["score", "--config", str(project), "uniform:0.5", "--set", "env.neurons=context"]
    assert main(argv) == 0
    context = last_json(capsys)
    assert plain["neurons"] == "global" and context["neurons"] == "context"
    assert context["context_fallbacks"] == 4  # the first window of each of the 4 documents
    assert context["sparsity"] == plain["sparsity"] == pytest.approx(0.5)
    assert context["word_perplexity"] != plain["word_perplexity"]
    assert context["num_tokens"] == plain["num_tokens"]  # the same tokens are scored


def test_train_and_search_with_context_neurons(
    project: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    context = ["--set", "env.neurons=context", "--set", f"train.runs_dir={tmp_path}"]
    steps = ["--set", "train.total_steps=4", "--set", "train.eval_after=false"]
    assert main(["train", "--config", str(project), *context, *steps]) == 0
    (run,) = tmp_path.glob("train_*")
    assert json.loads((run / "train.json").read_text())["steps"] == 4
    search = ["--set", "search.generations=2", "--set", "search.targets=[0.5]"]
    assert main(["search", "--config", str(project), *context, *search]) == 0
    (profile,) = last_json(capsys)["profiles"]
    assert profile["fitness"] <= profile["start_fitness"]


def test_importance_writes_orderings(project: Path) -> None:
    assert main(["importance", "--config", str(project)]) == 0
    data = json.loads((project.parent / "stats" / "llm_mean_abs_activation.json").read_text())
    assert len(data["orderings"]) == N_LAYERS and data["num_samples"] >= 1
    assert sorted(data["orderings"][0]) == list(range(64))


def test_train_resume_eval(project: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["train", "--config", str(project)]) == 0
    run = sorted((project.parent / "runs").glob("train_*"))[-1]
    assert (run / "agent_final.zip").is_file() and (run / "train.json").is_file()
    assert json.loads((run / "train.json").read_text())["steps"] == 8
    # resume continues the same run to a larger budget, keeping the step count
    argv = ["train", "--config", str(project), "--resume", str(run)]
    capsys.readouterr()
    assert main([*argv, "--set", "train.total_steps=12"]) == 0
    assert json.loads((run / "train.json").read_text())["steps"] == 12
    final = last_json(capsys)  # the last line names the run and the agent
    assert final["run"] == str(run) and final["agent"] == str(run / "agent_final.zip")
    assert final["steps"] == 12
    fails_cleanly(capsys, [*argv, "--set", "env.quality_weight=0.9"], "env.quality_weight changed")
    # --resume latest skips newer run folders that hold no complete checkpoint
    for name, files in (("train_99990101T000000Z", []), ("train_99990102T000000Z", ["agent.zip"])):
        broken = run.parent / name
        (broken / "checkpoints" / "step_000000004").mkdir(parents=True)
        (broken / "checkpoints" / "step_000000008.tmp").mkdir()
        (broken / "config.yaml").write_text((run / "config.yaml").read_text())
        for file in files:
            (broken / "checkpoints" / "step_000000004" / file).write_bytes(b"")
    latest = ["train", "--config", str(project), "--resume", "latest"]
    assert main([*latest, "--set", "train.total_steps=14"]) == 0
    assert f"resuming {run.name} at step 12" in capsys.readouterr().out
    assert json.loads((run / "train.json").read_text())["steps"] == 14
    for name in ("train_99990101T000000Z", "train_99990102T000000Z"):
        shutil.rmtree(run.parent / name)
    agent = ["--agent", str(run / "agent_final.zip")]
    assert main(["eval", "--config", str(project), *agent, "--set", "eval.targets=[0.25,0.5]"]) == 0
    eval_run = Path(last_json(capsys)["run"])
    result = json.loads((eval_run / "eval.json").read_text())
    assert result["dense"]["sparsity"] == 0 and result["num_items"] == 4
    for point, target in zip(result["sweep"], (0.25, 0.5), strict=True):
        assert set(point["arms"]) == ARMS and point["target"] == target
        for arm, row in point["arms"].items():  # every arm prunes exactly the target share
            assert row["sparsity"] == pytest.approx(target, abs=8 / (N_LAYERS * 64)), arm
    assert (eval_run / "profile.png").is_file() and (eval_run / "sweep.png").is_file()
    assert len(result["policy_profiles"]["0.2500"]["mean_fractions"]) == N_LAYERS
    # eval's arms and score share one scoring path: the same numbers on the same documents
    assert main(["score", "--config", str(project)]) == 0
    dense = last_json(capsys)
    for key in ("word_perplexity", "byte_perplexity", "bits_per_byte"):
        assert dense[key] == pytest.approx(result["dense"][key], rel=1e-9, abs=0), key
    assert main(["score", "--config", str(project), "uniform:0.25"]) == 0
    uniform = last_json(capsys)
    expected = result["sweep"][0]["arms"]["uniform"]["word_perplexity"]
    assert uniform["word_perplexity"] == pytest.approx(expected, rel=1e-9, abs=0)
    # --neurons both: every pruned arm twice, at the same sparsity; the global arms unchanged
    argv = ["eval", "--config", str(project), *agent, "--neurons", "both"]
    assert main([*argv, "--set", "eval.targets=[0.25]"]) == 0
    both = json.loads((Path(last_json(capsys)["run"]) / "eval.json").read_text())
    (point,) = both["sweep"]
    assert set(point["arms"]) == ARMS | {f"{arm}_context" for arm in ARMS}
    assert both["neurons"] == "both" and both["context_fallbacks"] == 4
    for arm in ARMS:
        row, ctx = point["arms"][arm], point["arms"][f"{arm}_context"]
        assert ctx["sparsity"] == row["sparsity"]
        assert row["word_perplexity"] == result["sweep"][0]["arms"][arm]["word_perplexity"]
    # the same arms split over two runs: the static ones without an agent, then the policy's only
    split = {}
    for extra in (["--agent", "none"], [*agent, "--set", "eval.static=false"]):
        assert main(["eval", "--config", str(project), *extra, "--neurons", "both",
                     "--set", "eval.targets=[0.25]"]) == 0  # fmt: skip
        (part,) = json.loads((Path(last_json(capsys)["run"]) / "eval.json").read_text())["sweep"]
        split[extra[-1]] = part["arms"]
    static = {"uniform", "ends_dense"}
    assert set(split["none"]) == static | {f"{arm}_context" for arm in static}
    assert set(split["eval.static=false"]) == {a for a in point["arms"] if a not in split["none"]}
    for arm, row in (split["none"] | split["eval.static=false"]).items():
        assert row["word_perplexity"] == point["arms"][arm]["word_perplexity"], arm
    # the policy's mean fractions as a hand-written profile, scored alone (eval.baselines=[]):
    # projected onto the target like the policy's mean, so the same allocation and number
    mean = both["policy_profiles"]["0.2500"]["mean_fractions"]
    learned = run / "learned.json"
    learned.write_text(json.dumps({"profiles": [{"target": 0.25, "fractions": mean}]}))
    assert main(["eval", "--config", str(project), "--agent", "none", "--profile", str(learned),
                 "--set", "eval.baselines=[]", "--set", "eval.targets=[0.25]"]) == 0  # fmt: skip
    (alone,) = json.loads((Path(last_json(capsys)["run"]) / "eval.json").read_text())["sweep"]
    assert set(alone["arms"]) == {"searched"}
    for key in ("sparsity", "word_perplexity"):
        assert alone["arms"]["searched"][key] == point["arms"]["policy_mean"][key], key


def test_corrupt_or_mismatched_agent(
    project: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    broken = tmp_path / "agent.zip"
    broken.write_bytes(b"not a zip")
    fails_cleanly(capsys, ["eval", "--config", str(project), "--agent", str(broken)], "corrupt")
    other = make_tiny_project(tmp_path / "other")
    assert main(["train", "--config", str(other), "--set", "train.total_steps=4"]) == 0
    agent = sorted((tmp_path / "other" / "runs").glob("train_*"))[-1] / "agent_final.zip"
    capsys.readouterr()
    # same agent, but this project's encoder now has a different width
    encoder = f"model.encoder={project.parent / 'llm'}"
    argv = ["eval", "--config", str(project), "--agent", str(agent), "--set", encoder]
    fails_cleanly(capsys, argv, "dims")


@pytest.mark.parametrize("mode", ["letter", "choice_text"])
def test_mmlu_score_train_eval(
    project: Path, capsys: pytest.CaptureFixture, tmp_path: Path, mode: str
) -> None:
    mmlu = ["--set", "data.dataset=mmlu", "--set", f"env.mmlu_mode={mode}"]
    mmlu += ["--set", f"train.runs_dir={tmp_path}"]
    assert main(["score", "--config", str(project), *mmlu]) == 0
    dense = last_json(capsys)
    assert dense["task"] == "mmlu" and dense["n"] == 6 and 0 <= dense["acc"] <= 1
    assert main(["train", "--config", str(project), *mmlu, "--set", "train.total_steps=4"]) == 0
    assert main(["eval", "--config", str(project), *mmlu, "--set", "eval.targets=[0.5]"]) == 0
    (point,) = last_json(capsys)["sweep"]
    assert point["target"] == 0.5 and set(point) == {"target", *ARMS} - {"policy_window"}
    assert all(0 <= point[arm] <= 1 for arm in ARMS - {"policy_window"})
    context = ["--set", "env.neurons=context"]
    assert main(["score", "--config", str(project), *mmlu, *context, "uniform:0.5"]) == 0
    row = last_json(capsys)
    assert row["neurons"] == "context" and row["context_fallbacks"] == 0  # prompts are context


def test_earlier_windows_are_the_documents_prefix(project: Path) -> None:
    from transformers import AutoTokenizer

    from commands.common import load_split, training_items
    from config import load_config
    from data.sources import earlier_windows

    cfg = load_config(project, ["env.neurons=context"])
    tokenizer = AutoTokenizer.from_pretrained(cfg.model.llm)
    items = training_items(cfg, tokenizer)
    docs = load_split(cfg.data, cfg.data.train_split)
    contexts = earlier_windows(docs, tokenizer, cfg.env.max_length, items)
    assert any(item.chunk_index > 0 for item in items)
    for item, context in zip(items, contexts, strict=True):
        assert len(context) == item.chunk_index
        tokens = tokenizer.encode(docs[item.doc_index].text, add_special_tokens=False)
        before = [t for window in context for t in window]
        assert before + list(item.token_ids) == tokens[: len(before) + len(item.token_ids)]
