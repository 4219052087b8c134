"""The mixed task: config checks, per-kind scoring through the one scoring path, the overall
figure, per-input budgets (batch projection, hindsight oracle) and `eval` on the tiny project."""

from __future__ import annotations

import json
import lzma
import math
from pathlib import Path

import numpy as np
import pytest

from commands.build import make_pruner
from commands.common import decision_texts, load_items
from commands.evaluate_mixed import MixedEvaluator, oracle_grid
from commands.mixed import mixed_training_items
from config import load_config
from data.mixed import MixedDataSource, MixedItem, cap_per_kind, prompts_before
from main import main
from models import load_models
from pruning.budgets import (
    HOLDOUT,
    RIDGES,
    BudgetRule,
    CostModel,
    fit_cost_model,
    nearest_centroid,
    oracle_budgets,
    project_budgets,
    weighted_mean,
)
from scoring.mixed import answer_perplexity, kind_loss, overall_figure
from tests.fixtures import N_LAYERS, fails_cleanly, last_json, make_tiny_project

MIXED = ["--set", "data.dataset=mixed"]
SUFFIX = {"global": "", "context": "_context"}
REL = 1e-9


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_project(tmp_path_factory.mktemp("mixed"))


def test_answer_perplexity_and_overall_figure() -> None:
    assert answer_perplexity([0.0, 0.0, 0.0, 0.0], 2) == pytest.approx(4.0)  # chance
    assert answer_perplexity([-1.0, -30.0, -30.0, -30.0], 0) == pytest.approx(1.0, abs=1e-11)
    assert kind_loss("mmlu", {"acc": 1.0, "n": 9}) == pytest.approx(0.05)  # smoothed: 0.5 / 10
    assert kind_loss("code", {"word_perplexity": 7.5}) == 7.5
    dense = {"wikitext": {"word_perplexity": 10.0}, "mmlu": {"acc": 0.5, "n": 3}}
    arm = {"wikitext": {"word_perplexity": 20.0}, "mmlu": {"acc": 0.0, "n": 3}}
    # wikitext log 2 (weight 1); mmlu log(3.5/4 / (2/4)) (weight 3)
    want = (math.log(2.0) + 3 * math.log(3.5 / 2.0)) / 4
    assert overall_figure(arm, dense, {"wikitext": 1.0, "mmlu": 3.0}) == pytest.approx(want)
    assert overall_figure(dense, dense, {"wikitext": 1.0, "mmlu": 1.0}) == 0.0


def test_project_budgets_holds_the_token_weighted_mean() -> None:
    raw, tokens = np.array([0.1, 0.5, 0.9, 0.3]), np.array([10, 100, 5, 40])
    out = project_budgets(raw, tokens, 0.3)
    assert weighted_mean(out, tokens) == pytest.approx(0.3, abs=1e-9)
    shift = out[1] - raw[1]
    assert out[3] - raw[3] == pytest.approx(shift) and out[2] == pytest.approx(raw[2] + shift)
    assert out[0] == 0.0 and shift == pytest.approx(-0.1379310345)  # clipped at 0
    with pytest.raises(ValueError, match="outside"):
        project_budgets(raw, tokens, 0.99)


