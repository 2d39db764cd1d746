"""The ways a candidate is fitted and scored, one function each, all returning what its run logs.

`fit_streamed` (the streaming kind on sharded data), `fit_cross_validated` (small data: k-fold
CV, then a refit on train+val), `fit_holdout` (one process, or DDP under torchrun) and
`score_trial` (a search trial: scores only, no test split, no model kept). None of them talks
to MLflow: metrics go through the callbacks in `Job`; flows/train.py logs the result.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from components.config import ModelSpec, TaskSpec
from components.data.dataset import ClassificationData, CorpusData
from components.evaluation.classification import classification_metrics, flat_metrics, measure_latency
from components.evaluation.report import evaluate
from components.models import streaming_linear
from components.predictor import Predictor, load_predictor
from components.selection import (
    SELECTION_METRICS,
    CVResult,
    cross_validate,
    pooled,
    refit_data,
    refit_spec,
    without_test,
)
from components.training import distributed
from components.training.callbacks import MetricsCallback
from components.training.candidates import train_candidate
from flows.logs import run_logger


@dataclass
class Job:
    """What every way of fitting needs: the candidate, its data and where its metrics go."""

    spec: ModelSpec
    task: TaskSpec
    folder: Path  # the dataset's folder (splits, or shards when streamed)
    data: ClassificationData | CorpusData | None  # None when streamed: the shards are read chunk by chunk
    method: str  # how the selection scores are made: "holdout" or "cv<folds>"
    workdir: Path  # checkpoints and files to log; the run deletes it
    log: MetricsCallback  # the run's metrics
    report: MetricsCallback | None = None  # a search trial's progress; may raise `Pruned`

    @property
    def streamed(self) -> bool:
        return self.data is None

    @property
    def progress(self) -> MetricsCallback:
        """Training curves for the run and, in a search trial, for the search too."""
        return self.log if self.report is None else _both(self.log, self.report)


@dataclass
class Fitted:
    """A trained candidate and everything its run logs and returns."""

    predictor: Predictor
    report: dict[str, Any]  # report.json: {"val", "test", "latency"}; under CV also "selection" and "cv_folds"
    val: dict[str, float]  # the selection scores: CV means under CV, else the validation split's
    test: dict[str, float]
    metrics: dict[str, float]  # the run's summary metrics (all but the bundle's size)
    cv: CVResult | None
    # The probabilities the candidate was chosen by (columns in the predictor's label order) and
    # the true label of each row, kept for ensembles; None for a generation model.
    selection: tuple[np.ndarray, list[str]] | None
    example: list[str] | tuple[list[str], dict[str, Any]]  # the logged model's input example


@dataclass
class TrialScores:
    """A search trial's result: its selection scores only."""

    val: dict[str, float]
    metrics: dict[str, float]  # the run's summary metrics
    cv: CVResult | None


def fit_streamed(job: Job) -> Fitted:
    """Train from the shards and score val and test chunk by chunk, never holding a split."""
    started = time.perf_counter()
    predictor = _train_streamed(job)
    scored = score_streamed(predictor, job.folder, ("val", "test"), _chunk_rows(job.spec))
    metrics = _run_metrics(scored.report, time.perf_counter() - started, classification=True)
    val, test = _summary_metrics(scored.report, classification=True)
    return Fitted(predictor, scored.report, val, test, metrics | flat_metrics(scored.report["val"], "val"), None,
                  (scored.val_proba, scored.val_labels), [text[:500] for text in scored.examples[:2]])


def fit_cross_validated(job: Job) -> Fitted:
    """Score by k-fold CV on train+val, refit on train+val, then score the test split once."""
    started = time.perf_counter()
    data, metric = job.data, job.task.metric
    cv = _cross_validate(job)
    rows = len(pooled(data)[0])
    refit = refit_spec(job.spec, cv, rows)
    run_logger().info("%s: CV %s %.4f ± %.4f over %d folds; refitting on train+val%s", job.spec.name, metric,
                      cv.mean(metric), cv.std(metric), len(cv.fold_metrics),
                      f" for {refit.training.max_steps} steps" if refit.training.max_steps else "")
    predictor = train_candidate(refit, refit_data(data), job.workdir / "train", job.log)
    train_s = time.perf_counter() - started
    test = classification_metrics(data.test_labels, predictor.predict_proba(data.test_texts), predictor.labels)
    val = cv.summary()
    report = {"selection": job.method, "val": val, "cv_folds": cv.fold_metrics, "test": test,
              "latency": measure_latency(predictor.predict_proba, data.test_texts)}
    metrics = _cv_metrics(cv) | {"refit_rows": rows, "refit_steps": refit.training.max_steps or 0}
    # Out-of-fold rows, their columns put in the refit bundle's label order.
    index = {label: i for i, label in enumerate(cv.labels)}
    selection = cv.proba[:, [index[label] for label in predictor.labels]], cv.y
    return Fitted(predictor, report, val, {k: test[k] for k in SELECTION_METRICS},
                  metrics | _run_metrics(report, train_s, classification=True), cv, selection, _input_example(data))


