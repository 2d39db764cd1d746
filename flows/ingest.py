"""Ingestion flow: read each configured source, validate, write `data/<name>/`, version with DVC.

Invalid data raises before anything is replaced, and `dvc add` runs only after every
dataset was written, so a failure leaves `data/` and `data.dvc` as they were.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, task

from components.config import DatasetSpec, PipelineConfig
from components.data.fingerprint import dataset_version
from components.data.ingest import ingest_dataset
from flows import versioning
from flows.logs import run_logger
from flows.settings import Settings


def ingest_order(datasets: list[DatasetSpec]) -> list[DatasetSpec]:
    """Datasets built from another dataset's text come after the one they read."""
    return sorted(datasets, key=lambda d: d.source.kind == "dataset")


@task(name="ingest-dataset")
def ingest_one(settings: Settings, spec: DatasetSpec) -> str:
    logger = run_logger()
    manifest = ingest_dataset(
        spec, settings.data_root, cache_dir=settings.download_cache, base_dir=settings.project_dir
    )
    version = dataset_version(settings.data_root / spec.name)
    counts = manifest["counts"]
    size = (f"{sum(counts['rows'].values())} rows" if "rows" in counts
            else f"{sum(counts['characters'].values())} characters")
    logger.info("dataset %s: %s -> version %s", spec.name, size, version)
    return version


@task(name="dvc-add-push", retries=2, retry_delay_seconds=[2, 10])
def version_data(settings: Settings) -> str:
    versioning.ensure_repository(settings)
    return versioning.track_and_push(settings)


@flow(name="ingest", log_prints=True)
def ingest(settings: Settings, config: PipelineConfig) -> dict[str, str]:
    """Returns {dataset name: dataset version, "_repo": data.dvc md5}."""
    logger = run_logger()
    pinned = versioning.pinned_version(settings)
    versions = {spec.name: ingest_one(settings, spec) for spec in ingest_order(config.datasets)}
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
    versions["_repo"] = repo_version
    return versions


def ensure_data(settings: Settings, config: PipelineConfig) -> dict[str, str]:
    """Make `data/` match data.dvc (pulling it when missing); returns the dataset versions."""
    missing = [d.name for d in config.datasets if not (settings.data_root / d.name / "manifest.json").is_file()]
    if missing:
        versioning.pull(settings)
    versions = {d.name: dataset_version(settings.data_root / d.name) for d in config.datasets}
    versions["_repo"] = versioning.pinned_version(settings) or "untracked"
    return versions


def dataset_dir(settings: Settings, name: str) -> Path:
    return settings.data_root / name
