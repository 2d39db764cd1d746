"""Where the embedded state lives, and how one variable points each part at a real server.

Everything the pipeline writes outside git lives under MAAS_HOME (default `.maas/` in the
project): the MLflow SQLite store and artifacts, Prefect's home, the DVC local remote,
the BentoML home, work folders. `MLFLOW_TRACKING_URI`, `PREFECT_API_URL`,
`PREFECT_HOME` and `BENTOML_HOME` set by the user win over these defaults.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path


class _Under:
    """A read-only path below one of the settings' folders: `data_root = _Under("project_dir", "data")`."""

    def __init__(self, folder: str, *parts: str):
        self.folder, self.parts = folder, parts

    def __get__(self, settings: Settings | None, owner: type):
        if settings is None:  # looked up on the class itself
            return self
        return getattr(settings, self.folder).joinpath(*self.parts)


@dataclass(frozen=True)
class Settings:
    project_dir: Path
    home: Path

    @classmethod
    def from_env(cls, project_dir: str | Path | None = None) -> Settings:
        project = Path(project_dir or os.environ.get("MAAS_PROJECT_DIR") or Path.cwd()).resolve()
        home = Path(os.environ.get("MAAS_HOME") or project / ".maas").resolve()
        return cls(project_dir=project, home=home)

    # -- the project (git + DVC repository) ------------------------------------------
    data_root = _Under("project_dir", "data")
    configs_dir = _Under("project_dir", "configs")

    # -- embedded state ----------------------------------------------------------------
    mlflow_db = _Under("home", "mlflow", "mlflow.db")
    mlflow_artifacts = _Under("home", "mlflow", "artifacts")
    prefect_home = _Under("home", "prefect")
    dvc_remote = _Under("home", "dvc-remote")
    bentoml_home = _Under("home", "bentoml")
    download_cache = _Under("home", "cache", "downloads")
    work_dir = _Under("home", "work")

    @property
    def tracking_uri(self) -> str:
        return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{self.mlflow_db}"

    def apply(self) -> None:
        """Export the defaults for the libraries that read their settings from the environment.

        Call before importing prefect or bentoml: both read their home folder when first used.
        """
        for folder in (self.mlflow_db.parent, self.mlflow_artifacts, self.prefect_home, self.bentoml_home):
            folder.mkdir(parents=True, exist_ok=True)
        os.environ.setdefault("MLFLOW_TRACKING_URI", self.tracking_uri)
        os.environ.setdefault("PREFECT_HOME", str(self.prefect_home))
        os.environ.setdefault("BENTOML_HOME", str(self.bentoml_home))
        os.environ["MAAS_HOME"] = str(self.home)
        os.environ["MAAS_PROJECT_DIR"] = str(self.project_dir)
        # The embedded Prefect server must not try to reach the internet for telemetry here.
        os.environ.setdefault("DO_NOT_TRACK", "1")
        os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
        os.environ.setdefault("MLFLOW_ENABLE_TELEMETRY", "false")
        os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        # Hugging Face's per-file bars ("Loading weights") are noise next to the training progress.
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        # The components log progress (steps, loss, samples/s, validation) with plain `logging`:
        # Prefect forwards those records to the run's log, the terminal and the UI.
        os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "components")
        logging.getLogger("components").setLevel(logging.INFO)  # Prefect adds handlers, not a level
        # The stores are found through these variables; a prompt would hang a scheduled run.
        os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
