"""Check that our MMLU accuracy equals lm-evaluation-harness's `mmlu` task (letter scoring).

Both sides score every test question of `--subjects` with the same model: ours through
`main.py score dense` (`data.dataset=mmlu`, `env.mmlu_num_fewshot`), lm-eval's through its own
`mmlu_<subject>` task YAMLs (prompt, description, `first_n` few-shot from dev, acc), with only
the dataset pointed at a JSON-lines copy of the local CSVs. Exits 1 if the accuracies differ by
more than --tolerance (absolute).

    python bench/lm_eval_mmlu_agreement.py --model FILE.gguf --mmlu ../shared/data/mmlu \
        --subjects anatomy astronomy --shots 0 5
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
PRESET = REPO / "configs" / "smollm2-135m.yml"


def ours(model: Path, mmlu: Path, subjects: list[str], shots: int, max_length: int) -> float:
    """Accuracy from `main.py score dense` (its last stdout line is the JSON result)."""
    sets = {"model.llm": str(model), "data.dataset": "mmlu", "data.mmlu_path": str(mmlu),
            "data.subjects": json.dumps(subjects), "data.max_samples": "null",
            "env.mmlu_num_fewshot": str(shots), "env.max_length": str(max_length),
            "model.device": "auto", "env.importance_file": "null"}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "main.py", "score", "dense", "--config", str(PRESET)]
        for key, value in (sets | {"train.runs_dir": tmp}).items():
            cmd += ["--set", f"{key}={value}"]
        out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"score failed:\n{out.stderr[-2000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"  ours: {result['num_items']} questions, {result['seconds']} s")
    return float(result["acc"])


def jsonl(csv_file: Path, out: Path) -> None:
    with csv_file.open(newline="") as f:
        rows = [
            {"question": r[0], "choices": r[1:5], "answer": "ABCD".index(r[5].strip())}
            for r in csv.reader(f)
        ]
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))


def theirs(model: Path, mmlu: Path, subjects: list[str], shots: int, max_length: int) -> float:
    """Micro-averaged acc of lm-eval's `mmlu_<subject>` tasks on the local CSVs."""
    import lm_eval
    import torch
    import yaml
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager
    from lm_eval_agreement import load_model  # the WikiText agreement's loader, beside this file

    llm, tokenizer = load_model(model)
    llm = llm.to("cuda" if torch.cuda.is_available() else "cpu")
    template = Path(lm_eval.__file__).parent / "tasks" / "mmlu" / "default"
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for subject in subjects:
            files = {}
            for split in ("test", "dev"):
                files[split] = str(Path(tmp) / f"{subject}_{split}.jsonl")
                jsonl(mmlu / split / f"{subject}_{split}.csv", Path(files[split]))
            task = yaml.safe_load((template / f"mmlu_{subject}.yaml").read_text())
            task |= {"include": str(template / "_default_template_yaml"),
                     "task": f"local_{subject}", "dataset_path": "json", "dataset_name": None,
                     "dataset_kwargs": {"data_files": files, "cache_dir": tmp}}  # fmt: skip
            task.pop("tag", None)
            paths.append(Path(tmp) / f"local_{subject}.yaml")
            paths[-1].write_text(yaml.safe_dump(task))
        tasks = TaskManager().load([str(p) for p in paths])["tasks"]
        lm = HFLM(pretrained=llm, tokenizer=tokenizer, max_length=max_length, batch_size=8)
        out = simple_evaluate(model=lm, tasks=list(tasks.values()), num_fewshot=shots,
                              bootstrap_iters=0)  # fmt: skip
    n = {s: len(out["samples"][f"local_{s}"]) for s in subjects}
    acc = sum(out["results"][f"local_{s}"]["acc,none"] * n[s] for s in subjects) / sum(n.values())
    print(f"  lm-eval: {sum(n.values())} questions")
    return acc


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, required=True, help="GGUF file or HF folder")
    p.add_argument("--mmlu", type=Path, default=REPO.parent / "shared" / "data" / "mmlu")
    p.add_argument("--subjects", nargs="+", default=["anatomy", "astronomy"])
    p.add_argument("--shots", type=int, nargs="+", default=[0])
    p.add_argument("--max-length", type=int, default=2048)
    p.add_argument("--tolerance", type=float, default=0.0, help="max |acc difference|")
    args = p.parse_args(argv)
    worst = 0.0
    for shots in args.shots:
        print(f"{shots}-shot, subjects {args.subjects}")
        a = ours(args.model, args.mmlu, args.subjects, shots, args.max_length)
        b = theirs(args.model, args.mmlu, args.subjects, shots, args.max_length)
        print(f"  acc ours {a:.6f}  lm-eval {b:.6f}  difference {abs(a - b):.2e}")
        worst = max(worst, abs(a - b))
    ok = worst <= args.tolerance
    print(f"{'OK' if ok else 'FAIL'}: worst difference {worst:.2e} (tolerance {args.tolerance})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
