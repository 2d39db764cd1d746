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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
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
from components.evaluation.classification import (
    classification_metrics,
    flat_metrics,
    measure_latency,
    plot_confusion_matrix,
)
from components.evaluation.report import evaluate
from components.models import streaming_linear
from components.models.registry import model_kind
from components.predictor import Predictor, load_predictor
from components.search import Pruned
from components.selection import (
    SELECTION_METRICS,
    CVResult,
    cross_validate,
    method_name,
    pooled,
    refit_data,
    refit_spec,
    without_test,
)
from components.training import distributed
from components.training.callbacks import MetricsCallback
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


def streams(settings: Settings, task_spec: TaskSpec, kind: str) -> bool:
    """Whether a candidate trains and is scored from the dataset's shards, never holding a split:
    the streaming kind on a streamed (sharded) dataset; every other case loads the data."""
    if kind != streaming_linear.KIND:
        return False
    return read_dataset_manifest(settings.data_root / task_spec.dataset).get("layout") == SHARDS_LAYOUT


# Validation rows whose probabilities a streamed candidate keeps for ensembles (rows x classes
# floats); past this, the first rows only, and the run says so.
SELECTION_MAX_ROWS = 200_000


@dataclass
class StreamedScores:
    """A streamed candidate's evaluation report and what the run logs beside it."""

    report: dict[str, Any]  # {"val", "test", "latency"} as `evaluate` makes them
    val_proba: np.ndarray  # at most SELECTION_MAX_ROWS rows, in split order
    val_labels: list[str]
    examples: list[str]  # the first texts of the validation split


