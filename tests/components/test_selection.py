"""Selection on small data: folds, out-of-fold scores, the refit, min_steps and pruning through the callback."""

from __future__ import annotations

import random

import numpy as np
import pytest

from components.config import ModelSpec, SelectionSpec, TrainingSpec
from components.data.dataset import ClassificationData
from components.models.tfidf import train as train_tfidf
from components.search import Pruned
from components.selection import cross_validate, fold_indices, pooled, refit_data, refit_spec, uses_cv
from components.training.candidates import train_candidate

WORDS = {"food": "bread cheese soup oven", "sport": "goal match team league", "tech": "chip phone code cloud"}


def topic_rows(n: int, seed: int) -> tuple[list[str], list[str]]:
    rng = random.Random(seed)
    labels = [sorted(WORDS)[i % 3] for i in range(n)]
    texts = [" ".join(rng.choice(WORDS[label].split() + ["the", "of", "and"]) for _ in range(8)) for label in labels]
    return texts, labels


@pytest.fixture
def data() -> ClassificationData:
    # The test split's labels are poisoned (rotated): any selection that looked at them would score badly.
    test_texts, test_labels = topic_rows(30, 2)
    rotated = {"food": "sport", "sport": "tech", "tech": "food"}
    return ClassificationData(*topic_rows(60, 0), *topic_rows(15, 1), test_texts,
                              [rotated[label] for label in test_labels], labels=sorted(WORDS))


def tfidf(C: float) -> ModelSpec:
    return ModelSpec(name="t", kind="tfidf_logreg", params={"C": C, "min_df": 1, "char_ngrams": None})


def test_cv_scores_every_row_once_out_of_fold_and_never_sees_test(data):
    seen: list[ClassificationData] = []

    def train(fold: ClassificationData, i: int):
        seen.append(fold)
        return train_tfidf(tfidf(10.0), fold, None, lambda m, s: None)

    cv = cross_validate(train, data, SelectionSpec(folds=3))
    texts, labels = pooled(data)
    assert len(seen) == 3 and all(not fold.test_texts and not fold.test_labels for fold in seen)
    held = sorted(t for fold in seen for t in fold.val_texts)
    assert held == sorted(texts)  # each train+val row is held out exactly once
    assert cv.y == labels and cv.proba.shape == (75, 3) and cv.proba.dtype == np.float32
    assert np.allclose(cv.proba.sum(axis=1), 1, atol=1e-5)
    scores = [m["macro_f1"] for m in cv.fold_metrics]
    assert cv.mean("macro_f1") == pytest.approx(np.mean(scores)) and cv.std("macro_f1") == pytest.approx(np.std(scores))
    assert cv.mean("accuracy") > 0.9  # chosen on folds, not on the poisoned test labels


def test_cv_prefers_the_better_setting(data):
    def scored(C: float) -> float:
        return cross_validate(lambda fold, i: train_tfidf(tfidf(C), fold, None, lambda m, s: None), data,
                              SelectionSpec(folds=3)).mean("macro_f1")

    assert scored(10.0) > scored(1e-4)


def test_folds_are_stratified_and_seeded_and_rare_classes_are_named():
    labels = ["a"] * 10 + ["b"] * 5
    folds = fold_indices(labels, SelectionSpec(folds=5, seed=1))
    assert all(sum(labels[i] == "b" for i in held) == 1 for _, held in folds)
    assert [h.tolist() for _, h in folds] == [h.tolist() for _, h in fold_indices(labels, SelectionSpec(folds=5, seed=1))]
    with pytest.raises(ValueError, match=r"folds=5.*'b': 3"):
        fold_indices(["a"] * 10 + ["b"] * 3, SelectionSpec(folds=5))


def test_cv_applies_below_the_threshold_only(data):
    assert uses_cv(SelectionSpec(cv_below_rows=61), data)
    assert not uses_cv(SelectionSpec(cv_below_rows=60), data)


def test_refit_trains_on_train_and_val_for_the_steps_cv_found(data):
    refit = refit_data(data)
    assert refit.train_texts == data.train_texts + data.val_texts and refit.val_texts == []
    assert refit.test_labels == data.test_labels
    cv = cross_validate(lambda fold, i: _stub(fold, best_step=10 * (i + 1)), data, SelectionSpec(folds=3))
    spec = ModelSpec(name="l", kind="lstm", training=TrainingSpec(early_stopping_patience=3, min_steps=100))
    chosen = refit_spec(spec, cv, refit_rows=75)
    # The folds were best at 20 steps on average, on 50 rows each: as many epochs on 75 rows.
    assert chosen.training.max_steps == 30
    assert chosen.training.early_stopping_patience is None and chosen.training.min_steps is None
    assert refit_spec(tfidf(1.0), cross_validate(lambda f, i: _stub(f, None), data, SelectionSpec(folds=3)), 75) \
        == tfidf(1.0)


def _stub(fold: ClassificationData, best_step: int | None):
    predictor = train_tfidf(tfidf(1.0), fold, None, lambda m, s: None)
    predictor.metadata = {"best_step": best_step}
    return predictor


def tiny_lstm(**training) -> ModelSpec:
    return ModelSpec(name="l", kind="lstm", params={"embed_dim": 8, "hidden_size": 8, "num_layers": 1},
                     training=TrainingSpec(**{"device": "cpu", "epochs": 1, "batch_size": 16, "max_length": 16,
                                              "num_threads": 1, **training}))


def test_min_steps_gives_the_step_count_on_small_data(data, tmp_path, one_torch_thread):
    # 60 rows in batches of 16 are 4 steps an epoch: one epoch alone would be 4 steps.
    predictor = train_candidate(tiny_lstm(min_steps=10), data, tmp_path / "a")
    assert predictor.metadata["steps"] == 10 and predictor.metadata["epochs"] > 2
    assert train_candidate(tiny_lstm(min_steps=2), data, tmp_path / "b").metadata["steps"] == 4


def test_a_torch_model_refits_without_a_validation_split(data, tmp_path, one_torch_thread):
    predictor = train_candidate(tiny_lstm(max_steps=6), refit_data(data), tmp_path)
    assert predictor.metadata["steps"] == 6
    assert predictor.predict_proba(data.test_texts[:3]).shape == (3, 3)


def test_a_callback_that_raises_pruned_stops_training_at_that_evaluation(data, tmp_path, one_torch_thread):
    reported = []

    def report(metrics, step):
        if "val_macro_f1" in metrics:
            reported.append(step)
            raise Pruned(f"step {step}")

    with pytest.raises(Pruned):
        train_candidate(tiny_lstm(epochs=5), data, tmp_path, report)
    assert reported == [4]  # the first per-epoch evaluation, not the 20 steps of five epochs
