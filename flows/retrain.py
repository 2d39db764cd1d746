"""Scheduled retraining: the pipeline's steps, each skipped when its inputs did not change.

`retrain` is what the `retrain` deployment (prefect.yaml, `maas schedule`) runs, and what
`maas retrain` runs by hand. It reads top to bottom like the pipeline, and reuses its steps:

1. ingest: each dataset is a Prefect task cached on a fingerprint of its source (see
   `source_fingerprint`) and the spec; its cache is refreshed whenever `data/<name>/` no
   longer matches what data.dvc records (deleted, edited, or data.dvc checked out at
   another version), so a missing folder is never "cached". `dvc add` + `dvc push` run
   only when data.dvc does not already record `data/` or the local remote lacks it.
2. train: `flows.pipeline.train_task_candidates`, cached on data version + model spec +
   code + tracking store, with each candidate's `timeout_s`.
3. promote: the challenger must beat the champion on the same validation split.
4. package: the champions into the BentoML store and a Bento, both skipped when the store
   already holds them.

With nothing new (same source, a champion trained on it) a run creates no MLflow run, no
registry version and no Bento, and takes seconds. `force=True` retrains anyway.

Steps that talk to the outside (DVC, MLflow, the BentoML store) retry transient errors
(connection, I/O, DVC, MLflow) with exponential backoff; a wrong config or invalid data is
not retried. Every run publishes the leaderboard (a table artifact per task) and the
promotion decision (markdown). A failed run writes a one-screen summary of what failed
and of what it left unchanged to its log and to `MAAS_HOME/last_failure.md`.

Why data.dvc's hash is not in the ingestion cache key: the run that ingests new data also
moves data.dvc, so a key containing it would miss once more on the next, unchanged run.
The refresh check above covers what that hash would: the recorded data and the folder.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.runtime import flow_run as current_flow_run
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.tasks import exponential_backoff

from components.config import DatasetSpec, PipelineConfig, load_named_config
from components.data.fingerprint import dataset_version, file_md5, folder_listing
from components.data.sources import file_sha256, find_package_folder
from flows import bento, tracking, versioning
from flows.ingest import ingest_one, ingest_order, version_data
from flows.package import build, import_champion
from flows.pipeline import leaderboard_markdown, train_task_candidates
from flows.promote import promote
from flows.settings import Settings

FAILURE_FILE = "last_failure.md"
DATA_CODE_DIR = Path(__file__).resolve().parents[1] / "components" / "data"
TASKS = ("classification", "generation")


# --------------------------------------------------------------------------- retries


# MLflow's REST client already retries HTTP 429/5xx itself; these codes are what is left.
TRANSIENT_MLFLOW_CODES = {"INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED", "DEADLINE_EXCEEDED"}


def is_transient(error: BaseException) -> bool:
    """Whether a second try may pass: network and disk errors, DVC commands, MLflow server errors."""
    from mlflow.exceptions import MlflowException

    if isinstance(error, MlflowException):
        return error.error_code in TRANSIENT_MLFLOW_CODES
    return isinstance(error, OSError | versioning.VersioningError)


def _transient(task, task_run, state) -> bool:
    try:
        state.result()
    except Exception as error:
        return is_transient(error)
    return False


OUTSIDE = {
    "retries": 3,
    "retry_delay_seconds": exponential_backoff(backoff_factor=2),  # 2, 4, 8 s
    "retry_jitter_factor": 0.5,
    "retry_condition_fn": _transient,
}


# --------------------------------------------------------------------------- ingestion cache


def _distribution_version(package: str) -> str:
    top = package.split(".")[0]
    try:
        return importlib.metadata.version(top)
    except importlib.metadata.PackageNotFoundError:
        names = importlib.metadata.packages_distributions().get(top, [])
        return importlib.metadata.version(names[0]) if names else "unknown"


def _files(path: Path, content: bool) -> list[list[Any]]:
    """[relative path, size(, md5)] of a file or of every file under a folder, sorted."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    root = path.parent if path.is_file() else path
    return [
        [p.relative_to(root).as_posix(), p.stat().st_size, *([file_md5(p)] if content else [])] for p in files
    ]


