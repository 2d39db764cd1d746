"""The smoke pipeline against a REAL MLflow tracking server instead of the embedded SQLite store.

`mlflow server` runs on a free 127.0.0.1 port with its own SQLite backend and a proxied
artifact store in a temp folder; the pipeline finds it through MLFLOW_TRACKING_URI, the one
variable the README names for it. The registered model, its champion alias, the run and the
model files must then be on that server, and nothing in the embedded store.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import make_project

pytestmark = pytest.mark.slow

READY_TIMEOUT_S = 120


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    from flows.prefect_server import free_port

    folder = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    command = [
        sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}", "--artifacts-destination", str(folder / "artifacts"),
    ]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"} | {"MLFLOW_ENABLE_TELEMETRY": "false"}
    log_path = folder / "server.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not _healthy(url):
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not start ({process.poll()}):\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url, folder
    finally:
        # The server runs uvicorn and a job runner as children: stop the whole process group.
        # Kept-alive client connections can hold a graceful shutdown for long: kill after 5 s.
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_smoke_pipeline_registers_the_champion_on_the_server(mlflow_server, tmp_path_factory, prefect_harness,
                                                            monkeypatch):
    from mlflow.tracking import MlflowClient

    from components.config import load_config
    from flows.pipeline import pipeline
    from flows.settings import Settings

    url, folder = mlflow_server
    project = make_project(tmp_path_factory.mktemp("mlflow-project"))
    home = tmp_path_factory.mktemp("mlflow-home")
    for name in ("MAAS_HOME", "MAAS_PROJECT_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    settings = Settings(project_dir=project, home=home)
    settings.apply()
    assert settings.tracking_uri == url
    config = load_config(project / "configs" / "smoke.yaml")

    summary = pipeline(settings, config, config_name="smoke")

    task = config.classification
    client = MlflowClient(url, url)
    champion = client.get_model_version_by_alias(task.registered_model, "champion")
    decision = summary["tasks"]["classification"]["decision"]
    assert champion.version == decision["champion_version"]
    assert champion.tags["data_version"] == summary["data"].datasets[task.dataset]
    run = client.get_run(champion.run_id)
    assert run.data.metrics["test_accuracy"] > 0.5
    assert {a.path for a in client.list_artifacts(champion.run_id)} >= {"report.json", "model_spec.json"}
    # The artifacts went through the server into its destination, not under MAAS_HOME.
    assert any(Path(folder / "artifacts").rglob("MLmodel"))
    assert not settings.mlflow_db.exists()
    assert not any(settings.mlflow_artifacts.rglob("*"))
