"""Searching a candidate's settings: Optuna TPE, trials as Prefect tasks and MLflow child runs of one parent.

The pipeline (a candidate with `search:`) and `maas sweep` both run trials through here. A
trial only scores (the validation split, or CV folds on small data); the best point is then
trained once more under the candidate's own name, which registers it, so the leaderboard
shows the candidate with its chosen settings. Trials run on the flow's task runner.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

from components.config import ModelSpec, SearchSpace, SearchSpec, TaskSpec
from components.search import Pruned, apply_point, suggest
from components.training.callbacks import MetricsCallback
from flows import tracking
from flows.ingest import DataVersions
from flows.logs import run_logger
from flows.settings import Settings
from flows.train import experiment_name, train_candidate_task

SEARCH_KEY_TAG = "maas.search_key"
BEST_POINT_TAG = "maas.search_best"


def pruning_reporter(trial: Any, monitor: str) -> MetricsCallback:
    """A metrics callback that reports `monitor` to the Optuna trial and raises Pruned when told to."""

    def report(metrics, step):
        if step is None or monitor not in metrics:
            return
        trial.report(float(metrics[monitor]), step)
        if trial.should_prune():
            raise Pruned(f"trial {trial.number}: {monitor}={metrics[monitor]:.4f} at step {step} falls behind")

    return report


def submit_trials(settings: Settings, task_spec: TaskSpec, specs: list[ModelSpec], data: DataVersions, code: str,
                  config_name: str, parent: str, trial_of: str, reports: list | None = None) -> list:
    """One Prefect task per trial spec, each an MLflow child run of `parent`; returns the futures."""
    reports = reports or [None] * len(specs)
    return [
        train_candidate_task.with_options(task_run_name=f"trial-{spec.name}").submit(
            settings, task_spec, spec, dataset_version=data.datasets[task_spec.dataset], repo_version=data.repo,
            code=code, config_name=config_name, parent_run_id=parent, register=False, trial_of=trial_of,
            report=report,
        )
        for spec, report in zip(specs, reports, strict=True)
    ]


def optuna_trials(settings: Settings, task_spec: TaskSpec, base: ModelSpec, space: SearchSpace, budget: SearchSpec,
                  data: DataVersions, code: str, config_name: str, parent: str) -> list[dict[str, Any]]:
    """Ask/tell in batches of `budget.parallel`, so TPE learns from finished trials while others run,
    until `budget.trials` trials or `budget.seconds` seconds; pruned trials are marked `pruned`."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # The median rule: a trial stops when its score at a step is below the median of earlier trials there.
    pruner = optuna.pruners.MedianPruner(n_startup_trials=2) if budget.pruning else optuna.pruners.NopPruner()
    # TPE models the space after its random start-up trials: Optuna's 10 would leave a small budget random.
    startup = 10 if budget.trials is None else max(2, min(10, budget.trials // 2))
    sampler = optuna.samplers.TPESampler(seed=budget.seed, n_startup_trials=startup)
    study = optuna.create_study(direction="maximize" if task_spec.greater_is_better else "minimize",
                                sampler=sampler, pruner=pruner)
    monitor = f"val_{task_spec.metric}"
    started = time.monotonic()
    results: list[dict[str, Any]] = []
    while ((budget.trials is None or len(results) < budget.trials)
           and (budget.seconds is None or time.monotonic() - started < budget.seconds)):
        size = budget.parallel if budget.trials is None else min(budget.parallel, budget.trials - len(results))
        batch = [study.ask() for _ in range(size)]
        points = [suggest(trial, space) for trial in batch]
        specs = [apply_point(base, point, trial.number) for point, trial in zip(points, batch, strict=True)]
        reports = [pruning_reporter(trial, monitor) for trial in batch]
        futures = submit_trials(settings, task_spec, specs, data, code, config_name, parent, base.name, reports)
        for trial, point, spec, future in zip(batch, points, specs, futures, strict=True):
            result = future.result()
            if result.get("pruned"):
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                results.append({"candidate": spec.name, "point": point, "pruned": True, "val": {}})
                continue
            study.tell(trial, result["val"][task_spec.metric])
            results.append(dict(result, point=point, pruned=False))
    return results


def best_trial(trials: list[dict[str, Any]], task_spec: TaskSpec) -> dict[str, Any]:
    """The finished trial with the best selection score (ties: the earliest)."""
    finished = [t for t in trials if not t.get("pruned")]
    if not finished:
        raise ValueError(f"every trial of the search was pruned or none ran ({len(trials)} asked)")
    sign = 1 if task_spec.greater_is_better else -1
    return max(finished, key=lambda t: sign * t["val"][task_spec.metric])


def final_spec(base: ModelSpec, point: dict[str, Any]) -> ModelSpec:
    """The candidate with the chosen point, under its own name (no search left to do)."""
    return apply_point(base, point, 0).model_copy(update={"name": base.name})


def search_key(settings: Settings, task_spec: TaskSpec, spec: ModelSpec, dataset_version: str, code: str) -> str:
    """What makes a search the same search: its data, candidate (with its space and budget), scoring and code."""
    payload = {"spec": spec.model_dump(mode="json"), "task": task_spec.registered_model, "metric": task_spec.metric,
               "selection": task_spec.selection.model_dump(), "dataset": dataset_version, "code": code,
               "store": settings.tracking_uri}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]


def start_parent(settings: Settings, task_spec: TaskSpec, name: str, tags: dict[str, str],
                 params: dict[str, Any]) -> str:
    experiment_id = tracking.ensure_experiment(settings, experiment_name(task_spec))
    return tracking.start_run(settings, experiment_id, name, tags, params)


def close_parent(settings: Settings, task_spec: TaskSpec, parent: str, trials: list[dict[str, Any]],
                 best: dict[str, Any]) -> None:
    """The parent run keeps the best point (a tag: a rerun reuses it) and the best score."""
    tracking.set_run_tag(settings, parent, BEST_POINT_TAG, json.dumps(best["point"], sort_keys=True))
    record = tracking.RunLogger(tracking.client(settings), parent)
    record({f"best_val_{task_spec.metric}": best["val"][task_spec.metric], "trials": len(trials),
            "pruned": sum(1 for t in trials if t.get("pruned"))}, None)
    record.flush()
    tracking.end_run(settings, parent)


def search_candidate(settings: Settings, task_spec: TaskSpec, spec: ModelSpec, data: DataVersions, code: str,
                     config_name: str, force: bool = False):
    """Search `spec.search` (or reuse the finished search with the same key), then submit the
    training of the best point under the candidate's name; returns that task's future."""
    logger = run_logger()
    assert spec.search is not None
    dataset_version = data.datasets[task_spec.dataset]
    key = search_key(settings, task_spec, spec, dataset_version, code)
    done = [] if force else tracking.search_runs(
        settings, experiment_name(task_spec),
        f"tags.`{SEARCH_KEY_TAG}` = '{key}' and attributes.status = 'FINISHED'")
    done = [run for run in done if BEST_POINT_TAG in run.data.tags]
    if done:
        parent, point = done[0].info.run_id, json.loads(done[0].data.tags[BEST_POINT_TAG])
        logger.info("search %s: reusing the finished search %s (best %s)", spec.name, parent[:8], point)
    else:
        space = spec.search.resolved_space(spec.kind)
        parent = start_parent(
            settings, task_spec, f"search-{spec.name}",
            {"maas.kind": "search", "maas.data_version": dataset_version, "maas.candidate_group": spec.name,
             SEARCH_KEY_TAG: key},
            {"space": {k: v if isinstance(v, list) else v.model_dump() for k, v in space.items()},
             "trials": spec.search.trials, "seconds": spec.search.seconds, "pruning": spec.search.pruning},
        )
        try:
            trials = optuna_trials(settings, task_spec, spec, space, spec.search, data, code, config_name, parent)
            best = best_trial(trials, task_spec)
            close_parent(settings, task_spec, parent, trials, best)
        except BaseException:
            tracking.end_run(settings, parent, "FAILED")
            raise
        point = best["point"]
        logger.info("search %s: %d trials (%d pruned), best %s %s=%.4f", spec.name, len(trials),
                    sum(1 for t in trials if t.get("pruned")), point, task_spec.metric, best["val"][task_spec.metric])
    return train_candidate_task.with_options(
        refresh_cache=force, timeout_seconds=spec.timeout_s, task_run_name=f"train-{spec.name}"
    ).submit(settings, task_spec, final_spec(spec, point), dataset_version=dataset_version, repo_version=data.repo,
             code=code, config_name=config_name, registry_tags={"search_run_id": parent})
