"""Packaging: the champions go into the BentoML store, then `bentoml build` makes the Bento.

Both steps are skipped when the store already holds exactly these champion versions, so a
retrain that changed nothing builds nothing. A failed build leaves the last Bento in place.
"""

from __future__ import annotations

import tempfile

from prefect import task

from components.config import PipelineConfig
from flows import bento, tracking
from flows.logs import run_logger
from flows.retries import TRANSIENT_RETRIES
from flows.settings import Settings

BENTO_MODEL_NAMES = {"classification": bento.CLASSIFIER_MODEL, "generation": bento.GENERATOR_MODEL}


def _labels(registered_model: str, version, data_version: str) -> dict[str, str]:
    return {"model_name": registered_model, "model_version": str(version), "data_version": data_version}


@task(name="import-champion", **TRANSIENT_RETRIES)
def import_champion(settings: Settings, config: PipelineConfig, task_name: str) -> dict[str, str] | None:
    """Copy the champion bundle of one task into the BentoML store (unless already there)."""
    logger = run_logger()
    task_spec = getattr(config, task_name)
    champion = tracking.get_alias_version(settings, task_spec.registered_model)
    if champion is None:
        logger.warning("%s has no champion: nothing to package", task_spec.registered_model)
        return None
    labels = _labels(task_spec.registered_model, champion.version, champion.tags.get("data_version", "unknown"))
    name = BENTO_MODEL_NAMES[task_name]
    existing = bento.latest_model(name)
    if existing is not None and all(existing.labels.get(k) == v for k, v in bento.sanitize_labels(labels).items()):
        logger.info("%s v%s is already in the BentoML store as %s", task_spec.registered_model, champion.version, existing.tag)
        return {"tag": str(existing.tag), **labels}
    with tempfile.TemporaryDirectory() as tmp:
        bundle = tracking.download_bundle(settings, task_spec.registered_model, champion.version, tmp)
        tag = bento.import_bundle(
            bundle, name=name, labels=labels, metadata={"serving": config.serving.model_dump()}
        )
    logger.info("imported %s v%s as %s", task_spec.registered_model, champion.version, tag)
    return {"tag": tag, **labels}


@task(name="build-bento", retries=1, retry_delay_seconds=5)
def build(settings: Settings, imported: dict[str, dict[str, str] | None]) -> str | None:
    logger = run_logger()
    present = {task: info for task, info in imported.items() if info}
    if not present:
        logger.warning("no champion to serve: no Bento built")
        return None
    labels = {}
    for task_name, info in present.items():
        prefix = "classifier" if task_name == "classification" else "generator"
        labels |= {f"{prefix}_model": info["model_name"], f"{prefix}_version": info["model_version"],
                   f"{prefix}_data_version": info["data_version"], f"{prefix}_bento_model": info["tag"]}
    current = bento.latest_bento("maas")
    if current is not None and all(current.info.labels.get(k) == v for k, v in bento.sanitize_labels(labels).items()):
        logger.info("Bento %s already serves these champions", current.tag)
        return str(current.tag)
    tag = bento.build_bento(settings.project_dir, labels=labels)
    logger.info("built Bento %s", tag)
    return tag
