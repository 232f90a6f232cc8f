"""The run's figures: BitOPs against accuracy, and the per-layer bits of each searched policy."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from mpqfx.io import atomic_open  # noqa: E402

if TYPE_CHECKING:
    from mpqfx.compress.evaluation import PolicyResult
    from mpqfx.supernet import Supernet


def _save(fig, path: Path) -> None:
    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)


def pareto_plot(results: list["PolicyResult"], path: Path, title: str) -> None:
    """Top-1 accuracy against GBitOPs: uniform policies as a line, searched ones as points, float as a line."""
    fig, ax = plt.subplots(figsize=(6, 4))
    uniform = sorted((r for r in results if r.kind == "uniform"), key=lambda r: r.bitops)
    searched = [r for r in results if r.kind == "searched"]
    if uniform:
        ax.plot([r.bitops / 1e9 for r in uniform], [100 * r.accuracy for r in uniform], "o--", color="tab:gray",
                label="uniform")
        for r in uniform:
            ax.annotate(r.name.split()[-1], (r.bitops / 1e9, 100 * r.accuracy), textcoords="offset points",
                        xytext=(4, -10), fontsize=8, color="tab:gray")
    if searched:
        ax.plot([r.bitops / 1e9 for r in searched], [100 * r.accuracy for r in searched], "*", markersize=12,
                color="tab:red", label="searched (mixed precision)")
        for r in searched:
            ax.annotate(r.target, (r.bitops / 1e9, 100 * r.accuracy), textcoords="offset points", xytext=(5, 4), fontsize=8)
    for r in results:
        if r.kind == "float":
            ax.axhline(100 * r.accuracy, color="tab:blue", linestyle=":", label=f"float ({100 * r.accuracy:.1f}%)")
    ax.set_xlabel("GBitOPs")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)


def bits_plot(net: "Supernet", results: list["PolicyResult"], path: Path, title: str) -> None:
    """Weight and activation bits per layer (execution order) of each searched policy."""
    searched = [r for r in results if r.kind == "searched"]
    rows = max(len(searched), 1)
    fig, axes = plt.subplots(rows, 1, figsize=(max(6, 0.18 * len(net.layers) + 2), 2.2 * rows), squeeze=False)
    index = range(len(net.layers))
    for ax, r in zip(axes[:, 0], searched):
        w = [r.policy[l.name].w for l in net.layers]
        a = [r.policy[l.name].a for l in net.layers]
        ax.bar([i - 0.2 for i in index], w, width=0.4, label="weights", color="tab:blue")
        ax.bar([i + 0.2 for i in index], a, width=0.4, label="activations", color="tab:orange")
        ax.set_ylabel("bits")
        ax.set_title(f"{r.name}: {r.bitops / 1e9:.3g} GBitOPs, top-1 {100 * r.accuracy:.1f}%", fontsize=9)
        ax.set_yticks(sorted({b for b in w + a if b}))
        ax.set_xlim(-1, len(net.layers))
    if searched:
        axes[0, 0].legend(fontsize=8, ncol=2)
        axes[-1, 0].set_xlabel("layer (execution order)")
    fig.suptitle(title, fontsize=10)
    _save(fig, path)