def test_oracle_budgets_spends_sparsity_where_it_is_cheap() -> None:
    sparsity = np.tile([0.2, 0.3, 0.4], (2, 1))
    cost = np.array([[0.0, 0.0, 0.01], [0.0, 1.0, 3.0]])  # item 0 hardly cares, item 1 does
    choice = oracle_budgets(cost, sparsity, np.array([1, 1]), 0.3)
    assert choice.tolist() == [2, 0]  # 0.4 and 0.2: mean 0.3 at cost 0.01 (vs 1.0 at 0.3, 0.3)
    heavy = oracle_budgets(cost, sparsity, np.array([1, 3]), 0.3)  # item 1 weighs 3x
    assert weighted_mean(sparsity[[0, 1], heavy], np.array([1, 3])) >= 0.3 - 1e-12
    # in groups of their own, neither item may pay for the other: both at 0.3
    alone = oracle_budgets(cost, sparsity, np.array([1, 1]), 0.3, np.array([0, 1]))
    assert alone.tolist() == [1, 1]
    straight = np.array([[0.0, 0.0, 0.01], [0.0, 1.0, 2.0]])  # item 1's curve is a line
    over = oracle_budgets(straight, sparsity, np.array([1, 1]), 0.3, np.array([0, 1]))
    assert over.tolist() == [1, 2]  # no price stops mid-line: item 1 overshoots to 0.4
    four, reach = np.tile(cost, (2, 1)), np.tile(sparsity, (2, 1))  # items 0, 1, 0, 1
    mixed = oracle_budgets(four, reach, np.ones(4), 0.3, np.array([0, 0, 1, 1]))
    assert mixed.tolist() == [2, 0, 2, 0]  # each group holds one of each: spent as above
    alike = oracle_budgets(four, reach, np.ones(4), 0.3, np.array([0, 1, 0, 1]))
    assert alike.tolist() == [1, 1, 1, 1]  # each group of one kind: its own mean at 0.3


def test_budget_rule_round_trips_and_refuses_a_malformed_one() -> None:
    model = CostModel(np.zeros(2), np.ones(2), np.array([[1.0, 0.0], [0.0, 0.0]]),
                      np.array([0.0, 0.5]), 1.0, 0.1, 0.2)  # fmt: skip
    rule = BudgetRule(0.3, "context", [0.2, 0.4], math.inf, model)  # no price reached 0.3
    data = json.loads(json.dumps(rule.to_dict()))
    assert data["price"] is None
    back = BudgetRule.from_dict(data)
    assert back.price == math.inf and back.budgets == [0.2, 0.4]
    assert back.choose(np.array([[5.0, 0.0], [-5.0, 0.0]]), np.array([0.2, 0.4])).tolist() == [1, 1]
    priced = BudgetRule.from_dict(data | {"price": 1.0})  # cost 5 - 0.2 vs 0.5 - 0.4: 0.4
    assert priced.choose(np.array([[5.0, 0.0], [-5.0, 0.0]]), np.array([0.2, 0.4])).tolist() == [
        1,
        0,
    ]
    with pytest.raises(ValueError, match="do not fit 3 budgets"):
        BudgetRule.from_dict(data | {"budgets": [0.1, 0.2, 0.4]})


def test_nearest_centroid_names_each_query_by_the_nearest_kind_mean() -> None:
    features = np.array([[0.0, 0.0], [0.0, 2.0], [10.0, 0.0], [10.0, 2.0]])
    labels = np.array(["prose", "prose", "code", "code"])
    queries = np.array([[1.0, 1.0], [6.0, 9.0], [4.9, 0.0]])
    assert nearest_centroid(features, labels, queries).tolist() == ["prose", "code", "prose"]


def test_mixed_source_refuses_an_empty_kind_and_caps_per_kind() -> None:
    source = MixedDataSource({"wikitext": lambda split: [split] * 3, "code": lambda _: []})
    with pytest.raises(ValueError, match="kind 'code' has no items in split 'test'"):
        source.load("test")
    items = [MixedItem("a", i) for i in range(5)] + [MixedItem("b", i) for i in range(2)]
    assert [(m.kind, m.item) for m in cap_per_kind(items, 2)] == [
        ("a", 0), ("a", 2), ("b", 0), ("b", 1),
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--set", "data.kinds={wikitxt: 1}"], "unknown kind 'wikitxt'; did you mean 'wikitext'?"),
        (["--set", "data.kinds={code: -1, wikitext: 1}"], "data.kinds.code=-1.0 is negative"),
        (["--set", "data.kinds={code: 0}"], "every kind weight 0"),
        (["--set", "data.eval_split=train"], "is not a mixed split"),
    ],
)
@pytest.mark.parametrize("command", ["score", "eval", "train"])
def test_bad_mixed_input_is_one_line_exit_2(
    project: Path, capsys: pytest.CaptureFixture, command: str, extra: list[str], message: str
) -> None:
    argv = [command, "--config", str(project), *MIXED, *extra]
    fails_cleanly(capsys, argv, message, project)


