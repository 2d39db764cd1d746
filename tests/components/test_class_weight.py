"""Class weights: `training.class_weight: balanced` reweighs the torch classifiers' loss, the TF-IDF param its LR."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from components.config import ModelSpec, TrainingSpec
from components.data.dataset import ClassificationData
from components.models.tfidf import train as train_tfidf
from components.training.classifier_fit import cross_entropy_loss, start_run

# 18 rows of "common", 2 of "rare": the imbalanced toy set.
TRAIN_LABELS = ["common"] * 18 + ["rare"] * 2


def _data(texts: list[str] | None = None) -> ClassificationData:
    texts = texts or [f"text {i}" for i in range(len(TRAIN_LABELS))]
    return ClassificationData(texts, TRAIN_LABELS, ["v common", "v rare"], ["common", "rare"], [], [],
                              ["common", "rare"])


class Fixed(nn.Module):
    """Logits that ignore the input: the same wrong-leaning guess for every row."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tensor([[1.0, 0.0]]).expand(len(x), 2)


def test_balanced_weights_follow_the_class_counts(tmp_path):
    run = start_run("lstm", {}, (), TrainingSpec(class_weight="balanced"), _data(), tmp_path)
    # scikit-learn's rule: n_rows / (n_classes * rows of the class) = 20/36 and 20/4.
    torch.testing.assert_close(run.class_weights, torch.tensor([20 / 36, 20 / 4]))
    assert start_run("lstm", {}, (), TrainingSpec(), _data(), tmp_path).class_weights is None


def test_balanced_weights_change_the_loss_on_an_imbalanced_batch(tmp_path):
    batch = (torch.zeros(20, 1), torch.tensor([0] * 18 + [1] * 2))
    plain = cross_entropy_loss(Fixed(), batch)
    weights = start_run("lstm", {}, (), TrainingSpec(class_weight="balanced"), _data(), tmp_path).class_weights
    balanced = cross_entropy_loss(Fixed(), batch, weight=weights)
    # The model leans to "common": its few "rare" rows now weigh as much as all the others.
    per_row = torch.nn.functional.cross_entropy(Fixed()(batch[0]), batch[1], reduction="none")
    assert balanced == pytest.approx(float((per_row[:18].mean() + per_row[18:].mean()) / 2), rel=1e-5)
    assert balanced > plain + 0.3


def test_a_label_without_training_rows_keeps_weight_one(tmp_path):
    data = ClassificationData([f"t{i}" for i in range(20)], TRAIN_LABELS, [], [], [], [], ["common", "other", "rare"])
    weights = start_run("lstm", {}, (), TrainingSpec(class_weight="balanced"), data, tmp_path).class_weights
    assert weights[1] == 1.0 and weights[2] > weights[0]


def test_the_class_weight_changes_the_run_fingerprint(tmp_path):
    runs = [start_run("lstm", {}, (), TrainingSpec(class_weight=w), _data(), tmp_path) for w in ("none", "balanced")]
    assert runs[0].fingerprint != runs[1].fingerprint  # a checkpoint of one is never resumed as the other


def test_tfidf_balanced_class_weight_moves_the_boundary_towards_the_rare_class(tmp_path):
    rng = np.random.default_rng(0)
    shared = "alpha beta gamma delta epsilon".split()
    texts = [" ".join(rng.choice(shared + (["apple"] if label == "common" else ["berry"]), size=6))
             for label in TRAIN_LABELS]
    data = _data(texts)
    probe = ["alpha beta gamma delta"]  # no class word: only the prior speaks

    def rare_probability(class_weight: str) -> float:
        spec = ModelSpec(name="t", kind="tfidf_logreg",
                         params={"min_df": 1, "char_ngrams": None, "class_weight": class_weight, "C": 1.0})
        predictor = train_tfidf(spec, data, tmp_path, lambda metrics, step: None)
        return float(predictor.predict_proba(probe)[0, predictor.labels.index("rare")])

    assert rare_probability("balanced") > rare_probability("none") + 0.2


def test_tfidf_refuses_an_unknown_class_weight(tmp_path):
    spec = ModelSpec(name="t", kind="tfidf_logreg", params={"class_weight": "auto"})
    with pytest.raises(ValueError, match="class_weight must be one of"):
        train_tfidf(spec, _data(), tmp_path, lambda metrics, step: None)
