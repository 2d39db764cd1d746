"""The inference log: the writer and reader on their own, and what /classify and /explain leave in it.

The service tests build the in-process service (conftest.py) with the log pointed at a temp
folder; leaving the TestClient shuts the service down, which flushes the log.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from starlette.testclient import TestClient

from components.monitoring.inference_log import (
    SCHEMA,
    InferenceLog,
    LoggedModel,
    log_files,
    log_folder,
    read_log,
)
from tests.service.conftest import TOPICS
from tests.service.test_service import asgi_app

MODEL = LoggedModel("maas-bbc", "7", "md5:abc123.dir")
HOUR = 3600.0  # a flush interval no test waits for: only sizes, flush() and close() write


def _add(log: InferenceLog, first: int, count: int) -> None:
    """`count` single-record batches whose confidences number them from `first` (in thousandths)."""
    for i in range(first, first + count):
        log.record("classify", MODEL, f"text {i}", "sport", i / 1000, 0.0)
        time.sleep(0.0002)  # distinct record times


# -- the writer and the reader ---------------------------------------------------------------------
def test_files_roll_sort_by_time_and_read_back_in_order(tmp_path):
    log = InferenceLog(tmp_path, log_texts=False, max_rows_per_file=5, flush_every_s=HOUR)
    _add(log, 0, 7)
    log.flush()
    _add(log, 7, 5)
    log.close()
    files = log_files(tmp_path)
    assert len(files) == 3  # 5 + 2 rows from the first flush, 5 from the close
    assert [pq.read_metadata(f).num_rows for f in files] == [5, 2, 5]
    first_times = [pq.read_table(f).column("time")[0].as_py() for f in files]
    assert first_times == sorted(first_times)
    everything = read_log(tmp_path)
    assert list(everything["confidence"] * 1000) == pytest.approx(range(12))
    newest = read_log(tmp_path, last=4)
    assert list(newest["confidence"] * 1000) == pytest.approx([8, 9, 10, 11])
    assert read_log(tmp_path, last=0).empty
    assert log.written == 12 and log.dropped == 0


def test_records_have_the_schema_and_texts_only_when_asked(tmp_path):
    for log_texts in (False, True):
        folder = tmp_path / str(log_texts)
        log = InferenceLog(folder, log_texts=log_texts, flush_every_s=HOUR)
        log.add_batch("classify", MODEL, ["one", "three"], ["tech", "food"], [0.5, 0.75], [0.0, 1.0])
        log.close()
        [path] = log_files(folder)
        assert pq.read_schema(path).remove_metadata() == SCHEMA
        frame = read_log(folder)
        assert list(frame["label"]) == ["tech", "food"] and list(frame["text_chars"]) == [3, 5]
        assert set(frame["model"]) == {"maas-bbc"} and set(frame["data_version"]) == {"md5:abc123.dir"}
        assert list(frame["oov_share"]) == [0.0, 1.0]
        assert str(frame["time"].dtype) == "datetime64[us, UTC]"
        if log_texts:
            assert list(frame["text"]) == ["one", "three"]
        else:
            assert frame["text"].isna().all()


def test_no_log_reads_as_an_empty_frame_with_the_columns(tmp_path):
    frame = read_log(tmp_path / "never-written")
    assert frame.empty and list(frame.columns) == SCHEMA.names


def test_a_file_without_the_columns_is_named_in_the_error(tmp_path):
    pd.DataFrame({"label": ["x"]}).to_parquet(tmp_path / "20260101T000000000000Z-1-000000.parquet")
    with pytest.raises(ValueError, match=r"20260101T000000000000Z-1-000000\.parquet.*missing"):
        read_log(tmp_path)


def test_a_reader_never_sees_a_partial_file(tmp_path):
    # Incompressible texts, so that a file takes a while to write, and a reader that reads the newest
    # file over and over: written in place (no temp name + rename), nearly every read failed.
    rng = random.Random(0)
    log = InferenceLog(tmp_path, log_texts=True, max_rows_per_file=100, flush_every_s=0.005)
    stop, failures, counts = threading.Event(), [], []

    def read_repeatedly() -> None:
        while not stop.is_set():
            try:
                counts.append(len(read_log(tmp_path, last=1)))
            except Exception as exc:  # noqa: BLE001
                failures.append(exc)

    reader = threading.Thread(target=read_repeatedly)
    reader.start()
    try:
        for _ in range(30):
            texts = [f"{rng.random()} " * 1000 for _ in range(100)]
            log.add_batch("classify", MODEL, texts, ["sport"] * 100, [0.9] * 100)
            time.sleep(0.01)
    finally:
        log.close()
        stop.set()
        reader.join()
    assert not failures, failures[:3]
    assert counts and len(log_files(tmp_path)) >= 10
    assert len(read_log(tmp_path)) == 30 * 100
    assert not [p for p in tmp_path.iterdir() if not p.name.endswith(".parquet")]  # no temp file left


def test_a_writer_behind_drops_the_oldest_records_and_counts_them(tmp_path):
    drops: list[int] = []
    log = InferenceLog(
        tmp_path, log_texts=False, max_buffered_rows=10, flush_every_s=HOUR, on_drop=drops.append
    )
    _add(log, 0, 4)
    log.add_batch("classify", MODEL, ["x"] * 21, ["tech"] * 21, [(100 + i) / 1000 for i in range(21)])
    log.close()
    assert log.dropped == 15 and sum(drops) == 15
    assert list(read_log(tmp_path)["confidence"] * 1000) == pytest.approx(range(111, 121))


def test_a_failing_disk_is_a_warning_and_counted_drops(tmp_path, caplog):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    log = InferenceLog(blocker / "inference", log_texts=False, flush_every_s=HOUR)
    _add(log, 0, 3)
    with caplog.at_level(logging.WARNING, logger="components.monitoring.inference_log"):
        log.close()
    assert log.dropped == 3 and log.written == 0
    assert "3 records not written" in caplog.text


def test_a_bad_call_never_raises():
    log = InferenceLog("/nonexistent-never-written", log_texts=False, flush_every_s=HOUR)
    log.add_batch("classify", MODEL, ["a", "b"], ["x"], [0.5])  # lengths differ
    log.add_batch("predict", MODEL, ["a"], ["x"], [0.5])  # no such endpoint
    log.close()
    assert log.written == 0 and log.dropped == 0


def test_where_the_log_goes(tmp_path):
    assert log_folder({"MAAS_INFERENCE_LOG": "off"}) is None
    assert log_folder({"MAAS_INFERENCE_LOG": str(tmp_path / "x")}) == tmp_path / "x"
    assert log_folder({"MAAS_HOME": str(tmp_path)}) == tmp_path / "inference"
    assert log_folder({"MAAS_PROJECT_DIR": str(tmp_path)}) == tmp_path / ".maas" / "inference"


# -- the service -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def classifier_service(import_service, classifier_tag):
    return import_service("maas_service_inference_log", {"classifier": classifier_tag, "generator": "none"})


@contextlib.contextmanager
def serving(module, monkeypatch, **env: str) -> Iterator[TestClient]:
    """The service with these environment variables; leaving it shuts the service down (flushes the log)."""
    for name in ("MAAS_INFERENCE_LOG", "MAAS_LOG_TEXTS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with TestClient(asgi_app(module), raise_server_exceptions=False) as client:
        yield client


SPORT = "the coach said the team would win the cup"
TECH = "a new chip for the phone and the cloud app zzyzx"


def _sample(name: str, labels: dict[str, str] | None = None) -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_classify_writes_one_record_per_text(classifier_service, monkeypatch, tmp_path):
    sport_before = _sample("maas_predicted_label_total", {"endpoint": "classify", "label": "sport"})
    confidences_before = _sample("maas_prediction_confidence_count", {"endpoint": "classify"})
    with serving(classifier_service, monkeypatch, MAAS_INFERENCE_LOG=str(tmp_path)) as client:
        response = client.post("/classify", json={"texts": [SPORT, TECH]})
        assert response.status_code == 200, response.text
        answers = response.json()
    frame = read_log(tmp_path)
    assert list(frame["label"]) == ["sport", "tech"] == [a["label"] for a in answers]
    assert list(frame["confidence"]) == pytest.approx([a["probabilities"][a["label"]] for a in answers])
    assert set(frame["endpoint"]) == {"classify"} and set(frame["model"]) == {"maas-bbc"}
    # The versions as /info reports them: BentoML labels, sanitised by flows/bento.py (":" -> "-").
    assert set(frame["model_version"]) == {"7"} and set(frame["data_version"]) == {"md5-abc123.dir"}
    assert list(frame["text_chars"]) == [len(SPORT), len(TECH)]
    # Words the tiny model never saw: "said" and "would"; "new" and "zzyzx" (one-letter words are no tokens).
    assert list(frame["oov_share"]) == pytest.approx([2 / 9, 2 / 10])
    assert frame["text"].isna().all()  # no MAAS_LOG_TEXTS
    for path in log_files(tmp_path):
        assert pq.read_schema(path).remove_metadata() == SCHEMA
    # The Prometheus metrics counted them too.
    assert (
        _sample("maas_predicted_label_total", {"endpoint": "classify", "label": "sport"}) == sport_before + 1
    )
    assert _sample("maas_prediction_confidence_count", {"endpoint": "classify"}) == confidences_before + 2


def test_texts_are_logged_only_with_maas_log_texts(classifier_service, monkeypatch, tmp_path):
    with serving(
        classifier_service, monkeypatch, MAAS_INFERENCE_LOG=str(tmp_path), MAAS_LOG_TEXTS="1"
    ) as client:
        assert client.post("/classify", json={"texts": [SPORT]}).status_code == 200
    assert list(read_log(tmp_path)["text"]) == [SPORT]


def test_explanations_are_logged_as_explain(classifier_service, monkeypatch, tmp_path):
    with serving(classifier_service, monkeypatch, MAAS_INFERENCE_LOG=str(tmp_path)) as client:
        response = client.post("/explain", json={"texts": [SPORT], "top_k": 2})
        assert response.status_code == 200, response.text
    frame = read_log(tmp_path)
    assert list(frame["endpoint"]) == ["explain"] and list(frame["label"]) == ["sport"]


def test_a_failing_disk_does_not_fail_classify(classifier_service, monkeypatch, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    dropped_before = _sample("maas_inference_log_dropped_records_total")
    with serving(classifier_service, monkeypatch, MAAS_INFERENCE_LOG=str(blocker / "inference")) as client:
        response = client.post("/classify", json={"texts": [SPORT, TECH]})
        assert response.status_code == 200, response.text
    assert [a["label"] for a in response.json()] == ["sport", "tech"]
    assert _sample("maas_inference_log_dropped_records_total") == dropped_before + 2


def test_the_log_can_be_turned_off(classifier_service, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # where the default MAAS_HOME would put it
    monkeypatch.delenv("MAAS_HOME", raising=False)
    monkeypatch.delenv("MAAS_PROJECT_DIR", raising=False)
    with serving(classifier_service, monkeypatch, MAAS_INFERENCE_LOG="off") as client:
        assert client.post("/classify", json={"texts": [SPORT]}).status_code == 200
    assert not list(Path(tmp_path).rglob("*.parquet"))


def test_every_topic_word_is_known_to_the_served_model(classifier_service, monkeypatch, tmp_path):
    texts = [" ".join(words.split()[:6]) for words in TOPICS.values()]
    with serving(classifier_service, monkeypatch, MAAS_INFERENCE_LOG=str(tmp_path)) as client:
        assert client.post("/classify", json={"texts": texts}).status_code == 200
    assert list(read_log(tmp_path)["oov_share"]) == [0.0] * len(texts)