def test_code_corpus_with_other_checksum_is_refused(
    project: Path, capsys: pytest.CaptureFixture, tmp_path: Path
) -> None:
    bad = tmp_path / "corpus.json.xz"
    bad.write_bytes(lzma.compress(b'{"release": "x", "files": []}'))
    for command in ("score", "eval"):
        argv = [command, "--config", str(project), *MIXED, "--set", f"data.code_path={bad}"]
        fails_cleanly(capsys, argv, "SHA-256", project)


def test_each_kind_scores_as_its_own_task(project: Path, capsys: pytest.CaptureFixture) -> None:
    """WikiText and MMLU inside the mixed task give exactly the single-task numbers."""
    kinds = ["--set", "data.kinds={wikitext: 1, mmlu: 1}"]
    for allocation in ("dense", "uniform:0.5"):
        assert main(["score", "--config", str(project), *MIXED, *kinds, allocation]) == 0
        mixed = last_json(capsys)["kinds"]
        assert main(["score", "--config", str(project), allocation]) == 0
        wiki = last_json(capsys)
        assert (
            main(["score", "--config", str(project), "--set", "data.dataset=mmlu", allocation]) == 0
        )
        mmlu = last_json(capsys)
        w = mixed["wikitext"]
        assert w["word_perplexity"] == pytest.approx(wiki["word_perplexity"], rel=REL)
        assert w["bits_per_byte"] == pytest.approx(wiki["bits_per_byte"], rel=REL)
        assert mixed["mmlu"] == {"acc": mmlu["acc"], "n": mmlu["n"]}


def test_eval_mixed_static_arms_and_oracle(
    project: Path, capsys: pytest.CaptureFixture, tmp_path: Path
) -> None:
    profile = tmp_path / "profile.json"
    profile.write_text(json.dumps({"profiles": [{"target": 0.3, "fractions": [0.1, 0.5]}]}))
    argv = ["eval", "--config", str(project), *MIXED, "--agent", "none", "--limit", "2"]
    argv += ["--neurons", "both", "--set", "eval.targets=[0.3]", "--set", "env.align=1"]
    argv += ["--profile", str(profile)]
    assert main(argv) == 0
    run = Path(last_json(capsys)["run"])
    result = json.loads((run / "eval.json").read_text())
    assert result["num_items"] == {"wikitext": 2, "code": 2, "mmlu": 2}
    assert result["context_fallbacks"] == 4  # the first window of each page and file
    dense = result["dense"]
    assert dense["wikitext"]["word_perplexity"] == pytest.approx(20.705274572467232, rel=REL)
    assert dense["code"]["word_perplexity"] == pytest.approx(29.0107119243672, rel=REL)
    assert dense["code"]["bits_per_byte"] == pytest.approx(0.5687375540905119, rel=REL)
    assert dense["mmlu"] == {"acc": 1.0, "n": 2}
    glob, context = result["sweep"]
    assert glob["arms"]["oracle"]["budgets"] == [0.35, 0.2, 0.25, 0.4, 0.4, 0.4]
    want = {  # arm: (overall figure, token-weighted sparsity)
        "oracle": (-0.001168311820711182, 0.34803240740740743),
        "uniform": (-0.0008085762904556302, 0.3515625),
        "oracle_context": (-0.0001528881200023558, 0.36417824074074073),
        "uniform_context": (-7.188125316881192e-05, 0.3671875),
    }
    arms = glob["arms"] | context["arms"]
    for arm, (overall, sparsity) in want.items():
        assert arms[arm]["overall"] == pytest.approx(overall, rel=1e-6), arm
        assert arms[arm]["sparsity"] == pytest.approx(sparsity, rel=1e-12), arm
    assert glob["matched"] == arms["oracle"]["sparsity"]  # every arm is scored at the oracle's mean
    # where each arm spends its sparsity: alike for a static arm, the oracle's MMLU at 0.4
    by_kind = arms["uniform"]["kind_sparsity"]
    assert by_kind == dict.fromkeys(("wikitext", "code", "mmlu"), round(0.3515625, 4))
    by_kind = arms["oracle"]["kind_sparsity"]
    assert by_kind["mmlu"] == pytest.approx(0.4, abs=1 / 64)
    assert min(by_kind.values()) < arms["oracle"]["sparsity"] < max(by_kind.values())
    # the searched profile of 0.3, moved onto the matched mean (to one neuron of 2 x 64)
    assert arms["searched"]["sparsity"] == pytest.approx(glob["matched"], abs=1 / 128)
    assert arms["searched"]["overall"] == pytest.approx(-0.0007033823288763825, rel=1e-6)
    assert arms["searched_context"]["overall"] == pytest.approx(0.00019434664360943246, rel=1e-6)
    static = ("uniform", "ends_dense", "searched")
    assert glob["gains"]["best_static"] == min(static, key=lambda a: arms[a]["overall"])


