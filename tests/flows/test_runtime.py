"""What flow commands set up first: MAAS_HOME's setup lock, and runs left RUNNING by killed processes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

from flows.settings import Settings


def test_a_second_process_waits_for_the_setup_lock_and_says_so(tmp_path):
    from flows.runtime import SETUP_LOCK, setup_lock

    settings = Settings(project_dir=tmp_path, home=tmp_path / "home")
    settings.home.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from filelock import FileLock; lock = FileLock(sys.argv[1]); "
         "lock.acquire(); print('held', flush=True); time.sleep(3)", str(settings.home / SETUP_LOCK)],
        stdout=subprocess.PIPE, text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    said: list[str] = []
    started = time.monotonic()
    with setup_lock(settings, say=said.append):
        waited = time.monotonic() - started
    holder.wait()
    assert waited > 1.5
    assert said and "waiting" in said[0]


def test_runs_of_dead_processes_are_closed_as_killed_and_live_ones_kept(tmp_path, monkeypatch):
    from flows import tracking

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    settings = Settings(project_dir=tmp_path, home=tmp_path / "home")
    experiment = tracking.ensure_experiment(settings, "runtime-test")
    mlflow_client = tracking.client(settings)
    host = socket.gethostname()

    def run_of(name: str, owner: str | None = None) -> str:
        run_id = tracking.start_run(settings, experiment, name, {}, {})  # owned by this process
        if owner:
            mlflow_client.set_tag(run_id, tracking.PROCESS_TAG, owner)
        return run_id

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    live = run_of("live")
    dead = run_of("dead", f"{host}:{gone.stdout.strip()}:1.00")
    reused = run_of("reused-pid", f"{host}:{os.getpid()}:2.00")  # our pid, another start time
    elsewhere = run_of("other-host", "another-host:1:1.00")

    assert sorted(tracking.close_orphaned_runs(settings)) == sorted([dead, reused])
    status = {run: mlflow_client.get_run(run).info.status for run in (live, dead, reused, elsewhere)}
    assert status == {live: "RUNNING", dead: "KILLED", reused: "KILLED", elsewhere: "RUNNING"}


def test_experiments_are_marked_as_model_training(tmp_path, monkeypatch):
    from flows import tracking

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    settings = Settings(project_dir=tmp_path, home=tmp_path / "home")
    experiment_id = tracking.ensure_experiment(settings, "kind-test")
    experiment = tracking.client(settings).get_experiment(experiment_id)
    assert experiment.tags[tracking.EXPERIMENT_KIND_TAG] == "custom_model_development"
