"""The pipeline, one function per step: ingest → train → promote → log the comparison → package.

`run_steps` runs them in that order, each after its log line; the `pipeline` flow (`maas
pipeline`) and the `retrain` flow (flows/retrain.py) differ only in how they get the data.
The `train` flow (`maas train`) runs the train step alone; `promote_current`, `rollback` and
`build_bento` are the flows of `maas promote`, `maas rollback` and `maas build`.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner

from components.config import ModelSpec, PipelineConfig, TaskSpec
from components.data.dataset import read_dataset_manifest
from components.data.fingerprint import dataset_version
from components.models.size_rule import admitted
from flows.ensemble import add_ensembles
from flows.ingest import DataVersions, ensure_data, ingest
from flows.leaderboard import leaderboard, log_comparison, publish_artifacts
from flows.logs import run_logger
from flows.package import build, import_champion
from flows.promote import promote
from flows.promote import rollback as rollback_champion
from flows.search import search_candidate
from flows.settings import Settings
from flows.train import code_version, train_candidate_task

Results = dict[str, list[dict[str, Any]]]  # task name -> what train_candidate_task returned, per candidate


def train_candidates(settings: Settings, config: PipelineConfig, data: DataVersions, *, force: bool,
                     config_name: str, only: list[str] | None = None, nproc: int = 1) -> Results:
    """One Prefect task per candidate (cached by data version, spec and code); `cached` marks reused results.

    A candidate with `search:` is searched first (flows/search.py), before the plain candidates
    are queued, so a search's `seconds` budget is its own trials' time, not a wait in the queue;
    its result is the best point trained under its name. On a classification task only the
    candidates its `size_rule` admits train (see `size_admitted`).
    """
    code = code_version()
    candidates = {task_name: size_admitted(settings, task_name, task_spec) for task_name, task_spec in
                  config.named_tasks()}
    futures: dict[str, dict[str, Any]] = {task_name: {} for task_name, _ in config.named_tasks()}
    for task_name, task_spec in config.named_tasks():
        for spec in candidates[task_name]:
            if spec.search is not None and (not only or spec.name in only):
                futures[task_name][spec.name] = search_candidate(settings, task_spec, spec, data, code, config_name,
                                                                 force=force)
    for task_name, task_spec in config.named_tasks():
        futures[task_name] |= {
            spec.name: train_candidate_task.with_options(
                refresh_cache=force, timeout_seconds=spec.timeout_s, task_run_name=f"train-{spec.name}"
            ).submit(settings, task_spec, spec, dataset_version=data.datasets[task_spec.dataset],
                     repo_version=data.repo, code=code, config_name=config_name, nproc=nproc)
            for spec in candidates[task_name] if spec.search is None and (not only or spec.name in only)
        }
    return {
        task_name: [dict(task_futures[spec.name].result(), cached=task_futures[spec.name].state.name == "Cached")
                    for spec in task_spec.candidates if spec.name in task_futures]
        for task_name, task_spec in config.named_tasks() if (task_futures := futures[task_name])
    }


def size_admitted(settings: Settings, task_name: str, task_spec: TaskSpec) -> list[ModelSpec]:
    """The candidates of a classification task that its `size_rule` admits for the training rows
    its dataset's manifest counts (the data is not loaded); each one left out is logged with why."""
    if task_name != "classification":
        return list(task_spec.candidates)
    manifest = read_dataset_manifest(settings.data_root / task_spec.dataset)
    rows = int(manifest["counts"]["rows"]["train"])
    kept, skipped = admitted(task_spec.candidates, rows, task_spec.size_rule)
    for name, reason in skipped.items():
        run_logger().warning("size rule: candidate %s skipped on %s: %s", name, task_spec.dataset, reason)
    if not kept:
        raise ValueError(f"size_rule leaves no {task_name} candidate for the {rows} training rows of "
                         f"{task_spec.dataset}: " + "; ".join(f"{name}: {why}" for name, why in skipped.items()))
    return kept


def promote_champions(settings: Settings, config: PipelineConfig, results: Results,
                      data: DataVersions) -> dict[str, dict[str, Any]]:
    """Each task's best candidate challenges its champion on the same data version; returns the decisions."""
    return {
        task_name: promote(settings, task_spec, results[task_name], data.datasets[task_spec.dataset])
        for task_name, task_spec in config.named_tasks() if task_name in results
    }