def _resolve(settings: Settings, location: str) -> Path:
    path = Path(location).expanduser()
    return path if path.is_absolute() else settings.project_dir / path


def _url_fingerprint(settings: Settings, url: str, sha256: str | None) -> dict[str, Any]:
    # Without a pinned sha256, the cached download (which ingestion reuses) is the content.
    cached = settings.download_cache / hashlib.sha256(url.encode()).hexdigest()
    files = sorted(p for p in cached.glob("*") if p.is_file() and not p.name.startswith(".")) if cached.is_dir() else []
    return {"url": url, "sha256": sha256 or (file_sha256(files[0]) if files else "not-downloaded")}


def source_fingerprint(settings: Settings, spec: DatasetSpec) -> dict[str, Any]:
    """What identifies the raw data of a dataset without ingesting it.

    package: name, installed version and the sorted (file name, size) listing; path: file
    names, sizes and md5s; url: the url and its sha256; hf: the name (and the files of a
    local dataset folder); dataset: the version of the dataset it reads. Explicit split
    files are fingerprinted like paths or urls.
    """
    source = spec.source
    found: dict[str, Any] = {"kind": source.kind}
    if source.kind == "package":
        folder = find_package_folder(source.package or "", source.subdir)
        found |= {"package": source.package, "version": _distribution_version(source.package or ""),
                  "files": _files(folder, content=False)}
    elif source.kind == "path":
        path = _resolve(settings, source.path or "")
        found["files"] = _files(path, content=True) if path.exists() else "missing"
    elif source.kind == "url":
        found |= _url_fingerprint(settings, source.url or "", source.sha256)
    elif source.kind == "hf":
        local = _resolve(settings, source.hf_name or "")
        found["files"] = _files(local, content=True) if local.is_dir() else source.hf_name
    elif source.kind == "dataset":
        folder = settings.data_root / (source.dataset or "")
        found["listing"] = folder_listing(folder) if folder.is_dir() else "missing"
    splits = {}
    for split, location in sorted(source.split_files.items()):
        if "://" in location:
            splits[split] = _url_fingerprint(settings, location, None)
        else:
            path = _resolve(settings, location)
            splits[split] = _files(path, content=True) if path.exists() else "missing"
    return found | {"split_files": splits}


def ingest_code_version() -> str:
    """A hash of the ingestion code: cleaning or splitting differently is new data."""
    digest = hashlib.sha256()
    for path in sorted(DATA_CODE_DIR.rglob("*.py")):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _ingest_cache_key(context, parameters: dict[str, Any]) -> str:
    settings, spec = parameters["settings"], parameters["spec"]
    payload = {
        "source": source_fingerprint(settings, spec),
        "spec": spec.model_dump(mode="json"),
        "code": ingest_code_version(),
        "project": str(settings.project_dir),
    }
    return "ingest-" + hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:32]


def recorded_listing(settings: Settings, name: str) -> list[dict[str, str]] | None:
    """`data/<name>/`'s files as data.dvc records them ({md5, relpath}), or None if it does not."""
    pinned = versioning.pinned_version(settings)
    if not pinned:
        return None
    try:
        hashes = versioning.tracked_file_hashes(settings, pinned)
    except (OSError, ValueError, KeyError):  # the .dir object is not in the local cache
        return None
    prefix = f"{name}/"
    entries = [{"md5": md5, "relpath": path[len(prefix):]} for path, md5 in hashes.items() if path.startswith(prefix)]
    return sorted(entries, key=lambda e: e["relpath"]) or None


