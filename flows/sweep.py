"""Hyperparameter sweeps: trials as parallel Prefect tasks, each an MLflow child run of one parent.

The best trial (by the task's validation metric) is registered and challenges the champion
like any candidate. Trials run on the flow's task runner: threads or processes here, the
Dask or Ray runner of prefect-dask / prefect-ray on a cluster (see docs/orchestration.md).
"""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.task_runners import ProcessPoolTaskRunner, ThreadPoolTaskRunner

from components.config import PipelineConfig, SweepSpec, TaskSpec
from components.search import apply_point, grid_points, random_points, suggest
from flows import tracking
from flows.ingest import DataVersions, ensure_data
from flows.logs import run_logger
from flows.promote import promote, select_best
from flows.settings import Settings
from flows.train import code_version, experiment_name, train_candidate_task


def task_runner(kind: str, workers: int):
    if kind == "threads":
        return ThreadPoolTaskRunner(max_workers=workers)
    if kind == "processes":
        return ProcessPoolTaskRunner(max_workers=workers)
    raise ValueError(f"unknown task runner {kind!r}: threads or processes (Dask/Ray: see docs/orchestration.md)")


def find_task(config: PipelineConfig, candidate: str) -> tuple[str, TaskSpec]:
    for task_name, task_spec in config.named_tasks():
        if any(c.name == candidate for c in task_spec.candidates):
            return task_name, task_spec
    raise ValueError(f"no candidate named {candidate!r} in the config")


def _run_trials(settings, task_spec, specs, start, data: DataVersions, code, config_name,
                parent) -> list[dict[str, Any]]:
    """Trials are logged as child runs of the sweep's run, not registered: only the best one is."""
    futures = [
        train_candidate_task.with_options(task_run_name=f"trial-{start + i}").submit(
            settings, task_spec, spec, dataset_version=data.datasets[task_spec.dataset], repo_version=data.repo,
            code=code, config_name=config_name, nproc=1, parent_run_id=parent, register=False,
        )
        for i, spec in enumerate(specs)
    ]
    return [future.result() for future in futures]


@flow(name="sweep", log_prints=True)
def sweep(settings: Settings, config: PipelineConfig, candidate: str, config_name: str = "default",
          sweep_spec: SweepSpec | None = None) -> dict[str, Any]:
    logger = run_logger()
    task_name, task_spec = find_task(config, candidate)
    sweep_spec = sweep_spec or task_spec.sweeps.get(candidate)
    if sweep_spec is None:
        raise ValueError(f"no search space for {candidate!r}: add `sweeps: {{{candidate}: ...}}` to the task config")
    base = next(c for c in task_spec.candidates if c.name == candidate)
    data = ensure_data(settings, config)
    code = code_version()
    experiment_id = tracking.ensure_experiment(settings, experiment_name(task_spec))
    parent = tracking.start_run(
        settings, experiment_id, f"sweep-{candidate}",
        {"maas.kind": "sweep", "maas.data_version": data.datasets[task_spec.dataset], "maas.candidate_group": candidate},
        {"method": sweep_spec.method, "trials": sweep_spec.trials, "space": sweep_spec.model_dump(mode="json")["space"]},
    )
    results: list[dict[str, Any]] = []
    try:
        if sweep_spec.method == "optuna":
            results = _optuna_trials(settings, task_spec, base, sweep_spec, data, code, config_name, parent)
        else:
            points = grid_points(sweep_spec) if sweep_spec.method == "grid" else random_points(sweep_spec)
            specs = [apply_point(base, point, i) for i, point in enumerate(points)]
            results = _run_trials(settings, task_spec, specs, 0, data, code, config_name, parent)
        best = dict(select_best(results, task_spec))
        best["version"] = tracking.register_model(
            settings, best["model_uri"], task_spec.registered_model,
            {"data_version": data.datasets[task_spec.dataset], "candidate": best["candidate"], "run_id": best["run_id"],
             "sweep_run_id": parent},
        )
        parent_metrics = tracking.RunLogger(tracking.client(settings), parent)
        parent_metrics({f"best_val_{task_spec.metric}": best["val"][task_spec.metric]}, None)
        parent_metrics.flush()
        tracking.end_run(settings, parent)
    except BaseException:
        tracking.end_run(settings, parent, "FAILED")
        raise
    logger.info("sweep %s: best trial %s (val %s %.4f), registered as v%s", candidate, best["candidate"],
                task_spec.metric, best["val"][task_spec.metric], best["version"])
    decision = promote(settings, task_spec, [best], data.datasets[task_spec.dataset])
    return {"task": task_name, "parent_run_id": parent, "trials": results, "best": best, "decision": decision}


def _optuna_trials(settings, task_spec, base, sweep_spec, data: DataVersions, code, config_name,
                   parent) -> list[dict]:
    """Ask/tell in batches of `parallel`, so Optuna learns from finished trials while others run."""
    import optuna

    direction = "maximize" if task_spec.greater_is_better else "minimize"
    study = optuna.create_study(direction=direction, sampler=optuna.samplers.TPESampler(seed=sweep_spec.seed))
    results: list[dict[str, Any]] = []
    while len(results) < sweep_spec.trials:
        batch = [study.ask() for _ in range(min(sweep_spec.parallel, sweep_spec.trials - len(results)))]
        specs = [apply_point(base, suggest(trial, sweep_spec), len(results) + i) for i, trial in enumerate(batch)]
        for trial, result in zip(batch, _run_trials(settings, task_spec, specs, len(results), data, code,
                                                    config_name, parent), strict=True):
            study.tell(trial, result["val"][task_spec.metric])
            results.append(result)
    return results
