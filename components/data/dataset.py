"""The on-disk contract of an ingested dataset, and its loaders.

``data/<name>/`` holds, for a classification dataset, ``train.parquet``, ``val.parquet``
and ``test.parquet`` (columns ``text`` and ``label``, both strings, fixed row order), and
for a generation corpus ``train.txt`` and ``val.txt`` (contiguous blocks of one text).
Both have a ``manifest.json`` (source, seed, counts, schema; no timestamps, so the same
source always gives byte-identical files and therefore the same DVC hash).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

SPLITS = ("train", "val", "test")
CORPUS_SPLITS = ("train", "val")
MANIFEST_FILE = "manifest.json"


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


def load_classification_data(folder: str | Path) -> ClassificationData:
    import pandas as pd

    folder = Path(folder)
    manifest = read_dataset_manifest(folder)
    if manifest.get("task") != "classification":
        raise ValueError(f"{folder} is a {manifest.get('task')} dataset, not classification")
    frames = {split: pd.read_parquet(folder / f"{split}.parquet") for split in SPLITS}
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