def test_eval_mixed_at_0_1_lets_an_input_stay_dense(
    project: Path, capsys: pytest.CaptureFixture, tmp_path: Path
) -> None:
    """At 0.1 the oracle's grid starts at 0: an input may stay dense (the whole width)."""
    assert oracle_grid(0.1) == [0.0, 0.05, 0.1, 0.15, 0.2]
    argv = ["eval", "--config", str(project), *MIXED, "--agent", "none", "--limit", "2"]
    argv += ["--neurons", "global", "--set", "eval.targets=[0.1]", "--set", "env.align=1"]
    argv += ["--set", f"train.runs_dir={tmp_path}"]
    assert main(argv) == 0
    result = json.loads((Path(last_json(capsys)["run"]) / "eval.json").read_text())
    (entry,) = result["sweep"]
    oracle = entry["arms"]["oracle"]
    assert oracle["budgets"] == [0.1, 0.2, 0.0, 0.15, 0.0, 0.0]  # 2 pages, 2 files, 2 questions
    assert oracle["overall"] == pytest.approx(-0.0007712368298960108, rel=1e-6)
    assert oracle["sparsity"] == pytest.approx(0.10694444444444444, rel=1e-12)


def test_fit_cost_model_learns_what_the_features_tell() -> None:
    """Two kinds of input, one steep cost curve over three budgets and one flat, each input with
    its own level and noise: the fit recovers the curves up to a constant, the choice on predicted
    costs puts the steep kind low, and features that tell nothing fit no better than the mean."""
    rng = np.random.default_rng(0)
    n = 200
    kind = rng.integers(0, 2, n)
    features = np.c_[kind + 0.1 * rng.normal(size=n), rng.normal(size=(n, 3))]
    curves = np.where(kind[:, None] == 1, [[0.0, 1.0, 3.0]], [[0.0, 0.2, 0.4]])
    tokens = rng.integers(5, 20, n).astype(float)
    level = 5 * rng.normal(size=(n, 1))
    cost = tokens[:, None] * (curves + level + 0.1 * rng.normal(size=(n, 3)))
    model = fit_cost_model(features, cost, tokens, np.arange(n))
    assert model.ridge in RIDGES
    assert model.heldout < 0.1 * model.heldout_constant
    predicted = model.predict(features)
    centred = curves - curves.mean(1, keepdims=True)
    for k in (0, 1):  # each kind's curve, up to a constant
        assert np.abs(predicted[kind == k].mean(0) - centred[kind == k][0]).max() < 0.05
    reach = np.tile([0.2, 0.3, 0.4], (n, 1))
    choice = oracle_budgets(predicted * tokens[:, None], reach, tokens, 0.3)
    assert np.all(choice[kind == 1] <= choice[kind == 0].min())
    blind = fit_cost_model(rng.normal(size=(n, 4)), cost, tokens, np.arange(n))
    assert blind.heldout > 0.9 * blind.heldout_constant
    with pytest.raises(ValueError, match=f"at least {HOLDOUT} groups"):
        fit_cost_model(features[:3], cost[:3], tokens[:3], np.arange(3))


