"""The ensemble candidate: greedy weights, its nested selection score, and its one-bundle predictor."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from components.evaluation.classification import classification_metrics
from components.models.ensemble import (
    EnsemblePredictor,
    MemberProbabilities,
    aligned,
    fit_ensemble,
    greedy_weights,
)
from components.models.tfidf import DEFAULT_PARAMS, TfidfPredictor, build_pipeline
from components.predictor import ClassifierPredictor, load_predictor, read_manifest

LABELS = ["politics", "sport", "tech"]


def _confident(rows: int, truth: np.ndarray, wrong_rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Probabilities that put 0.8 on the true class, except on `wrong_rows`, where 0.55 goes to another."""
    proba = np.full((rows, 3), 0.1)
    proba[np.arange(rows), truth] = 0.8
    for row in wrong_rows:
        wrong = (truth[row] + 1 + rng.integers(2)) % 3
        proba[row] = 0.2
        proba[row, wrong] = 0.55
        proba[row, truth[row]] = 0.25
    return proba


def _members_that_err_on_different_rows(rows: int = 240) -> tuple[list[MemberProbabilities], list[str]]:
    rng = np.random.default_rng(0)
    truth = np.arange(rows) % 3
    thirds = np.array_split(rng.permutation(rows), 3)
    members = [MemberProbabilities(f"m{i}", LABELS, _confident(rows, truth, thirds[i], rng)) for i in range(3)]
    return members, [LABELS[t] for t in truth]


def _macro_f1(member: MemberProbabilities, y: list[str]) -> float:
    return classification_metrics(y, member.proba, member.labels)["macro_f1"]


def test_members_that_err_on_different_rows_make_a_better_ensemble():
    members, y = _members_that_err_on_different_rows()
    fit = fit_ensemble(members, y)
    best_member = max(_macro_f1(m, y) for m in members)
    assert best_member < 0.75  # each member is wrong on a third of the rows
    # The nested (held-out) score, not the optimistic in-sample one, still beats every member.
    assert fit.selection_metrics["macro_f1"] > best_member + 0.2
    assert fit.members == ["m0", "m1", "m2"]


def test_weights_are_non_negative_and_sum_to_one():
    members, y = _members_that_err_on_different_rows()
    weights = greedy_weights([m.proba for m in members], y, LABELS)
    assert (weights >= 0).all() and weights.sum() == pytest.approx(1.0)
    fit = fit_ensemble(members, y)
    assert all(w >= 0 for w in fit.weights.values()) and sum(fit.weights.values()) == pytest.approx(1.0)


def test_a_member_that_needs_no_help_takes_all_the_weight_and_the_ensemble_is_no_better():
    rng = np.random.default_rng(1)
    rows = 200
    truth = np.arange(rows) % 3
    perfect = _confident(rows, truth, np.array([], dtype=int), rng)
    noisy = [rng.dirichlet(np.ones(3), size=rows) for _ in range(2)]
    members = [MemberProbabilities("good", LABELS, perfect),
               *(MemberProbabilities(f"noise{i}", LABELS, p) for i, p in enumerate(noisy))]
    y = [LABELS[t] for t in truth]
    fit = fit_ensemble(members, y)
    assert fit.weights == {"good": 1.0, "noise0": 0.0, "noise1": 0.0}
    # Promotion compares selection scores: the ensemble does not beat the member it copies.
    assert fit.selection_metrics["macro_f1"] <= _macro_f1(members[0], y)


def test_members_with_other_label_orders_are_aligned_by_name():
    members, y = _members_that_err_on_different_rows()
    reordered = ["tech", "politics", "sport"]
    shuffled = MemberProbabilities("m1", reordered, aligned(members[1].proba, LABELS, reordered, "m1"))
    same = fit_ensemble(members, y)
    mixed = fit_ensemble([members[0], shuffled, members[2]], y)
    assert mixed.labels == LABELS
    assert mixed.weights == same.weights
    assert mixed.selection_metrics["macro_f1"] == pytest.approx(same.selection_metrics["macro_f1"])


