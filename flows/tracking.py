"""The only MLflow adapter: experiments, runs, logged models, the registry and its aliases.

Runs are written through `MlflowClient` with explicit run ids, so candidates trained in
parallel threads never share the fluent API's "active run". The `champion` alias marks
the version the service ships; `previous` keeps the one it replaced.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from flows.runtime import process_alive, process_id
from flows.settings import Settings

log = logging.getLogger(__name__)

# Our pyfunc outputs are maps of mixed values (label, probabilities, text): MLflow warns on
# every log and load that it cannot validate `Any`, and logs how it built the signature.
warnings.filterwarnings("ignore", message=r".*Any type hint is inferred", category=UserWarning)
warnings.filterwarnings("ignore", message=r".*Decorate your function with", category=UserWarning)
logging.getLogger("mlflow.models.signature").setLevel(logging.WARNING)

CHAMPION = "champion"
# MLflow 3 opens an experiment on its GenAI pages unless it is marked as model training.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING = "custom_model_development"
# Which process owns a RUNNING run: a run whose process is gone was killed and is closed as KILLED.
PROCESS_TAG = "maas.process"
PREVIOUS = "previous"
PYFUNC_SCRIPT = Path(__file__).with_name("pyfunc_model.py")
COMPONENTS_DIR = Path(__file__).resolve().parents[1] / "components"
# What a registry consumer needs to load a bundle; pinned like the lock (torch only for neural kinds).
MODEL_REQUIREMENTS = ["scikit-learn==1.9.1", "numpy", "pandas", "joblib"]
TORCH_REQUIREMENTS = ["torch==2.13.0", "transformers>=5,<6", "tokenizers", "safetensors"]


def client(settings: Settings) -> MlflowClient:
    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_registry_uri(settings.tracking_uri)
    return MlflowClient(settings.tracking_uri, settings.tracking_uri)


def init_store(settings: Settings) -> None:
    """Create or upgrade the tracking store's schema now (callers hold the MAAS_HOME setup lock).

    On a fresh SQLite store the first client runs MLflow's migrations; two processes doing
    that at once leave the database broken for good, so it happens here, once, under the lock.
    """
    client(settings).search_experiments(max_results=1)


def ensure_experiment(settings: Settings, name: str) -> str:
    """One experiment per task, marked as model training; artifacts of the embedded store go under MAAS_HOME."""
    mlflow_client = client(settings)
    experiment = mlflow_client.get_experiment_by_name(name)
    if experiment is None:
        artifact_location = None
        if settings.tracking_uri.startswith("sqlite:"):
            artifact_location = (settings.mlflow_artifacts / name).as_uri()
        try:
            return mlflow_client.create_experiment(
                name, artifact_location=artifact_location, tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING}
            )
        except MlflowException:
            # Another candidate created it a moment ago.
            experiment = mlflow_client.get_experiment_by_name(name)
    if experiment.tags.get(EXPERIMENT_KIND_TAG) != MODEL_TRAINING:  # made before the tag existed
        mlflow_client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING)
    return experiment.experiment_id


def git_commit(project_dir: Path) -> str:
    result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=project_dir, capture_output=True, text=True)
    return result.stdout.strip() if result.returncode == 0 else "unknown"


class RunLogger:
    """Buffers metrics and writes them with `log_batch` (one SQLite transaction per flush)."""

    def __init__(self, mlflow_client: MlflowClient, run_id: str, flush_every: int = 100):
        self.client = mlflow_client
        self.run_id = run_id
        self.flush_every = flush_every
        self._buffer: list[Metric] = []
        self._lock = threading.Lock()

    def __call__(self, metrics: Mapping[str, float], step: int | None) -> None:
        now = int(time.time() * 1000)
        with self._lock:
            self._buffer.extend(Metric(k, float(v), now, step or 0) for k, v in metrics.items())
            if len(self._buffer) >= self.flush_every:
                self._flush_locked()

    def flush(self) -> None:
        with self._lock:
            self._flush_locked()

    def _flush_locked(self) -> None:
        # log_batch takes at most 1000 metrics a call.
        for start in range(0, len(self._buffer), 1000):
            self.client.log_batch(self.run_id, metrics=self._buffer[start : start + 1000])
        self._buffer.clear()


def start_run(
    settings: Settings, experiment_id: str, run_name: str, tags: Mapping[str, str], params: Mapping[str, Any]
) -> str:
    mlflow_client = client(settings)
    run = mlflow_client.create_run(experiment_id, run_name=run_name, tags={**tags, PROCESS_TAG: process_id()})
    flat = {k: json.dumps(v) if not isinstance(v, str) else v for k, v in params.items()}
    mlflow_client.log_batch(
        run.info.run_id, params=[mlflow.entities.Param(k, v[:6000]) for k, v in flat.items()]
    )
    return run.info.run_id


def log_artifacts(settings: Settings, run_id: str, files: Mapping[str, Path | str | dict]) -> None:
    """Log files (paths) or JSON documents (dicts) under the given artifact names."""
    mlflow_client = client(settings)
    with tempfile.TemporaryDirectory() as tmp:
        for name, content in files.items():
            if isinstance(content, dict | list):
                path = Path(tmp) / name
                path.write_text(json.dumps(content, indent=2, sort_keys=True))
                mlflow_client.log_artifact(run_id, str(path))
            else:
                mlflow_client.log_artifact(run_id, str(content))


def log_artifact_folder(settings: Settings, run_id: str, folder: Path, artifact_path: str) -> None:
    """Log every file of `folder` under `artifact_path` of the run."""
    client(settings).log_artifacts(run_id, str(folder), artifact_path)


def download_run_artifacts(settings: Settings, run_id: str, artifact_path: str, dest: str | Path) -> Path:
    """A run's artifact file or folder, downloaded into `dest`; returns its local path."""
    return Path(client(settings).download_artifacts(run_id, artifact_path, str(dest)))


