"""Training: one Prefect task per candidate, each an MLflow run with a registered model version.

A candidate's result is cached by (dataset version, model spec, code version, tracking
store): training the same thing on the same data again returns the recorded run instead
of a new one. `force=True` (`--force`) retrains anyway.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from prefect import task

from components.config import ModelSpec, TaskSpec
from components.data.dataset import (
    SHARDS_LAYOUT,
    ClassificationData,
    CorpusData,
    load_classification_data,
    load_corpus,
    read_dataset_manifest,
)
from components.evaluation.classification import plot_confusion_matrix
from components.models import streaming_linear
from components.models.registry import model_kind
from components.search import Pruned
from components.selection import SELECTION_METRICS, CVResult, method_name
from components.training.callbacks import MetricsCallback
from flows import tracking
from flows.fitting import (
    Fitted,
    Job,
    TrialScores,
    fit_cross_validated,
    fit_holdout,
    fit_streamed,
    score_trial,
)
from flows.logs import run_logger
from flows.selection_log import save_selection
from flows.settings import Settings


def code_version(project_dir: Path | None = None) -> str:
    """A hash of the library code that decides what a trained model is."""
    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for path in sorted((root / "components").rglob("*.py")) + [root / "flows" / "pyfunc_model.py"]:
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def experiment_name(task_spec: TaskSpec) -> str:
    return f"maas-{task_spec.registered_model}"


def load_task_data(settings: Settings, task_spec: TaskSpec, kind: str) -> ClassificationData | CorpusData:
    folder = settings.data_root / task_spec.dataset
    if model_kind(kind).is_language_model:
        return load_corpus(folder)
    return load_classification_data(folder)


def streams(settings: Settings, task_spec: TaskSpec, kind: str) -> bool:
    """Whether a candidate trains and is scored from the dataset's shards, never holding a split:
    the streaming kind on a streamed (sharded) dataset; every other case loads the data."""
    if kind != streaming_linear.KIND:
        return False
    return read_dataset_manifest(settings.data_root / task_spec.dataset).get("layout") == SHARDS_LAYOUT


def _cache_key(context, parameters: dict[str, Any]) -> str:
    payload = {
        "spec": parameters["model_spec"].model_dump(mode="json"),
        "task": parameters["task_spec"].registered_model,
        "dataset": parameters["dataset_version"],
        "code": parameters["code"],
        "store": parameters["settings"].tracking_uri,
        "register": parameters.get("register", True),
        "trial_of": parameters.get("trial_of"),
        "registry_tags": parameters.get("registry_tags") or {},
        "selection": parameters["task_spec"].selection.model_dump(),
    }
    return "train-" + hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]


@task(name="train-candidate", cache_key_fn=_cache_key, persist_result=True)
def train_candidate_task(
    settings: Settings,
    task_spec: TaskSpec,
    model_spec: ModelSpec,
    dataset_version: str,
    repo_version: str,
    code: str,
    config_name: str,
    nproc: int = 1,
    parent_run_id: str | None = None,
    register: bool = True,
    trial_of: str | None = None,
    report: MetricsCallback | None = None,
    registry_tags: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Train, evaluate, log and register one candidate; returns a small summary (no models).

    On a small classification set (`task_spec.selection`) the selection scores are the k-fold
    CV means on train+val and the model is then refit on train+val; otherwise they are the
    validation split's. A search trial (`trial_of` names its candidate) only scores: no test,
    no logged model; `report(metrics, step)` gets its progress and may raise `Pruned`, which
    ends the trial with `{"pruned": True}`. flows/fitting.py holds one function per way.
    """
    logger = run_logger()
    folder = settings.data_root / task_spec.dataset
    # A streamed candidate never loads the splits; it is scored on the validation split (no CV).
    streamed = streams(settings, task_spec, model_spec.kind)
    data = None if streamed else load_task_data(settings, task_spec, model_spec.kind)
    method = "holdout" if streamed else method_name(task_spec.selection, data)
    tags = _run_tags(settings, task_spec, model_spec, data, method, dataset_version, repo_version, code, config_name,
                     trial_of, parent_run_id)
    params = {"kind": model_spec.kind, "nproc": nproc, **model_spec.params, **model_spec.training.model_dump()}
    experiment_id = tracking.ensure_experiment(settings, experiment_name(task_spec))
    run_id = tracking.start_run(settings, experiment_id, model_spec.name, tags, params)
    metrics_logger = tracking.RunLogger(tracking.client(settings), run_id)
    job = Job(model_spec, task_spec, folder, data, method, settings.work_dir / run_id, metrics_logger, report)
    try:
        logger.info("training %s (%s) on %s@%s, chosen by %s", model_spec.name, model_spec.kind, task_spec.dataset,
                    dataset_version[:8], method)
        if trial_of:
            return _finish_trial(settings, run_id, metrics_logger, model_spec, score_trial(job))
        if streamed:
            fitted = fit_streamed(job)
        elif method != "holdout":
            fitted = fit_cross_validated(job)
        else:
            fitted = fit_holdout(job, nproc)
        identity = {"candidate": model_spec.name, "data_version": dataset_version, "run_id": run_id,
                    "selection": method}
        model_uri, version, size_mb = log_and_register(settings, job, fitted, metrics_logger, identity, register,
                                                       registry_tags)
        tracking.end_run(settings, run_id)
        logger.info("%s: val %s, %s", model_spec.name, _fmt(fitted.val),
                    f"registered as {task_spec.registered_model} v{version}" if version else f"logged as {model_uri}")
        return {"candidate": model_spec.name, "kind": model_spec.kind, "run_id": run_id, "model_uri": model_uri,
                "version": version, "data_version": dataset_version, "selection": method, "val": fitted.val,
                "val_std": _val_std(fitted.cv), "test": fitted.test,
                "latency_ms_p50": fitted.report["latency"]["latency_ms_p50"], "train_s": fitted.metrics["train_s"],
                "model_size_mb": size_mb}
    except Pruned as stopped:  # the search's verdict, not a failure: a log line, no traceback
        metrics_logger.flush()
        tracking.end_run(settings, run_id, "KILLED")
        logger.info("%s", stopped)
        return {"candidate": model_spec.name, "pruned": True, "val": {}}
    except BaseException:
        metrics_logger.flush()
        tracking.end_run(settings, run_id, "FAILED")
        raise
    finally:
        # Checkpoints are only needed while training; the bundle now lives in MLflow.
        shutil.rmtree(job.workdir, ignore_errors=True)


