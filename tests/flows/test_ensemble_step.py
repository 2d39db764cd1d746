"""The ensemble step on a smoke-sized task: it registers an `ensemble` candidate the leaderboard and promotion see."""

from __future__ import annotations

import json

import numpy as np
import pytest

from components.config import DatasetSpec, EnsembleSpec, ModelSpec, PipelineConfig, SourceSpec, TaskSpec
from components.models.ensemble import EnsemblePredictor
from flows import tracking
from flows.ensemble import add_ensemble
from flows.leaderboard import leaderboard
from flows.promote import select_best
from flows.train import code_version, train_candidate_task
from tests.flows.conftest import topic_project

CANDIDATES = [
    ModelSpec(name="words", kind="tfidf_logreg", params={"min_df": 1, "char_ngrams": None}),
    # Weak on purpose (few features, strong regularisation): the two err on different rows.
    ModelSpec(name="chars", kind="tfidf_logreg",
              params={"min_df": 1, "word_ngrams": [1, 1], "char_ngrams": [2, 3], "max_features": 30, "C": 0.05}),
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, prefect_harness):
    project = tmp_path_factory.mktemp("ensemble-project")
    settings, version = topic_project(project, tmp_path_factory.mktemp("ensemble-home"), rows_per_class=40)
    task_spec = TaskSpec(dataset="topics", registered_model=f"ens-{project.name}", candidates=CANDIDATES)
    code = code_version()
    results = [train_candidate_task.fn(settings, task_spec, spec, version, "repo", code, "test") for spec in CANDIDATES]
    return settings, task_spec, version, code, results


def _add(trained, **overrides):
    settings, task_spec, version, code, results = trained
    spec = task_spec.model_copy(update=overrides)
    return add_ensemble(settings, spec, [dict(r, cached=False) for r in results], version, repo_version="repo",
                        code=code, config_name="test")


def test_the_step_registers_an_ensemble_candidate_with_its_members_versions(trained):
    settings, task_spec, version, _, results = trained
    out = _add(trained)
    assert [r["candidate"] for r in out] == ["words", "chars", "ensemble"]
    ensemble = out[-1]
    assert ensemble["version"] is not None and ensemble["cached"] is False
    assert set(ensemble["val"]) >= {"accuracy", "macro_f1", "log_loss"} and "accuracy" in ensemble["test"]

    run = tracking.client(settings).get_run(ensemble["run_id"])
    assert run.data.tags["maas.candidate"] == "ensemble" and run.data.tags["maas.data_version"] == version
    assert {"val_macro_f1", "test_accuracy", "test_macro_f1", "train_s"} <= set(run.data.metrics)
    assert sorted(json.loads(run.data.params["members"])) == ["chars", "words"]

    loaded = tracking.load_registered(settings, task_spec.registered_model, ensemble["version"])
    assert isinstance(loaded, EnsemblePredictor)
    member_versions = {m["candidate"]: m["version"] for m in loaded.metadata["members"]}
    assert member_versions == {r["candidate"]: r["version"] for r in results if r["candidate"] in loaded.members}
    weights = np.array(list(loaded.weights.values()))
    assert (weights > 0).all() and weights.sum() == pytest.approx(1.0)
    assert loaded.predict(["goal match team coach win"])[0]["label"] == "sport"

    # The leaderboard reads it back from MLflow like any candidate.
    config = PipelineConfig(datasets=[DatasetSpec(name="topics", source=SourceSpec(kind="path", path="topics.csv"))],
                            classification=task_spec)
    rows = {row.candidate: row for row in leaderboard(settings, config, {"topics": version})}
    assert rows["ensemble"].version == ensemble["version"] and "macro_f1" in rows["ensemble"].val


def test_the_same_members_give_the_recorded_ensemble_back(trained):
    first, second = _add(trained)[-1], _add(trained)[-1]
    assert second["cached"] is True and second["version"] == first["version"]


def test_an_ensemble_that_only_ties_its_best_member_is_not_chosen(trained):
    out = _add(trained)
    # The topics are easy: a member already scores perfectly, so mixing cannot do better.
    assert out[0]["val"]["macro_f1"] == out[-1]["val"]["macro_f1"] == 1.0
    assert select_best(out, trained[1])["candidate"] == "words"


def test_no_ensemble_below_min_members_or_when_disabled(trained):
    assert [r["candidate"] for r in _add(trained, candidates=CANDIDATES, ensemble=EnsembleSpec(min_members=3))] == [
        "words", "chars"]
    assert [r["candidate"] for r in _add(trained, ensemble=EnsembleSpec(enabled=False))] == ["words", "chars"]