def set_run_tag(settings: Settings, run_id: str, key: str, value: str) -> None:
    client(settings).set_tag(run_id, key, value)


def log_model(
    settings: Settings,
    run_id: str,
    bundle_dir: Path,
    input_example: list[str] | tuple[list[str], dict],
    needs_torch: bool,
) -> str:
    """Log the bundle as a pyfunc model in `run_id`; returns its model URI."""
    client(settings)
    requirements = MODEL_REQUIREMENTS + (TORCH_REQUIREMENTS if needs_torch else [])
    with mlflow.start_run(run_id=run_id), warnings.catch_warnings():
        # Outputs are maps of mixed values (label, probabilities, text): MLflow warns that it
        # cannot validate `Any`, which is what we mean.
        warnings.filterwarnings("ignore", module="mlflow.types.type_hints")
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(PYFUNC_SCRIPT),
            artifacts={"bundle": str(bundle_dir)},
            code_paths=[str(COMPONENTS_DIR)],
            pip_requirements=requirements,
            input_example=input_example,
        )
    return info.model_uri


def register_model(settings: Settings, model_uri: str, registered_model: str, tags: Mapping[str, str]) -> str:
    """A new registry version of a logged model (`models:/m-<id>`), tagged; returns the version.

    Through the client API: `mlflow.register_model` prints its progress on stderr, past logging.
    """
    mlflow_client = client(settings)
    try:
        mlflow_client.create_registered_model(registered_model)
    except MlflowException as error:
        if error.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
            raise
    created = mlflow_client.create_model_version(
        registered_model, source=model_uri, run_id=tags.get("run_id"), tags=dict(tags),
        model_id=model_uri.removeprefix("models:/"),
    )
    return str(created.version)


def end_run(settings: Settings, run_id: str, status: str = "FINISHED") -> None:
    client(settings).set_terminated(run_id, status)


def close_orphaned_runs(settings: Settings) -> list[str]:
    """Mark KILLED the RUNNING runs whose process died (a SIGKILL leaves them RUNNING); returns their ids."""
    mlflow_client = client(settings)
    experiments = [e.experiment_id for e in mlflow_client.search_experiments()]
    if not experiments:
        return []
    closed = []
    for run in mlflow_client.search_runs(experiments, filter_string="attributes.status = 'RUNNING'"):
        owner = run.data.tags.get(PROCESS_TAG)
        if owner and not process_alive(owner):
            mlflow_client.set_terminated(run.info.run_id, "KILLED")
            log.warning("closed run %s (%s) as KILLED: its process %s is gone",
                        run.info.run_id, run.info.run_name, owner.split(":")[1])
            closed.append(run.info.run_id)
    return closed


@dataclass(frozen=True)
class RegisteredVersion:
    """A registry version as the flows use it (MLflow returns versions as ints, tags as a dict)."""

    version: str
    run_id: str
    tags: dict[str, str]


