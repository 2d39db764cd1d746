"""The selection-probabilities artifact of a candidate run: written at training, read by ensembles.

Each classification candidate keeps the probabilities it was chosen by (out-of-fold over
train+val under CV, else the validation split's) with the true label of each row, so an
ensemble can be fitted on them later without retraining or touching the test split.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

from flows import tracking
from flows.settings import Settings

SELECTION_ARTIFACTS = "selection"


def save_selection(settings: Settings, run_id: str, folder: Path, labels: list[str], proba, y: list[str]) -> None:
    """Log `proba` (rows x classes, columns in `labels` order) and the true labels `y` of its rows."""
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "proba.npy", np.asarray(proba, dtype=np.float32))
    (folder / "labels.json").write_text(json.dumps({"labels": labels, "y": list(y)}))
    tracking.log_artifact_folder(settings, run_id, folder, SELECTION_ARTIFACTS)


def selection_probabilities(settings: Settings, run_id: str) -> tuple[np.ndarray, list[str], list[str]]:
    """A candidate run's selection probabilities (rows x classes, float32), the class names of
    its columns and the true label of each row (see `save_selection`)."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = tracking.download_run_artifacts(settings, run_id, SELECTION_ARTIFACTS, tmp)
        proba = np.load(folder / "proba.npy")
        document = json.loads((folder / "labels.json").read_text())
    return proba, document["labels"], document["y"]
