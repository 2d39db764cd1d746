"""The ensemble step: after training, soft voting over a task's trained classifiers becomes one more candidate.

It reads each trained candidate's selection probabilities (flows.selection_log.selection_probabilities:
validation rows, or out-of-fold rows over train+val under CV), fits the weights
(components/models/ensemble.py), and logs the ensemble as an MLflow run with the metrics every
candidate has: `val_<metric>` is the nested held-out estimate (never the score of the weights on
the rows they were fitted on), test metrics are computed once and only reported. It is then
registered as candidate `ensemble`, so promotion chooses it only when its selection score beats
every member's; on a tie the member wins, being listed first.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from typing import Any

from prefect import task

from components.config import PipelineConfig, TaskSpec
from components.data.dataset import ClassificationData
from components.evaluation.classification import (
    classification_metrics,
    flat_metrics,
    measure_latency,
    plot_confusion_matrix,
)
from components.models.ensemble import KIND, EnsemblePredictor, MemberProbabilities, fit_ensemble
from components.models.registry import model_kind
from flows import tracking
from flows.ingest import DataVersions
from flows.logs import run_logger
from flows.selection_log import selection_probabilities
from flows.settings import Settings
from flows.train import code_version, experiment_name, load_task_data

NAME = "ensemble"  # the candidate name it registers under
SUMMARY = ("accuracy", "macro_f1", "log_loss")


def ensemble_members(task_spec: TaskSpec, results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The trained candidates an ensemble may hold: registered classifiers, never an earlier ensemble."""
    return [r for r in results if r.get("version") is not None and r.get("kind") != KIND]


def add_ensembles(settings: Settings, config: PipelineConfig, results: dict[str, list[dict[str, Any]]],
                  data: DataVersions, *, config_name: str, force: bool = False) -> dict[str, list[dict[str, Any]]]:
    """The pipeline's step: each trained classification task's results, its ensemble added."""
    code = code_version()
    return {
        task_name: add_ensemble(settings, task_spec, results[task_name], data.datasets[task_spec.dataset],
                                repo_version=data.repo, code=code, config_name=config_name, force=force)
        if task_name == "classification" else results[task_name]
        for task_name, task_spec in config.named_tasks() if task_name in results
    }


def add_ensemble(settings: Settings, task_spec: TaskSpec, results: list[dict[str, Any]], dataset_version: str, *,
                 repo_version: str, code: str, config_name: str, force: bool = False) -> list[dict[str, Any]]:
    """`results` plus the ensemble's result when the task asks for one and enough members trained.

    Cached like training: the same members (run ids), settings and code give the recorded run back.
    """
    logger = run_logger()
    members = ensemble_members(task_spec, results)
    spec = task_spec.ensemble
    if not spec.enabled or len(members) < spec.min_members:
        logger.info("ensemble: skipped (%s)", "disabled" if not spec.enabled else
                    f"{len(members)} trained classifier(s), it needs {spec.min_members}")
        return results
    state = build_ensemble.with_options(refresh_cache=force, task_run_name=f"ensemble-{task_spec.dataset}")(
        settings, task_spec, members, dataset_version, repo_version, code, config_name, return_state=True
    )
    result = state.result()
    return results if result is None else [*results, dict(result, cached=state.name == "Cached")]


def _cache_key(context, parameters: dict[str, Any]) -> str:
    payload = {
        "members": sorted((m["candidate"], m["run_id"]) for m in parameters["members"]),
        "task": parameters["task_spec"].registered_model,
        "metric": [parameters["task_spec"].metric, parameters["task_spec"].greater_is_better],
        "ensemble": parameters["task_spec"].ensemble.model_dump(),
        "dataset": parameters["dataset_version"],
        "code": parameters["code"],
        "store": parameters["settings"].tracking_uri,
    }
    return "ensemble-" + hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]


