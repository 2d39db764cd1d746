"""The on-disk contract of an ingested dataset, and its loaders.

``data/<name>/`` holds, for a classification dataset, ``train.parquet``, ``val.parquet``
and ``test.parquet`` (columns ``text`` and ``label``, both strings, fixed row order), and
for a generation corpus ``train.txt`` and ``val.txt`` (contiguous blocks of one text).
Both have a ``manifest.json`` (source, seed, counts, schema; no timestamps, so the same
source always gives byte-identical files and therefore the same DVC hash).

A streamed ingest (a large source, see :mod:`components.data.streaming`) writes each
classification split as Parquet shards instead, ``<split>/part-00000.parquet`` and on,
same columns; its manifest says ``"layout": "shards"`` and lists every shard with its row
count under ``"shards"``. :func:`iter_split_batches` reads either layout a batch at a time.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

SPLITS = ("train", "val", "test")
CORPUS_SPLITS = ("train", "val")
MANIFEST_FILE = "manifest.json"
SHARDS_LAYOUT = "shards"


@dataclass(frozen=True)
class ClassificationData:
    """Texts and string labels per split; `labels` is the sorted label set of the dataset."""

    train_texts: list[str]
    train_labels: list[str]
    val_texts: list[str]
    val_labels: list[str]
    test_texts: list[str]
    test_labels: list[str]
    labels: list[str]


@dataclass(frozen=True)
class CorpusData:
    """One text per split for language modelling."""

    train_text: str
    val_text: str


def read_dataset_manifest(folder: str | Path) -> dict:
    path = Path(folder) / MANIFEST_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{folder} holds no ingested dataset ({MANIFEST_FILE} missing): run `maas ingest`")
    return json.loads(path.read_text())


def split_files(folder: str | Path, split: str, manifest: dict | None = None) -> list[Path]:
    """The Parquet files holding one split of a classification dataset, in row order."""
    folder = Path(folder)
    manifest = read_dataset_manifest(folder) if manifest is None else manifest
    if manifest.get("task") != "classification":
        raise ValueError(f"{folder} is a {manifest.get('task')} dataset, not classification")
    if split not in SPLITS:
        raise ValueError(f"unknown split '{split}' (expected one of {list(SPLITS)})")
    if manifest.get("layout") == SHARDS_LAYOUT:
        return [folder / shard["file"] for shard in manifest["shards"][split]]
    return [folder / f"{split}.parquet"]


def iter_split_batches(folder: str | Path, split: str, batch_rows: int = 10_000) -> Iterator[pd.DataFrame]:
    """``text``/``label`` frames of at most ``batch_rows`` rows, in the split's row order.

    Works for both layouts; only one batch is in memory at a time, so a training loop or
    a vectoriser can stream a split of any size. A batch never spans two shards.
    """
    import pyarrow.parquet as pq

    if batch_rows < 1:
        raise ValueError(f"batch_rows must be at least 1, got {batch_rows}")
    for path in split_files(folder, split):
        with pq.ParquetFile(path) as shard:
            for batch in shard.iter_batches(batch_size=batch_rows, columns=["text", "label"]):
                yield batch.to_pandas()


def load_classification_data(folder: str | Path) -> ClassificationData:
    import pandas as pd

    folder = Path(folder)
    manifest = read_dataset_manifest(folder)
    if manifest.get("task") != "classification":
        raise ValueError(f"{folder} is a {manifest.get('task')} dataset, not classification")
    frames = {
        split: pd.concat([pd.read_parquet(path) for path in split_files(folder, split, manifest)], ignore_index=True)
        for split in SPLITS
    }
    columns = {}
    for split, frame in frames.items():
        columns[f"{split}_texts"] = frame["text"].astype(str).tolist()
        columns[f"{split}_labels"] = frame["label"].astype(str).tolist()
    labels = sorted(set(columns["train_labels"]) | set(columns["val_labels"]) | set(columns["test_labels"]))
    return ClassificationData(**columns, labels=labels)


def load_corpus(folder: str | Path) -> CorpusData:
    folder = Path(folder)
    manifest = read_dataset_manifest(folder)
    if manifest.get("task") != "generation":
        raise ValueError(f"{folder} is a {manifest.get('task')} dataset, not a generation corpus")
    return CorpusData(
        train_text=(folder / "train.txt").read_text(encoding="utf-8"),
        val_text=(folder / "val.txt").read_text(encoding="utf-8"),
    )