def test_eval_mixed_fitted_budgets(
    project: Path, capsys: pytest.CaptureFixture, tmp_path: Path
) -> None:
    """eval.fit_items: per-input budgets from a cost model fitted on training items, every
    unit scored at the oracle's budgets, reported beside the oracle at its matched mean."""
    argv = ["eval", "--config", str(project), *MIXED, "--agent", "none", "--limit", "2"]
    argv += ["--neurons", "both", "--set", "eval.targets=[0.3]", "--set", "env.align=1"]
    argv += ["--set", "eval.fit_items=3", "--set", f"train.runs_dir={tmp_path}"]
    assert main(argv) == 0
    result = json.loads((Path(last_json(capsys)["run"]) / "eval.json").read_text())
    assert result["fit_items"] == 3
    want = {  # arm: (overall figure, token-weighted sparsity)
        "fitted_input": (-0.0011037020957309553, 0.34860089869281047),
        "fitted_input_context": (-9.979846597828525e-05, 0.3662683823529412),
        "fitted_within_kind": (-0.0011044844386415814, 0.34992851307189543),
        "fitted_within_kind_context": (-3.288909484108286e-05, 0.3684129901960784),
    }
    for entry in result["sweep"]:
        for arm in ("fitted_input", "fitted_within_kind"):
            key = arm + SUFFIX[entry["neurons"]]
            row = entry["arms"][key]
            assert row["overall"] == pytest.approx(want[key][0], rel=1e-6), key
            assert row["sparsity"] == pytest.approx(want[key][1], rel=1e-12), key
            # at the oracle's mean, a little over within kinds (`oracle_budgets`: hull points)
            assert entry["matched"] <= row["sparsity"] < entry["matched"] + 0.025
            assert row["fit"]["training_units"] == 101  # 3 pages' and 3 files' windows, 3 MMLU
            assert row["fit"]["ridge"] in RIDGES
            assert row["fit"]["kind_accuracy"] == pytest.approx(0.9477124183006536, rel=1e-12)
            assert arm in entry["gains"]["captured"]
    assert result["sweep"][0]["gains"]["captured"]["fitted_input"] == pytest.approx(
        0.820396598205552, rel=1e-6
    )
    # the rules `generate --budget-rules` reads: one per target and neuron choice
    rules_file = next(tmp_path.glob("eval_*/budget_rules.json"))
    rules = json.loads(rules_file.read_text())
    assert (rules["n_layers"], rules["width"], rules["align"]) == (N_LAYERS, 64, 1)
    assert [(r["target"], r["neurons"]) for r in rules["rules"]] == [
        (0.3, "global"),
        (0.3, "context"),
    ]
    fits = {e["neurons"]: e["arms"][f"fitted_input{SUFFIX[e['neurons']]}"]["fit"]
            for e in result["sweep"]}  # fmt: skip
    # the price holds 0.3 on the training units; on the eval units, one at a time, near it
    assert fits["global"]["price"] == pytest.approx(2.1086009793583532e-06, rel=1e-6)
    assert fits["global"]["rule_sparsity"] == pytest.approx(0.30627042483660133, rel=1e-9)
    assert fits["context"]["rule_sparsity"] == pytest.approx(0.2983047385620915, rel=1e-9)
    base = ["generate", "--config", str(project), "--max-new-tokens", "2", "--target", "0.3"]
    base += ["--budget-rules", str(rules_file), "--set", "env.align=1"]
    prompts = ["def f(x):\n    return x + 1", "The city of song lies on the river.", "Q: 2+2? A:"]
    assert main([*base, *(a for p in prompts for a in ("--prompt", p))]) == 0
    out = json.loads((Path(last_json(capsys)["run"]) / "generate.json").read_text())
    assert out["budget_rules"] == str(rules_file)
    assert [r["sparsity"] for r in out["results"]] == [0.25, 0.296875, 0.25]  # each its own
    broken = tmp_path / "broken.json"
    broken.write_text(rules_file.read_text()[:100])
    bad = [  # argv tail, message: one line, exit 2, nothing written
        (["--prompt", "x", "--target", "0.5"], "no rule for target 0.5 with global neurons"),
        (["--prompt", "x", "--set", "env.align=8"], "were fitted for (layers, width, align)"),
        (["--prompt", "x", "--agent", "a.zip"], "give one of ALLOCATION, --agent and --budget"),
        (["--prompt", "x", "dense"], "give one of ALLOCATION, --agent and --budget-rules"),
        (["--prompt", "x", "--budget-rules", "no.json"], "no.json do not exist; `eval` writes"),
        (["--prompt", "x", "--budget-rules", str(broken)], "are not valid JSON (truncated?)"),
    ]
    for tail, message in bad:
        fails_cleanly(capsys, [*base, *tail], message, project)
    no_target = ["generate", "--config", str(project), "--budget-rules", str(rules_file)]
    fails_cleanly(capsys, [*no_target, "--prompt", "x"], "--budget-rules needs --target", project)


