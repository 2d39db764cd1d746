"""Choosing on small data: stratified k-fold CV over train+val, out-of-fold probabilities, the refit.

The rows CV sees are train then val in their split order (fixed by the data version), so the
out-of-fold probabilities of every candidate line up row for row. The test split is emptied
in every dataset handed to a trainer during selection, so nothing chosen here can have seen it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from components.config import ModelSpec, SelectionSpec
from components.data.dataset import ClassificationData
from components.evaluation.classification import classification_metrics
from components.predictor import ClassifierPredictor

# The scalar metrics a selection score is made of (and that the leaderboard shows).
SELECTION_METRICS = ("accuracy", "macro_f1", "log_loss")

TrainFn = Callable[[ClassificationData, int], ClassifierPredictor]  # (data of fold i, i) -> predictor


def uses_cv(selection: SelectionSpec, data: Any) -> bool:
    """CV for a classification dataset with fewer training rows than `cv_below_rows`."""
    return isinstance(data, ClassificationData) and len(data.train_texts) < selection.cv_below_rows


def method_name(selection: SelectionSpec, data: Any) -> str:
    """How scores were made ("cv5" or "holdout"): promotion compares only scores made the same way."""
    return f"cv{selection.folds}" if uses_cv(selection, data) else "holdout"


def pooled(data: ClassificationData) -> tuple[list[str], list[str]]:
    """Train then val, in split order: the rows CV folds and the out-of-fold rows."""
    return list(data.train_texts) + list(data.val_texts), list(data.train_labels) + list(data.val_labels)


def without_test(data: ClassificationData) -> ClassificationData:
    """The data a trainer may see while choosing: no test rows at all."""
    return replace(data, test_texts=[], test_labels=[])


def refit_data(data: ClassificationData) -> ClassificationData:
    """Train on train+val (no validation split left), test kept for the one final report."""
    texts, labels = pooled(data)
    return replace(data, train_texts=texts, train_labels=labels, val_texts=[], val_labels=[])


def fold_indices(labels: list[str], selection: SelectionSpec) -> list[tuple[np.ndarray, np.ndarray]]:
    """Seeded stratified folds (scikit-learn's StratifiedKFold) as (train rows, held-out rows)."""
    from sklearn.model_selection import StratifiedKFold

    counts = {label: labels.count(label) for label in sorted(set(labels))}
    rare = {label: n for label, n in counts.items() if n < selection.folds}
    if rare:
        raise ValueError(f"selection.folds={selection.folds}: every class needs at least that many rows in "
                         f"train+val, but {rare} have fewer; lower `selection.folds` or add rows")
    folds = StratifiedKFold(n_splits=selection.folds, shuffle=True, random_state=selection.seed)
    return list(folds.split(np.zeros(len(labels)), labels))


def fold_data(data: ClassificationData, train_rows: np.ndarray, held_rows: np.ndarray) -> ClassificationData:
    """One fold: train on `train_rows` of train+val, validate on `held_rows`, no test."""
    texts, labels = pooled(data)
    return ClassificationData(
        train_texts=[texts[i] for i in train_rows], train_labels=[labels[i] for i in train_rows],
        val_texts=[texts[i] for i in held_rows], val_labels=[labels[i] for i in held_rows],
        test_texts=[], test_labels=[], labels=list(data.labels),
    )


@dataclass
class CVResult:
    """Fold scores, out-of-fold probabilities (rows of train+val, columns `labels`) and best steps."""

    labels: list[str]
    y: list[str]
    proba: np.ndarray  # (rows, classes) float32
    fold_metrics: list[dict[str, float]] = field(default_factory=list)
    best_steps: list[int | None] = field(default_factory=list)
    fold_train_rows: int = 0

    def mean(self, metric: str) -> float:
        return float(np.mean([m[metric] for m in self.fold_metrics]))

    def std(self, metric: str) -> float:
        return float(np.std([m[metric] for m in self.fold_metrics]))

    def summary(self) -> dict[str, float]:
        """The fold means: the scores a CV-chosen candidate is compared by."""
        return {m: self.mean(m) for m in SELECTION_METRICS}


def columns_in_order(predictor: ClassifierPredictor, proba: np.ndarray, labels: list[str]) -> np.ndarray:
    """`proba` with its columns reordered from the predictor's label order to `labels`."""
    index = {label: i for i, label in enumerate(predictor.labels)}
    return np.asarray(proba)[:, [index[label] for label in labels]].astype(np.float32)


def cross_validate(train: TrainFn, data: ClassificationData, selection: SelectionSpec,
                   on_fold: Callable[[int, CVResult], None] | None = None) -> CVResult:
    """Train one model per fold and score it on its held-out rows; `on_fold(i, so_far)` after each."""
    texts, labels = pooled(data)
    folds = fold_indices(labels, selection)
    result = CVResult(labels=list(data.labels), y=labels,
                      proba=np.zeros((len(texts), len(data.labels)), dtype=np.float32),
                      fold_train_rows=len(folds[0][0]))
    for i, (train_rows, held_rows) in enumerate(folds):
        predictor = train(fold_data(data, train_rows, held_rows), i)
        proba = columns_in_order(predictor, predictor.predict_proba([texts[j] for j in held_rows]), result.labels)
        result.proba[held_rows] = proba
        scores = classification_metrics([labels[j] for j in held_rows], proba, result.labels)
        result.fold_metrics.append({m: float(scores[m]) for m in SELECTION_METRICS})
        result.best_steps.append(predictor.metadata.get("best_step"))
        if on_fold is not None:
            on_fold(i, result)
    return result


def refit_spec(spec: ModelSpec, cv: CVResult, refit_rows: int) -> ModelSpec:
    """The spec that trains on train+val without a validation split.

    A torch model trains for as many epochs as its folds were best at on average (their best
    step, scaled from a fold's rows to train+val's), with no early stopping; others are unchanged.
    """
    steps = [s for s in cv.best_steps if s is not None]
    if not steps:
        return spec
    scaled = math.ceil(float(np.mean(steps)) * refit_rows / max(1, cv.fold_train_rows))
    training = spec.training.model_copy(update={"max_steps": max(1, scaled), "min_steps": None,
                                                "early_stopping_patience": None})
    return spec.model_copy(update={"training": training})
