"""The README's commands, run the way a new user runs them: as subprocesses in a fresh project,
with no virtual environment on PATH, checking what they leave behind (exit codes, files, ports).

One own-data pipeline (`maas pipeline --data ...` on a two-text-column CSV, a TF-IDF-only
preset so it takes seconds) feeds the serve, ui and compare checks.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from flows.prefect_server import free_port
from tests.conftest import make_project

pytestmark = pytest.mark.slow

VENV_BIN = Path(sys.executable).parent
MAAS = str(VENV_BIN / "maas")
# What the test session sets for its own isolation: a user's shell has none of it.
ISOLATED = ("MAAS_HOME", "MAAS_PROJECT_DIR", "PREFECT_HOME", "PREFECT_API_URL", "PREFECT_LOGGING_LEVEL", "BENTOML_HOME",
            "MLFLOW_TRACKING_URI", "VIRTUAL_ENV")
TOPICS = {
    "sport": "match goal team player score league coach win cup",
    "tech": "software chip computer internet phone data network code",
    "politics": "election minister party vote parliament policy government law",
}
# The smoke preset with the TF-IDF baseline alone: the commands are under test, not the models.
TINY_PRESET = """extends: smoke
name: tiny
classification:
  candidates:
    lstm: {enabled: false}
    transformer: {enabled: false}
    pretrained: {enabled: false}
"""


@dataclass
class Project:
    folder: Path
    home: Path
    env: dict[str, str]

    def maas(self, *args: str, timeout: float = 600, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([MAAS, *args], cwd=self.folder, env={**self.env, **(env or {})}, capture_output=True,
                              text=True, timeout=timeout)

    def popen(self, *args: str, log: Path) -> subprocess.Popen:
        with log.open("w") as sink:
            return subprocess.Popen([MAAS, *args], cwd=self.folder, env=self.env, stdout=sink,
                                    stderr=subprocess.STDOUT, start_new_session=True)

    @contextlib.contextmanager
    def serving(self, command: str, *, log: Path) -> Iterator[tuple[str, subprocess.Popen, Path]]:
        """`maas <command> --port <free>` running; yields its URL, process and log; stops it after."""
        port = free_port()
        process = self.popen(command, "--port", str(port), log=log)
        try:
            yield f"http://127.0.0.1:{port}", process, log
        finally:
            stop(process)


def write_topics_csv(path: Path, rows_per_class: int = 40) -> None:
    """Two text columns (title, body) and a label column named `topic`."""
    rng = random.Random(0)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["title", "body", "topic"])
        for label, words in TOPICS.items():
            vocabulary = words.split() + "the a of and to in on it".split()
            for _ in range(rows_per_class):
                writer.writerow([" ".join(rng.choices(vocabulary, k=4)), " ".join(rng.choices(vocabulary, k=14)), label])


def new_project(root: Path) -> Project:
    folder = make_project(root / "project")
    (folder / "configs" / "tiny.yaml").write_text(TINY_PRESET)
    write_topics_csv(folder / "own.csv")
    home = root / "maas-home"
    env = {key: value for key, value in os.environ.items() if key not in ISOLATED}
    env |= {"PATH": "/usr/local/bin:/usr/bin:/bin", "MAAS_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    return Project(folder, home, env)


def wait_for(url: str, process: subprocess.Popen, log: Path, timeout_s: float = 180) -> httpx.Response:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"exited with {process.returncode} before {url} answered:\n{log.read_text()[-3000:]}")
        try:
            return httpx.get(url, timeout=5)
        except httpx.HTTPError:
            time.sleep(0.5)
    pytest.fail(f"{url} did not answer in {timeout_s} s:\n{log.read_text()[-3000:]}")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def running_runs(home: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(home / "mlflow" / "mlflow.db") as db:
        return db.execute("select run_uuid, status from runs where status = 'RUNNING'").fetchall()


@pytest.fixture(scope="module")
def own_data(tmp_path_factory) -> tuple[Project, subprocess.CompletedProcess]:
    """The README's own-data command with the default candidates, as a user runs it first."""
    project = new_project(tmp_path_factory.mktemp("readme"))
    result = project.maas("pipeline", "--data", "own.csv", "--text-column", "title", "--text-column", "body",
                          "--label-column", "topic", "--name", "own")
    return project, result


def test_pipeline_on_own_data_writes_its_config_and_a_champion(own_data):
    project, result = own_data
    assert result.returncode == 0, result.stdout + result.stderr
    written = (project.folder / "configs" / "own.yaml").read_text()
    assert "extends: default" in written and "- title\n" in written and "label_column: topic" in written
    compared = project.maas("compare", "-c", "own", "--json")
    assert compared.returncode == 0, compared.stderr
    rows = json.loads(compared.stdout)
    assert [r["candidate"] for r in rows if r["alias"] == "champion"] == ["tfidf-logreg"]
    assert "maas serve" in result.stdout  # the summary says where to look next
    assert "Finished in state Completed()" in result.stderr  # the flow's log reaches the terminal
    assert "Traceback" not in result.stdout + result.stderr
    # No noise a user cannot act on: MLflow's signature warnings, Hugging Face's per-file bars.
    assert "UserWarning" not in result.stderr and "Loading weights" not in result.stderr