def score_streamed(predictor: Predictor, folder: Path, splits: tuple[str, ...], chunk_rows: int) -> StreamedScores:
    """Metrics of each split read chunk by chunk: the texts of one chunk at a time, the
    predictions and labels of the whole split (numbers and short strings)."""
    report: dict[str, Any] = {}
    samples: dict[str, list[str]] = {}
    val_proba, val_labels = np.zeros((0, len(predictor.labels))), []
    for split in splits:
        truth, probabilities, sample = [], [], []
        for texts, labels in streaming_linear.folder_chunks(folder, split, chunk_rows):
            truth.extend(labels)
            probabilities.append(predictor.predict_proba(texts))
            sample.extend(texts[: max(0, 64 - len(sample))])
        proba = np.vstack(probabilities) if probabilities else np.zeros((0, len(predictor.labels)))
        report[split] = classification_metrics(truth, proba, predictor.labels)
        samples[split] = sample
        if split == "val":
            val_proba, val_labels = proba[:SELECTION_MAX_ROWS], truth[:SELECTION_MAX_ROWS]
            if len(truth) > SELECTION_MAX_ROWS:
                run_logger().warning("selection probabilities kept for the first %d of %d validation rows",
                                     SELECTION_MAX_ROWS, len(truth))
    report["latency"] = measure_latency(predictor.predict_proba, samples.get("test") or samples["val"])
    return StreamedScores(report, val_proba, val_labels, samples["val"])


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
    trial_of: str | None = None,
    report: MetricsCallback | None = None,
    registry_tags: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Train, evaluate, log and register one candidate; returns a small summary (no models).

    On a small classification set (`task_spec.selection`) the selection scores are the k-fold
    CV means on train+val and the model is then refit on train+val; otherwise they are the
    validation split's. A search trial (`trial_of` names its candidate) only scores: no test,
    no logged model; `report(metrics, step)` gets its progress and may raise `Pruned`, which
    ends the trial with `{"pruned": True}`.
    """
    logger = run_logger()
    folder = settings.data_root / task_spec.dataset
    # A streamed candidate never loads the splits; it is scored on the validation split (no CV).
    streamed = streams(settings, task_spec, model_spec.kind)
    data = None if streamed else load_task_data(settings, task_spec, model_spec.kind)
    is_classification = streamed or isinstance(data, ClassificationData)
    method = "holdout" if streamed else method_name(task_spec.selection, data)
    experiment_id = tracking.ensure_experiment(settings, experiment_name(task_spec))
    tags = {
        "maas.task": "classification" if is_classification else "generation",
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
    params = {"kind": model_spec.kind, "nproc": nproc, **model_spec.params, **model_spec.training.model_dump()}
    run_id = tracking.start_run(settings, experiment_id, model_spec.name, tags, params)
    metrics_logger = tracking.RunLogger(tracking.client(settings), run_id)
    workdir = settings.work_dir / run_id
    try:
        logger.info("training %s (%s) on %s@%s, chosen by %s", model_spec.name, model_spec.kind, task_spec.dataset,
                    dataset_version[:8], method)
        started = time.perf_counter()
        metrics: dict[str, float] = {}
        cv = None
        scored = None
        if streamed:
            on_metrics = metrics_logger if report is None else _both(metrics_logger, report)
            predictor = streaming_linear.train_from_folder(model_spec, folder, workdir / "train", on_metrics)
            scored = score_streamed(predictor, folder, ("val",) if trial_of else ("val", "test"),
                                    streaming_linear.resolve_params(model_spec.params)["chunk_rows"])
            if trial_of:
                val = {m: float(scored.report["val"][m]) for m in SELECTION_METRICS}
                metrics |= {f"val_{m}": v for m, v in val.items()}
                return _finish_trial(settings, run_id, metrics_logger, metrics, model_spec, started, val, None)
        elif method != "holdout":
            cv = cross_validate(
                lambda fold, i: train_candidate(model_spec, fold, workdir / f"fold-{i}", _prefixed(metrics_logger, i)),
                data, task_spec.selection, on_fold=_fold_reporter(report, task_spec.metric),
            )
            val = cv.summary()
            metrics |= {f"cv_{m}_{stat}": getattr(cv, stat)(m) for m in SELECTION_METRICS for stat in ("mean", "std")}
            metrics |= {f"val_{m}": v for m, v in val.items()}  # what promotion and the leaderboard read
            if trial_of:
                return _finish_trial(settings, run_id, metrics_logger, metrics, model_spec, started, val, cv)
            refit = refit_spec(model_spec, cv, len(pooled(data)[0]))
            metrics |= {"refit_rows": len(pooled(data)[0]), "refit_steps": refit.training.max_steps or 0}
            logger.info("%s: CV %s %.4f ± %.4f over %d folds; refitting on train+val%s", model_spec.name,
                        task_spec.metric, cv.mean(task_spec.metric), cv.std(task_spec.metric), len(cv.fold_metrics),
                        f" for {refit.training.max_steps} steps" if refit.training.max_steps else "")
            predictor = train_candidate(refit, refit_data(data), workdir / "train", metrics_logger)
        elif trial_of:
            on_metrics = metrics_logger if report is None else _both(metrics_logger, report)
            trial_data = without_test(data) if is_classification else data
            predictor = train_candidate(model_spec, trial_data, workdir / "train", on_metrics)
            val = _validation_scores(predictor, trial_data)
            metrics |= {f"val_{m}": v for m, v in val.items()}
            return _finish_trial(settings, run_id, metrics_logger, metrics, model_spec, started, val, None)
        elif nproc > 1:
            predictor = train_distributed(
                model_spec, settings.data_root / task_spec.dataset, workdir / "train", nproc, metrics_logger
            )
        else:
            predictor = train_candidate(model_spec, data, workdir / "train", metrics_logger)
        train_s = time.perf_counter() - started
        if cv is not None:
            test_metrics = classification_metrics(data.test_labels, predictor.predict_proba(data.test_texts),
                                                  predictor.labels)
            report_doc = {"selection": method, "val": val, "cv_folds": cv.fold_metrics, "test": test_metrics,
                          "latency": measure_latency(predictor.predict_proba, data.test_texts)}
            test = {k: test_metrics[k] for k in SELECTION_METRICS}
        elif scored is not None:
            report_doc = scored.report
            val, test = _summary_metrics(report_doc, tags["maas.task"])
        else:
            report_doc = evaluate(predictor, data)
            val, test = _summary_metrics(report_doc, tags["maas.task"])
        metrics |= {"train_s": train_s, **{f"latency_{k}": v for k, v in report_doc["latency"].items()}}
        if is_classification:
            metrics |= flat_metrics(report_doc["test"], "test")
            metrics |= flat_metrics(report_doc["val"], "val") if cv is None else {}
        else:
            metrics |= {f"val_{k}": v for k, v in val.items()}
        metrics_logger(metrics, None)
        metrics_logger.flush()

        predictor.metadata |= {
            "model_name": task_spec.registered_model,
            "candidate": model_spec.name,
            "data_version": dataset_version,
            "run_id": run_id,
            "selection": method,
        }
        bundle_dir = predictor.save(workdir / "bundle")
        size_mb = sum(f.stat().st_size for f in bundle_dir.rglob("*") if f.is_file()) / 1e6
        metrics_logger({"model_size_mb": size_mb}, None)
        artifacts: dict[str, Any] = {"report.json": report_doc, "model_spec.json": model_spec.model_dump(mode="json")}
        if is_classification:
            artifacts["confusion_matrix_test.png"] = plot_confusion_matrix(
                report_doc["test"]["confusion_matrix"], predictor.labels, workdir / "confusion_matrix_test.png",
                f"{model_spec.name}: test split",
            )
            if scored is not None:
                _save_selection(settings, run_id, workdir / "selection", list(predictor.labels), scored.val_proba,
                                scored.val_labels)
            else:
                _log_selection(settings, run_id, workdir / "selection", predictor, data, cv)
        elif predictor.metadata.get("samples"):
            samples = workdir / "samples.txt"
            samples.write_text("\n\n---\n\n".join(predictor.metadata["samples"]))
            artifacts["samples.txt"] = samples
        tracking.log_artifacts(settings, run_id, artifacts)
        model_uri = tracking.log_model(
            settings, run_id, bundle_dir,
            [text[:500] for text in scored.examples[:2]] if scored is not None else _input_example(data),
            needs_torch=model_kind(model_spec.kind).needs_torch,
        )
        version = None
        if register:
            version = tracking.register_model(
                settings, model_uri, task_spec.registered_model,
                {"data_version": dataset_version, "candidate": model_spec.name, "run_id": run_id,
                 "selection": method, **(registry_tags or {})},
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
            "selection": method,
            "val": val,
            "val_std": {m: cv.std(m) for m in SELECTION_METRICS} if cv is not None else {},
            "test": test,
            "latency_ms_p50": report_doc["latency"]["latency_ms_p50"],
            "train_s": train_s,
            "model_size_mb": size_mb,
        }
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
        shutil.rmtree(workdir, ignore_errors=True)


def _finish_trial(settings: Settings, run_id: str, metrics_logger, metrics: dict[str, float], spec: ModelSpec,
                  started: float, val: dict[str, float], cv: CVResult | None) -> dict[str, Any]:
    """A search trial's record: its scores only (it has no test score and no logged model)."""
    train_s = time.perf_counter() - started
    metrics_logger(metrics | {"train_s": train_s}, None)
    metrics_logger.flush()
    tracking.end_run(settings, run_id)
    return {"candidate": spec.name, "kind": spec.kind, "run_id": run_id, "version": None, "val": val,
            "val_std": {m: cv.std(m) for m in SELECTION_METRICS} if cv is not None else {}, "train_s": train_s}


