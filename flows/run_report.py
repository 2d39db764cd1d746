"""The state a retrain may change (data.dvc, the champions, the Bento), and the report a failed run leaves.

A failed run writes one screen of Markdown, what failed and what it changed or left as it
was, to its log and to `MAAS_HOME/last_failure.md`.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from components.config import PipelineConfig, load_named_config
from flows import bento, tracking, versioning
from flows.settings import Settings

FAILURE_FILE = "last_failure.md"


def current_state(settings: Settings, config: PipelineConfig | None) -> dict[str, Any]:
    """What a run may change: data.dvc's version, each champion alias, the latest Bento."""
    state: dict[str, Any] = {"data.dvc": versioning.pinned_version(settings), "champions": {}, "bento": None}
    for task_spec in config.tasks() if config else []:
        champion = tracking.get_alias_version(settings, task_spec.registered_model)
        state["champions"][task_spec.registered_model] = champion.version if champion else None
    latest = bento.latest_bento(bento.BENTO_NAME)
    state["bento"] = str(latest.tag) if latest else None
    return state


def snapshot_path(settings: Settings, flow_run_id: str) -> Path:
    """Where a run keeps the state it started from, for its failure report."""
    return settings.work_dir / "retrain" / f"{flow_run_id}.json"


def describe_changes(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """One line per thing a run may change: `old -> new`, or `(unchanged)`."""
    lines = []
    for label, old, new in [("data.dvc", before["data.dvc"], after["data.dvc"]), ("Bento", before["bento"], after["bento"])] + [
        (f"champion of {name}", before["champions"].get(name), version) for name, version in after["champions"].items()
    ]:
        lines.append(f"{label}: {old} -> {new}" if old != new else f"{label}: {new} (unchanged)")
    return lines


# --------------------------------------------------------------------------- failure hook


def _failed_task_runs(flow_run_id) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return [f"{run.name}: {run.state.name}: {(run.state.message or '').strip()[:300]}"
            for run in runs if run.state and run.state.type.value in {"FAILED", "CRASHED", "CANCELLED"}]


def failure_summary(settings: Settings, flow_run, state) -> str:
    """One screen of Markdown: what failed, and what the run changed or left as it was."""
    try:
        error = state.result(raise_on_failure=False)
        error_line = f"{type(error).__name__}: {error}" if isinstance(error, BaseException) else str(state.message)
    except Exception:  # the result itself may be unreadable
        error_line = str(state.message)
    try:
        failed_tasks = _failed_task_runs(flow_run.id)
    except Exception as exc:
        failed_tasks = [f"(could not list the task runs: {exc})"]
    snapshot = snapshot_path(settings, str(flow_run.id))
    before = json.loads(snapshot.read_text()) if snapshot.is_file() else None
    config = None
    try:
        config = load_named_config(str(flow_run.parameters.get("config", "default")), settings.configs_dir)
    except Exception:
        pass
    after = current_state(settings, config)
    changes = describe_changes(before, after) if before else [
        f"data.dvc: {after['data.dvc']}", f"Bento: {after['bento']}",
        *[f"champion of {k}: {v}" for k, v in after["champions"].items()],
        "(the run failed before it recorded the state it started from)",
    ]
    snapshot.unlink(missing_ok=True)
    error_text = error_line.strip().splitlines()
    lines = [
        f"# retrain failed: {flow_run.name}",
        "",
        f"- when: {datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC; flow run {flow_run.id}",
        f"- parameters: {json.dumps(flow_run.parameters, default=str)}",
        f"- error: {error_text[0][:300] if error_text else 'unknown'}",
        *[f"  {line[:160]}" for line in error_text[1:8]],
        "",
        "## Failed steps",
        *([f"- {t}" for t in failed_tasks] or ["- (no task failed: the flow itself raised)"]),
        "",
        "## State after the failure",
        *[f"- {line}" for line in changes],
        "",
        "data.dvc moves only after every dataset validated, the champion alias only after a better model "
        "was registered, the Bento only after a successful build: what is marked unchanged is still the "
        "last good state.",
        f"Full log: `prefect flow-run logs {flow_run.id}`. Retry: `maas retrain --config "
        f"{flow_run.parameters.get('config', 'default')}`.",
    ]
    return "\n".join(lines) + "\n"


def write_failure_summary(flow, flow_run, state) -> None:
    """on_failure hook: the summary goes to the log and to MAAS_HOME/last_failure.md."""
    from prefect.logging.loggers import flow_run_logger

    logger = flow_run_logger(flow_run, flow)
    settings = Settings.from_env()
    try:
        text = failure_summary(settings, flow_run, state)
    except Exception as exc:  # a hook must never hide the original failure
        text = f"# retrain failed: {flow_run.name}\n\n{state.message}\n\n(no summary: {type(exc).__name__}: {exc})\n"
    path = settings.home / FAILURE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    logger.error("%s\n(written to %s)", text, path)
