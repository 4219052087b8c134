"""PNG figures of an eval run (matplotlib, no display needed)."""

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


def plot_sparsity_vs_metric(result: dict[str, Any], path: Path) -> None:
    """Per-item sparsity vs metric for the policy and the baselines."""
    metric = "accuracy" if result["task"] == "mmlu" else "word perplexity"
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for arm, marker in (("policy", "o"), ("dense", "s"), ("uniform_item", "^")):
        xs = [it[f"{arm}_sparsity"] for it in result["items"]]
        ys = [it[f"{arm}_metric"] for it in result["items"]]
        ax.scatter(xs, ys, marker=marker, alpha=0.7, label=arm.replace("_", " "))
    if result["task"] != "mmlu":
        ax.set_yscale("log")
    ax.set(xlabel="MLP sparsity", ylabel=metric, title="Per-item sparsity vs quality")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
