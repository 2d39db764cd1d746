"""The narrow interface through which training reports progress.

Components never import a tracker: they call ``on_metrics(metrics, step)`` and the flow
decides where the numbers go (MLflow, a progress bar, nowhere).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

MetricsCallback = Callable[[Mapping[str, float], int | None], None]


def no_metrics(metrics: Mapping[str, float], step: int | None) -> None:
    """The default callback: drop the numbers."""