def get_alias_version(
    settings: Settings, registered_model: str, alias: str = CHAMPION
) -> RegisteredVersion | None:
    """The version behind an alias, or None."""
    try:
        found = client(settings).get_model_version_by_alias(registered_model, alias)
    except MlflowException:
        return None
    return RegisteredVersion(str(found.version), found.run_id, dict(found.tags or {}))


def run_metrics(settings: Settings, run_id: str) -> dict[str, float]:
    return dict(client(settings).get_run(run_id).data.metrics)


def set_champion(settings: Settings, registered_model: str, version: str) -> str | None:
    """Point `champion` at `version`; the replaced version keeps the `previous` alias."""
    mlflow_client = client(settings)
    current = get_alias_version(settings, registered_model, CHAMPION)
    version = str(version)
    if current is not None and current.version != version:
        mlflow_client.set_registered_model_alias(registered_model, PREVIOUS, current.version)
    mlflow_client.set_registered_model_alias(registered_model, CHAMPION, version)
    return current.version if current is not None else None


def tag_version(settings: Settings, registered_model: str, version: str, key: str, value: str) -> None:
    client(settings).set_model_version_tag(registered_model, version, key, value[:5000])


def download_bundle(settings: Settings, registered_model: str, version: str, dest: str | Path) -> Path:
    """The Predictor bundle of a registered version, downloaded into `dest`."""
    client(settings)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    local = mlflow.artifacts.download_artifacts(
        artifact_uri=f"models:/{registered_model}/{version}", dst_path=str(dest)
    )
    return Path(local) / "artifacts" / "bundle"


def load_registered(settings: Settings, registered_model: str, version: str):
    """A registry version's Predictor, loaded into memory (its download is deleted afterwards)."""
    from components.predictor import load_predictor

    with tempfile.TemporaryDirectory() as tmp:
        return load_predictor(download_bundle(settings, registered_model, version, tmp))


def search_runs(settings: Settings, experiment_name: str, filter_string: str = "") -> list:
    mlflow_client = client(settings)
    experiment = mlflow_client.get_experiment_by_name(experiment_name)
    if experiment is None:
        return []
    return mlflow_client.search_runs(
        [experiment.experiment_id], filter_string=filter_string, order_by=["attributes.start_time DESC"]
    )


def version_aliases(settings: Settings, registered_model: str) -> dict[str, list[str]]:
    """version -> aliases for a registered model (empty when it does not exist)."""
    try:
        model = client(settings).get_registered_model(registered_model)
    except MlflowException:
        return {}
    aliases: dict[str, list[str]] = {}
    for alias, version in (model.aliases or {}).items():
        aliases.setdefault(str(version), []).append(alias)
    return aliases


def model_versions_for_run(settings: Settings, registered_model: str, run_id: str) -> list:
    try:
        return client(settings).search_model_versions(f"name='{registered_model}' and run_id='{run_id}'")
    except MlflowException:
        return []


def versions_trained_on(settings: Settings, registered_model: str, data_version: str) -> list[str]:
    """The registry versions whose ``data_version`` tag is `data_version` (oldest first)."""
    try:
        versions = client(settings).search_model_versions(f"name='{registered_model}'")
    except MlflowException:
        return []
    return sorted((str(v.version) for v in versions if v.tags.get("data_version") == data_version), key=int)


def newest_version_of_candidate(settings: Settings, registered_model: str, candidate: str) -> str | None:
    """The highest registry version that candidate `candidate` produced (its ``candidate`` tag)."""
    try:
        versions = client(settings).search_model_versions(f"name='{registered_model}'")
    except MlflowException:
        return None
    mine = [int(v.version) for v in versions if v.tags.get("candidate") == candidate]
    return str(max(mine)) if mine else None


def training_experiments(settings: Settings) -> list[tuple[str, str]]:
    """(name, id) of the experiments maas trained in, for links straight to their runs."""
    experiments = client(settings).search_experiments(
        filter_string=f"tags.`{EXPERIMENT_KIND_TAG}` = '{MODEL_TRAINING}'"
    )
    return sorted((e.name, e.experiment_id) for e in experiments)


def ui_command(settings: Settings, port: int) -> list[str]:
    """`mlflow ui` through this interpreter: a venv that was never activated is not on PATH."""
    return [
        sys.executable,
        "-m",
        "mlflow",
        "ui",
        "--backend-store-uri",
        settings.tracking_uri,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
