"""Dense quality and the matched-sparsity sweep of one real model, with the project's commands.

Every number comes from `python3 main.py importance|score|search|train|eval` run as a subprocess
(their last stdout line is JSON); this script only chooses the arguments and collects the table:

- dense WikiText-2 test word perplexity (`--max-length`-token rolling windows, lm-eval's metric)
  and MMLU accuracy 0-shot and 5-shot (`letter`, lm-eval's acc) on a seeded sample;
- `search`: a static profile per target (`--profile FILE`: one searched before, no search);
- `eval-static`: uniform, first/last 2 layers dense and the searched profile at every target,
  each with global and with context neurons (one `main.py eval --agent none --neurons both`:
  every arm at exactly the target, context orderings computed once); `mmlu-static`: the same on
  MMLU at `--mmlu-targets` (`--mmlu-samples`, 0 = all 14,042 questions, 0-shot);
- `train`: a budget policy in residual mode around the searched profile (without one: around
  first/last 2 dense, written by `search` with `search.start=ends_dense` and no generations), so
  its mean profile is the learned static profile; `eval` / `mmlu-eval`: its arms (mean profile,
  per document or question) the same way, with `eval.static=false` when the static stage ran.

    python3 bench/real_models.py --preset configs/qwen2.5-coder-1.5b.yml \\
        --gguf /tmp/qwen1.5b.gguf --mmlu /tmp/mmlu --out bench/results/real_qwen1.5b_h200

`--gguf` (optional) loads a GGUF joined by hand instead of the preset's part packages; the model
is de-quantized into cache/models/ on the first command and loaded from there afterwards. A
missing importance file is computed first (`importance`). Results are appended to
`<out>/results.json` as they arrive and a rerun skips what is there, so the stages can be split
over several jobs (`--stages`, run in parallel on one GPU: `train` leaves most of it idle). Each
command's output goes to `<out>/logs/<key>.log` as it runs.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from config import load_config, resolve_path  # noqa: E402

STAGES = (
    "importance", "dense", "mmlu", "search", "eval-static", "mmlu-static", "train", "eval",
    "mmlu-eval",
)  # fmt: skip


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--preset", required=True, help="configs/<model>.yml")
    p.add_argument("--gguf", default=None, help="a joined GGUF file instead of the preset's parts")
    p.add_argument("--mmlu", default=None, help="folder of the MMLU CSVs (test/ dev/ val/)")
    p.add_argument("--out", required=True, help="results folder (results.json, runs/)")
    p.add_argument("--device", default="auto", help="model.device (%(default)s)")
    p.add_argument("--dtype", default="float32", help="model.dtype (%(default)s)")
    p.add_argument("--max-length", type=int, default=256, help="WikiText window (%(default)s)")
    p.add_argument("--limit", type=int, default=None, help="first N test documents (all: None)")
    p.add_argument("--mmlu-samples", type=int, default=2000, help="seeded sample; 0 = all 14,042")
    p.add_argument("--mmlu-shots", default="0,5", help="few-shot counts (%(default)s)")
    p.add_argument("--mmlu-length", type=int, default=2048, help="MMLU prompt tokens (5-shot)")
    p.add_argument("--targets", default="0.1,0.2,0.3,0.4,0.5")
    p.add_argument("--search-generations", type=int, default=40)
    p.add_argument("--search-start", default="ends_dense", help="search.start (%(default)s)")
    p.add_argument("--profile", default=None, help="a searched profile.json (no `search` stage)")
    p.add_argument(
        "--static-from", default=None, help="another --out whose static arms this run's evals reuse"
    )
    p.add_argument("--train-steps", type=int, default=30000, help="train.total_steps")
    p.add_argument("--mmlu-targets", default="0.3,0.5", help="MMLU eval targets (%(default)s)")
    p.add_argument(
        "--stages",
        default="importance,dense,mmlu,search,eval-static",
        help=f"any of {','.join(STAGES)} (%(default)s)",
    )
    p.add_argument("--batch-size", type=int, default=16, help="env.batch_size (%(default)s)")
    p.add_argument("--set", action="append", default=[], help="more section.key=value for all")
    return p.parse_args(argv)


class Runner:
    """Runs main.py commands with the shared settings and keeps their JSON results."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out = Path(args.out).resolve()
        self.out.mkdir(parents=True, exist_ok=True)
        self.file = self.out / "results.json"
        self.results: dict[str, Any] = (
            json.loads(self.file.read_text()) if self.file.is_file() else {}
        )
        sets = [
            f"model.device={args.device}",
            f"model.dtype={args.dtype}",
            f"train.runs_dir={self.out / 'runs'}",
            f"env.batch_size={args.batch_size}",
            *args.set,
        ]
        if args.gguf:
            sets += [f"model.llm={Path(args.gguf).resolve()}", "model.llm_sha256=null",
                     "model.llm_bytes=null"]  # fmt: skip
        self.base = ["--config", args.preset] + [x for s in sets for x in ("--set", s)]
        self.cfg = load_config(args.preset, sets)

    def main(self, key: str, command: str, *argv: str) -> dict[str, Any]:
        """`main.py command` once per key (cached in results.json); its final JSON line."""
        if key in self.results:
            return self.results[key]
        cmd = [sys.executable, str(ROOT / "main.py"), command, *self.base, *argv]
        log = self.out / "logs" / f"{key}.log"
        log.parent.mkdir(exist_ok=True)
        print(f"[{time.strftime('%H:%M:%S')}] {key}: {' '.join(cmd[2:])} > {log}", flush=True)
        start = time.perf_counter()
        with log.open("w") as f:
            code = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT).returncode
        text = log.read_text(errors="replace")
        if code != 0:
            sys.stderr.write(text[-4000:])
            raise SystemExit(f"{key}: main.py {command} exited {code} (log: {log})")
        lines = [x for x in re.split(r"[\r\n]", text) if x.startswith("{")]  # tqdm writes \r
        result = json.loads(lines[-1]) if lines else {}
        result["wall_seconds"] = round(time.perf_counter() - start, 1)
        self.results[key] = result
        tmp = self.file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.results, indent=2) + "\n")
        tmp.replace(self.file)
        return result