def fit_holdout(job: Job, nproc: int = 1) -> Fitted:
    """Train on the train split (DDP under torchrun when `nproc` > 1), then score val and test."""
    started = time.perf_counter()
    if nproc > 1:
        predictor = train_distributed(job.spec, job.folder, job.workdir / "train", nproc, job.log)
    else:
        predictor = train_candidate(job.spec, job.data, job.workdir / "train", job.log)
    train_s = time.perf_counter() - started
    report = evaluate(predictor, job.data)
    classification = isinstance(job.data, ClassificationData)
    metrics = _run_metrics(report, train_s, classification)
    val, test = _summary_metrics(report, classification)
    if not classification:
        return Fitted(predictor, report, val, test, metrics | {f"val_{k}": v for k, v in val.items()}, None, None,
                      _input_example(job.data))
    selection = predictor.predict_proba(job.data.val_texts), list(job.data.val_labels)
    return Fitted(predictor, report, val, test, metrics | flat_metrics(report["val"], "val"), None, selection,
                  _input_example(job.data))


def score_trial(job: Job) -> TrialScores:
    """A search trial only scores: the validation split (or the CV means), no test, no model kept."""
    started = time.perf_counter()
    cv, metrics = None, {}
    if job.streamed:
        scored = score_streamed(_train_streamed(job), job.folder, ("val",), _chunk_rows(job.spec))
        val = {m: float(scored.report["val"][m]) for m in SELECTION_METRICS}
    elif job.method != "holdout":
        cv = _cross_validate(job)
        val, metrics = cv.summary(), _cv_metrics(cv)
    else:
        data = without_test(job.data) if isinstance(job.data, ClassificationData) else job.data
        val = _validation_scores(train_candidate(job.spec, data, job.workdir / "train", job.progress), data)
    metrics = metrics | {f"val_{m}": v for m, v in val.items()}
    return TrialScores(val, metrics | {"train_s": time.perf_counter() - started}, cv)


def _train_streamed(job: Job) -> Predictor:
    return streaming_linear.train_from_folder(job.spec, job.folder, job.workdir / "train", job.progress)


def _chunk_rows(spec: ModelSpec) -> int:
    return streaming_linear.resolve_params(spec.params)["chunk_rows"]


def _cross_validate(job: Job) -> CVResult:
    """One model per fold on train+val; each fold's curves are logged under its own prefix."""
    return cross_validate(
        lambda fold, i: train_candidate(job.spec, fold, job.workdir / f"fold-{i}", _prefixed(job.log, i)),
        job.data, job.task.selection, on_fold=_fold_reporter(job.report, job.task.metric),
    )


def _cv_metrics(cv: CVResult) -> dict[str, float]:
    metrics = {f"cv_{m}_{stat}": getattr(cv, stat)(m) for m in SELECTION_METRICS for stat in ("mean", "std")}
    return metrics | {f"val_{m}": v for m, v in cv.summary().items()}  # what promotion and the leaderboard read


def _run_metrics(report: dict[str, Any], train_s: float, classification: bool) -> dict[str, float]:
    """What every fitted run logs: its training time, serving latency and a classifier's test scores."""
    metrics = {"train_s": train_s, **{f"latency_{k}": v for k, v in report["latency"].items()}}
    return (metrics | flat_metrics(report["test"], "test")) if classification else metrics


def _summary_metrics(report: dict, classification: bool) -> tuple[dict[str, float], dict[str, float]]:
    """The val and test scores a run returns: a classifier's selection metrics, else every LM metric."""
    if classification:
        return ({k: report["val"][k] for k in SELECTION_METRICS}, {k: report["test"][k] for k in SELECTION_METRICS})
    return ({k: float(v) for k, v in report["val"].items()}, {k: float(v) for k, v in report["test"].items()})


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


# The sampling parameters a generation model takes through pyfunc's `params` (their schema
# comes from this example; the values are the defaults of a `predict` call without params).
GENERATION_PARAMS = {"max_new_tokens": 100, "temperature": 1.0, "top_k": 0, "top_p": 1.0, "seed": 0}


def _input_example(data: ClassificationData | CorpusData) -> list[str] | tuple[list[str], dict[str, Any]]:
    if isinstance(data, ClassificationData):
        return [text[:500] for text in data.val_texts[:2]]
    return [data.val_text[:40]], GENERATION_PARAMS


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
