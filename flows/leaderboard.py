"""The leaderboard of a data version, read back from MLflow (what `maas compare` prints)."""

from __future__ import annotations

from typing import Any

from components.config import PipelineConfig
from flows import tracking
from flows.settings import Settings
from flows.train import experiment_name

SUMMARY_METRICS = ("accuracy", "macro_f1", "log_loss", "loss", "perplexity", "bits_per_char")


def leaderboard(settings: Settings, config: PipelineConfig, versions: dict[str, str]) -> list[dict[str, Any]]:
    """One row per finished run of each task on its dataset's current version, best first."""
    rows: list[dict[str, Any]] = []
    for task_name in ("classification", "generation"):
        task_spec = getattr(config, task_name)
        if task_spec is None:
            continue
        data_version = versions.get(task_spec.dataset)
        runs = tracking.search_runs(
            settings,
            experiment_name(task_spec),
            f"tags.`maas.data_version` = '{data_version}' and attributes.status = 'FINISHED'"
            " and tags.`maas.candidate` != ''",
        )
        aliases = tracking.version_aliases(settings, task_spec.registered_model)
        task_rows = []
        for run in runs:
            metrics = run.data.metrics
            versions_of_run = tracking.model_versions_for_run(settings, task_spec.registered_model, run.info.run_id)
            version = str(versions_of_run[0].version) if versions_of_run else None
            run_aliases = aliases.get(str(version), []) if version else []
            task_rows.append(
                {
                    "task": task_name,
                    "model": run.data.tags.get("maas.candidate"),
                    "kind": run.data.tags.get("maas.model_kind"),
                    "run_id": run.info.run_id,
                    "version": version,
                    "data_version": data_version,
                    "val": {m: metrics[f"val_{m}"] for m in SUMMARY_METRICS if f"val_{m}" in metrics},
                    "test": {m: metrics[f"test_{m}"] for m in SUMMARY_METRICS if f"test_{m}" in metrics},
                    "latency_ms_p50": metrics.get("latency_latency_ms_p50"),
                    "train_s": metrics.get("train_s"),
                    "model_size_mb": metrics.get("model_size_mb"),
                    "alias": ",".join(sorted(run_aliases)) or None,
                }
            )
        sign = -1 if task_spec.greater_is_better else 1
        task_rows.sort(key=lambda r: sign * r["val"].get(task_spec.metric, float("-inf") * -sign))
        rows.extend(task_rows)
    return rows


def log_comparison(settings: Settings, task_spec, rows: list[dict[str, Any]], data_version: str) -> str:
    """A `comparison` run in the task's experiment holding the leaderboard and its chart."""
    import tempfile
    from pathlib import Path

    from components.evaluation.charts import plot_metric_vs_latency

    experiment_id = tracking.ensure_experiment(settings, experiment_name(task_spec))
    run_id = tracking.start_run(
        settings, experiment_id, f"comparison-{data_version[:8]}",
        {"maas.kind": "comparison", "maas.data_version": data_version, "maas.dataset": task_spec.dataset},
        {"metric": task_spec.metric, "candidates": len(rows)},
    )
    with tempfile.TemporaryDirectory() as tmp:
        chart = plot_metric_vs_latency(rows, task_spec.metric, Path(tmp) / "metric_vs_latency.png",
                                       f"{task_spec.registered_model} @ {data_version[:8]}")
        tracking.log_artifacts(settings, run_id, {"metric_vs_latency.png": chart, "leaderboard.json": rows})
    tracking.end_run(settings, run_id)
    return run_id