def test_fit_items_needs_the_mixed_task(project: Path, capsys: pytest.CaptureFixture) -> None:
    argv = ["eval", "--config", str(project), "--agent", "none", "--set", "eval.fit_items=3"]
    fails_cleanly(capsys, argv, "eval.fit_items=3 fits per-input budgets on the mixed", project)


def test_train_and_eval_with_levers(
    project: Path, capsys: pytest.CaptureFixture, tmp_path: Path
) -> None:
    sets = [*MIXED, "--set", f"train.runs_dir={tmp_path}", "--set", "env.neurons=context"]
    sets += ["--set", "env.levers=[budget,blend,stats]", "--set", "env.align=1"]
    argv = ["train", "--config", str(project), *sets, "--set", "data.max_samples=4"]
    assert main(argv) == 0
    argv = ["eval", "--config", str(project), *sets, "--limit", "2", "--set", "eval.targets=[0.3]"]
    assert main(argv) == 0
    result = json.loads((Path(last_json(capsys)["run"]) / "eval.json").read_text())
    (entry,) = result["sweep"]
    arms = entry["arms"]
    assert set(arms) == {
        f"{a}_context" for a in ("oracle", "uniform", "ends_dense", "policy_mean", "policy_input")
    }
    # per-input budgets projected onto the oracle's token-weighted mean, to within one neuron
    assert arms["policy_input_context"]["sparsity"] == pytest.approx(entry["matched"], abs=0.01)
    assert set(entry["gains"]["captured"]) == {"policy_mean", "policy_input"}


def test_budget_alone_around_a_reference(
    project: Path, capsys: pytest.CaptureFixture, tmp_path: Path
) -> None:
    """env.radius=0: one action per input (its budget), every input the reference's shape; the
    policy's mean profile is then the reference itself (here uniform) at the target."""
    reference = tmp_path / "uniform.json"
    profiles = [{"target": t, "fractions": [t] * N_LAYERS} for t in (0.1, 0.5)]
    reference.write_text(json.dumps({"profiles": profiles}))
    sets = [*MIXED, "--set", f"train.runs_dir={tmp_path}", "--set", "env.neurons=context"]
    sets += ["--set", "env.levers=[budget]", "--set", "env.radius=0"]
    sets += ["--set", f"env.reference={reference}", "--set", "env.align=1"]
    argv = ["train", "--config", str(project), *sets, "--set", "data.max_samples=4"]
    assert main(argv) == 0
    assert ", 1 actions per item)" in capsys.readouterr().out
    argv = ["eval", "--config", str(project), *sets, "--limit", "2", "--set", "eval.targets=[0.3]"]
    assert main(argv) == 0
    (entry,) = json.loads((Path(last_json(capsys)["run"]) / "eval.json").read_text())["sweep"]
    arms = entry["arms"]
    for key in ("overall", "sparsity"):
        assert arms["policy_mean_context"][key] == arms["uniform_context"][key], key
    assert arms["policy_input_context"]["sparsity"] == pytest.approx(entry["matched"], abs=0.01)


