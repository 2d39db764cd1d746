"""The leaderboard: one row type, read back from MLflow or made from a run's results, and one renderer.

`maas compare` prints it (terminal table, `--markdown`, `--json`), `maas pipeline` and
`maas retrain` end with it, and every flow run publishes it as Prefect artifacts.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from components.config import PipelineConfig, TaskSpec
from flows import tracking
from flows.settings import Settings
from flows.train import experiment_name

SUMMARY_METRICS = ("accuracy", "macro_f1", "log_loss", "loss", "perplexity", "bits_per_char")
# log_loss stays in the JSON; the tables keep to the metrics a reader compares at a glance.
TABLE_HIDDEN_METRICS = {"log_loss"}


@dataclass(frozen=True)
class LeaderboardRow:
    """One trained candidate of a task: its registry version and alias, its metrics and costs."""

    task: str
    candidate: str
    kind: str | None
    version: str | None
    alias: str | None  # "champion" (or "previous"), None for the others
    data_version: str | None
    val: dict[str, float]
    test: dict[str, float]
    latency_ms_p50: float | None
    train_s: float | None
    model_size_mb: float | None = None
    run_id: str | None = None
    # The CV fold standard deviation of each val metric, when CV chose (val then holds fold means).
    val_std: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_result(cls, task: str, result: dict[str, Any], champion_version: str | None) -> LeaderboardRow:
        """A row from what `train_candidate_task` returned; `champion_version` names the champion."""
        version = str(result["version"]) if result.get("version") is not None else None
        return cls(
            task=task, candidate=result["candidate"], kind=result.get("kind"), version=version,
            alias="champion" if version is not None and version == str(champion_version) else None,
            data_version=result.get("data_version"), val=dict(result["val"]), test=dict(result["test"]),
            latency_ms_p50=result.get("latency_ms_p50"), train_s=result.get("train_s"),
            model_size_mb=result.get("model_size_mb"), run_id=result.get("run_id"),
            val_std=dict(result.get("val_std") or {}),
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def leaderboard(settings: Settings, config: PipelineConfig, versions: dict[str, str]) -> list[LeaderboardRow]:
    """One row per finished run of each task on its dataset's version in `versions`, best first."""
    rows: list[LeaderboardRow] = []
    for task_name, task_spec in config.named_tasks():
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
            run_aliases = aliases.get(version, []) if version else []
            task_rows.append(LeaderboardRow(
                task=task_name,
                candidate=run.data.tags.get("maas.candidate"),
                kind=run.data.tags.get("maas.model_kind"),
                version=version,
                alias=",".join(sorted(run_aliases)) or None,
                data_version=data_version,
                val={m: metrics[f"val_{m}"] for m in SUMMARY_METRICS if f"val_{m}" in metrics},
                test={m: metrics[f"test_{m}"] for m in SUMMARY_METRICS if f"test_{m}" in metrics},
                latency_ms_p50=metrics.get("latency_latency_ms_p50"),
                train_s=metrics.get("train_s"),
                model_size_mb=metrics.get("model_size_mb"),
                run_id=run.info.run_id,
                val_std={m: metrics[f"cv_{m}_std"] for m in SUMMARY_METRICS if f"cv_{m}_std" in metrics},
            ))
        sign = -1 if task_spec.greater_is_better else 1
        task_rows.sort(key=lambda r: sign * r.val.get(task_spec.metric, float("-inf") * -sign))
        rows.extend(task_rows)
    return rows


# --------------------------------------------------------------------------- rendering


