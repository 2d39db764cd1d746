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
from flows.leaderboard import leaderboard, render
from flows.pipeline import train
from flows.selection_log import selection_probabilities
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
    [row] = leaderboard(settings, config, data.datasets)
    assert row.val_std["macro_f1"] == metrics["cv_macro_f1_std"]
    assert f"{row.val['macro_f1']:.4f} ± {row.val_std['macro_f1']:.4f}" in render([row], "markdown")


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


def test_pruning_stops_a_bad_torch_trial_at_its_first_evaluation(tmp_path):
    import optuna

    from components.config import TrainingSpec
    from components.data.dataset import ClassificationData
    from components.search import Pruned
    from components.training.candidates import train_candidate
    from flows.search import pruning_reporter

    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.MedianPruner(n_startup_trials=2))
    for _ in range(2):  # two finished trials that scored 0.9 at every evaluation
        trial = study.ask()
        for step in (4, 8, 12):
            trial.report(0.9, step)
        study.tell(trial, 0.9)
    texts = [f"{w} {w} the match" if i % 2 else f"{w} {w} the bread" for i, w in enumerate(["a", "b"] * 30)]
    labels = ["sport" if i % 2 else "food" for i in range(60)]
    data = ClassificationData(texts[:48], labels[:48], texts[48:], labels[48:], [], [], ["food", "sport"])
    # lr 1e-9 learns nothing in 12 steps: its first evaluation is below the median of the others.
    spec = ModelSpec(name="bad", kind="lstm", params={"embed_dim": 8, "hidden_size": 8, "num_layers": 1},
                     training=TrainingSpec(device="cpu", epochs=3, batch_size=12, lr=1e-9, max_length=8,
                                           num_threads=1))
    trial = study.ask()
    with pytest.raises(Pruned):
        train_candidate(spec, data, tmp_path, pruning_reporter(trial, "val_macro_f1"))
    assert list(study.trials[-1].intermediate_values) == [4]  # stopped after the first of three epochs


def test_promotion_compares_only_scores_made_the_same_way():
    from types import SimpleNamespace

    from flows.promote import champion_score

    task = TaskSpec(dataset="topics", registered_model="m", candidates=[ModelSpec(name="t", kind="tfidf_logreg")])
    cv_champion = SimpleNamespace(tags={"data_version": "v1", "selection": "cv5"}, run_id="r", version="1")
    # A CV champion was refit on train+val: it has no holdout score, and no CV score on other data.
    assert champion_score(None, task, cv_champion, "v1", "holdout") is None
    assert champion_score(None, task, cv_champion, "v2", "cv5") is None
    holdout_champion = SimpleNamespace(tags={"data_version": "v1"}, run_id="r", version="1")
    assert champion_score(None, task, holdout_champion, "v1", "cv5") is None
