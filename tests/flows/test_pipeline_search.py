"""The pipeline's selection: searched candidates, CV scores on small data, selection artifacts, caching."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from components.config import (
    DatasetSpec,
    ModelSpec,
    PipelineConfig,
    SearchSpec,
    SelectionSpec,
    SourceSpec,
    TaskSpec,
)
from flows import tracking
from flows.ingest import DataVersions
from flows.leaderboard import leaderboard
from flows.pipeline import train
from flows.train import selection_probabilities
from tests.flows.conftest import topic_project

TFIDF = {"min_df": 1, "char_ngrams": None}


# `train` (maas train) is the pipeline's train step alone, on the ingested data.
def _config(name: str, candidates: list[ModelSpec], selection: SelectionSpec) -> PipelineConfig:
    task = TaskSpec(dataset="topics", registered_model=name[:60], candidates=candidates, selection=selection)
    return PipelineConfig(datasets=[DatasetSpec(name="topics", source=SourceSpec(kind="path", path="topics.csv"))],
                          classification=task)


@pytest.fixture
def topics(tmp_path):
    (tmp_path / "project").mkdir()
    settings, version = topic_project(tmp_path / "project", tmp_path / "home")
    return settings, DataVersions(repo="none", datasets={"topics": version})


def test_holdout_candidate_logs_its_validation_probabilities(topics, prefect_harness, tmp_path):
    settings, data = topics
    config = _config(f"holdout-{tmp_path.name}", [ModelSpec(name="tfidf", kind="tfidf_logreg", params=TFIDF)],
                     SelectionSpec(cv_below_rows=0))
    [result] = train(settings, config, config_name="test")["classification"]

    proba, labels, y = selection_probabilities(settings, result["run_id"])
    val = pd.read_parquet(settings.data_root / "topics" / "val.parquet")
    assert result["selection"] == "holdout"
    assert proba.dtype == np.float32 and proba.shape == (len(val), 3)
    assert y == val["label"].tolist() and labels == sorted(set(y))
    assert np.allclose(proba.sum(axis=1), 1, atol=1e-5)


def test_small_data_is_chosen_by_cv_and_refit_on_train_and_val(topics, prefect_harness, tmp_path):
    settings, data = topics
    config = _config(f"cv-{tmp_path.name}", [ModelSpec(name="tfidf", kind="tfidf_logreg", params=TFIDF)],
                     SelectionSpec(cv_below_rows=5000, folds=3))
    [result] = train(settings, config, config_name="test")["classification"]

    metrics = tracking.run_metrics(settings, result["run_id"])
    assert result["selection"] == "cv3"
    assert metrics["cv_macro_f1_mean"] == pytest.approx(result["val"]["macro_f1"])
    assert metrics["val_macro_f1"] == metrics["cv_macro_f1_mean"]
    assert "cv_macro_f1_std" in metrics and result["val_std"]["macro_f1"] == pytest.approx(metrics["cv_macro_f1_std"])
    assert "test_macro_f1" in metrics  # reported once, at the end
    proba, _, y = selection_probabilities(settings, result["run_id"])
    frames = [pd.read_parquet(settings.data_root / "topics" / f"{s}.parquet") for s in ("train", "val")]
    assert y == pd.concat(frames)["label"].tolist() and proba.shape == (len(y), 3)  # out-of-fold, train+val order

    assert metrics["refit_rows"] == len(y)  # the registered model was refit on train+val


def test_search_finds_a_better_point_logs_child_runs_and_is_cached(topics, prefect_harness, tmp_path):
    settings, data = topics
    # C=1e-4 leaves logistic regression near chance; the search must find a larger C.
    search = SearchSpec(space={"C": [0.0001, 10.0], "max_features": [2, 1000]}, trials=4, parallel=2, seed=0)
    config = _config(f"search-{tmp_path.name}", [ModelSpec(name="tfidf", kind="tfidf_logreg", params=TFIDF,
                                                            search=search)], SelectionSpec(cv_below_rows=0))
    [result] = train(settings, config, config_name="test")["classification"]

    name = f"maas-{config.classification.registered_model}"
    trials = tracking.search_runs(settings, name, "tags.`maas.trial_of` = 'tfidf'")
    scores = [run.data.metrics["val_macro_f1"] for run in trials]
    assert len(trials) == 4 and len({run.data.tags["mlflow.parentRunId"] for run in trials}) == 1
    assert result["candidate"] == "tfidf" and result["version"] is not None
    assert result["val"]["macro_f1"] == pytest.approx(max(scores)) and max(scores) > min(scores)
    rows = leaderboard(settings, config, data.datasets)
    assert [r.candidate for r in rows] == ["tfidf"]  # trials are not leaderboard rows
    run = tracking.client(settings).get_run(result["run_id"])
    assert float(run.data.params["C"]) == 10.0 and "test_macro_f1" not in trials[0].data.metrics

    again = train(settings, config, config_name="test")["classification"]
    assert again[0]["cached"] and again[0]["run_id"] == result["run_id"]
    assert len(tracking.search_runs(settings, name, "tags.`maas.trial_of` = 'tfidf'")) == 4  # no new trials
