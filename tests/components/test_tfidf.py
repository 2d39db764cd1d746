"""The baseline learns, and its bundle round-trips with identical probabilities."""

import numpy as np
import pytest

from components.config import ModelSpec
from components.data.dataset import ClassificationData
from components.evaluation.classification import classification_metrics
from components.predictor import BundleError, load_predictor
from components.training.candidates import train_candidate

TOPICS = {
    "sport": "match goal team player score league coach win",
    "tech": "software chip computer internet phone data network code",
    "politics": "election minister party vote parliament policy government law",
}


def _texts(label: str, n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    words = TOPICS[label].split() + "the a of and to in".split()
    return [" ".join(rng.choice(words, size=12)) for _ in range(n)]


@pytest.fixture(scope="module")
def data() -> ClassificationData:
    splits = {}
    for split, (n, seed) in {"train": (30, 0), "val": (10, 1), "test": (10, 2)}.items():
        texts, labels = [], []
        for i, label in enumerate(sorted(TOPICS)):
            texts += _texts(label, n, seed * 10 + i)
            labels += [label] * n
        splits[f"{split}_texts"], splits[f"{split}_labels"] = texts, labels
    return ClassificationData(**splits, labels=sorted(TOPICS))


def test_tfidf_learns_and_round_trips(data, tmp_path):
    spec = ModelSpec(name="tfidf", kind="tfidf_logreg", params={"min_df": 1, "char_ngrams": [2, 4]})
    reported = {}
    predictor = train_candidate(spec, data, tmp_path, lambda m, s: reported.update(m))
    proba = predictor.predict_proba(data.test_texts)
    metrics = classification_metrics(data.test_labels, proba, predictor.labels)
    assert metrics["accuracy"] >= 0.9  # three classes: chance is 1/3
    assert reported["val_accuracy"] >= 0.9

    loaded = load_predictor(predictor.save(tmp_path / "bundle"))
    assert loaded.labels == predictor.labels
    np.testing.assert_allclose(loaded.predict_proba(data.test_texts), proba)
    assert loaded.predict(["goal team match"])[0]["label"] == "sport"


def test_unknown_param_is_rejected(data, tmp_path):
    spec = ModelSpec(name="tfidf", kind="tfidf_logreg", params={"ngramz": [1, 2]})
    with pytest.raises(ValueError, match="ngramz"):
        train_candidate(spec, data, tmp_path)


def test_loading_a_folder_that_is_no_bundle_fails_clearly(tmp_path):
    with pytest.raises(BundleError, match="bundle.json"):
        load_predictor(tmp_path)