@task(name="ensemble", cache_key_fn=_cache_key, persist_result=True)
def build_ensemble(settings: Settings, task_spec: TaskSpec, members: list[dict[str, Any]], dataset_version: str,
                   repo_version: str, code: str, config_name: str) -> dict[str, Any] | None:
    """Fit, evaluate, log and register the ensemble; None (with a log line) when the members cannot be combined."""
    logger = run_logger()
    started = time.perf_counter()
    scored = _selection_rows(settings, members, logger)
    if scored is None:
        return None
    probabilities, y = scored
    fit = fit_ensemble(probabilities, y, task_spec.metric, task_spec.greater_is_better)
    by_name = {m["candidate"]: m for m in members}
    kept = [by_name[name] for name in fit.members]
    logger.info("ensemble: weights %s; nested val %s %.4f", _weights_text(fit.weights), task_spec.metric,
                fit.selection_metrics[task_spec.metric])
    data: ClassificationData = load_task_data(settings, task_spec, KIND)  # KIND is a classifier
    method = f"nested-{members[0].get('selection', 'holdout')}"
    # The members' tags (task, data versions, dataset, config, code), so the leaderboard lists it beside them.
    inherited = tracking.client(settings).get_run(kept[0]["run_id"]).data.tags
    tags = {key: value for key, value in inherited.items()
            if key.startswith("maas.") and key != tracking.PROCESS_TAG or key == "mlflow.source.git.commit"}
    tags |= {"maas.candidate": NAME, "maas.model_kind": KIND, "maas.selection": method, "maas.config": config_name,
             "maas.code_version": code, "maas.data_version": dataset_version, "maas.repo_data_version": repo_version}
    params = {"kind": KIND, "method": "caruana-greedy", "members": [m["candidate"] for m in members],
              "weights": fit.weights, "member_versions": {m["candidate"]: m["version"] for m in kept}}
    experiment_id = tracking.ensure_experiment(settings, experiment_name(task_spec))
    run_id = tracking.start_run(settings, experiment_id, NAME, tags, params)
    workdir = settings.work_dir / run_id
    try:
        predictor = EnsemblePredictor(
            {m["candidate"]: tracking.load_registered(settings, task_spec.registered_model, m["version"]) for m in kept},
            fit.weights, labels=fit.labels,
            metadata={
                "model_name": task_spec.registered_model, "candidate": NAME, "data_version": dataset_version,
                "run_id": run_id, "selection": method,
                "members": [{"candidate": m["candidate"], "kind": m["kind"], "version": m["version"],
                             "run_id": m["run_id"], "weight": fit.weights[m["candidate"]]} for m in kept],
            },
        )
        train_s = time.perf_counter() - started
        test = classification_metrics(data.test_labels, predictor.predict_proba(data.test_texts), predictor.labels)
        latency = measure_latency(predictor.predict_proba, data.test_texts)
        bundle_dir = predictor.save(workdir / "bundle")
        size_mb = sum(f.stat().st_size for f in bundle_dir.rglob("*") if f.is_file()) / 1e6
        metrics = {"train_s": train_s, "model_size_mb": size_mb, **{f"latency_{k}": v for k, v in latency.items()},
                   **flat_metrics(fit.selection_metrics, "val"), **flat_metrics(test, "test")}
        metrics_logger = tracking.RunLogger(tracking.client(settings), run_id)
        metrics_logger(metrics, None)
        metrics_logger.flush()
        report = {"selection": method, "val": fit.selection_metrics, "test": test, "latency": latency,
                  "weights": fit.weights}
        tracking.log_artifacts(settings, run_id, {
            "report.json": report,
            "confusion_matrix_test.png": plot_confusion_matrix(
                test["confusion_matrix"], predictor.labels, workdir / "confusion_matrix_test.png", "ensemble: test split"),
        })
        model_uri = tracking.log_model(
            settings, run_id, bundle_dir, [text[:500] for text in data.val_texts[:2] or data.test_texts[:2]],
            needs_torch=any(model_kind(m["kind"]).needs_torch for m in kept),
        )
        version = tracking.register_model(
            settings, model_uri, task_spec.registered_model,
            {"data_version": dataset_version, "candidate": NAME, "run_id": run_id, "selection": method,
             "members": ", ".join(f"{m['candidate']} v{m['version']}" for m in kept)},
        )
        tracking.end_run(settings, run_id)
    except BaseException:
        tracking.end_run(settings, run_id, "FAILED")
        raise
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    logger.info("ensemble: registered as %s v%s", task_spec.registered_model, version)
    return {
        "candidate": NAME, "kind": KIND, "run_id": run_id, "model_uri": model_uri, "version": version,
        "data_version": dataset_version, "selection": method,
        "val": {k: fit.selection_metrics[k] for k in SUMMARY}, "val_std": {},
        "test": {k: test[k] for k in SUMMARY}, "latency_ms_p50": latency["latency_ms_p50"],
        "train_s": train_s, "model_size_mb": size_mb,
    }


def _selection_rows(settings: Settings, members: list[dict[str, Any]],
                    logger) -> tuple[list[MemberProbabilities], list[str]] | None:
    """Each member's selection probabilities, and the rows' labels; None when they were not scored on the same rows."""
    probabilities, rows = [], None
    for member in members:
        try:
            proba, labels, y = selection_probabilities(settings, member["run_id"])
        except Exception as error:  # a run logged before selection probabilities existed
            logger.warning("ensemble: skipped: candidate %s has no selection probabilities (%s)",
                           member["candidate"], error)
            return None
        if rows is not None and list(y) != rows:
            logger.warning("ensemble: skipped: candidate %s was scored on other rows than %s (%s)",
                           member["candidate"], members[0]["candidate"], member.get("selection", "holdout"))
            return None
        rows = list(y)
        probabilities.append(MemberProbabilities(member["candidate"], list(labels), proba))
    return probabilities, rows


def _weights_text(weights: dict[str, float]) -> str:
    return ", ".join(f"{name} {weight:.2f}" for name, weight in weights.items())

