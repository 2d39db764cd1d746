"""Checks shared by the model config dataclasses: clear errors before a network is built."""

from __future__ import annotations

from typing import Any


def require_sizes(config: Any, names: tuple[str, ...]) -> None:
    """Every field in `names` is an integer size of at least 1."""
    for name in names:
        if getattr(config, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(config, name)}")


def require_dropout(value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {value}")
