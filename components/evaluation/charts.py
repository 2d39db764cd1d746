"""Comparison charts of candidates (quality against cost)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def plot_metric_vs_latency(rows: Sequence[dict], metric: str, path: Path, title: str) -> Path:
    """Scatter of a validation metric against p50 latency per text, one labelled point per candidate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for row in rows:
        x, y = row.get("latency_ms_p50"), row["val"].get(metric)
        if x is None or y is None:
            continue
        ax.scatter([x], [y])
        ax.annotate(row["candidate"], (x, y), textcoords="offset points", xytext=(4, 4))
    ax.set_xscale("log")
    ax.set_xlabel("latency per text, p50 (ms, log scale)")
    ax.set_ylabel(f"validation {metric}")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
