"""PNG figures of eval and search runs (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def plot_profile(fractions: np.ndarray, path: Path) -> None:
    """Mean prune fraction per layer with its spread over items; fractions [n_items, n_layers]."""
    layers = np.arange(fractions.shape[1])
    mean, std = fractions.mean(0), fractions.std(0)
    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.plot(layers, mean, marker="o", label="policy mean")
    ax.fill_between(layers, mean - std, mean + std, alpha=0.3, label="±1 std over items")
    ax.set(xlabel="decoder layer", ylabel="prune fraction", ylim=(0, 1))
    ax.set_title("Learned per-layer MLP prune fractions")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def relative(value: float, ref: float, key: str) -> float:
    """An arm against a reference arm: a ratio of perplexities, a difference of accuracies."""
    return value - ref if key == "acc" else value / ref


def plot_sweep(result: dict[str, Any], path: Path) -> None:
    """Main metric vs MLP sparsity, one colour per arm (dashed: context neurons), the dense model
    as a line; right: each arm but uniform relative to first/last-2-dense with the same neurons
    (the arms a user would choose between are within a few percent of each other)."""
    key = "acc" if result["task"] == "mmlu" else "word_perplexity"
    fig, (ax, rel) = plt.subplots(1, 2, figsize=(12, 4.8))
    arms = sorted({arm for s in result["sweep"] for arm in s["arms"]})
    bases = sorted({arm.removesuffix("_context") for arm in arms})
    colors = {base: f"C{i % 10}" for i, base in enumerate(bases)}
    for arm in arms:
        base = arm.removesuffix("_context")
        style = {"color": colors[base], "marker": "o", "ls": "--" if arm != base else "-"}
        rows = [s["arms"] for s in result["sweep"] if arm in s["arms"]]
        xs = [r[arm]["sparsity"] for r in rows]
        ax.plot(xs, [r[arm][key] for r in rows], label=arm.replace("_", " "), **style)
        ref = arm.replace(base, "ends_dense")
        if base != "uniform" and all(ref in r for r in rows):
            ys = [relative(r[arm][key], r[ref][key], key) for r in rows]
            rel.plot(xs, ys, **style)
    ax.axhline(result["dense"][key], color="black", lw=0.8, ls=":", label="dense")
    if key != "acc":
        ax.set_yscale("log")
    ax.set(xlabel="MLP sparsity", ylabel=key.replace("_", " "), title="Matched-sparsity sweep")
    rel.axhline(relative(1.0, 1.0, key), color="black", lw=0.8)
    how = "-" if key == "acc" else "/"
    rel.set(xlabel="MLP sparsity", ylabel=f"{key.replace('_', ' ')} {how} first-last-2-dense's")
    rel.set_title("Relative to first/last 2 dense (dashed: context neurons)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_fitness(profiles: list[dict], path: Path) -> None:
    """Parent's full-set fitness vs evaluations, one curve per target."""
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for p in profiles:
        xs = [row["evaluations"] for row in p["history"]]
        ys = [row["fitness"] for row in p["history"]]
        ax.step(xs, ys, where="post", label=f"target {p['target']:.2f}")
    ax.set(xlabel="candidate evaluations", ylabel="calibration NLL (summed)", yscale="log")
    ax.set_title("Evolutionary search: parent fitness")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
