"""Ingestion: read each configured source, validate, write `data/<name>/`, version it with DVC.

Invalid data raises before anything is replaced, and `dvc add` runs only after every
dataset was written, so a failure leaves `data/` and `data.dvc` as they were. Three ways to
get the data a run trains on, each returning a `DataVersions`: `ingest` (always),
`ensure_data` (what data.dvc pins, pulled when missing) and `ingest_changed` (a retrain:
only the datasets whose source changed).

Why data.dvc's hash is not in `ingest_changed`'s cache key: the run that ingests new data
also moves data.dvc, so a key containing it would miss once more on the next, unchanged
run. The refresh check (`matches_data_dvc`) covers what that hash would: the recorded data
and the folder.
"""

from __future__ import annotations

import hashlib
import json
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

from prefect import flow, task

from components.config import DatasetSpec, PipelineConfig
from components.data import fingerprint
from components.data.fingerprint import dataset_version, folder_listing
from components.data.ingest import ingest_dataset, should_stream
from flows import versioning
from flows.dask_runner import Execution, chunk_mapper, flow_on_dask
from flows.logs import run_logger
from flows.retries import TRANSIENT_RETRIES
from flows.settings import Settings


@dataclass(frozen=True)
class DataVersions:
    """The data a run trains on: data.dvc's md5 (`repo`), each dataset's version, and which this run ingested."""

    repo: str
    datasets: dict[str, str]
    ingested: tuple[str, ...] = ()


def ingest_order(datasets: list[DatasetSpec]) -> list[DatasetSpec]:
    """Datasets built from another dataset's text come after the one they read."""
    return sorted(datasets, key=lambda d: d.source.kind == "dataset")


@task(name="ingest-dataset")
def ingest_one(settings: Settings, spec: DatasetSpec) -> str:
    """One dataset; a streamed one runs its chunk work on Dask when `MAAS_TASK_RUNNER`/`MAAS_DASK_ADDRESS` ask."""
    logger = run_logger()
    execution = Execution.from_env()
    streams = (execution.on_dask or flow_on_dask()) and should_stream(
        spec, base_dir=settings.project_dir, cache_dir=settings.download_cache
    )
    with chunk_mapper(execution) if streams else nullcontext() as map_chunks:
        if map_chunks is not None:
            logger.info("dataset %s: cleaning chunks on Dask (%s)", spec.name, execution.address or "local cluster")
        manifest = ingest_dataset(
            spec, settings.data_root, cache_dir=settings.download_cache, base_dir=settings.project_dir,
            map_chunks=map_chunks,
        )
    version = dataset_version(settings.data_root / spec.name)
    counts = manifest["counts"]
    size = (f"{sum(counts['rows'].values())} rows" if "rows" in counts
            else f"{sum(counts['characters'].values())} characters")
    logger.info("dataset %s: %s -> version %s", spec.name, size, version)
    return version


@task(name="dvc-add-push", **TRANSIENT_RETRIES)
def version_data(settings: Settings) -> str:
    versioning.ensure_repository(settings)
    return versioning.track_and_push(settings)


@flow(name="ingest", log_prints=True)
def ingest(settings: Settings, config: PipelineConfig) -> DataVersions:
    """Ingest every dataset, then `dvc add` + `dvc push` `data/`."""
    logger = run_logger()
    pinned = versioning.pinned_version(settings)
    datasets = {spec.name: ingest_one(settings, spec) for spec in ingest_order(config.datasets)}
    repo_version = version_data(settings)
    if pinned and pinned != repo_version:
        logger.warning(
            "The ingested data (%s) differs from the version pinned in data.dvc (%s). data.dvc now points "
            "at the new version: commit it to pin it, or `git checkout data.dvc && dvc pull` to go back.",
            repo_version,
            pinned,
        )
    elif pinned:
        logger.info("Ingested data matches the version pinned in data.dvc (%s)", pinned)
    return DataVersions(repo=repo_version, datasets=datasets, ingested=tuple(datasets))


def ensure_data(settings: Settings, config: PipelineConfig) -> DataVersions:
    """Make `data/` match data.dvc (pulling it when missing); ingests nothing."""
    missing = [d.name for d in config.datasets if not (settings.data_root / d.name / "manifest.json").is_file()]
    if missing:
        versioning.pull(settings)
    return DataVersions(
        repo=versioning.pinned_version(settings) or "untracked",
        datasets={d.name: dataset_version(settings.data_root / d.name) for d in config.datasets},
    )


# --------------------------------------------------------------------------- ingest what changed


def source_fingerprint(settings: Settings, spec: DatasetSpec) -> dict[str, Any]:
    """`fingerprint.source_fingerprint` with this project's folders."""
    return fingerprint.source_fingerprint(
        spec, base_dir=settings.project_dir, download_cache=settings.download_cache, data_root=settings.data_root
    )


def _ingest_cache_key(context, parameters: dict[str, Any]) -> str:
    settings, spec = parameters["settings"], parameters["spec"]
    payload = {
        "source": source_fingerprint(settings, spec),
        "spec": spec.model_dump(mode="json"),
        "code": fingerprint.ingest_code_version(),
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


def ingest_changed(settings: Settings, config: PipelineConfig, force: bool = False) -> DataVersions:
    """Ingest each dataset whose source (or ingestion code) changed, then version `data/` if it moved.

    Each dataset is a task cached on its source fingerprint and spec; the cache is refreshed
    whenever `data/<name>/` no longer matches data.dvc (deleted, edited, or data.dvc checked
    out at another version), so a missing folder is never "cached". `force` ingests all.
    """
    logger = run_logger()
    datasets: dict[str, str] = {}
    ingested: list[str] = []
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
            ingested.append(spec.name)
        datasets[spec.name] = version
    return DataVersions(repo=sync_data_version(settings, config), datasets=datasets, ingested=tuple(ingested))


def sync_data_version(settings: Settings, config: PipelineConfig) -> str:
    """`dvc add` + `dvc push` when data.dvc or the remote lacks the current data; returns data.dvc's md5."""
    logger = run_logger()
    pinned = versioning.pinned_version(settings)
    recorded = pinned and all(matches_data_dvc(settings, d.name) for d in config.datasets)
    if recorded and versioning.remote_holds(settings, pinned):
        logger.info("data.dvc already records data/ (%s) and the DVC remote holds it: nothing to add or push", pinned)
        return pinned
    version = version_data(settings)
    if pinned and pinned != version:
        logger.warning("data.dvc moved from %s to %s: commit data.dvc to pin the new data", pinned, version)
    return version