def test_explain_names_the_words_behind_the_label(own_data):
    project, _ = own_data
    result = project.maas("explain", "-c", "own", "--top-k", "3", "--json", "goal match team coach league")
    assert result.returncode == 0, result.stdout + result.stderr
    [explained] = json.loads(result.stdout)
    assert explained["label"] == "sport"
    assert {w["word"] for w in explained["towards"]} <= set(TOPICS["sport"].split())


def test_the_own_config_is_not_silently_replaced(own_data):
    project, _ = own_data
    before = (project.folder / "configs" / "own.yaml").read_text()
    result = project.maas("pipeline", "--data", "own.csv", "--text-column", "body", "--label-column", "topic",
                          "--name", "own")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "--overwrite" in result.stderr
    assert (project.folder / "configs" / "own.yaml").read_text() == before


def test_serve_answers_readyz_and_classifies(own_data, tmp_path):
    project, _ = own_data
    with project.serving("serve", log=tmp_path / "serve.log") as (url, process, log):
        deadline = time.monotonic() + 180
        while wait_for(f"{url}/readyz", process, log).status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.5)
        answer = httpx.post(f"{url}/classify", json={"texts": ["goal match team coach league win"]}, timeout=30)
        assert answer.status_code == 200, answer.text
        assert answer.json()[0]["label"] == "sport"


def test_ui_answers(own_data, tmp_path):
    project, _ = own_data
    with project.serving("ui", log=tmp_path / "ui.log") as (url, process, log):
        assert wait_for(f"{url}/", process, log).status_code == 200
        # Links straight to the training runs, in MLflow's model-training view (not its GenAI pages).
        assert "/runs?workflowType=machine_learning" in log.read_text()


@pytest.mark.parametrize(
    "args, says",
    [
        (["pipeline", "-c", "typo.yaml"], "typo.yaml: serving.max_textz: unknown key"),
        (["pipeline", "--data", "own.csv", "--text-column", "title", "--label-column", "label", "--name", "x"],
         "no column 'label'"),
        (["pipeline", "-c", "no-such-preset"], "no config 'no-such-preset'"),
        (["serve", "--port", "{busy}"], "is taken"),
    ],
)
def test_a_users_mistake_is_one_line_and_exit_2(own_data, args, says):
    project, _ = own_data
    (project.folder / "typo.yaml").write_text("extends: tiny\nserving: {max_textz: 3}\n")
    configs_before = sorted(p.name for p in (project.folder / "configs").iterdir())
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        args = [a.replace("{busy}", str(busy.getsockname()[1])) for a in args]
        result = project.maas(*args)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert says in output
    assert "Traceback" not in output
    assert sorted(p.name for p in (project.folder / "configs").iterdir()) == configs_before


def test_a_killed_pipeline_leaves_no_server_and_no_running_run(tmp_path):
    """SIGKILL mid-training: the Prefect server dies with it; the next start closes the run as KILLED."""
    import psutil

    project = new_project(tmp_path)
    (project.folder / "configs" / "slow.yaml").write_text(
        "extends: smoke\nname: slow\nclassification:\n  candidates:\n    tfidf-logreg: {enabled: false}\n"
        "    transformer: {enabled: false}\n    pretrained: {enabled: false}\n"
        "    lstm: {training: {epochs: 50}}\ngeneration: null\n")
    log = tmp_path / "killed.log"
    process = project.popen("pipeline", "-c", "slow", log=log)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        if (project.home / "mlflow" / "mlflow.db").exists() and running_runs(project.home):
            break
        time.sleep(0.3)
    assert process.poll() is None, log.read_text()[-3000:]
    assert running_runs(project.home), "no run started within 300 s"
    children = psutil.Process(process.pid).children(recursive=True)
    assert any("prefect" in " ".join(c.cmdline()) for c in children)
    process.kill()  # the maas process alone, as `kill -9` would
    process.wait()
    gone, alive = psutil.wait_procs(children, timeout=30)
    assert not alive, f"left behind: {[c.cmdline() for c in alive]}"

    (project.folder / "configs" / "quick.yaml").write_text(TINY_PRESET.replace("name: tiny", "name: quick"))
    again = project.maas("ingest", "-c", "quick")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "as KILLED" in again.stderr
    assert "as crashed" in again.stderr  # its Prefect flow run too
    assert running_runs(project.home) == []


def test_two_first_runs_at_once_both_succeed(tmp_path):
    """Two pipelines on a fresh MAAS_HOME: one sets the stores up, the other waits; then a third runs.

    MAAS_HOME is the default, `.maas/` inside the project: there two Bento builds at once used to
    walk into each other's build folders until the path was too long.
    """
    project = new_project(tmp_path)
    project.env.pop("MAAS_HOME")
    logs = [tmp_path / "first.log", tmp_path / "second.log"]
    processes = [project.popen("pipeline", "-c", "tiny", log=log) for log in logs]
    for process, log in zip(processes, logs, strict=True):
        assert process.wait(600) == 0, log.read_text()[-3000:]
    third = project.maas("pipeline", "-c", "tiny")
    assert third.returncode == 0, third.stdout + third.stderr
    bentos = project.folder / ".maas" / "bentoml" / "bentos" / "maas"
    for source in bentos.glob("*/src"):
        assert {p.name for p in source.iterdir() if p.is_dir()} == {"components"}
