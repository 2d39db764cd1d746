"""A sweep runs its trials as nested MLflow runs and registers the best one."""

from __future__ import annotations

import pytest

from components.config import DatasetSpec, ModelSpec, PipelineConfig, SourceSpec, SweepSpec, TaskSpec
from flows import tracking
from flows.sweep import sweep, task_runner
from tests.flows.conftest import topic_project


@pytest.mark.parametrize("method", ["random", "optuna"])
def test_sweep_nests_trials_and_registers_the_best(tmp_path, prefect_harness, method):
    (tmp_path / "project").mkdir()
    settings, _ = topic_project(tmp_path / "project", tmp_path / "home")
    base = ModelSpec(name="tfidf", kind="tfidf_logreg", params={"min_df": 1, "char_ngrams": None})
    space = SweepSpec(method=method, trials=3, parallel=2, seed=1,
                      space={"C": [0.0001, 0.001, 10.0], "max_features": [3, 1000]})
    task_spec = TaskSpec(dataset="topics", registered_model=f"sweep-{method}-{tmp_path.name}"[:60],
                         candidates=[base], sweeps={"tfidf": space})
    config = PipelineConfig(datasets=[DatasetSpec(name="topics", source=SourceSpec(kind="path", path="topics.csv"))],
                            classification=task_spec)
    # data.dvc is not needed: ensure_data only pulls when data/ is missing
    outcome = sweep.with_options(task_runner=task_runner("threads", 2))(settings, config, "tfidf")

    trials = outcome["trials"]
    assert len(trials) == 3
    for trial in trials:
        run = tracking.client(settings).get_run(trial["run_id"])
        assert run.data.tags["mlflow.parentRunId"] == outcome["parent_run_id"]
        assert trial["version"] is None  # trials are logged, not registered
    best = outcome["best"]
    assert best["val"]["macro_f1"] == max(t["val"]["macro_f1"] for t in trials)
    champion = tracking.get_alias_version(settings, task_spec.registered_model)
    assert champion.version == best["version"] and champion.tags["sweep_run_id"] == outcome["parent_run_id"]
