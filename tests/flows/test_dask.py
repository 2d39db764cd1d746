"""On a 2-worker Dask LocalCluster, a small pipeline gives the same data version and model as in process."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from prefect import flow, task
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName

from components.config import DatasetSpec, ModelSpec, SourceSpec
from components.data.dataset import load_classification_data
from components.models import tfidf
from flows.dask_runner import Execution, chunk_mapper
from flows.ingest import ingest_one
from flows.settings import Settings
from flows.sweep import task_runner
from tests.flows.conftest import topic_project

pytestmark = pytest.mark.slow


@task
def fit_tfidf(folder: str, spec: ModelSpec) -> tuple[list[str], np.ndarray]:
    """The TF-IDF candidate fitted on a dataset folder: its label order and test probabilities."""
    data = load_classification_data(folder)
    predictor = tfidf.train(spec, data, workdir=None, on_metrics=lambda metrics, step: None)
    return predictor.labels, predictor.predict_proba(data.test_texts)


@flow
def small_pipeline(settings: Settings, dataset: DatasetSpec, model: ModelSpec):
    version = ingest_one(settings, dataset)
    return version, fit_tfidf.submit(str(settings.data_root / dataset.name), model).result()


def chunk_task_runs() -> int:
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_="ingest-chunk")))
    return len(runs)


def test_dask_local_cluster_gives_the_same_data_and_model(tmp_path, prefect_harness, monkeypatch):
    (tmp_path / "source").mkdir()
    topic_project(tmp_path / "source", tmp_path / "home")  # writes topics.csv
    dataset = DatasetSpec(name="topics", source=SourceSpec(kind="path", path="topics.csv"), test_fraction=0.2,
                          streaming=True, chunk_rows=16)
    model = ModelSpec(name="tfidf", kind="tfidf_logreg", params={"min_df": 1, "char_ngrams": None})
    outcomes = {}
    # threads: all in process; dask: the flow on a 2-worker cluster (chunks and the fit run there);
    # dask-env: the flow on threads, MAAS_TASK_RUNNER=dask starts a cluster for the chunk work alone.
    for mode, flow_runner in (("threads", "threads"), ("dask", "dask"), ("dask-env", "threads")):
        project = tmp_path / mode
        project.mkdir()
        shutil.copy(tmp_path / "source" / "topics.csv", project / "topics.csv")
        settings = Settings(project_dir=project, home=tmp_path / f"home-{mode}")
        if mode == "dask-env":
            monkeypatch.setenv("MAAS_TASK_RUNNER", "dask")
            monkeypatch.setenv("MAAS_DASK_WORKERS", "2")
        before = chunk_task_runs()
        version, (labels, proba) = small_pipeline.with_options(task_runner=task_runner(flow_runner, 2))(
            settings, dataset, model)
        outcomes[mode] = (version, labels, proba, chunk_task_runs() - before)

    version, labels, proba, chunk_tasks = outcomes["threads"]
    assert chunk_tasks == 0
    for mode in ("dask", "dask-env"):
        assert outcomes[mode][0] == version
        assert outcomes[mode][1] == labels
        np.testing.assert_array_equal(outcomes[mode][2], proba)
        # 180 rows in chunks of 16: the chunks ran as Prefect tasks on the cluster.
        assert outcomes[mode][3] == 12


def test_execution_comes_from_the_environment():
    assert Execution.from_env({}) == Execution()
    assert Execution.from_env({"MAAS_DASK_ADDRESS": "tcp://10.0.0.5:8786"}).on_dask
    assert Execution.from_env({"MAAS_TASK_RUNNER": "dask", "MAAS_DASK_WORKERS": "3"}).workers == 3
    with pytest.raises(ValueError, match="MAAS_TASK_RUNNER='ray'"):
        Execution.from_env({"MAAS_TASK_RUNNER": "ray"})
    with chunk_mapper(Execution()) as mapper:
        assert mapper is None  # in process: no cluster is started
