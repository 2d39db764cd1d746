"""The BUILT Bento, served by `bentoml serve <tag>` (its own default host), plus the adapter around the build."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlparse

import httpx
import pytest

from components.predictor import load_predictor
from flows import bento
from tests.service.conftest import SECRET, SECRET_FILES

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def http(served_bento):
    with httpx.Client(base_url=served_bento.url, timeout=30) as client:
        yield client


def test_startup_log_names_models_and_batch_placement(http, served_bento, classifier_tag):
    output = served_bento.output()
    assert f"serving {classifier_tag}" in output
    assert "classification batches run on the event loop" in output  # a tiny TF-IDF: fast batches


def test_the_served_bento_listens_on_the_loopback_only(served_bento):
    # Served with no --host: the Bento's own config decides (`bentoml serve` alone would bind 0.0.0.0).
    import psutil

    port = urlparse(served_bento.url).port
    listening = {
        c.laddr.ip
        for c in psutil.net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN and c.laddr.port == port
    }
    assert listening == {"127.0.0.1"}, listening


@pytest.mark.skipif("OMP_WAIT_POLICY" in os.environ, reason="the operator's own OMP_WAIT_POLICY is kept")
def test_the_model_worker_runs_with_passive_openmp_threads(served_bento):
    # Spinning OpenMP threads starved the event loop of a streaming server under CPU contention
    # (service.py): the worker process, where torch runs, must start with the passive policy.
    import psutil

    workers = psutil.Process(served_bento.process.pid).children(recursive=True)
    policies = {
        w.environ().get("OMP_WAIT_POLICY") for w in workers if "_bentoml_impl.worker" in " ".join(w.cmdline())
    }
    assert policies == {"PASSIVE"}, policies


def test_the_bento_carries_the_service_code_and_no_secret(built_bento):
    # The project it was built from held SECRET in a user config, data, a log and an env file.
    import bentoml

    root = Path(bentoml.bentos.get(built_bento).path)
    # Serving the Bento imports its code from the store, and Python caches the bytecode there
    # (unless PYTHONDONTWRITEBYTECODE is set): that is not what the build packed.
    files = [path for path in root.rglob("*") if path.is_file() and "__pycache__" not in path.parts]
    assert not [str(path.relative_to(root)) for path in files if SECRET.encode() in path.read_bytes()]
    source = {path.relative_to(root / "src").as_posix() for path in files if (root / "src") in path.parents}
    assert {"service.py", "compat.py", "components/predictor.py"} <= source
    assert all(name.endswith(".py") or name == "bentofile.yaml" for name in source), sorted(source)
    assert not source & set(SECRET_FILES)
    # Not even their folders: BentoML walks its whole build context, MAAS_HOME included.
    folders = {
        path.relative_to(root / "src").parts[0]
        for path in (root / "src").rglob("*")
        if path.is_dir() and "__pycache__" not in path.parts
    }
    assert folders == {"components"}, sorted(folders)


def test_probes_and_metrics(http):
    for path in ("/readyz", "/livez", "/healthz"):
        assert http.get(path).status_code == 200
    http.post("/classify", json={"texts": ["warm the batcher up"]})
    metrics = http.get("/metrics")
    assert metrics.status_code == 200
    assert "bentoml_service_request_total" in metrics.text
    assert 'endpoint="/classify"' in metrics.text
    assert "bentoml_service_adaptive_batch_size" in metrics.text
    # The prediction metrics (components/monitoring/metrics.py), created in the worker process.
    assert 'maas_predicted_label_total{endpoint="classify",label="' in metrics.text
    assert 'maas_prediction_confidence_bucket{endpoint="classify",le="0.99"}' in metrics.text
    assert "maas_inference_log_dropped_records_total 0.0" in metrics.text


def test_predictions_equal_the_bundle_in_process(http, classifier_bundle, sample_texts):
    expected = load_predictor(classifier_bundle).predict(sample_texts)
    # Whole requests of several texts ...
    served = []
    for start in range(0, len(sample_texts), 8):
        response = http.post("/classify", json={"texts": sample_texts[start : start + 8]})
        assert response.status_code == 200, response.text
        served += response.json()
    # ... and concurrent single-text requests, which the adaptive batcher merges.
    with ThreadPoolExecutor(8) as pool:
        singles = list(pool.map(lambda text: http.post("/classify", json={"texts": [text]}), sample_texts))
    assert all(r.status_code == 200 for r in singles)
    for answers in (served, [r.json()[0] for r in singles]):
        assert [a["label"] for a in answers] == [e["label"] for e in expected]
        for answer, want in zip(answers, expected, strict=True):
            assert answer["probabilities"] == pytest.approx(want["probabilities"], abs=1e-9)
            assert answer["model_version"] == "7"


BAD = [
    ({"content": b'{"texts": ['}, 400),
    ({"content": b'{"texts": ["\xff"]}'}, 400),
    ({"json": {"texts": ["a"] * 9}}, 400),
    ({"json": {"texts": ["x" * 501]}}, 400),
    ({"json": {"texts": [1, 2]}}, 400),
    ({"json": {"texts": [""]}}, 400),
    ({"content": b"x" * (6 * 8 * 500 + 64 * 1024 + 1)}, 413),
    ({"content": b"texts=a", "headers": {"content-type": "application/x-www-form-urlencoded"}}, 415),
]


@pytest.mark.parametrize("request_kwargs, status", BAD)
def test_bad_input_is_a_4xx_and_the_server_stays_up(http, served_bento, request_kwargs, status):
    response = http.post("/classify", **request_kwargs)
    assert response.status_code == status, response.text
    assert "error" in response.json()
    assert served_bento.process.poll() is None
    assert http.post("/classify", json={"texts": ["a new phone chip"]}).status_code == 200


def test_info_shows_the_packed_models_and_labels(http, built_bento, classifier_tag, newer_classifier_tag):
    info = http.post("/info").json()
    assert info["bento"] == built_bento
    # The Bento pinned the classifier at build time; the newer one imported since is not served.
    assert str(bento.latest_model(bento.CLASSIFIER_MODEL).tag) == newer_classifier_tag
    assert info["models"]["classifier"]["bento_model"] == classifier_tag
    assert info["models"]["classifier"]["model_name"] == "maas-bbc"
    assert info["models"]["classifier"]["model_version"] == "7"
    assert info["models"]["classifier"]["data_version"] == "md5-abc123.dir"
    assert info["limits"]["max_texts"] == 8


def test_generate_on_the_built_bento(http, generator_model):
    response = http.post("/generate", json={"prompt": "the team", "max_new_tokens": 8, "seed": 1})
    if not generator_model.real:  # the fake generator is never packed: this Bento has none
        assert response.status_code == 404
        assert response.json() == {"error": "no generation model in this Bento"}
        return
    assert response.status_code == 200, response.text
    assert (
        response.json()
        == http.post("/generate", json={"prompt": "the team", "max_new_tokens": 8, "seed": 1}).json()
    )


def test_the_bento_pins_its_models_and_carries_the_labels(built_bento, classifier_tag, generator_model):
    described = bento.describe_bento(built_bento)
    assert described["args"]["classifier"] == classifier_tag
    assert described["args"]["generator"] == (generator_model.tag if generator_model.real else bento.NO_MODEL)
    assert classifier_tag in described["models"]
    assert described["labels"]["project"] == "maas"
    assert described["labels"]["classifier_data_version"] == "md5-abc123.dir"
    assert str(bento.latest_bento().tag) == built_bento


def test_a_failed_build_raises_and_keeps_the_last_bento(built_bento, copy_project, tmp_path):
    project = copy_project(tmp_path / "broken")
    (project / "service.py").write_text("import bentoml\nraise RuntimeError('broken on purpose')\n")
    with pytest.raises(bento.BentoBuildError, match="broken on purpose"):
        bento.build_bento(project, labels={"classifier_version": "8"})
    assert str(bento.latest_bento().tag) == built_bento


def test_build_without_a_bentofile_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError):
        bento.build_bento(tmp_path, labels={})


def test_labels_are_sanitised_idempotently():
    labels = {"model_version": "3", "data_version": "md5:0a1b.dir", "odd key!": " ü/x= ", "long": "v" * 100}
    clean = bento.sanitize_labels(labels)
    assert clean == {"model_version": "3", "data_version": "md5-0a1b.dir", "odd-key": "x", "long": "v" * 63}
    assert bento.sanitize_labels(clean) == clean
    with pytest.raises(ValueError):
        bento.sanitize_labels({"!!": "x"})


def test_import_bundle_refuses_a_folder_that_is_not_a_bundle(bentoml_home, tmp_path):
    from components.predictor import BundleError

    with pytest.raises(BundleError):
        bento.import_bundle(tmp_path, name="maas-test-nothing", labels={}, metadata={})
    assert bento.latest_model("maas-test-nothing") is None


def test_import_bundle_stores_the_bundle_and_complete_limits(bentoml_home, classifier_tag):
    import bentoml

    info = bentoml.models.get(classifier_tag).info
    assert info.labels == {"model_name": "maas-bbc", "model_version": "7", "data_version": "md5-abc123.dir"}
    assert info.metadata["serving"]["max_texts"] == 8
    assert info.metadata["serving"]["max_batch_size"] == 64  # defaults filled in
    assert info.metadata["bundle"]["kind"] == "tfidf_logreg"
    assert (bentoml.models.get(classifier_tag).path_of("bundle.json")).endswith("bundle.json")
    assert load_predictor(bentoml.models.get(classifier_tag).path).labels == ["food", "sport", "tech"]
