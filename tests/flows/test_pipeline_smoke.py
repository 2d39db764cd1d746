"""The end-to-end pipeline on the smoke config, in a throwaway project and MAAS_HOME.

Asserts the whole chain did its real job: a data version in data.dvc and in the DVC
remote, a registered model version with the champion alias and that data version as a
tag, a Bento in the store carrying those labels; then that a second ingest of the same
source leaves the version unchanged and a second pipeline run trains nothing new.
"""

from __future__ import annotations

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
    assert summary["data_versions"]["_repo"] == version
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
    assert champion.tags["data_version"] == summary["data_versions"][task.dataset]
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
    assert labels["classifier_data_version"] == summary["data_versions"][config.classification.dataset]


def test_second_ingest_keeps_the_version(smoke_run):
    from flows.ingest import ingest

    settings, config, summary = smoke_run
    again = ingest(settings, config)
    assert again == summary["data_versions"]


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