def _run_tags(settings: Settings, task_spec: TaskSpec, model_spec: ModelSpec,
              data: ClassificationData | CorpusData | None, method: str, dataset_version: str, repo_version: str,
              code: str, config_name: str, trial_of: str | None, parent_run_id: str | None) -> dict[str, str]:
    tags = {
        "maas.task": "generation" if isinstance(data, CorpusData) else "classification",
        "maas.candidate": model_spec.name,
        "maas.model_kind": model_spec.kind,
        "maas.data_version": dataset_version,
        "maas.repo_data_version": repo_version,
        "maas.dataset": task_spec.dataset,
        "maas.config": config_name,
        "maas.code_version": code,
        "maas.selection": method,
        "mlflow.source.git.commit": tracking.git_commit(settings.project_dir),
    }
    if trial_of:
        # Trials carry no `maas.candidate` tag, so the leaderboard lists the candidate, not its trials.
        del tags["maas.candidate"]
        tags["maas.trial_of"] = trial_of
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id  # a search trial: nested under the search's run
    return tags


def log_and_register(settings: Settings, job: Job, fitted: Fitted, metrics_logger: tracking.RunLogger,
                     identity: dict[str, str], register: bool,
                     registry_tags: dict[str, str] | None) -> tuple[str, str | None, float]:
    """Log a fitted candidate's metrics, artifacts and model, and register it if `register`.

    `identity` (candidate, data_version, run_id, selection) goes into the bundle's metadata and,
    with `registry_tags`, into the version's tags. Returns the logged model's URI, the registered
    version (None when not registered) and the bundle's size in MB.
    """
    run_id, predictor, workdir = identity["run_id"], fitted.predictor, job.workdir
    predictor.metadata |= {"model_name": job.task.registered_model, **identity}
    bundle_dir = predictor.save(workdir / "bundle")
    size_mb = sum(f.stat().st_size for f in bundle_dir.rglob("*") if f.is_file()) / 1e6
    metrics_logger(fitted.metrics | {"model_size_mb": size_mb}, None)
    metrics_logger.flush()  # the size used to be logged after the last flush and never reached MLflow
    artifacts: dict[str, Any] = {"report.json": fitted.report, "model_spec.json": job.spec.model_dump(mode="json")}
    if fitted.selection is not None:  # a classifier (a generation model has no selection probabilities)
        artifacts["confusion_matrix_test.png"] = plot_confusion_matrix(
            fitted.report["test"]["confusion_matrix"], predictor.labels, workdir / "confusion_matrix_test.png",
            f"{job.spec.name}: test split",
        )
        save_selection(settings, run_id, workdir / "selection", list(predictor.labels), *fitted.selection)
    elif predictor.metadata.get("samples"):
        samples = workdir / "samples.txt"
        samples.write_text("\n\n---\n\n".join(predictor.metadata["samples"]))
        artifacts["samples.txt"] = samples
    tracking.log_artifacts(settings, run_id, artifacts)
    model_uri = tracking.log_model(settings, run_id, bundle_dir, fitted.example,
                                   needs_torch=model_kind(job.spec.kind).needs_torch)
    if not register:
        return model_uri, None, size_mb
    version = tracking.register_model(settings, model_uri, job.task.registered_model,
                                      identity | (registry_tags or {}))
    return model_uri, version, size_mb


def _finish_trial(settings: Settings, run_id: str, metrics_logger: tracking.RunLogger, spec: ModelSpec,
                  scores: TrialScores) -> dict[str, Any]:
    """A search trial's record: its scores only (it has no test score and no logged model)."""
    metrics_logger(scores.metrics, None)
    metrics_logger.flush()
    tracking.end_run(settings, run_id)
    return {"candidate": spec.name, "kind": spec.kind, "run_id": run_id, "version": None, "val": scores.val,
            "val_std": _val_std(scores.cv), "train_s": scores.metrics["train_s"]}


def _val_std(cv: CVResult | None) -> dict[str, float]:
    return {m: cv.std(m) for m in SELECTION_METRICS} if cv is not None else {}


def _fmt(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.4f}" for k, v in metrics.items())
