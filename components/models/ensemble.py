"""The ensemble candidate: soft voting over trained classifiers, one bundle, and how its weights are fitted.

Prediction is a weighted mean of the members' probabilities, their columns aligned by label
name. The bundle holds each member's own bundle under ``members/<name>/`` and lists the
members, their weights (and, in the metadata, their registered versions) in ``bundle.json``,
so it loads, serves and explains as one model.

Fitting is Caruana et al.'s greedy forward selection with replacement (ICML 2004): start from
an empty bag, add in each round the member whose addition scores best on the selection rows
(the task metric first, log loss to break its ties), and keep the best bag seen; a member's
weight is its share of that bag. It was chosen over stacking because it needs only the
selection probabilities every candidate logs (validation rows, or out-of-fold rows when CV
ran), cannot put a negative weight on a member, degenerates to the single best member when
mixing does not help, and with a handful of members and a few hundred rows it does not
overfit the way a stacked logistic regression over members x classes features would.

Weights fitted on the rows they are scored on are optimistic, so the ensemble's own selection
score is nested: the selection rows are split in two stratified halves, weights are fitted on
one half and predict the other, both ways, and the metrics are computed on those held-out
predictions of every row. Only the weights that are shipped are fitted on all selection rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.model_selection import StratifiedKFold

from components.evaluation.classification import classification_metrics
from components.predictor import ClassifierPredictor, load_predictor

KIND = "ensemble"
MEMBERS_DIR = "members"
# Rounds of greedy selection: enough for weights in steps of 1/25 among a few members.
ROUNDS = 25


@dataclass(frozen=True)
class MemberProbabilities:
    """One candidate's probabilities on the selection rows, columns in `labels` order."""

    name: str
    labels: list[str]
    proba: np.ndarray  # (rows, len(labels))


@dataclass(frozen=True)
class EnsembleFit:
    """What fitting found: the weight of each member (by name, zeros included) and the nested scores."""

    labels: list[str]
    weights: dict[str, float]
    selection_metrics: dict[str, Any]  # classification_metrics of the held-out (nested) predictions

    @property
    def members(self) -> list[str]:
        """The members with a positive weight: the ones the ensemble keeps."""
        return [name for name, weight in self.weights.items() if weight > 0]


def aligned(proba: np.ndarray, labels: Sequence[str], target: Sequence[str], name: str) -> np.ndarray:
    """`proba`'s columns reordered from `labels` to `target`; a member with other labels is an error."""
    labels, target = list(labels), list(target)
    if sorted(labels) != sorted(target):
        raise ValueError(
            f"ensemble member {name!r} knows labels {sorted(labels)}, the others {sorted(target)}: "
            "members must be trained on the same labels"
        )
    if proba.ndim != 2 or proba.shape[1] != len(labels):
        raise ValueError(f"ensemble member {name!r}: probabilities of shape {proba.shape} for {len(labels)} labels")
    return proba[:, [labels.index(label) for label in target]]


def _score(y: Sequence[str], proba: np.ndarray, labels: list[str], metric: str, sign: int) -> tuple[float, float]:
    """The greedy search's sort key, bigger is better: the metric in its direction, then low log loss."""
    metrics = classification_metrics(y, proba, labels)
    return sign * metrics[metric], -metrics["log_loss"]


def greedy_weights(probas: Sequence[np.ndarray], y: Sequence[str], labels: list[str], metric: str = "macro_f1",
                   greater_is_better: bool = True, rounds: int = ROUNDS) -> np.ndarray:
    """Caruana's forward selection with replacement: non-negative weights summing to 1, one per member."""
    sign = 1 if greater_is_better else -1
    counts = np.zeros(len(probas))
    total = np.zeros_like(probas[0], dtype=np.float64)
    best_key, best_counts = None, counts
    for _ in range(rounds):
        keys = [_score(y, (total + p) / (counts.sum() + 1), labels, metric, sign) for p in probas]
        pick = max(range(len(probas)), key=lambda i: keys[i])  # ties: the first member listed
        counts, total = counts.copy(), total + probas[pick]
        counts[pick] += 1
        if best_key is None or keys[pick] > best_key:
            best_key, best_counts = keys[pick], counts
    return best_counts / best_counts.sum()