def test_a_member_with_other_labels_is_refused_by_name():
    members, y = _members_that_err_on_different_rows()
    other = MemberProbabilities("odd", ["politics", "sport", "weather"], members[1].proba)
    with pytest.raises(ValueError, match="ensemble member 'odd' knows labels"):
        fit_ensemble([members[0], other], y)
    with pytest.raises(ValueError, match="at least 2 members"):
        fit_ensemble(members[:1], y)


TOPICS = {"politics": "vote minister party law", "sport": "goal match team coach", "tech": "chip code phone data"}


def _tfidf_member(char_ngrams) -> TfidfPredictor:
    rng = np.random.default_rng(3)
    filler = "the a of and to in on it".split()
    texts, y = [], []
    for label, words in TOPICS.items():
        for _ in range(20):
            texts.append(" ".join(rng.choice(words.split() + filler, size=8)))
            y.append(label)
    params = {**DEFAULT_PARAMS, "min_df": 1, "char_ngrams": char_ngrams, "word_ngrams": [1, 1]}
    return TfidfPredictor(build_pipeline(params, 0).fit(texts, y), {"params": params}, sorted(TOPICS))


class Reversed(ClassifierPredictor):
    """A member whose columns come in reverse label order (only in memory: it has no bundle)."""

    def __init__(self, inner: ClassifierPredictor):
        super().__init__("tfidf_logreg", {}, list(reversed(inner.labels)))
        self.inner = inner

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        return self.inner.predict_proba(texts)[:, ::-1]

    def _save_files(self, folder):  # pragma: no cover - never saved
        raise NotImplementedError

    @classmethod
    def _load(cls, folder, manifest):  # pragma: no cover
        raise NotImplementedError


TEXTS = ["the coach saw a late goal", "a new phone chip", "the minister lost the vote", ""]


def test_the_bundle_saves_loads_and_predicts_the_same(tmp_path):
    words, chars = _tfidf_member(None), _tfidf_member([2, 4])
    ensemble = EnsemblePredictor({"words": words, "chars": chars, "unused": words},
                                 {"words": 0.25, "chars": 0.75, "unused": 0.0},
                                 metadata={"members": [{"name": "words", "version": "3"}]})
    expected = 0.25 * words.predict_proba(TEXTS) + 0.75 * chars.predict_proba(TEXTS)
    np.testing.assert_allclose(ensemble.predict_proba(TEXTS), expected)

    ensemble.save(tmp_path / "bundle")
    manifest = read_manifest(tmp_path / "bundle")
    assert manifest["kind"] == "ensemble"
    assert [(m["name"], m["weight"]) for m in manifest["config"]["members"]] == [("words", 0.25), ("chars", 0.75)]
    assert sorted(p.name for p in (tmp_path / "bundle" / "members").iterdir()) == ["chars", "words"]
    loaded = load_predictor(tmp_path / "bundle")
    assert isinstance(loaded, EnsemblePredictor)
    assert loaded.metadata["members"][0]["version"] == "3"
    np.testing.assert_allclose(loaded.predict_proba(TEXTS), expected)
    assert [r["label"] for r in loaded.predict(TEXTS[:3])] == ["sport", "tech", "politics"]


def test_the_predictor_aligns_a_member_with_reversed_labels():
    words = _tfidf_member(None)
    ensemble = EnsemblePredictor({"a": words, "b": Reversed(words)}, {"a": 0.5, "b": 0.5})
    assert ensemble.labels == sorted(TOPICS)
    np.testing.assert_allclose(ensemble.predict_proba(TEXTS), words.predict_proba(TEXTS))


def test_the_ensemble_explains_by_occlusion_of_its_own_probabilities():
    ensemble = EnsemblePredictor({"a": _tfidf_member(None), "b": _tfidf_member([2, 4])}, {"a": 0.5, "b": 0.5})
    [explained] = ensemble.explain(["the coach saw a late goal"], top_k=2)
    assert explained["label"] == "sport" and explained["method"] == "occlusion"
    assert {item["word"] for item in explained["towards"]} & {"coach", "goal"}


@pytest.mark.parametrize("weights", [{"a": -0.5, "b": 1.5}, {"a": 0.0, "b": 0.0}, {"c": 1.0}])
def test_bad_weights_are_refused(weights):
    member = _tfidf_member(None)
    with pytest.raises(ValueError, match="ensemble weights"):
        EnsemblePredictor({"a": member, "b": member}, weights)
