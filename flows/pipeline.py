"""The whole pipeline as one Prefect flow: ingest → train → evaluate → promote → package."""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from prefect.task_runners import ThreadPoolTaskRunner

from components.config import PipelineConfig
from flows.ingest import ensure_data, ingest
from flows.leaderboard import leaderboard, log_comparison
from flows.logs import run_logger
from flows.package import build, import_champion
from flows.promote import promote
from flows.settings import Settings
from flows.train import code_version, train_candidate_task


def train_task_candidates(
    settings, config, task_name, versions, force, config_name, only: list[str] | None = None, nproc: int = 1
) -> list[dict[str, Any]]:
    """One Prefect task per candidate (cached by data version, spec and code); returns their summaries."""
    task_spec = getattr(config, task_name)
    code = code_version()
    candidates = [spec for spec in task_spec.candidates if not only or spec.name in only]
    futures = [
        train_candidate_task.with_options(
            refresh_cache=force, timeout_seconds=spec.timeout_s, task_run_name=f"train-{spec.name}"
        ).submit(settings, task_spec, spec, versions[task_spec.dataset], versions["_repo"], code, config_name, nproc)
        for spec in candidates
    ]
    results = []
    for future in futures:
        result = dict(future.result())
        result["cached"] = future.state.name == "Cached"
        results.append(result)
    return results


@flow(name="train", task_runner=ThreadPoolTaskRunner(max_workers=1), log_prints=True)
def train(settings: Settings, config: PipelineConfig, config_name: str = "default", only: list[str] | None = None,
          nproc: int = 1, force: bool = False) -> dict[str, list[dict[str, Any]]]:
    """Train (and register) candidates on the data pinned by data.dvc, without promoting."""
    versions = ensure_data(settings, config)
    results = {}
    for task_name in ("classification", "generation"):
        task_spec = getattr(config, task_name)
        names = {c.name for c in task_spec.candidates} if task_spec else set()
        if task_spec is None or (only and not names & set(only)):
            continue
        results[task_name] = train_task_candidates(settings, config, task_name, versions, force, config_name, only, nproc)
    return results


def leaderboard_markdown(task_name: str, results: list[dict[str, Any]], decision: dict) -> str:
    metrics = sorted(results[0]["val"]) if results else []
    header = "| candidate | version | " + " | ".join(f"val {m}" for m in metrics) + " | test | p50 ms | train s |"
    rows = [header, "|" + "---|" * (len(metrics) + 5)]
    for r in results:
        test = ", ".join(f"{k} {v:.4f}" for k, v in r["test"].items() if k != "log_loss") or "-"
        vals = " | ".join(f"{r['val'][m]:.4f}" for m in metrics)
        rows.append(
            f"| {r['candidate']} | {r['version']} | {vals} | {test} | {r['latency_ms_p50']:.2f} | {r['train_s']:.1f} |"
        )
    verdict = "promoted" if decision["promoted"] else "kept the champion"
    return f"## {task_name}\n\n" + "\n".join(rows) + (
        f"\n\n**Decision:** {verdict}: {decision['reason']}. Champion: v{decision['champion_version']}.\n"
    )


@flow(name="pipeline", task_runner=ThreadPoolTaskRunner(max_workers=1), log_prints=True)
def pipeline(settings: Settings, config: PipelineConfig, config_name: str = "default", force: bool = False,
             skip_ingest: bool = False) -> dict[str, Any]:
    logger = run_logger()
    logger.info("[1/4] ingest: %d dataset(s)", len(config.datasets))
    versions = ensure_data(settings, config) if skip_ingest else ingest(settings, config)

    summary: dict[str, Any] = {"data_versions": versions, "tasks": {}}
    markdown = []
    for task_name in ("classification", "generation"):
        task_spec = getattr(config, task_name)
        if task_spec is None:
            continue
        logger.info("[2/4] train %s: %s", task_name, ", ".join(c.name for c in task_spec.candidates))
        results = train_task_candidates(settings, config, task_name, versions, force, config_name)
        logger.info("[3/4] promote %s", task_name)
        decision = promote(settings, task_spec, results, versions[task_spec.dataset])
        summary["tasks"][task_name] = {"results": results, "decision": decision}
        if not all(r["cached"] for r in results):
            data_version = versions[task_spec.dataset]
            log_comparison(settings, task_spec, leaderboard(settings, config, {task_spec.dataset: data_version}),
                           data_version)
        markdown.append(leaderboard_markdown(task_name, results, decision))

    logger.info("[4/4] package the champions as a Bento")
    imported = {name: import_champion(settings, config, name) for name in summary["tasks"]}
    summary["bento"] = build(settings, imported)
    create_markdown_artifact(key="maas-leaderboard", markdown="\n".join(markdown), description="candidates and decision")
    return summary
