"""Test helpers: the tiny project (`tiny.py`), a pruning-ready tiny LLaMA, CLI assertions and
lm-eval's own wikitext task on a model folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from pruning.prunable_llm import PrunableLLM
from tiny import D_FF, N_LAYERS, make_tiny_project, tiny_llama

__all__ = ["D_FF", "N_LAYERS", "make_tiny_project", "tiny_llama"]  # re-exported for the tests


def tiny_llm(seed: int = 0) -> PrunableLLM:
    """`tiny_llama` (3 layers, MLP width 64) wrapped with fixed random orderings."""
    gen = torch.Generator().manual_seed(1)
    orderings = torch.stack([torch.randperm(64, generator=gen) for _ in range(3)])
    model = tiny_llama(seed, vocab_size=97, max_position_embeddings=128, initializer_range=0.2)
    return PrunableLLM(model, orderings)


def snapshot(llm: PrunableLLM) -> list[torch.Tensor]:
    return [p.detach().clone() for p in llm.parameters()]


def runs(config: Path) -> list[Path]:
    """Run folders of the tiny project whose config is `config`."""
    return sorted((config.parent / "runs").glob("*"))


def fails_cleanly(
    capsys: pytest.CaptureFixture, argv: list[str], message: str, project: Path | None = None
) -> None:
    """Exit code 2, one line naming the problem, no traceback; with `project` (its config),
    also no run folder written."""
    from main import main  # the CLI under test; imported late so fixtures stay light

    before = None if project is None else runs(project)
    assert main(argv) == 2
    if project is not None:
        assert runs(project) == before  # nothing written
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert "Traceback" not in err


def last_json(capsys: pytest.CaptureFixture) -> dict:
    """The final JSON line a command printed."""
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def lm_eval_word_perplexity(model_dir: Path, pages: list[str], max_length: int, tmp: Path) -> float:
    """lm-eval's own `wikitext` task (only the dataset swapped for `pages`) through model='hf'."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    data = tmp / "test.jsonl"
    data.write_text("".join(json.dumps({"page": page}) + "\n" for page in pages))
    task_yaml = tmp / "wikitext_local.yaml"
    override = {
        "include": str(Path(lm_eval.__file__).parent / "tasks" / "wikitext" / "wikitext.yaml"),
        "task": "wikitext_local",
        "dataset_path": "json",
        "dataset_name": None,
        "dataset_kwargs": {"data_files": {"test": str(data)}, "cache_dir": str(tmp / "hf")},
        "training_split": None,
        "validation_split": None,
    }
    task_yaml.write_text(yaml.safe_dump(override))
    tasks = TaskManager().load([str(task_yaml)])["tasks"]
    args = f"pretrained={model_dir},trust_remote_code=True,max_length={max_length},dtype=float32"
    out = lm_eval.simple_evaluate(
        model="hf",
        model_args=args,
        device="cuda" if torch.cuda.is_available() else "cpu",
        tasks=list(tasks.values()),
        bootstrap_iters=0,
    )
    return float(out["results"]["wikitext_local"]["word_perplexity,none"])
