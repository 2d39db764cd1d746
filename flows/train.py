"""Training: one Prefect task per candidate, each an MLflow run with a registered model version.

A candidate's result is cached by (dataset version, model spec, code version, tracking
store): training the same thing on the same data again returns the recorded run instead
of a new one. `force=True` (`--force`) retrains anyway.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path
from typing import Any

from prefect import task

from components.config import ModelSpec, TaskSpec
from components.data.dataset import ClassificationData, CorpusData, load_classification_data, load_corpus
from components.evaluation.classification import flat_metrics, plot_confusion_matrix
from components.evaluation.report import evaluate
from components.models.registry import model_kind
from components.predictor import Predictor, load_predictor
from components.training import distributed
from components.training.candidates import train_candidate
from flows import tracking
from flows.logs import run_logger
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


def _cache_key(context, parameters: dict[str, Any]) -> str:
    payload = {
        "spec": parameters["model_spec"].model_dump(mode="json"),
        "task": parameters["task_spec"].registered_model,
        "dataset": parameters["dataset_version"],
        "code": parameters["code"],
        "store": parameters["settings"].tracking_uri,
        "register": parameters.get("register", True),
    }
    return "train-" + hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]


def train_distributed(
    spec: ModelSpec, dataset_folder: Path, workdir: Path, nproc: int, on_metrics
) -> Predictor:
    """Train under torchrun on `nproc` processes (DDP); rank 0 saves the bundle, we load it."""
    workdir.mkdir(parents=True, exist_ok=True)
    spec_file, out, metrics_file = workdir / "spec.json", workdir / "ddp-bundle", workdir / "metrics.jsonl"
    spec_file.write_text(spec.model_dump_json())
    distributed.launch(
        nproc,
        ["--spec", str(spec_file), "--data", str(dataset_folder), "--workdir", str(workdir / "ddp"),
         "--out", str(out), "--metrics", str(metrics_file)],
        cwd=Path(__file__).resolve().parents[1],
    )
    if metrics_file.exists():
        for line in metrics_file.read_text().splitlines():
            record = json.loads(line)
            on_metrics(record["metrics"], record["step"])
    return load_predictor(out)


# The sampling parameters a generation model takes through pyfunc's `params` (their schema
# comes from this example; the values are the defaults of a `predict` call without params).
GENERATION_PARAMS = {"max_new_tokens": 100, "temperature": 1.0, "top_k": 0, "top_p": 1.0, "seed": 0}


def _input_example(data: ClassificationData | CorpusData) -> list[str] | tuple[list[str], dict[str, Any]]:
    if isinstance(data, ClassificationData):
        return [text[:500] for text in data.val_texts[:2]]
    return [data.val_text[:40]], GENERATION_PARAMS


def _summary_metrics(report: dict, task: str) -> tuple[dict[str, float], dict[str, float]]:
    if task == "classification":
        keys = ("accuracy", "macro_f1", "log_loss")
        return ({k: report["val"][k] for k in keys}, {k: report["test"][k] for k in keys})
    return ({k: float(v) for k, v in report["val"].items()}, {k: float(v) for k, v in report["test"].items()})


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
) -> dict[str, Any]:
    """Train, evaluate, log and register one candidate; returns a small summary (no models)."""
    logger = run_logger()
    data = load_task_data(settings, task_spec, model_spec.kind)
    experiment_id = tracking.ensure_experiment(settings, experiment_name(task_spec))
    tags = {
        "maas.task": "generation" if isinstance(data, CorpusData) else "classification",
        "maas.candidate": model_spec.name,
        "maas.model_kind": model_spec.kind,
        "maas.data_version": dataset_version,
        "maas.repo_data_version": repo_version,
        "maas.dataset": task_spec.dataset,
        "maas.config": config_name,
        "maas.code_version": code,
        "mlflow.source.git.commit": tracking.git_commit(settings.project_dir),
    }
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id  # a sweep trial: nested under the sweep's run
    params = {"kind": model_spec.kind, "nproc": nproc, **model_spec.params, **model_spec.training.model_dump()}
    run_id = tracking.start_run(settings, experiment_id, model_spec.name, tags, params)
    metrics_logger = tracking.RunLogger(tracking.client(settings), run_id)
    workdir = settings.work_dir / run_id
    try:
        logger.info("training %s (%s) on %s@%s", model_spec.name, model_spec.kind, task_spec.dataset, dataset_version[:8])
        started = time.perf_counter()
        if nproc > 1:
            predictor = train_distributed(
                model_spec, settings.data_root / task_spec.dataset, workdir / "train", nproc, metrics_logger
            )
        else:
            predictor = train_candidate(model_spec, data, workdir / "train", metrics_logger)
        train_s = time.perf_counter() - started
        report = evaluate(predictor, data)
        val, test = _summary_metrics(report, tags["maas.task"])
        metrics = {"train_s": train_s, **{f"latency_{k}": v for k, v in report["latency"].items()}}
        if tags["maas.task"] == "classification":
            metrics |= flat_metrics(report["val"], "val") | flat_metrics(report["test"], "test")
        else:
            metrics |= {f"val_{k}": v for k, v in val.items()}
        metrics_logger(metrics, None)
        metrics_logger.flush()

        predictor.metadata |= {
            "model_name": task_spec.registered_model,
            "candidate": model_spec.name,
            "data_version": dataset_version,
            "run_id": run_id,
        }
        bundle_dir = predictor.save(workdir / "bundle")
        size_mb = sum(f.stat().st_size for f in bundle_dir.rglob("*") if f.is_file()) / 1e6
        metrics_logger({"model_size_mb": size_mb}, None)
        artifacts: dict[str, Any] = {"report.json": report, "model_spec.json": model_spec.model_dump(mode="json")}
        if tags["maas.task"] == "classification":
            artifacts["confusion_matrix_test.png"] = plot_confusion_matrix(
                report["test"]["confusion_matrix"], predictor.labels, workdir / "confusion_matrix_test.png",
                f"{model_spec.name}: test split",
            )
        elif predictor.metadata.get("samples"):
            samples = workdir / "samples.txt"
            samples.write_text("\n\n---\n\n".join(predictor.metadata["samples"]))
            artifacts["samples.txt"] = samples
        tracking.log_artifacts(settings, run_id, artifacts)
        model_uri = tracking.log_model(
            settings, run_id, bundle_dir, _input_example(data),
            needs_torch=model_kind(model_spec.kind).needs_torch,
        )
        version = None
        if register:
            version = tracking.register_model(
                settings, model_uri, task_spec.registered_model,
                {"data_version": dataset_version, "candidate": model_spec.name, "run_id": run_id},
            )
        tracking.end_run(settings, run_id)
        logger.info("%s: val %s, %s", model_spec.name, _fmt(val),
                    f"registered as {task_spec.registered_model} v{version}" if version else f"logged as {model_uri}")
        return {
            "candidate": model_spec.name,
            "kind": model_spec.kind,
            "run_id": run_id,
            "model_uri": model_uri,
            "version": version,
            "data_version": dataset_version,
            "val": val,
            "test": test,
            "latency_ms_p50": report["latency"]["latency_ms_p50"],
            "train_s": train_s,
            "model_size_mb": size_mb,
        }
    except BaseException:
        metrics_logger.flush()
        tracking.end_run(settings, run_id, "FAILED")
        raise
    finally:
        # Checkpoints are only needed while training; the bundle now lives in MLflow.
        shutil.rmtree(workdir, ignore_errors=True)


def _fmt(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.4f}" for k, v in metrics.items())
