"""Short table of a mixed-task `eval.json`: per target and neuron choice, every arm's overall
figure (as the % change of the geometric mean of metric / dense over kinds) and its per-kind
numbers, and how much of the per-input oracle's gain the policy captures; `--plot PNG` also
draws the overall figure of every arm against the target (one panel per neuron choice).

    python3 bench/mixed_table.py runs/eval_<time>/eval.json [more eval.json] [--plot sweep.png]
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path


def kind_cell(kind: str, row: dict) -> str:
    if kind == "mmlu":
        return f"{100 * row['acc']:.1f}%"
    return f"{row['word_perplexity']:.2f} / {row['bits_per_byte']:.3f}"


def table(result: dict) -> list[str]:
    kinds = list(result["dense"])
    names = [f"{k} (acc)" if k == "mmlu" else f"{k} (word ppl / bpb)" for k in kinds]
    lines = ["| target | neurons | arm | sparsity | overall | " + " | ".join(names) + " |"]
    lines.append("|---" * (4 + len(kinds)) + "|---|")
    dense = " | ".join(kind_cell(k, result["dense"][k]) for k in kinds)
    lines.append(f"| | | dense | 0 | 0 | {dense} |")
    for entry in result["sweep"]:
        for arm, row in entry["arms"].items():
            cells = " | ".join(kind_cell(k, row["kinds"][k]) for k in kinds)
            overall = 100 * (math.exp(row["overall"]) - 1)
            lines.append(f"| {entry['target']} | {entry['neurons']} | {arm} | "
                         f"{row['sparsity']:.4f} | {overall:+.2f}% | {cells} |")  # fmt: skip
        gains = entry["gains"]
        captured = ", ".join(f"{a} {c:.2f}" for a, c in gains["captured"].items() if c is not None)
        lines.append(
            f"| {entry['target']} | {entry['neurons']} | best static: {gains['best_static']}, "
            f"oracle gain {100 * gains['oracle_gain']:.2f} log-%, captured: {captured or '-'} |"
        )
    return lines


def plot(result: dict, path: Path) -> None:
    """Overall figure (% above dense) vs the matched mean sparsity, one line per arm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = list(dict.fromkeys(e["neurons"] for e in result["sweep"]))
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), squeeze=False)
    for ax, neurons in zip(axes[0], panels, strict=True):
        lines: dict[str, list[tuple[float, float]]] = {}
        for entry in sorted(result["sweep"], key=lambda e: e["matched"]):
            if entry["neurons"] == neurons:
                for arm, row in entry["arms"].items():
                    point = (entry["matched"], 100 * (math.exp(row["overall"]) - 1))
                    lines.setdefault(arm.removesuffix("_context"), []).append(point)
        for arm, points in lines.items():
            x, y = zip(*points, strict=True)
            ax.plot(x, y, "--" if arm == "oracle" else "-", marker="o", label=arm)
        ax.set(xlabel="mean MLP sparsity (token-weighted)", ylabel="overall figure, % above dense",
               title=f"mixed task, {neurons} neurons")  # fmt: skip
        ax.set_yscale("symlog", linthresh=10)  # an oracle may be below dense at low sparsity
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str]) -> int:
    """Several eval.json of one model and items (e.g. one target per job) make one table."""
    png = None
    if "--plot" in argv:
        at = argv.index("--plot")
        png = Path(argv[at + 1]) if at + 1 < len(argv) else None
        argv = argv[:at] + argv[at + 2 :] if png is not None else []
    if not argv or not all(Path(a).is_file() for a in argv):
        print("usage: python3 bench/mixed_table.py runs/eval_<time>/eval.json [...] [--plot PNG]",
              file=sys.stderr)  # fmt: skip
        return 2
    results = [json.loads(Path(a).read_text()) for a in argv]
    if any(r["dense"] != results[0]["dense"] for r in results):
        print("mixed_table: these runs have different dense rows (another model or other items)",
              file=sys.stderr)  # fmt: skip
        return 2
    result = results[0] | {"sweep": [entry for r in results for entry in r["sweep"]]}
    print("\n".join(table(result)))
    if png is not None:
        plot(result, png)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
