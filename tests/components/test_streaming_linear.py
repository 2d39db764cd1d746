"""The out-of-core hashed TF-IDF + SGD baseline (learning, chunk independence, streamed idf, bundle) and the size rule."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.feature_extraction.text import TfidfTransformer

from components.config import ModelSpec, SizeRule, TaskSpec, load_config
from components.data.dataset import ClassificationData
from components.models import streaming_linear as sl
from components.models.size_rule import admitted
from components.predictor import load_predictor

TOPICS = {
    "sport": "match goal team player coach league score win season cup",
    "tech": "software chip phone network data computer internet code device app",
    "politics": "minister vote election party parliament law government policy debate tax",
}
FILLER = "the a of and to in on for with it said this that year people".split()


def _texts(label: str, n: int, rng: random.Random) -> list[str]:
    words = TOPICS[label].split()
    return [" ".join(rng.choice(words if rng.random() < 0.4 else FILLER) for _ in range(25)) for _ in range(n)]


@pytest.fixture(scope="module")
def data() -> ClassificationData:
    """Train rows grouped by label (as a folder-per-class source gives them), val/test interleaved."""
    rng = random.Random(0)
    split = {name: ([], []) for name in ("train", "val", "test")}
    for name, n in (("train", 200), ("val", 30), ("test", 30)):
        for label in TOPICS:
            texts = _texts(label, n, rng)
            split[name][0].extend(texts)
            split[name][1].extend([label] * n)
    for name in ("val", "test"):
        pairs = list(zip(*split[name], strict=True))
        rng.shuffle(pairs)
        split[name] = ([t for t, _ in pairs], [lab for _, lab in pairs])
    return ClassificationData(*split["train"], *split["val"], *split["test"], labels=sorted(TOPICS))


def _spec(**params) -> ModelSpec:
    return ModelSpec(name="hashed", kind="hashing_sgd", params={"n_features": 2**16, "block_rows": 100, **params})


def test_learns_the_topics_from_label_grouped_rows(data, tmp_path):
    predictor = sl.train(_spec(chunk_rows=64), data, tmp_path)
    predicted = [predictor.labels[i] for i in predictor.predict_proba(data.test_texts).argmax(axis=1)]
    accuracy = np.mean([p == t for p, t in zip(predicted, data.test_labels, strict=True)])
    assert accuracy >= 0.95
    assert list(tmp_path.iterdir()) == []  # the spilled chunks are gone


def test_chunk_size_changes_nothing(data, tmp_path):
    small = sl.train(_spec(chunk_rows=37, passes=3), data, tmp_path / "a")
    whole = sl.train(_spec(chunk_rows=10_000, passes=3), data, tmp_path / "b")
    np.testing.assert_array_equal(small.predict_proba(data.val_texts), whole.predict_proba(data.val_texts))


def test_streamed_idf_equals_tfidf_transformer_on_the_whole_matrix(data):
    hasher = sl.build_hasher(sl.resolve_params({"n_features": 2**12}))
    df = np.zeros(2**12, dtype=np.int64)
    for texts, _ in sl.list_chunks(data.train_texts, data.train_labels, 45):
        df += sl.document_frequencies(hasher.transform(texts))
    # The counts are float32; scikit-learn then computes idf in float32, the streamed idf is float64.
    whole = TfidfTransformer(sublinear_tf=True).fit(hasher.transform(data.train_texts).astype(np.float64))
    streamed = sl.idf_transformer(df, len(data.train_texts), sublinear_tf=True)
    np.testing.assert_allclose(streamed.idf_, whole.idf_, rtol=1e-12)
    counts = hasher.transform(data.val_texts[:5])
    np.testing.assert_allclose(streamed.transform(counts).toarray(), whole.transform(counts).toarray())


def test_folder_training_equals_in_memory_training(data, tmp_path):
    folder = tmp_path / "dataset"
    folder.mkdir()
    (folder / "manifest.json").write_text(json.dumps({"task": "classification"}))
    for split in ("train", "val", "test"):
        frame = pd.DataFrame({"text": getattr(data, f"{split}_texts"), "label": getattr(data, f"{split}_labels")})
        frame.to_parquet(folder / f"{split}.parquet", row_group_size=50)
    from_folder = sl.train_from_folder(_spec(chunk_rows=64), folder, tmp_path / "work")
    in_memory = sl.train(_spec(chunk_rows=64), data, tmp_path / "work")
    np.testing.assert_array_equal(from_folder.predict_proba(data.test_texts), in_memory.predict_proba(data.test_texts))


def test_bundle_round_trip_and_explanation(data, tmp_path):
    predictor = sl.train(_spec(), data, tmp_path / "work")
    loaded = load_predictor(predictor.save(tmp_path / "bundle"))
    assert isinstance(loaded, sl.HashingSGDPredictor) and loaded.labels == sorted(TOPICS)
    np.testing.assert_array_equal(loaded.predict_proba(data.val_texts), predictor.predict_proba(data.val_texts))
    assert loaded.predict_proba([]).shape == (0, 3)
    explanation = loaded.explain(["the coach saw the team win the match"], top_k=2)[0]
    assert explanation["label"] == "sport"
    assert {item["word"] for item in explanation["towards"]} <= {"coach", "team", "win", "match"}


def test_bad_params_and_single_label_are_clear_errors(data, tmp_path):
    with pytest.raises(ValueError, match="unknown hashing_sgd params"):
        sl.resolve_params({"max_df": 0.5})
    with pytest.raises(ValueError, match="params.loss"):
        sl.resolve_params({"loss": "hinge"})
    one_label = ClassificationData(["a b", "c d"], ["x", "x"], [], [], [], [], ["x"])
    with pytest.raises(ValueError, match="one label only"):
        sl.train(_spec(), one_label, tmp_path)


def _candidates() -> list[ModelSpec]:
    return [ModelSpec(name="tfidf", kind="tfidf_logreg"), ModelSpec(name="hashed", kind="hashing_sgd"),
            ModelSpec(name="lstm", kind="lstm")]


def test_size_rule_picks_the_in_memory_baseline_below_the_threshold_and_the_streaming_one_above():
    rule = TaskSpec(dataset="d", registered_model="m", candidates=_candidates()).size_rule
    small, skipped_small = admitted(_candidates(), 200_000, rule)
    large, skipped_large = admitted(_candidates(), 200_001, rule)
    assert [c.name for c in small] == ["tfidf", "lstm"] and list(skipped_small) == ["hashed"]
    assert [c.name for c in large] == ["hashed", "lstm"] and list(skipped_large) == ["tfidf"]
    assert "200001 training rows > size_rule.streaming_above_rows 200000" in skipped_large["tfidf"]


def test_the_config_overrides_the_size_rule(tmp_path):
    config = tmp_path / "big.yaml"
    config.write_text(
        "datasets: [{name: d, source: {kind: path, path: x.csv}}]\n"
        "classification:\n  dataset: d\n  registered_model: m\n"
        "  candidates: {tfidf: {kind: tfidf_logreg}, hashed: {kind: hashing_sgd}}\n"
        "  size_rule: {streaming_above_rows: 1000}\n"
    )
    rule = load_config(config).classification.size_rule
    assert [c.name for c in admitted(_candidates(), 5000, rule)[0]] == ["hashed", "lstm"]
    off = SizeRule(streaming_above_rows=None, min_rows={})
    assert admitted(_candidates(), 10**9, off) == (_candidates(), {})


def test_networks_trained_from_scratch_are_left_out_of_small_data_with_the_reason():
    rule = SizeRule()
    kept, skipped = admitted(_candidates(), 999, rule)
    assert [c.name for c in kept] == ["tfidf"] and set(skipped) == {"hashed", "lstm"}
    assert "999 training rows < size_rule.min_rows.lstm 1000" in skipped["lstm"]
    assert [c.name for c in admitted(_candidates(), 1000, rule)[0]] == ["tfidf", "lstm"]
    # min_rows applies with the streaming threshold off, and an empty mapping trains every kind.
    assert [c.name for c in admitted(_candidates(), 10, SizeRule(streaming_above_rows=None))[0]] == ["tfidf", "hashed"]
    assert admitted(_candidates(), 10, SizeRule(streaming_above_rows=None, min_rows={})) == (_candidates(), {})
