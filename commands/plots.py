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


def plot_sweep(result: dict[str, Any], path: Path) -> None:
    """Main metric vs MLP sparsity, one curve per arm, the dense model as a line."""
    key = "acc" if result["task"] == "mmlu" else "word_perplexity"
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    arms = sorted({arm for s in result["sweep"] for arm in s["arms"]})
    for arm in arms:
        points = [s["arms"][arm] for s in result["sweep"] if arm in s["arms"]]
        xs, ys = [p["sparsity"] for p in points], [p[key] for p in points]
        ax.plot(xs, ys, marker="o", label=arm.replace("_", " "))
    ax.axhline(result["dense"][key], color="black", lw=0.8, ls="--", label="dense")
    if key != "acc":
        ax.set_yscale("log")
    ax.set(xlabel="MLP sparsity", ylabel=key.replace("_", " "), title="Matched-sparsity sweep")
    ax.legend(fontsize=8)
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