def matches_data_dvc(settings: Settings, name: str) -> bool:
    """Whether `data/<name>/` holds exactly the files data.dvc records for it."""
    folder = settings.data_root / name
    recorded = recorded_listing(settings, name)
    return recorded is not None and folder.is_dir() and folder_listing(folder) == recorded


def ingest_datasets(settings: Settings, config: PipelineConfig, force: bool) -> tuple[dict[str, str], bool]:
    """Ingest each dataset unless its source is unchanged; returns (versions, anything re-ingested)."""
    logger = get_run_logger()
    versions: dict[str, str] = {}
    reingested = False
    for spec in ingest_order(config.datasets):
        refresh = force or not matches_data_dvc(settings, spec.name)
        cached_ingest = ingest_one.with_options(
            cache_key_fn=_ingest_cache_key, persist_result=True, refresh_cache=refresh,
            task_run_name=f"ingest-{spec.name}",
        )
        state = cached_ingest(settings, spec, return_state=True)
        version = state.result()
        if state.name == "Cached" and version != dataset_version(settings.data_root / spec.name):
            # The folder matches data.dvc, but data.dvc was moved to data the source no longer gives.
            version = cached_ingest.with_options(refresh_cache=True)(settings, spec)
            state = None
        if state is not None and state.name == "Cached":
            logger.info("dataset %s: source unchanged, data/%s matches data.dvc (version %s)",
                        spec.name, spec.name, version[:12])
        else:
            reingested = True
        versions[spec.name] = version
    return versions, reingested


def sync_data_version(settings: Settings, config: PipelineConfig) -> str:
    """`dvc add` + `dvc push` when data.dvc or the remote lacks the current data; returns data.dvc's md5."""
    logger = get_run_logger()
    pinned = versioning.pinned_version(settings)
    recorded = pinned and all(matches_data_dvc(settings, d.name) for d in config.datasets)
    if recorded and versioning.remote_holds(settings, pinned):
        logger.info("data.dvc already records data/ (%s) and the DVC remote holds it: nothing to add or push", pinned)
        return pinned
    version = version_data.with_options(**OUTSIDE)(settings)
    if pinned and pinned != version:
        logger.warning("data.dvc moved from %s to %s: commit data.dvc to pin the new data", pinned, version)
    return version


# --------------------------------------------------------------------------- state and reports


def current_state(settings: Settings, config: PipelineConfig | None) -> dict[str, Any]:
    """What a run may change: data.dvc's version, each champion alias, the latest Bento."""
    state: dict[str, Any] = {"data.dvc": versioning.pinned_version(settings), "champions": {}, "bento": None}
    for task_spec in config.tasks() if config else []:
        champion = tracking.get_alias_version(settings, task_spec.registered_model)
        state["champions"][task_spec.registered_model] = champion.version if champion else None
    latest = bento.latest_bento(bento.BENTO_NAME)
    state["bento"] = str(latest.tag) if latest else None
    return state


def _snapshot_path(settings: Settings, flow_run_id: str) -> Path:
    return settings.work_dir / "retrain" / f"{flow_run_id}.json"


def leaderboard_rows(task_name: str, results: list[dict[str, Any]], decision: dict) -> list[dict[str, Any]]:
    """One table row per candidate: the table artifact of a task."""
    rows = []
    for r in results:
        row = {"task": task_name, "candidate": r["candidate"], "kind": r["kind"], "version": r["version"],
               "champion": "yes" if str(r["version"]) == str(decision["champion_version"]) else ""}
        row |= {f"val_{k}": round(v, 4) for k, v in sorted(r["val"].items())}
        row |= {f"test_{k}": round(v, 4) for k, v in sorted(r["test"].items())}
        row |= {"latency_ms_p50": round(r["latency_ms_p50"], 2), "train_s": round(r["train_s"], 1)}
        rows.append(row)
    return rows