def test_levers_need_context_neurons(project: Path, capsys: pytest.CaptureFixture) -> None:
    argv = ["train", "--config", str(project), *MIXED, "--set", "env.levers=[blend]"]
    fails_cleanly(capsys, argv, "reads context orderings: set env.neurons=context", project)


def test_prompts_before_never_hold_a_windows_own_tokens() -> None:
    decode = lambda ids: " ".join(map(str, ids))  # noqa: E731
    assert prompts_before([[1, 2], [3], [4, 5]], decode) == ["", "1 2", "3"]
    assert prompts_before([[7]], decode) == [""]


def test_decisions_read_only_what_precedes_the_scored_tokens(project: Path) -> None:
    """Training windows and eval windows are decided from the window before them ("" for a
    page's or file's first), a question from its prompt; whole pages have no decision text."""
    cfg = load_config(project, ["data.dataset=mixed", "env.neurons=context"])
    models = load_models(cfg.model)
    train = mixed_training_items(cfg, models.tokenizer)
    texts = decision_texts(train)
    windows = [(k, m) for k, m in enumerate(train) if m.kind != "mmlu"]
    for k, m in windows:
        before = train[k - 1] if m.item.chunk_index else None
        assert texts[k] == ("" if before is None else before.text)
        assert before is None or before.item.doc_index == m.item.doc_index
    assert any(
        m.item.chunk_index for _, m in windows
    )  # later windows exist, and read the one before
    assert all(texts[k] == m.item.text for k, m in enumerate(train) if m.kind == "mmlu")
    items = load_items(cfg.data, "test", 2)
    with pytest.raises(ValueError, match="window by window"):
        decision_texts(items)
    ev = MixedEvaluator(cfg, models, make_pruner(cfg, models), items)
    prompts = ev.unit_prompts(models.tokenizer)
    assert (
        len(prompts)
        == len(ev.units)
        == sum(
            1 if ev.task.kind(i) == "mmlu" else len(ev.task.requests(i)) for i in range(len(items))
        )
    )
    for u, (i, reqs) in enumerate(ev.units):
        if ev.task.kind(i) == "mmlu":
            assert prompts[u] == items[i].text and reqs == [0, 1, 2, 3]
        else:
            (j,) = reqs
            previous = ev.task.requests(i)[j - 1][1] if j else None
            assert prompts[u] == ("" if j == 0 else models.tokenizer.decode(previous))
    # a unit's stats come from its own context ordering: none for a first window
    orders = ev.unit_orderings()
    assert [o[0] is None for o in orders] == [
        ev.task.kind(i) != "mmlu" and reqs == [0] for i, reqs in ev.units
    ]


def test_mixed_table_and_figure_of_a_real_eval(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """bench/mixed_table.py on the H200 run's eval.json: the headline row and the figure."""
    from bench.mixed_table import main as mixed_table

    result = Path(__file__).parents[1] / "bench/results/mixed_smollm2_h200/residual_ends/eval.json"
    assert mixed_table([str(result), "--plot", str(tmp_path / "sweep.png")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "| 0.5 | context | policy_input_context | 0.5003 | +231.27% |" in "\n".join(lines)
    assert (tmp_path / "sweep.png").stat().st_size > 10_000
    assert mixed_table([str(result), "--plot"]) == 2
    capsys.readouterr()
    other = Path(__file__).parents[1] / "bench/results/mixed_qwen1.5b_h200/fitted_budgets"
    assert mixed_table([str(other / "eval_0.1.json"), str(other / "eval_0.5.json")]) == 0
    table = capsys.readouterr().out  # the two runs' sweeps in one table, one dense row
    assert table.count("| | | dense |") == 1
    assert "| 0.1 | context | fitted_input_context | 0.1005 | +6.26% |" in table
    assert "| 0.5 | context | fitted_input_context | 0.5005 | +154.79% |" in table
    assert mixed_table([str(result), str(other / "eval_0.1.json")]) == 2  # another model
    assert "different dense rows" in capsys.readouterr().err
