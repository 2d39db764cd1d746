"""The promotion gate against a real (temporary) MLflow registry.

A weakened challenger is never promoted; two promotions at once leave exactly one
consistent champion; rollback restores the replaced champion.
"""

from __future__ import annotations

import threading

import pytest

from components.config import BehaviouralChecks, ModelSpec, TaskSpec
from flows import tracking
from flows.promote import promote, rollback
from flows.train import code_version, train_candidate_task
from tests.flows.conftest import topic_project


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """A project with a small dataset, and two registered candidates: a good one and a weakened one."""
    project = tmp_path_factory.mktemp("gate-project")
    settings, version = topic_project(project, tmp_path_factory.mktemp("gate-home"))

    good = ModelSpec(name="good", kind="tfidf_logreg", params={"min_df": 1, "char_ngrams": None})
    weak = ModelSpec(name="weak", kind="tfidf_logreg",
                     params={"min_df": 1, "char_ngrams": None, "max_features": 2, "C": 0.0001})
    task_spec = TaskSpec(dataset="topics", registered_model=f"gate-{project.name}", candidates=[good, weak],
                         checks=BehaviouralChecks(must_pass={"sport": ["goal goal match team"]}))
    code = code_version()
    results = {spec.name: train_candidate_task.fn(settings, task_spec, spec, version, "test", code, "test")
               for spec in (good, weak)}
    assert results["good"]["val"]["macro_f1"] > results["weak"]["val"]["macro_f1"]
    # Every registered candidate's run carries its bundle's size (the leaderboard reads it from MLflow).
    assert tracking.run_metrics(settings, results["good"]["run_id"])["model_size_mb"] > 0
    return settings, task_spec, version, results


def _champion(settings, task_spec):
    return tracking.get_alias_version(settings, task_spec.registered_model).version


def test_weak_challenger_never_replaces_champion(registry):
    settings, task_spec, version, results = registry
    first = promote.fn(settings, task_spec, [results["good"]], version)
    assert first["promoted"] and _champion(settings, task_spec) == results["good"]["version"]
    second = promote.fn(settings, task_spec, [results["weak"]], version)
    assert second["promoted"] is False
    assert _champion(settings, task_spec) == results["good"]["version"]


def test_challenger_failing_behavioural_checks_is_not_promoted(registry):
    settings, task_spec, version, results = registry
    strict = task_spec.model_copy(update={
        "registered_model": task_spec.registered_model,
        "checks": BehaviouralChecks(must_pass={"politics": ["goal goal match team"]}),
    })
    before = tracking.get_alias_version(settings, task_spec.registered_model)
    decision = promote.fn(settings, strict, [results["good"]], version)
    assert decision["checks"]["passed"] is False
    after = tracking.get_alias_version(settings, task_spec.registered_model)
    assert (before.version if before else None) == (after.version if after else None)


def test_concurrent_promotions_leave_one_consistent_champion(registry):
    settings, task_spec, version, results = registry
    spec = task_spec.model_copy(update={"registered_model": task_spec.registered_model + "-race"})
    # Register the same two models under a fresh name so both start with no champion.
    for result in [results["good"], results["weak"]]:
        bundle = tracking.download_bundle(settings, task_spec.registered_model, result["version"],
                                          settings.home / "dl" / result["candidate"])
        model_uri = tracking.log_model(settings, result["run_id"], bundle, ["goal match"], needs_torch=False)
        new_version = tracking.register_model(settings, model_uri, spec.registered_model, {"data_version": version})
        result_copy = dict(result, version=new_version)
        results[result["candidate"] + "-race"] = result_copy
    barrier = threading.Barrier(2)
    errors = []

    def run(name):
        try:
            barrier.wait()
            promote.fn(settings, spec, [results[name]], version)
        except Exception as error:  # surfaced below
            errors.append(error)

    threads = [threading.Thread(target=run, args=(n,)) for n in ("weak-race", "good-race")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    aliases = tracking.version_aliases(settings, spec.registered_model)
    champions = [v for v, names in aliases.items() if "champion" in names]
    assert champions == [results["good-race"]["version"]]


def test_rollback_restores_previous_champion(registry):
    settings, task_spec, version, results = registry
    # Let the weak one win once, on purpose: no margin to beat, no checks to pass.
    spec = task_spec.model_copy(update={"margin": -1.0, "checks": BehaviouralChecks(invariance=[])})
    promote.fn(settings, spec, [results["weak"]], version)
    assert _champion(settings, task_spec) == results["weak"]["version"]
    rollback(settings, task_spec)
    assert _champion(settings, task_spec) == results["good"]["version"]
    previous = tracking.get_alias_version(settings, task_spec.registered_model, tracking.PREVIOUS)
    assert previous.version == results["weak"]["version"]


def test_a_cv_champion_on_new_data_is_judged_by_its_candidate_retrained_in_the_same_run(registry):
    """A CV champion was refit on train+val, so it has no score on new data; its candidate's CV score stands in."""
    settings, task_spec, version, results = registry
    spec = task_spec.model_copy(update={"registered_model": task_spec.registered_model + "-newdata",
                                        "checks": BehaviouralChecks(invariance=[])})
    registered = {}
    for name in ("good", "weak"):
        result = results[name]
        assert result["selection"].startswith("cv")  # 180 rows: chosen by cross-validation
        bundle = tracking.download_bundle(settings, task_spec.registered_model, result["version"],
                                          settings.home / "dl-newdata" / name)
        model_uri = tracking.log_model(settings, result["run_id"], bundle, ["goal match"], needs_torch=False)
        registered[name] = dict(result, version=tracking.register_model(
            settings, model_uri, spec.registered_model,
            {"data_version": version, "candidate": name, "selection": result["selection"]}))
    tracking.set_champion(settings, spec.registered_model, registered["good"]["version"])

    # The champion's candidate did not train on the new data: nothing comparable, so no change.
    kept = promote.fn(settings, spec, [registered["weak"]], "a-new-data-version")
    assert kept["promoted"] is False and "did not train in this run" in kept["reason"]
    assert _champion(settings, spec) == registered["good"]["version"]

    # Another candidate beats the champion's candidate retrained on the new data.
    retrained = dict(registered["good"], val={**registered["good"]["val"], "macro_f1": 0.0})
    beaten = promote.fn(settings, spec, [registered["weak"], retrained], "a-new-data-version")
    assert beaten["promoted"] and beaten["champion"]["score"] == 0.0
    assert _champion(settings, spec) == registered["weak"]["version"]

    # The champion's candidate wins again: its retrained version becomes the champion.
    tracking.set_champion(settings, spec.registered_model, registered["good"]["version"])
    again = dict(registered["weak"], candidate="good")
    refreshed = promote.fn(settings, spec, [again], "a-new-data-version")
    assert refreshed["promoted"] and "retrained on this data" in refreshed["reason"]
    assert _champion(settings, spec) == registered["weak"]["version"]
