"""The end-to-end pipeline on the smoke config, in a throwaway project and MAAS_HOME.

Asserts the whole chain did its real job: a data version in data.dvc and in the DVC
remote, a registered model version with the champion alias and that data version as a
tag, a Bento in the store carrying those labels; then that a second ingest of the same
source leaves the version unchanged and a second pipeline run trains nothing new.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import make_project

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, prefect_harness):
    from components.config import load_config
    from flows.pipeline import pipeline
    from flows.settings import Settings

    project = make_project(tmp_path_factory.mktemp("project"))
    settings = Settings(project_dir=project, home=tmp_path_factory.mktemp("maas-home"))
    settings.apply()
    config = load_config(project / "configs" / "smoke.yaml")
    summary = pipeline(settings, config, config_name="smoke")
    return settings, config, summary


def test_data_is_versioned_in_dvc_and_pushed(smoke_run):
    from flows import versioning

    settings, _, summary = smoke_run
    version = versioning.pinned_version(settings)
    assert version and version.endswith(".dir")
    assert summary["data"].repo == version
    assert versioning.remote_holds(settings, version)


def test_dataset_version_is_dvcs_per_file_hashes(smoke_run):
    """The per-dataset version is a function of the file hashes DVC recorded for its folder."""
    from components.data.fingerprint import file_md5
    from flows import versioning

    settings, _, _ = smoke_run
    recorded = versioning.tracked_file_hashes(settings, versioning.pinned_version(settings))
    for relpath, md5 in recorded.items():
        assert file_md5(settings.data_root / relpath) == md5


def test_champion_is_registered_with_data_version(smoke_run):
    from flows import tracking

    settings, config, summary = smoke_run
    task = config.classification
    champion = tracking.get_alias_version(settings, task.registered_model)
    assert champion is not None
    assert champion.tags["data_version"] == summary["data"].datasets[task.dataset]
    assert summary["tasks"]["classification"]["decision"]["promoted"] is True
    run = tracking.client(settings).get_run(champion.run_id)
    assert run.data.tags["maas.data_version"] == champion.tags["data_version"]
    assert run.data.metrics["test_accuracy"] > 0.5  # 5 classes: chance is 0.2


def test_bento_carries_model_and_data_version(smoke_run):
    import bentoml

    settings, config, summary = smoke_run
    bento = bentoml.get(summary["bento"])
    labels = bento.info.labels
    assert labels["classifier_model"] == config.classification.registered_model
    assert labels["classifier_data_version"] == summary["data"].datasets[config.classification.dataset]


def test_second_ingest_keeps_the_version(smoke_run):
    from flows.ingest import ingest

    settings, config, summary = smoke_run
    again = ingest(settings, config)
    assert (again.repo, again.datasets) == (summary["data"].repo, summary["data"].datasets)


def test_second_run_trains_nothing_new(smoke_run):
    from flows import tracking
    from flows.pipeline import pipeline
    from flows.train import experiment_name

    settings, config, summary = smoke_run
    task = config.classification
    runs_before = len(tracking.search_runs(settings, experiment_name(task)))
    again = pipeline(settings, config, config_name="smoke")
    assert len(tracking.search_runs(settings, experiment_name(task))) == runs_before
    assert again["tasks"]["classification"]["decision"]["promoted"] is False
    assert again["bento"] == summary["bento"]


def test_compare_json_lists_the_leaderboard(smoke_run, monkeypatch):
    import json

    from typer.testing import CliRunner

    from flows.cli import app

    settings, config, summary = smoke_run
    monkeypatch.setenv("MAAS_PROJECT_DIR", str(settings.project_dir))
    monkeypatch.setenv("MAAS_HOME", str(settings.home))
    result = CliRunner().invoke(app, ["compare", "--config", "smoke", "--json"])
    assert result.exit_code == 0, result.output
    rows = [row for row in json.loads(result.output) if row["task"] == "classification"]
    task = config.classification
    # Every configured candidate, and the ensemble of them that the pipeline adds (TaskSpec.ensemble).
    assert {r["candidate"] for r in rows} == {c.name for c in task.candidates} | {"ensemble"}
    for row in rows:
        assert row["task"] == "classification" and row["run_id"]
        assert row["data_version"] == summary["data"].datasets[task.dataset]
        assert {"accuracy", "macro_f1"} <= set(row["val"]) and {"accuracy", "macro_f1"} <= set(row["test"])
    assert [r["alias"] for r in rows].count("champion") == 1


def test_every_candidate_round_trips_through_mlflow_pyfunc(smoke_run, tmp_path):
    """What the registry holds is what was trained: pyfunc loading gives the bundle's answers."""
    import mlflow

    from components.data.dataset import load_classification_data, load_corpus
    from components.predictor import load_predictor
    from flows import tracking

    settings, config, summary = smoke_run
    texts = load_classification_data(settings.data_root / config.classification.dataset).test_texts[:6]
    prompt = load_corpus(settings.data_root / config.generation.dataset).val_text[:20]
    kinds = set()
    for task_name, task in (("classification", config.classification), ("generation", config.generation)):
        for result in summary["tasks"][task_name]["results"]:
            kinds.add(result["kind"])
            model = mlflow.pyfunc.load_model(result["model_uri"])
            bundle = load_predictor(
                tracking.download_bundle(settings, task.registered_model, result["version"], tmp_path / result["run_id"])
            )
            if task_name == "classification":
                answers, expected = model.predict(texts), bundle.predict(texts)
                assert [a["label"] for a in answers] == [e["label"] for e in expected], result["candidate"]
                for answer, want in zip(answers, expected, strict=True):
                    assert answer["probabilities"] == pytest.approx(want["probabilities"], abs=1e-5)
            else:
                params = {"max_new_tokens": 12, "seed": 3}
                text = model.predict([prompt], params=params)[0]["text"]
                assert text == bundle.generate(prompt, **params) and len(text) > 0, result["candidate"]
    assert kinds == {"tfidf_logreg", "lstm", "transformer", "pretrained", "ensemble", "gpt", "lstm_lm"}