def wikitext(runner: Runner, key: str, allocation: str, *extra: str) -> dict[str, Any]:
    limit = ["--limit", str(runner.args.limit)] if runner.args.limit else []
    length = f"env.max_length={runner.args.max_length}"
    return runner.main(key, "score", allocation, *limit, "--set", length, *extra)


def search(runner: Runner, key: str, start: str, generations: int) -> dict[str, Any]:
    """`main.py search` at every target from `start` (`generations` 0: the start itself)."""
    return runner.main(
        key, "search",
        "--set", f"search.targets=[{runner.args.targets}]",
        "--set", f"search.start={start}", "--set", f"search.generations={generations}",
        "--set", "search.offspring=16", "--set", "search.survivors=2",
        "--set", "search.subset=16", "--set", "search.calibration=128",
        "--set", f"env.max_length={runner.args.max_length}",
    )  # fmt: skip


def mmlu_size(args: argparse.Namespace) -> str:
    return "all" if args.mmlu_samples == 0 else str(args.mmlu_samples)


def mmlu_sets(args: argparse.Namespace, shots: int) -> list[str]:
    """--set arguments of an MMLU test run with `shots` examples (the seeded sample or all)."""
    if args.mmlu is None:
        raise SystemExit("--mmlu FOLDER is needed for the MMLU stages")
    sample = "null" if args.mmlu_samples == 0 else args.mmlu_samples
    sets = ["data.dataset=mmlu", f"data.mmlu_path={Path(args.mmlu).resolve()}",
            f"env.max_length={args.mmlu_length}", f"env.mmlu_num_fewshot={shots}",
            "data.eval_split=test", f"data.max_samples={sample}", "eval.limit=null"]  # fmt: skip
    return [x for s in sets for x in ("--set", s)]


def importance_file(runner: Runner) -> Path:
    cfg = runner.cfg
    if cfg.env.importance_file:
        return resolve_path(cfg.env.importance_file)
    raise SystemExit("the preset must name env.importance_file")


def table(runner: Runner) -> str:
    """Dense rows, then per eval (WikiText-2, MMLU) one row per arm over the targets."""
    r = runner.results
    lines = []
    dense = r.get("dense", {}).get("word_perplexity")
    if dense is not None:
        lines.append(
            f"dense WikiText-2 test word perplexity ({runner.args.max_length}): {dense:.3f}"
        )
    for shots in range(6):
        row = r.get(f"mmlu_{shots}shot_{mmlu_size(runner.args)}", {})
        acc = row.get("acc")
        if acc is not None:
            n = row.get("n", "?")
            lines.append(f"dense MMLU {shots}-shot accuracy: {acc:.4f} ({n} questions)")
    size = mmlu_size(runner.args)
    evals = {"WikiText-2": ("eval_static", "eval"),
             f"MMLU ({size})": (f"mmlu_static_{size}", f"mmlu_eval_{size}")}  # fmt: skip
    for name, keys in evals.items():
        cells: dict[str, dict[float, float]] = {}  # arm -> target -> headline metric
        for entry in [e for k in keys for e in r.get(k, {}).get("sweep", [])]:
            for arm, value in entry.items():
                if arm != "target":
                    cells.setdefault(arm, {})[entry["target"]] = value
        targets = sorted({t for row in cells.values() for t in row})
        if not targets:
            continue
        lines += ["", f"| {name} | " + " | ".join(map(str, targets)) + " |"]
        lines.append("|---" * (1 + len(targets)) + "|")
        for arm, row in cells.items():
            lines.append(f"| {arm} | " + " | ".join(str(row.get(t, "")) for t in targets) + " |")
    return "\n".join(lines)


