"""The pipeline's size rule: which candidates train on a dataset, and the streamed hashing_sgd run."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from components.config import DatasetSpec, ModelSpec, PipelineConfig, SizeRule, SourceSpec, TaskSpec
from components.data.dataset import read_dataset_manifest
from components.data.ingest import ingest_dataset
from flows.pipeline import size_admitted
from flows.settings import Settings
from tests.flows.conftest import TOPICS

HASHED = ModelSpec(name="hashed", kind="hashing_sgd",
                   params={"n_features": 2**12, "block_rows": 40, "chunk_rows": 50, "passes": 5})
TFIDF = ModelSpec(name="tfidf", kind="tfidf_logreg", params={"min_df": 1, "char_ngrams": None})


@pytest.fixture
def streamed(tmp_path) -> tuple[Settings, int]:
    """A 180-row three-topic CSV forced through streaming ingestion (Parquet shards); (settings, train rows)."""
    rng = np.random.default_rng(0)
    rows = []
    for label, words in TOPICS.items():
        vocabulary = words.split() + "the a of and to in on it".split()
        rows += [{"text": " ".join(rng.choice(vocabulary, size=14)), "label": label} for _ in range(60)]
    project = tmp_path / "project"
    project.mkdir()
    pd.DataFrame(rows).to_csv(project / "topics.csv", index=False)
    dataset = DatasetSpec(name="topics", source=SourceSpec(kind="path", path="topics.csv"), test_fraction=0.2,
                          streaming=True, chunk_rows=64, shard_rows=50)
    settings = Settings(project_dir=project, home=tmp_path / "home")
    ingest_dataset(dataset, settings.data_root, cache_dir=settings.download_cache, base_dir=project)
    manifest = read_dataset_manifest(settings.data_root / "topics")
    assert manifest["layout"] == "shards"
    return settings, manifest["counts"]["rows"]["train"]


def _task(name: str, candidates: list[ModelSpec], above: int | None) -> TaskSpec:
    return TaskSpec(dataset="topics", registered_model=name, candidates=candidates,
                    size_rule=SizeRule(streaming_above_rows=above))


def test_above_the_threshold_the_streaming_baseline_trains_and_tfidf_is_skipped_with_its_reason(streamed, caplog):
    settings, rows = streamed
    with caplog.at_level(logging.WARNING, logger="maas"):
        kept = size_admitted(settings, "classification", _task("m", [TFIDF, HASHED], above=100))
    assert rows > 100 and [c.name for c in kept] == ["hashed"]
    assert f"candidate tfidf skipped on topics: {rows} training rows > size_rule.streaming_above_rows 100" in caplog.text


def test_at_or_below_the_threshold_tfidf_trains_and_the_streaming_one_is_skipped(streamed, caplog):
    settings, rows = streamed
    with caplog.at_level(logging.WARNING, logger="maas"):
        kept = size_admitted(settings, "classification", _task("m", [TFIDF, HASHED], above=rows))
    assert [c.name for c in kept] == ["tfidf"] and "candidate hashed skipped" in caplog.text


def test_the_config_turns_the_rule_off(streamed):
    settings, _ = streamed
    assert [c.name for c in size_admitted(settings, "classification", _task("m", [TFIDF, HASHED], None))] == \
        ["tfidf", "hashed"]
    # The default rule (200,000 rows) keeps the streaming kind out of a small dataset.
    default = TaskSpec(dataset="topics", registered_model="m", candidates=[TFIDF, HASHED])
    assert [c.name for c in size_admitted(settings, "classification", default)] == ["tfidf"]


def test_no_candidate_left_fails_naming_the_rule_and_the_rows(streamed):
    settings, rows = streamed
    with pytest.raises(ValueError, match=f"size_rule leaves no classification candidate for the {rows} training rows "
                                         f"of topics: tfidf: {rows} training rows > size_rule.streaming_above_rows 100"):
        size_admitted(settings, "classification", _task("m", [TFIDF], above=100))


@pytest.mark.slow
def test_the_train_flow_trains_the_streamed_baseline_from_shards(streamed, prefect_harness, monkeypatch, tmp_path):
    from flows import tracking
    from flows import train as train_module
    from flows.pipeline import train
    from flows.selection_log import selection_probabilities

    settings, _ = streamed

    def loaded(folder):
        raise AssertionError(f"the streamed candidate loaded {folder} into memory")

    monkeypatch.setattr(train_module, "load_classification_data", loaded)
    config = PipelineConfig(
        datasets=[DatasetSpec(name="topics", source=SourceSpec(kind="path", path="topics.csv"), streaming=True)],
        classification=_task(f"streamed-{tmp_path.name}"[:60], [TFIDF, HASHED], above=100),
    )
    [result] = train(settings, config, config_name="test")["classification"]

    assert result["candidate"] == "hashed" and result["selection"] == "holdout" and result["version"] is not None
    metrics = tracking.run_metrics(settings, result["run_id"])
    assert metrics["test_accuracy"] > 0.8  # three topics with disjoint keywords: chance is 1/3
    assert {"val_macro_f1", "test_macro_f1", "latency_latency_ms_p50"} <= set(metrics)
    proba, labels, y = selection_probabilities(settings, result["run_id"])
    val = pd.concat(pd.read_parquet(p) for p in sorted((settings.data_root / "topics" / "val").glob("*.parquet")))
    assert y == val["label"].tolist() and proba.shape == (len(val), 3) and labels == sorted(TOPICS)