def _number(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _with_std(value: float | None, std: float | None) -> str:
    """A CV mean shows its fold spread: `0.9512 ± 0.0120`."""
    return _number(value, 4) if std is None or value is None else f"{value:.4f} ± {std:.4f}"


def _sections(rows: Sequence[LeaderboardRow]) -> list[tuple[str, list[str], list[list[str]]]]:
    """(task, header, cells) per task, in the rows' order: the one layout every format shares."""
    tasks = list(dict.fromkeys(r.task for r in rows))
    sections = []
    for task in tasks:
        task_rows = [r for r in rows if r.task == task]
        val = sorted({m for r in task_rows for m in r.val} - TABLE_HIDDEN_METRICS)
        test = sorted({m for r in task_rows for m in r.test} - TABLE_HIDDEN_METRICS)
        header = ["candidate", "version", "alias", *[f"val {m}" for m in val], *[f"test {m}" for m in test],
                  "p50 ms", "train s"]
        cells = [
            [r.candidate, r.version or "-", r.alias or "", *[_with_std(r.val.get(m), r.val_std.get(m)) for m in val],
             *[_number(r.test.get(m), 4) for m in test], _number(r.latency_ms_p50, 2), _number(r.train_s, 1)]
            for r in task_rows
        ]
        sections.append((task, header, cells))
    return sections


def render(rows: Sequence[LeaderboardRow], fmt: Literal["table", "markdown", "json", "records"]) -> Any:
    """The leaderboard as a terminal table (a rich renderable), Markdown, JSON (a list of row
    objects) or records (flat dicts, one per row: a Prefect table artifact)."""
    if fmt == "json":
        return json.dumps([r.as_dict() for r in rows], indent=2)
    sections = _sections(rows)
    if fmt == "records":
        return [{"task": task, **dict(zip(header, line, strict=True))} for task, header, cells in sections
                for line in cells]
    if fmt == "markdown":
        return "\n\n".join(
            f"## {task}\n\n" + "\n".join(
                "| " + " | ".join(line) + " |" for line in [header, ["---"] * len(header), *cells]
            )
            for task, header, cells in sections
        )
    if fmt == "table":
        from rich.console import Group
        from rich.table import Table

        tables = []
        for task, header, cells in sections:
            table = Table(*header, title=f"{task}: candidates (val chooses, test reports)")
            for line in cells:
                table.add_row(*line)
            tables.append(table)
        return Group(*tables)
    raise ValueError(f"unknown leaderboard format {fmt!r}: table, markdown, json or records")


def describe_decision(decision: dict[str, Any]) -> str:
    """One line: what promotion decided for a registered model, and why."""
    verb = "promoted" if decision["promoted"] else "kept the champion"
    return (f"{decision['registered_model']}: {verb} ({decision['reason']}); "
            f"champion v{decision['champion_version']}")


def summary_rows(tasks: dict[str, dict[str, Any]]) -> list[LeaderboardRow]:
    """The rows of a flow's summary (`{task: {"results", "decision"}}`), the champion marked."""
    return [LeaderboardRow.from_result(task, result, outcome["decision"]["champion_version"])
            for task, outcome in tasks.items() for result in outcome["results"]]


def publish_artifacts(tasks: dict[str, dict[str, Any]], changes: Sequence[str] = ()) -> None:
    """Prefect artifacts of a run: the leaderboard (a table per task) and the decisions (Markdown).

    `changes` (what a retrain changed, one line each) closes the Markdown when given.
    """
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    rows = summary_rows(tasks)
    for task in tasks:
        task_rows = [r for r in rows if r.task == task]
        data_version = task_rows[0].data_version or "-" if task_rows else "-"
        create_table_artifact(key=f"maas-leaderboard-{task}", table=render(task_rows, "records"),
                              description=f"{task} candidates on data version {data_version[:12]}")
    trained = [name for outcome in tasks.values() for name in outcome["trained"]]
    verdict = f"Trained {', '.join(trained)}." if trained else "Trained nothing (cached)."
    state = "\n".join(f"- {line}" for line in changes)
    markdown = "\n\n".join([render(rows, "markdown"), *[f"**Decision:** {describe_decision(o['decision'])}."
                                                       for o in tasks.values()], "## State", verdict, state])
    create_markdown_artifact(key="maas-promotion-decision", markdown=markdown.rstrip() + "\n",
                             description="the leaderboard, the promotion decision and what the run changed")


# --------------------------------------------------------------------------- MLflow


def log_comparison(settings: Settings, task_spec: TaskSpec, rows: list[LeaderboardRow], data_version: str) -> str:
    """A `comparison` run in the task's experiment holding the leaderboard and its chart."""
    import tempfile
    from pathlib import Path

    from components.evaluation.charts import plot_metric_vs_latency

    records = [r.as_dict() for r in rows]
    experiment_id = tracking.ensure_experiment(settings, experiment_name(task_spec))
    run_id = tracking.start_run(
        settings, experiment_id, f"comparison-{data_version[:8]}",
        {"maas.kind": "comparison", "maas.data_version": data_version, "maas.dataset": task_spec.dataset},
        {"metric": task_spec.metric, "candidates": len(rows)},
    )
    with tempfile.TemporaryDirectory() as tmp:
        chart = plot_metric_vs_latency(records, task_spec.metric, Path(tmp) / "metric_vs_latency.png",
                                       f"{task_spec.registered_model} @ {data_version[:8]}")
        tracking.log_artifacts(settings, run_id, {"metric_vs_latency.png": chart, "leaderboard.json": records})
    tracking.end_run(settings, run_id)
    return run_id
