"""Each way of fitting a candidate (flows/fitting.py) on tiny data: the metrics and artifacts its run gets."""

from __future__ import annotations

import pytest

from components.config import DatasetSpec, ModelSpec, SelectionSpec, SourceSpec, TaskSpec
from components.data.dataset import load_classification_data, read_dataset_manifest
from components.data.ingest import ingest_dataset
from components.selection import SELECTION_METRICS, method_name
from flows.fitting import Job, fit_cross_validated, fit_holdout, fit_streamed, score_trial
from tests.flows.conftest import TOPICS, topic_project

TFIDF = ModelSpec(name="words", kind="tfidf_logreg", params={"min_df": 1, "char_ngrams": None})
HASHED = ModelSpec(name="hashed", kind="hashing_sgd",
                   params={"n_features": 2**12, "block_rows": 40, "chunk_rows": 50, "passes": 5})
VAL_SCORES = {f"val_{m}" for m in SELECTION_METRICS}
CV_SCORES = {f"cv_{m}_{stat}" for m in SELECTION_METRICS for stat in ("mean", "std")}
PER_CLASS = {f"{split}_f1_{topic}" for split in ("val", "test") for topic in TOPICS}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """The same three-topic CSV ingested twice: as splits and as Parquet shards (streamed)."""
    project = tmp_path_factory.mktemp("fitting")
    settings, _ = topic_project(project, tmp_path_factory.mktemp("fitting-home"), rows_per_class=40)
    streamed = DatasetSpec(name="topics", source=SourceSpec(kind="path", path="topics.csv"), test_fraction=0.2,
                           streaming=True, chunk_rows=64, shard_rows=50)
    ingest_dataset(streamed, project / "shards", cache_dir=settings.download_cache, base_dir=project)
    return settings.data_root / "topics", project / "shards" / "topics"


def _job(folder, workdir, spec=TFIDF, cv=False, streamed=False, report=None) -> Job:
    selection = SelectionSpec(cv_below_rows=10_000 if cv else 0, folds=3)
    task = TaskSpec(dataset="topics", registered_model="m", candidates=[spec], selection=selection)
    data = None if streamed else load_classification_data(folder)
    method = "holdout" if streamed else method_name(selection, data)
    return Job(spec, task, folder, data, method, workdir, lambda metrics, step: None, report)


def test_holdout_scores_val_and_test_and_keeps_the_validation_probabilities(folders, tmp_path):
    job = _job(folders[0], tmp_path)
    fitted = fit_holdout(job)
    proba, y = fitted.selection
    assert job.method == "holdout" and fitted.cv is None
    assert proba.shape == (len(job.data.val_texts), len(TOPICS)) and y == list(job.data.val_labels)
    assert {"train_s", "latency_latency_ms_p50", "test_accuracy"} | VAL_SCORES | PER_CLASS <= set(fitted.metrics)
    assert fitted.val == {m: fitted.report["val"][m] for m in SELECTION_METRICS}
    assert fitted.test["accuracy"] > 0.8  # disjoint topic words: chance is 1/3
    assert fitted.example == [text[:500] for text in job.data.val_texts[:2]]


def test_cross_validation_scores_by_fold_means_and_refits_on_train_and_val(folders, tmp_path):
    job = _job(folders[0], tmp_path, cv=True)
    fitted = fit_cross_validated(job)
    rows = len(job.data.train_texts) + len(job.data.val_texts)
    proba, y = fitted.selection
    assert job.method == "cv3" and len(fitted.report["cv_folds"]) == 3 and fitted.report["selection"] == "cv3"
    assert fitted.metrics["refit_rows"] == rows and "refit_steps" in fitted.metrics
    assert proba.shape == (rows, len(TOPICS)) and y == list(job.data.train_labels) + list(job.data.val_labels)
    assert {f"val_{m}": v for m, v in fitted.val.items()}.items() <= fitted.metrics.items()
    assert fitted.val == fitted.cv.summary() and CV_SCORES <= set(fitted.metrics)
    # The validation scores are the fold means: no per-class scores of one validation split.
    assert not {name for name in PER_CLASS if name.startswith("val_")} & set(fitted.metrics)


def test_a_streamed_candidate_is_scored_from_its_shards(folders, tmp_path):
    job = _job(folders[1], tmp_path, spec=HASHED, streamed=True)
    fitted = fit_streamed(job)
    proba, y = fitted.selection
    val_rows = read_dataset_manifest(folders[1])["counts"]["rows"]["val"]
    assert proba.shape == (val_rows, len(TOPICS)) and len(y) == val_rows and fitted.cv is None
    assert {"train_s", "latency_latency_ms_p50", "test_accuracy"} | VAL_SCORES | PER_CLASS <= set(fitted.metrics)
    assert len(fitted.example) == 2 and all(isinstance(text, str) for text in fitted.example)


@pytest.mark.parametrize("way", ["holdout", "cv", "streamed"])
def test_a_search_trial_only_scores(folders, tmp_path, way):
    reported = []
    job = _job(folders[1] if way == "streamed" else folders[0], tmp_path, spec=HASHED if way == "streamed" else TFIDF,
               cv=way == "cv", streamed=way == "streamed", report=lambda metrics, step: reported.append(step))
    scores = score_trial(job)
    assert set(scores.metrics) == VAL_SCORES | {"train_s"} | (CV_SCORES if way == "cv" else set())
    assert scores.val == {m: scores.metrics[f"val_{m}"] for m in SELECTION_METRICS}
    assert (scores.cv is not None) == (way == "cv")
    if way == "cv":
        assert reported == [0, 1, 2]  # the running fold mean after each fold, for pruning