def _validation_scores(predictor: Predictor, data: ClassificationData | CorpusData) -> dict[str, float]:
    if isinstance(data, ClassificationData):
        scores = classification_metrics(data.val_labels, predictor.predict_proba(data.val_texts), predictor.labels)
        return {m: float(scores[m]) for m in SELECTION_METRICS}
    return {k: float(v) for k, v in evaluate(predictor, data)["val"].items()}


def _prefixed(on_metrics: MetricsCallback, fold: int) -> MetricsCallback:
    """A fold's training curves, kept apart from the refit's (`fold0_train_loss`, ...)."""
    return lambda metrics, step: on_metrics({f"fold{fold}_{k}": v for k, v in metrics.items()}, step)


def _both(first: MetricsCallback, second: MetricsCallback) -> MetricsCallback:
    def both(metrics, step):
        first(metrics, step)
        second(metrics, step)

    return both


def _fold_reporter(report: MetricsCallback | None, metric: str):
    """Under CV a trial reports the running fold mean after each fold (step = fold index)."""
    if report is None:
        return None
    return lambda fold, cv: report({f"val_{metric}": cv.mean(metric)}, fold)


SELECTION_ARTIFACTS = "selection"


def _log_selection(settings: Settings, run_id: str, folder: Path, predictor: Predictor, data: ClassificationData,
                   cv: CVResult | None) -> None:
    """The probabilities the candidate was chosen by, for ensembles: out-of-fold over train+val
    under CV, else the validation split's; columns in the bundle's label order."""
    labels = list(predictor.labels)
    if cv is not None:
        index = {label: i for i, label in enumerate(cv.labels)}
        proba, y = cv.proba[:, [index[label] for label in labels]], cv.y
    else:
        proba, y = predictor.predict_proba(data.val_texts), list(data.val_labels)
    _save_selection(settings, run_id, folder, labels, proba, y)


def _save_selection(settings: Settings, run_id: str, folder: Path, labels: list[str], proba, y: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "proba.npy", np.asarray(proba, dtype=np.float32))
    (folder / "labels.json").write_text(json.dumps({"labels": labels, "y": list(y)}))
    tracking.log_artifact_folder(settings, run_id, folder, SELECTION_ARTIFACTS)


def selection_probabilities(settings: Settings, run_id: str) -> tuple[np.ndarray, list[str], list[str]]:
    """A candidate run's selection probabilities (rows x classes, float32), the class names of
    its columns and the true label of each row (see `_log_selection`)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        folder = tracking.download_run_artifacts(settings, run_id, SELECTION_ARTIFACTS, tmp)
        proba = np.load(folder / "proba.npy")
        document = json.loads((folder / "labels.json").read_text())
    return proba, document["labels"], document["y"]


def _fmt(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.4f}" for k, v in metrics.items())
