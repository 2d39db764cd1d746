"""Hyperparameter sweeps (`maas sweep`): trials as parallel Prefect tasks, each an MLflow child run of one parent.

The trials run through flows/search.py, as the pipeline's searches do; the best point (by the
task's selection score) is trained under the candidate's name, registered, and challenges the
champion like any candidate. Trials run on the flow's task runner: threads or processes here, the
Dask or Ray runner of prefect-dask / prefect-ray on a cluster (see docs/orchestration.md).
"""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.task_runners import ProcessPoolTaskRunner, ThreadPoolTaskRunner

from components.config import PipelineConfig, SearchSpec, SweepSpec, TaskSpec
from components.search import apply_point, grid_points, random_points
from flows import tracking
from flows.ingest import ensure_data
from flows.logs import run_logger
from flows.promote import promote
from flows.search import best_trial, close_parent, final_spec, optuna_trials, start_parent, submit_trials
from flows.settings import Settings
from flows.train import code_version, train_candidate_task


def task_runner(kind: str, workers: int):
    if kind == "threads":
        return ThreadPoolTaskRunner(max_workers=workers)
    if kind == "processes":
        return ProcessPoolTaskRunner(max_workers=workers)
    if kind == "dask":  # MAAS_DASK_ADDRESS, else a local cluster of `workers` processes
        from flows.dask_runner import dask_task_runner

        return dask_task_runner(workers)
    raise ValueError(f"unknown task runner {kind!r}: threads, processes or dask (see docs/orchestration.md)")


def find_task(config: PipelineConfig, candidate: str) -> tuple[str, TaskSpec]:
    for task_name, task_spec in config.named_tasks():
        if any(c.name == candidate for c in task_spec.candidates):
            return task_name, task_spec
    raise ValueError(f"no candidate named {candidate!r} in the config")


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
    parent = start_parent(
        settings, task_spec, f"sweep-{candidate}",
        {"maas.kind": "sweep", "maas.data_version": data.datasets[task_spec.dataset], "maas.candidate_group": candidate},
        {"method": sweep_spec.method, "trials": sweep_spec.trials, "space": sweep_spec.model_dump(mode="json")["space"]},
    )
    try:
        if sweep_spec.method == "optuna":
            budget = SearchSpec(space=sweep_spec.space, trials=sweep_spec.trials, parallel=sweep_spec.parallel,
                                seed=sweep_spec.seed, pruning=False)  # `maas sweep` lists every trial's score
            trials = optuna_trials(settings, task_spec, base, sweep_spec.space, budget, data, code, config_name,
                                   parent)
        else:
            points = grid_points(sweep_spec) if sweep_spec.method == "grid" else random_points(sweep_spec)
            specs = [apply_point(base, point, i) for i, point in enumerate(points)]
            futures = submit_trials(settings, task_spec, specs, data, code, config_name, parent, candidate)
            trials = [dict(f.result(), point=point) for f, point in zip(futures, points, strict=True)]
        winner = best_trial(trials, task_spec)
        close_parent(settings, task_spec, parent, trials, winner)
    except BaseException:
        tracking.end_run(settings, parent, "FAILED")
        raise
    # The best point trained under the candidate's name and registered (refit on train+val under CV).
    best = train_candidate_task.with_options(task_run_name=f"train-{candidate}").submit(
        settings, task_spec, final_spec(base, winner["point"]), dataset_version=data.datasets[task_spec.dataset],
        repo_version=data.repo, code=code, config_name=config_name, registry_tags={"sweep_run_id": parent},
    ).result()
    logger.info("sweep %s: best trial %s (%s %.4f), registered as v%s", candidate, winner["candidate"],
                task_spec.metric, winner["val"][task_spec.metric], best["version"])
    decision = promote(settings, task_spec, [best], data.datasets[task_spec.dataset])
    return {"task": task_name, "parent_run_id": parent, "trials": trials, "best": best, "best_trial": winner,
            "decision": decision}