def run(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    runner = Runner(args)
    stages = set(args.stages.split(","))
    if unknown := stages - set(STAGES):
        raise SystemExit(f"unknown stages {sorted(unknown)}; choose from {','.join(STAGES)}")
    if "importance" in stages and not importance_file(runner).is_file():
        runner.main("importance", "importance")
        # `importance` names its file after the GGUF (`--gguf` may be named otherwise): put it
        # where the preset looks
        (record,) = sorted((runner.out / "runs").glob("importance_*/importance.json"))[-1:]
        written = Path(json.loads(record.read_text())["file"])
        if written != importance_file(runner):
            importance_file(runner).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(written, importance_file(runner))
    if "dense" in stages:
        wikitext(runner, "dense", "dense")
    if "mmlu" in stages:
        for shots in [int(n) for n in args.mmlu_shots.split(",")]:
            sets = mmlu_sets(args, shots)
            runner.main(f"mmlu_{shots}shot_{mmlu_size(args)}", "score", "dense", *sets)
    profile = Path(args.profile).resolve() if args.profile else None
    if profile is None and ("search" in stages or "search" in runner.results):
        result = search(runner, "search", args.search_start, args.search_generations)
        profile = Path(result["run"]) / "profile.json"
    searched = ["--profile", str(profile)] if profile else []
    wiki = [*(["--limit", str(args.limit)] if args.limit else ["--set", "eval.limit=null"]),
            "--set", f"eval.targets=[{args.targets}]", "--set", "eval.per_window=false",
            "--set", f"env.max_length={args.max_length}"]  # fmt: skip
    mmlu = ["--set", f"eval.targets=[{args.mmlu_targets}]", "--set", "eval.per_window=false"]
    size = mmlu_size(args)
    static_key = {"eval": "eval_static", "mmlu-eval": f"mmlu_static_{size}"}
    if args.static_from:  # static stages run in parallel elsewhere: take what they finished
        done = json.loads((Path(args.static_from) / "results.json").read_text())
        runner.results |= {k: done[k] for k in static_key.values() if k in done}
    if "eval-static" in stages:
        runner.main("eval_static", "eval", "--agent", "none", "--neurons", "both", *searched, *wiki)
    if "mmlu-static" in stages:
        runner.main(static_key["mmlu-eval"], "eval", "--agent", "none", "--neurons", "both",
                    *searched, *mmlu, *mmlu_sets(args, 0))  # fmt: skip
    agent = None
    if "train" in stages or "train" in runner.results:
        if profile is None:
            profile_run = search(runner, "reference", "ends_dense", 0)["run"]
            reference = Path(profile_run) / "profile.json"
        else:
            reference = profile
        targets = [float(t) for t in args.targets.split(",")]
        result = runner.main(
            "train", "train",
            "--set", f"env.reference={reference}",
            "--set", f"train.total_steps={args.train_steps}", "--set", "train.n_envs=32",
            "--set", "sac.gradient_steps=8", "--set", "train.checkpoint_every=2500",
            "--set", "sac.learning_starts=1000", "--set", "sac.buffer_size=100000",
            "--set", "sac.batch_size=256", "--set", "sac.net_arch=[256,256]",
            "--set", f"env.target_sparsity=[{targets[0]},{targets[-1]}]",
            "--set", "env.target_step=0.1", "--set", "train.eval_after=false",
            "--set", "data.max_samples=null", "--set", f"env.max_length={args.max_length}",
        )  # fmt: skip
        agent = Path(result["run"]) / "agent_final.zip"
    for stage, key in (("eval", "eval"), ("mmlu-eval", f"mmlu_eval_{size}")):
        if stage in stages and agent is not None:
            sets = wiki if stage == "eval" else [*mmlu, *mmlu_sets(args, 0)]
            policy_only = static_key[stage] in runner.results
            runner.main(key, "eval", "--agent", str(agent), "--neurons", "both", *searched,
                        *sets, "--set", f"eval.static={not policy_only}")  # fmt: skip
    text = table(runner)
    (runner.out / "table.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(run())