def test_served_bento_answers_like_the_registered_champions(smoke_run, tmp_path):
    """The built Bento, served from the store, against the champions loaded from MLflow."""
    import os

    import httpx
    import mlflow

    from components.data.dataset import load_classification_data
    from tests.service.conftest import serve

    settings, config, summary = smoke_run
    classifier = mlflow.pyfunc.load_model(f"models:/{config.classification.registered_model}@champion")
    generator = mlflow.pyfunc.load_model(f"models:/{config.generation.registered_model}@champion")
    texts = load_classification_data(settings.data_root / config.classification.dataset).test_texts
    with serve(summary["bento"], Path(os.environ["BENTOML_HOME"]), tmp_path / "serve.log") as server:
        served = []
        for start in range(0, len(texts), 16):
            response = httpx.post(f"{server.url}/classify", json={"texts": texts[start : start + 16]}, timeout=60)
            assert response.status_code == 200, response.text
            served += response.json()
        params = {"max_new_tokens": 10, "seed": 7}
        response = httpx.post(f"{server.url}/generate", json={"prompt": "The ", **params}, timeout=60)
        assert response.status_code == 200, response.text
        bad = httpx.post(f"{server.url}/generate", json={"prompt": "The ", "temperature": -1}, timeout=60)
        assert bad.status_code == 400
    expected = classifier.predict(texts)
    assert [s["label"] for s in served] == [e["label"] for e in expected]
    for answer, want in zip(served, expected, strict=True):
        assert answer["probabilities"] == pytest.approx(want["probabilities"], abs=1e-5)
    assert response.json()["text"] == generator.predict(["The "], params=params)[0]["text"]