def blend(probas: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    return sum(w * p for w, p in zip(weights, probas, strict=True))


def fit_ensemble(members: Sequence[MemberProbabilities], y: Sequence[str], metric: str = "macro_f1",
                 greater_is_better: bool = True, seed: int = 0) -> EnsembleFit:
    """Weights on all selection rows, and the nested two-fold estimate of the ensemble's score."""
    if len(members) < 2:
        raise ValueError(f"an ensemble needs at least 2 members, got {[m.name for m in members]}")
    names = [m.name for m in members]
    if len(set(names)) != len(names):
        raise ValueError(f"ensemble member names must be unique: {names}")
    labels = list(members[0].labels)
    probas = [aligned(np.asarray(m.proba, dtype=np.float64), m.labels, labels, m.name) for m in members]
    y = np.asarray(list(y), dtype=object)
    for member, proba in zip(members, probas, strict=True):
        if len(proba) != len(y):
            raise ValueError(f"ensemble member {member.name!r} has {len(proba)} selection rows, the labels {len(y)}")
    held_out = np.zeros_like(probas[0])
    folds = StratifiedKFold(n_splits=2, shuffle=True, random_state=seed)
    for fit_rows, score_rows in folds.split(np.zeros(len(y)), y):
        weights = greedy_weights([p[fit_rows] for p in probas], y[fit_rows], labels, metric, greater_is_better)
        held_out[score_rows] = blend([p[score_rows] for p in probas], weights)
    weights = greedy_weights(probas, y, labels, metric, greater_is_better)
    return EnsembleFit(
        labels=labels,
        weights={name: float(w) for name, w in zip(names, weights, strict=True)},
        selection_metrics=classification_metrics(list(y), held_out, labels),
    )


class EnsemblePredictor(ClassifierPredictor):
    """Soft voting: the weighted mean of the members' probabilities (members with weight 0 are left out)."""

    def __init__(self, members: dict[str, ClassifierPredictor], weights: dict[str, float],
                 labels: Sequence[str] | None = None, metadata: dict[str, Any] | None = None):
        kept = {name: float(w) for name, w in weights.items() if w > 0}
        if any(w < 0 for w in weights.values()) or not kept:
            raise ValueError(f"ensemble weights must be non-negative with a positive sum, got {weights}")
        missing = sorted(set(kept) - set(members))
        if missing:
            raise ValueError(f"ensemble weights name members {missing} that were not given")
        total = sum(kept.values())
        self.weights = {name: w / total for name, w in kept.items()}
        self.members = {name: members[name] for name in self.weights}
        first = next(iter(self.members.values()))
        labels = list(labels) if labels is not None else list(first.labels)
        for name, member in self.members.items():
            aligned(np.zeros((0, len(member.labels))), member.labels, labels, name)  # same label set, or an error
        self._columns = {name: [m.labels.index(label) for label in labels] for name, m in self.members.items()}
        config = {"members": [{"name": name, "kind": self.members[name].kind, "weight": w}
                              for name, w in self.weights.items()]}
        super().__init__(KIND, config, labels, metadata)

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), len(self.labels)), dtype=np.float64)
        if len(texts) == 0:
            return out
        for name, member in self.members.items():
            out += self.weights[name] * np.asarray(member.predict_proba(texts), dtype=np.float64)[:, self._columns[name]]
        return out

    # /explain uses the inherited occlusion: the members' own attributions come in different
    # units (linear logit contributions, probability drops) and for their own predicted labels,
    # so a weighted sum of them would not explain the ensemble's label; occlusion of its
    # predict_proba does, whatever the members are.
    def read_until(self, text: str) -> int:
        return max(member.read_until(text) for member in self.members.values())

    @property
    def on_accelerator(self) -> bool:
        return any(member.on_accelerator for member in self.members.values())

    def _save_files(self, folder: Path) -> None:
        for name, member in self.members.items():
            member.save(folder / MEMBERS_DIR / name)

    @classmethod
    def _load(cls, folder: Path, manifest: dict[str, Any]) -> EnsemblePredictor:
        entries = manifest["config"]["members"]
        members = {}
        for entry in entries:
            member = load_predictor(folder / MEMBERS_DIR / entry["name"])
            if not isinstance(member, ClassifierPredictor):
                raise ValueError(f"{folder}: ensemble member {entry['name']!r} is a {member.kind}, not a classifier")
            members[entry["name"]] = member
        return cls(members, {e["name"]: e["weight"] for e in entries}, manifest["labels"], manifest.get("metadata"))


def train(spec: Any, data: Any, workdir: Path, on_metrics: Any = None) -> EnsemblePredictor:
    """The registry's trainer slot: an ensemble is built from trained candidates, never from a spec alone."""
    raise ValueError(
        f"candidate {getattr(spec, 'name', '?')!r}: kind 'ensemble' cannot be listed as a candidate; "
        "the pipeline builds it from the trained candidates (the task's `ensemble:` settings)"
    )