def describe_changes(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
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
    snapshot = _snapshot_path(settings, str(flow_run.id))
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


# --------------------------------------------------------------------------- the flow


@flow(
    name="retrain",
    task_runner=ThreadPoolTaskRunner(max_workers=1),
    log_prints=True,
    on_failure=[write_failure_summary],
    on_crashed=[write_failure_summary],
)
def retrain(config: str = "default", force: bool = False) -> dict[str, Any]:
    """Retrain when the data changed (or with `force`): ingest → train → promote → package.

    `config` is a preset in configs/ or a YAML path; the project and MAAS_HOME come from the
    environment (MAAS_PROJECT_DIR, MAAS_HOME), as for every `maas` command.
    """
    logger = get_run_logger()
    started = time.perf_counter()
    settings = Settings.from_env()
    settings.apply()
    cfg = load_named_config(config, settings.configs_dir)
    before = current_state(settings, cfg)
    snapshot = _snapshot_path(settings, str(current_flow_run.id))
    snapshot.parent.mkdir(parents=True, exist_ok=True)
    snapshot.write_text(json.dumps(before))

    logger.info("[1/4] ingest: %d dataset(s)%s", len(cfg.datasets), " (forced)" if force else "")
    versions, reingested = ingest_datasets(settings, cfg, force)
    versions["_repo"] = sync_data_version(settings, cfg)

    summary: dict[str, Any] = {"config": config, "data_versions": versions, "reingested": reingested, "tasks": {}}
    for task_name in TASKS:
        task_spec = getattr(cfg, task_name)
        if task_spec is None:
            continue
        logger.info("[2/4] train %s: %s", task_name, ", ".join(c.name for c in task_spec.candidates))
        results = train_task_candidates(settings, cfg, task_name, versions, force, config)
        logger.info("[3/4] promote %s", task_name)
        decision = promote.with_options(**OUTSIDE)(settings, task_spec, results, versions[task_spec.dataset])
        trained = [r["candidate"] for r in results if not r.get("cached")]
        summary["tasks"][task_name] = {"results": results, "decision": decision, "trained": trained}

    logger.info("[4/4] package the champions as a Bento")
    imported = {name: import_champion.with_options(**OUTSIDE)(settings, cfg, name) for name in summary["tasks"]}
    summary["bento"] = build(settings, imported)

    after = current_state(settings, cfg)
    summary["changes"] = describe_changes(before, after)
    summary["changed"] = before != after
    summary["seconds"] = round(time.perf_counter() - started, 2)
    publish_artifacts(summary)
    snapshot.unlink(missing_ok=True)
    trained = [name for outcome in summary["tasks"].values() for name in outcome["trained"]]
    logger.info("retrain done in %.1f s; trained: %s\n%s", summary["seconds"], ", ".join(trained) or "nothing (cached)",
                "\n".join(summary["changes"]))
    return summary


def publish_artifacts(summary: dict[str, Any]) -> None:
    """The leaderboard (a table per task) and the promotion decision (markdown), on every run."""
    sections = []
    for task_name, outcome in summary["tasks"].items():
        data_version = outcome["results"][0]["data_version"] if outcome["results"] else "-"
        create_table_artifact(
            key=f"maas-leaderboard-{task_name}",
            table=leaderboard_rows(task_name, outcome["results"], outcome["decision"]),
            description=f"{task_name} candidates on data version {data_version[:12]}",
        )
        sections.append(leaderboard_markdown(task_name, outcome["results"], outcome["decision"]))
    changes = "\n".join(f"- {line}" for line in summary["changes"])
    trained = [name for outcome in summary["tasks"].values() for name in outcome["trained"]]
    verdict = (f"Trained {', '.join(trained)}." if trained else "Trained nothing (cached).") + (
        "" if summary["changed"] else " Nothing else changed.")
    create_markdown_artifact(
        key="maas-promotion-decision",
        markdown="\n".join(sections) + f"\n## State\n\n{verdict}\n\n{changes}\n",
        description="promotion decision and what this retrain changed",
    )

