"""The retrain deployment on a REAL Prefect server, as `maas schedule` runs it.

`maas schedule --config smoke --port <free> --run-now` runs as a subprocess in a throwaway
project with every home under a temp MAAS_HOME (none of the session's test settings leak
in): it starts `prefect server start` on 127.0.0.1, serves the deployment and triggers one
run. The tests read the deployment back from that server, trigger a second run through it
with `run_deployment` and wait for both (the first trains and builds, the second finds
nothing new), check that prefect.yaml deploys to a process work pool, then stop everything
with SIGINT (Ctrl-C).

The session's Prefect test harness points this process at another API: every client call
here runs inside `temporary_settings(PREFECT_API_URL=<this server>)`.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, make_project

pytestmark = pytest.mark.slow

RUN_TIMEOUT_S = 300
READY_TIMEOUT_S = 240
ISOLATED = ("MAAS_HOME", "MAAS_PROJECT_DIR", "PREFECT_HOME", "PREFECT_API_URL", "BENTOML_HOME", "MLFLOW_TRACKING_URI")


@dataclass
class Scheduled:
    process: subprocess.Popen
    api_url: str
    port: int
    home: Path
    env: dict[str, str]
    log_path: Path

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def api(self):
        from prefect.settings import PREFECT_API_URL, temporary_settings

        return temporary_settings(updates={PREFECT_API_URL: self.api_url})


def _read_deployment(api_url: str, name: str):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
        return client.read_deployment_by_name(name)


def _wait_for(predicate, timeout_s: float, scheduled: Scheduled, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if scheduled.process.poll() is not None:
            pytest.fail(f"`maas schedule` exited ({scheduled.process.returncode}) before {what}:\n{scheduled.log_tail()}")
        try:
            if predicate():
                return
        except Exception:
            pass
        time.sleep(1)
    pytest.fail(f"no {what} after {timeout_s} s:\n{scheduled.log_tail()}")


@pytest.fixture(scope="module")
def scheduled(tmp_path_factory):
    from flows.prefect_server import free_port, is_healthy

    project = make_project(tmp_path_factory.mktemp("deploy-project"))
    home = tmp_path_factory.mktemp("deploy-home")
    port = free_port()
    env = {key: value for key, value in os.environ.items() if key not in ISOLATED}
    env |= {
        "MAAS_HOME": str(home),
        "MAAS_PROJECT_DIR": str(project),
        "PREFECT_RUNNER_POLL_FREQUENCY": "2",  # pick a triggered run up quickly
        "PREFECT_SERVER_UI_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": "INFO",
    }
    log_path = home / "schedule.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "flows.cli", "schedule", "--config", "smoke", "--port", str(port), "--run-now"],
            cwd=project, env=env, stdout=log, stderr=subprocess.STDOUT,
        )
    scheduled = Scheduled(process, f"http://127.0.0.1:{port}/api", port, home, env, log_path)
    try:
        _wait_for(lambda: is_healthy(scheduled.api_url), READY_TIMEOUT_S, scheduled, "healthy Prefect server")
        _wait_for(lambda: _read_deployment(scheduled.api_url, "retrain/retrain"), 120, scheduled, "served deployment")
        yield scheduled
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def test_deployment_has_the_schedule_and_parameters_of_prefect_yaml(scheduled):
    from flows.schedule import deployment_settings

    spec = deployment_settings()
    deployment = _read_deployment(scheduled.api_url, "retrain/retrain")
    assert len(deployment.schedules) == 1
    schedule = deployment.schedules[0]
    assert schedule.active
    assert schedule.schedule.cron == spec["cron"] == "0 3 * * 1"
    assert schedule.schedule.timezone == spec["timezone"]
    assert deployment.parameters == {**spec["parameters"], "config": "smoke"} == {"config": "smoke", "force": False}
    assert deployment.entrypoint.endswith("flows/retrain.py:retrain") and spec["entrypoint"] == "flows/retrain.py:retrain"


def test_runs_through_the_deployment_train_once_then_change_nothing(scheduled):
    from mlflow.tracking import MlflowClient
    from prefect.artifacts import Artifact
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.deployments import run_deployment

    with scheduled.api():
        # The runner takes one run at a time, in either order: the --run-now run and this one. The
        # first trains; the second finds nothing new.
        flow_run = run_deployment("retrain/retrain", timeout=RUN_TIMEOUT_S, poll_interval=2, as_subflow=False)
        assert flow_run.state is not None and flow_run.state.is_completed(), f"{flow_run.state}\n{scheduled.log_tail()}"
        assert flow_run.parameters == {"config": "smoke", "force": False}

        def read_runs():
            with get_client(sync_client=True) as client:
                return client.read_flow_runs(
                    deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[flow_run.deployment_id]))
                )

        _wait_for(lambda: sum(run.state.is_final() for run in read_runs()) >= 2, RUN_TIMEOUT_S, scheduled, "second run")
        runs = read_runs()
        done = [run for run in runs if run.state.is_final()]
        assert len(done) == 2 and all(run.state.is_completed() for run in done), [run.state for run in runs]
        # The rest are the scheduler's next runs of the cron schedule: Mondays at 03:00 UTC.
        for run in runs:
            if run not in done:
                start = run.expected_start_time.astimezone(UTC)
                assert run.state.is_scheduled() and (start.weekday(), start.hour, start.minute) == (0, 3, 0)
        decision = Artifact.get("maas-promotion-decision")  # the latest: the second run's
        leaderboard = Artifact.get("maas-leaderboard-classification")
    assert decision is not None and "Trained nothing" in decision.data, decision.data
    assert leaderboard is not None and leaderboard.type == "table"
    # The two runs wrote under that MAAS_HOME: one version per smoke candidate and one for the
    # ensemble of them (the second run trained nothing), a champion, one Bento.
    uri = f"sqlite:///{scheduled.home / 'mlflow' / 'mlflow.db'}"
    client = MlflowClient(uri, uri)
    champion = client.get_model_version_by_alias("bbc-news-classifier", "champion")
    assert champion.tags["data_version"]
    from components.config import load_config

    smoke = load_config(REPO / "configs" / "smoke.yaml")
    task = smoke.classification
    registered = len(task.candidates) + (1 if task.ensemble.enabled else 0)
    assert len(client.search_model_versions("name='bbc-news-classifier'")) == registered
    assert len([p for p in (scheduled.home / "bentoml" / "bentos" / "maas").iterdir() if p.is_dir()]) == 1


def test_the_monitor_deployment_is_served_beside_retrain(scheduled):
    from flows.schedule import MONITOR_DEPLOYMENT, deployment_settings

    spec = deployment_settings(MONITOR_DEPLOYMENT)
    deployment = _read_deployment(scheduled.api_url, "monitor/monitor")
    assert [s.schedule.cron for s in deployment.schedules] == [spec["cron"]] == ["0 * * * *"]
    assert deployment.parameters == {"config": "smoke", "window": None}
    assert deployment.entrypoint.endswith("flows/monitor.py:monitor")


def test_prefect_yaml_deploys_to_a_process_work_pool(scheduled, tmp_path):
    """`prefect deploy` of prefect.yaml (a copy under another name) to the `maas-process` pool."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists

    from flows.schedule import PREFECT_YAML, deployment_settings

    document = yaml.safe_load(PREFECT_YAML.read_text())
    (entry,) = [d for d in document["deployments"] if d["name"] == "retrain"]
    entry["name"] = "retrain-on-pool"  # leave the served deployment alone
    prefect_file = tmp_path / "prefect.yaml"
    prefect_file.write_text(yaml.safe_dump(document))
    # `prefect work-pool create maas-process --type process`, without starting another CLI.
    with scheduled.api(), get_client(sync_client=True) as client:
        try:
            client.create_work_pool(WorkPoolCreate(name=entry["work_pool"]["name"], type="process"))
        except ObjectAlreadyExists:
            pass
    env = {**scheduled.env, "PREFECT_API_URL": scheduled.api_url, "PREFECT_HOME": str(tmp_path / "cli-home")}
    command = [sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--prefect-file", str(prefect_file),
               "--name", "retrain-on-pool"]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, f"{' '.join(command)}:\n{result.stdout}\n{result.stderr}"

    spec = deployment_settings()
    deployment = _read_deployment(scheduled.api_url, "retrain/retrain-on-pool")
    assert deployment.work_pool_name == "maas-process"
    assert deployment.entrypoint == spec["entrypoint"]
    assert deployment.parameters == spec["parameters"] == {"config": "default", "force": False}
    assert [s.schedule.cron for s in deployment.schedules] == [spec["cron"]]


def test_ctrl_c_stops_the_runner_and_the_server(scheduled):
    from flows.prefect_server import port_in_use

    scheduled.process.send_signal(signal.SIGINT)
    assert scheduled.process.wait(90) == 0, scheduled.log_tail()
    deadline = time.monotonic() + 30
    while port_in_use(scheduled.port) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not port_in_use(scheduled.port), "the Prefect server outlived `maas schedule`"
    assert "Stopping the Prefect server" in scheduled.log_tail()


def test_the_cli_is_on_the_path():
    """The deployment's docs use `maas` and `prefect` commands of this environment."""
    assert shutil.which("prefect", path=str(Path(sys.executable).parent))
