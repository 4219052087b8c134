from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from main import main
from pruning.allocation import keep_masks
from pruning.context_importance import context_orderings
from pruning.generation import generate_narrowed
from tests.fixtures import fails_cleanly, make_tiny_project, snapshot, tiny_llm

N_LAYERS, D_FF = 3, 64  # tiny_llm's shape

DENSE = np.full(N_LAYERS, D_FF)  # nothing pruned

PROMPT = [5, 17, 42, 8, 91, 33, 2, 60, 12]


def dense_generate(llm: object, n: int) -> list[int]:
    ids = torch.tensor([PROMPT])
    out = llm.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                       do_sample=False, pad_token_id=0)  # fmt: skip
    return out[0, len(PROMPT) :].tolist()


@pytest.mark.parametrize("neurons", ["context", "global"])
def test_nothing_pruned_matches_dense_generation(neurons: str) -> None:
    llm = tiny_llm()
    expected = dense_generate(llm, 12)
    full = np.full(N_LAYERS, D_FF)
    assert generate_narrowed(llm, PROMPT, full, 12, neurons).tokens == expected


def test_context_generation_uses_prompt_neurons_and_restores() -> None:
    llm = tiny_llm()
    before = snapshot(llm)
    kept = np.array([16, 24, 8])
    out = generate_narrowed(llm, PROMPT, kept, 10, "context")
    assert not llm.is_pruned
    assert all(torch.equal(a, b) for a, b in zip(before, llm.parameters()))
    (ordering,) = context_orderings(llm, [([PROMPT], [1])], "mean_abs_activation")[0]
    with llm.pruned(keep_masks(ordering, kept).__getitem__):
        assert llm.keep_counts() == kept.tolist()
        assert dense_generate(llm, 10) == out.tokens
    assert len(out.tokens) == 10 and out.tokens_per_second > 0


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_project(tmp_path_factory.mktemp("gen"))


def test_generate_command(project: Path, capsys: pytest.CaptureFixture) -> None:
    base = ["generate", "--config", str(project), "--max-new-tokens", "5"]
    long_prompt = " ".join(["the game of war"] * 70)  # 280 words: past the 256-token context
    argv = [*base, "--prompt", "the city of song", "--prompt", long_prompt, "uniform:0.5"]
    assert main([*argv, "--set", "env.neurons=context"]) == 0
    captured = capsys.readouterr()
    assert "warning: prompt 1 has 280 tokens; kept its last 251" in captured.err
    run = Path(json.loads(captured.out.strip().splitlines()[-1])["run"])
    rows = json.loads((run / "generate.json").read_text())["results"]
    assert [len(r["tokens"]) for r in rows] == [5, 5]
    assert rows[0]["sparsity"] == pytest.approx(0.5) and rows[1]["prompt_tokens"] == 251


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "give at least one non-empty prompt"),
        (["--prompts-file", "/no/such.txt"], "does not exist"),
        (["--prompt", "the war", "--agent", "a.zip"], "--agent needs --target"),
        (["--prompt", "the war", "0.1,0.2,0.3"], "needs 2 fractions"),
    ],
)
def test_generate_bad_input(
    project: Path, capsys: pytest.CaptureFixture, extra: list[str], message: str
) -> None:
    fails_cleanly(capsys, ["generate", "--config", str(project), *extra], message, project)


@pytest.mark.parametrize("at", [0, 1, 5])
def test_generation_stops_after_eos_as_hf_generate(at: int) -> None:
    llm = tiny_llm()
    expected = dense_generate(llm, 12)
    llm.generation_config.eos_token_id = expected[at]
    stopped = dense_generate(llm, 12)  # HF: up to and including the first eos
    assert stopped == expected[: expected.index(expected[at]) + 1]
    assert generate_narrowed(llm, PROMPT, DENSE, 12).tokens == stopped
    assert generate_narrowed(llm, PROMPT, DENSE, 12, stop_at_eos=False).tokens == expected


def test_generation_phases_and_steady_speed() -> None:
    out = generate_narrowed(tiny_llm(), PROMPT, np.array([16, 24, 8]), 10, "context")
    assert list(out.phases) == [
        "statistics", "top_k", "gather", "prompt", "compile", "capture", "steps"
    ]  # fmt: skip
    assert out.decode_mode == "eager" and out.replayed_tokens == 10 - 1 - 2  # prompt, warm-up
    assert out.phases["compile"] == 0.0
    assert out.prefill_seconds == pytest.approx(out.phases["statistics"] + out.phases["top_k"])
    assert out.steady_tokens_per_second > 0


@pytest.mark.gpu
def test_cuda_graph_decode_matches_hf_generate() -> None:
    llm = tiny_llm()
    llm.wrapped.to("cuda")
    llm.generation_config.eos_token_id = None  # 40 tokens on both paths
    ids = torch.tensor([PROMPT], device="cuda")
    ref = llm.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=40,
                       do_sample=False, pad_token_id=0)[0, len(PROMPT) :].tolist()  # fmt: skip
    out = generate_narrowed(llm, PROMPT, DENSE, 40)
    assert out.decode_mode == "cuda_graph" and out.tokens == ref
    kept = np.array([16, 24, 8])
    graph = generate_narrowed(llm, PROMPT, kept, 40, "context", stop_at_eos=False)
    eager = generate_narrowed(llm, PROMPT, kept, 40, "context", stop_at_eos=False, graph=False)
    assert graph.decode_mode == "cuda_graph" and eager.decode_mode == "eager"
    assert graph.tokens == eager.tokens and len(graph.tokens) == 40
    compiled = generate_narrowed(llm, PROMPT, kept, 40, "context", stop_at_eos=False,
                                 compile_mode="default")  # fmt: skip
    assert compiled.decode_mode == "cuda_graph" and compiled.tokens == graph.tokens
    assert compiled.phases["compile"] > 0 and compiled.replayed_tokens == 40 - 1 - 1 - 2
    again = generate_narrowed(llm, PROMPT, DENSE, 40, compile_mode="default")
    assert again.decode_mode == "cuda_graph" and again.tokens == ref


@pytest.mark.slow  # torch.compile on CPU builds C++ kernels: ~30 s
def test_compiled_decode_matches_eager_and_is_reused() -> None:
    llm = tiny_llm()
    kept = np.array([16, 24, 8])
    eager = generate_narrowed(llm, PROMPT, kept, 10, "context", stop_at_eos=False)
    first, second = (generate_narrowed(llm, PROMPT, kept, 10, "context", stop_at_eos=False,
                                       compile_mode="default") for _ in range(2))  # fmt: skip
    assert first.tokens == second.tokens == eager.tokens
    assert second.replayed_tokens == 10 - 1 - 1 - 2  # prompt, compiled step, warm-up
    assert second.phases["compile"] < first.phases["compile"] / 10  # compiled once, reused
    assert not llm.is_pruned


def test_unknown_compile_mode_fails_early() -> None:
    with pytest.raises(ValueError, match="reduce-overhead"):
        generate_narrowed(tiny_llm(), PROMPT, DENSE, 4, compile_mode="reduce-overhead")