def log_comparisons(settings: Settings, config: PipelineConfig, results: Results, data: DataVersions) -> None:
    """A comparison run (leaderboard + chart) per task that trained something: a cached rerun adds nothing."""
    for task_name, task_spec in config.named_tasks():
        if task_name in results and not all(r["cached"] for r in results[task_name]):
            version = data.datasets[task_spec.dataset]
            rows = [r for r in leaderboard(settings, config, {task_spec.dataset: version}) if r.task == task_name]
            log_comparison(settings, task_spec, rows, version)


def package(settings: Settings, config: PipelineConfig) -> str | None:
    """The champions into the BentoML store, then the Bento; each skipped when already there."""
    imported = {task_name: import_champion(settings, config, task_name) for task_name, _ in config.named_tasks()}
    return build(settings, imported)


def run_steps(settings: Settings, config: PipelineConfig, get_data: Callable[[], DataVersions], *,
              force: bool, config_name: str) -> dict[str, Any]:
    """The steps in order; returns {"data", "tasks": {name: {results, decision, trained}}, "bento"}."""
    logger = run_logger()
    logger.info("[1/5] ingest: %s", ", ".join(d.name for d in config.datasets))
    data = get_data()
    logger.info("[2/5] train: %s", "; ".join(f"{name}: {', '.join(c.name for c in spec.candidates)}"
                                            for name, spec in config.named_tasks()))
    results = train_candidates(settings, config, data, force=force, config_name=config_name)
    logger.info("[2/5] train: the ensemble of each classification task's trained candidates")
    results = add_ensembles(settings, config, results, data, config_name=config_name, force=force)
    logger.info("[3/5] promote: the best candidate of each task challenges its champion")
    decisions = promote_champions(settings, config, results, data)
    logger.info("[4/5] log the comparison of the candidates")
    log_comparisons(settings, config, results, data)
    logger.info("[5/5] package the champions as a Bento")
    bento_tag = package(settings, config)
    tasks = {
        name: {"results": results[name], "decision": decisions[name],
               "trained": [r["candidate"] for r in results[name] if not r["cached"]]}
        for name in results
    }
    return {"data": data, "tasks": tasks, "bento": bento_tag}


@flow(name="pipeline", task_runner=ThreadPoolTaskRunner(max_workers=1), log_prints=True)
def pipeline(settings: Settings, config: PipelineConfig, config_name: str = "default", force: bool = False,
             skip_ingest: bool = False) -> dict[str, Any]:
    """Ingest (or, with `skip_ingest`, use the data data.dvc pins) → train → promote → compare → package."""
    get_data = partial(ensure_data if skip_ingest else ingest, settings, config)
    summary = run_steps(settings, config, get_data, force=force, config_name=config_name)
    publish_artifacts(summary["tasks"])
    return summary


@flow(name="train", task_runner=ThreadPoolTaskRunner(max_workers=1), log_prints=True)
def train(settings: Settings, config: PipelineConfig, config_name: str = "default", only: list[str] | None = None,
          nproc: int = 1, force: bool = False) -> Results:
    """Train (and register) candidates on the data pinned by data.dvc, without promoting."""
    return train_candidates(settings, config, ensure_data(settings, config), force=force, config_name=config_name,
                            only=only, nproc=nproc)


@flow(name="promote")
def promote_current(settings: Settings, config: PipelineConfig) -> list[dict]:
    """Let the best finished run of each task's current data version challenge its champion (`maas promote`)."""
    decisions = []
    for task_name, task_spec in config.named_tasks():
        version = dataset_version(settings.data_root / task_spec.dataset)
        rows = [r.as_dict() for r in leaderboard(settings, config, {task_spec.dataset: version})
                if r.task == task_name and r.version and task_spec.metric in r.val]
        if rows:
            decisions.append(promote(settings, task_spec, rows, version))
    return decisions


@flow(name="rollback")
def rollback(settings: Settings, config: PipelineConfig, task_name: str) -> tuple[dict, str | None]:
    """Give a task's champion alias back to the previous version, then rebuild the Bento (`maas rollback`)."""
    return rollback_champion(settings, getattr(config, task_name)), package(settings, config)


@flow(name="build")
def build_bento(settings: Settings, config: PipelineConfig) -> str | None:
    """Import the champions and build the Bento (`maas build`)."""
    return package(settings, config)
