"""Check that lm-evaluation-harness on an exported pruned model gives `score`'s number.

`main.py export ALLOCATION` writes the pruned model folder (a model of the source architecture,
loaded with `trust_remote_code`); `main.py score ALLOCATION` scores the same allocation on the
source model; lm-eval's own `wikitext` task (`bench/lm_eval_agreement.lm_eval_wikitext`, only the
dataset pointed at the local pages) scores the export. Same documents, same window length.
Exits 1 if the word perplexities differ by more than --tolerance (relative).

    python3 bench/lm_eval_export_agreement.py --preset configs/qwen2.5-coder-1.5b.yml \\
        --allocation uniform:0.3 --limit 2 --max-length 256
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.lm_eval_agreement import DEFAULT_DATA, lm_eval_wikitext, load_model  # noqa: E402
from data.sources import WikiTextDataSource  # noqa: E402


def main_json(*argv: str) -> dict:
    """`main.py argv`, its last stdout line (JSON)."""
    proc = subprocess.run(
        [sys.executable, str(REPO / "main.py"), *argv], cwd=REPO, capture_output=True, text=True
    )
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-3000:])
        raise SystemExit(f"main.py {argv[0]} exited {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", required=True)
    p.add_argument("--allocation", default="uniform:0.3")
    p.add_argument("--limit", type=int, default=2, help="first N WikiText-2 test documents")
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--tolerance", type=float, default=1e-3)
    args = p.parse_args(argv)
    sets = ["--set", f"env.max_length={args.max_length}"]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "model"
        start = time.perf_counter()
        export = main_json("export", "--config", args.preset, args.allocation, "--output",
                           str(folder), *sets)  # fmt: skip
        ours = main_json("score", "--config", args.preset, args.allocation, "--limit",
                         str(args.limit), *sets)  # fmt: skip
        model, tokenizer = load_model(folder)
        docs = WikiTextDataSource(DEFAULT_DATA).load("test")[: args.limit]
        theirs = lm_eval_wikitext(model, tokenizer, docs, args.max_length, args.batch_size)
    a, b = ours["word_perplexity"], theirs["word_perplexity"]
    rel = abs(a - b) / abs(a)
    print(f"{args.preset} {args.allocation}: export sparsity {export['mlp_sparsity']:.6f}, "
          f"score sparsity {ours['sparsity']:.6f}; {args.limit} documents, {args.max_length}-token "
          f"windows, {time.perf_counter() - start:.0f} s")  # fmt: skip
    print(f"  word_perplexity  score {a:.6f}  lm-eval on the export {b:.6f}  rel {rel:.2e}")
    ok = rel <= args.tolerance and abs(export["mlp_sparsity"] - ours["sparsity"]) < 1e-12
    print(("OK" if ok else "FAIL") + f": tolerance {args.tolerance}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(run())
