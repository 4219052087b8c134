"""Smoke tests of the context-neuron benchmarks on tiny shapes (CPU, seconds):
bench/bench_generate.py and bench/bench_step.py --neurons both."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


def test_bench_generate_tiny(tmp_path: Path) -> None:
    from bench.bench_generate import main

    out = tmp_path / "generate.json"
    assert main(["--tiny", "--device", "cpu", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    rows = result["rows"]
    assert [r["name"] for r in rows] == ["dense", "context 0.3", "context 0.5"]
    assert set(result["meta"]["step_time_fit"]) >= {"fixed_ms", "gb_per_s"}
    dense, _, half = rows
    assert dense["ideal"] == 1.0 and dense["select_ms"] == 0.0 and dense["gather_ms"] < 1
    assert all("error" not in r and r["decode_tok_s"] > 0 for r in rows)
    assert all(r["decode_mode"] == "eager" and r["replayed_tokens"] == 12 - 3 for r in rows)
    assert half["select_ms"] > 0 and half["kept_per_layer"] == [64]
    # tiny arch: 3 layers, hidden 64, width 128 -> 64; decode reads 3 * 3 * 64 * 64 fewer weights
    assert half["weights_per_token"] == dense["weights_per_token"] - 3 * 3 * 64 * 64
    assert half["ideal"] == pytest.approx(127424 / 90560)
    assert half["fraction_of_ideal"] == pytest.approx(half["speedup"] / half["ideal"])
    assert half["speedup_with_select"] < half["speedup"]  # the selection is paid once
    assert all(r["compile_s"] == 0.0 and "same_tokens_as_uncompiled" not in r for r in rows)


def test_same_prefix() -> None:
    from bench.bench_generate import same_prefix

    assert same_prefix([1, 2, 3], [1, 2, 4]) == 2 and same_prefix([1, 2], [1, 2]) == 2


def test_bench_step_context_tiny(tmp_path: Path) -> None:
    from bench.bench_step import main

    out = tmp_path / "step.json"
    argv = ["--arch", "tiny", "--device", "cpu", "--seq-len", "32", "--batch-seq-len", "16"]
    main([*argv, "--quick", "--neurons", "both", "--n-envs", "2", "--context-windows", "2",
          "--out", str(out)])  # fmt: skip
    arch = json.loads(out.read_text())["archs"]["tiny"]
    assert arch["step_profile"]["ms"]["step"] > 0 and arch["batched"][0]["n_envs"] == 2
    ctx = arch["context"]
    assert [r["context_windows"] for r in ctx["orderings_one_off"]] == [1, 2]
    assert all(r["ms"] > 0 for r in ctx["orderings_one_off"])
    prof = ctx["step_profile"]
    assert prof["global_step_ms"] == arch["step_profile"]["ms"]["step"]
    assert prof["step_over_global"] == pytest.approx(prof["ms"]["step"] / prof["global_step_ms"])
    (row,) = ctx["batched"]
    assert row["reward_max_abs_diff"] < 1e-4  # batched per-row masks == the single env's step
    assert row["vec_step_over_global"] > 0
