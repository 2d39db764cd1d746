"""Streamed ingestion: same output whatever the chunk size or row order, same cleaning and reports as in memory."""

from __future__ import annotations

import json
import random
import tracemalloc
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from components.config import DatasetSpec
from components.data.dataset import iter_split_batches, load_classification_data, read_dataset_manifest
from components.data.fingerprint import dataset_version
from components.data.ingest import ingest_dataset, should_stream
from components.data.validation import DataValidationError

STREAM = {"streaming": True, "row_issues": "warn"}


def ingest(tmp_path: Path, path: str = "rows.csv", name: str = "news", **extra) -> dict:
    spec = DatasetSpec(name=name, source={"kind": "path", "path": path, **extra.pop("source", {})}, **extra)
    return ingest_dataset(spec, tmp_path / "data", cache_dir=tmp_path / "cache", base_dir=tmp_path)


def split_texts(folder: Path) -> dict[str, list[str]]:
    return {split: [t for batch in iter_split_batches(folder, split, 7) for t in batch["text"]]
            for split in ("train", "val", "test")}


def with_problems(rows: list[dict]) -> list[dict]:
    """A duplicate of row 1 (after whitespace normalisation) at row 45, and an empty text at row 50."""
    rows = list(rows)
    rows.insert(44, {"text": "  " + rows[0]["text"].replace(" ", "\n", 1), "label": rows[0]["label"]})
    rows.insert(49, {"text": "   ", "label": "beta"})
    return rows


def write(path: Path, rows: list[dict]) -> None:
    frame = pd.DataFrame(rows)
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    elif path.suffix == ".jsonl":
        frame.to_json(path, orient="records", lines=True)
    else:
        frame.to_parquet(path)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_chunk_size_does_not_change_the_files(tmp_path, labelled_rows, suffix):
    write(tmp_path / f"rows{suffix}", with_problems(labelled_rows))
    versions, contents, reports = set(), [], []
    for chunk_rows in (1, 7, 1000):
        manifest = ingest(tmp_path, f"rows{suffix}", chunk_rows=chunk_rows, shard_rows=20, **STREAM)
        versions.add(dataset_version(tmp_path / "data" / "news"))
        contents.append(split_texts(tmp_path / "data" / "news"))
        reports.append(manifest["dropped_rows"])
    assert len(versions) == 1
    assert contents[0] == contents[1] == contents[2]
    unit = "line" if suffix == ".jsonl" else "row"
    # Both problems are reported where they are, the duplicate with the row it repeats.
    assert reports[0] == [
        {"file": f"rows{suffix}", unit: 45, "reason": f"duplicate text of rows{suffix} {unit} 1"},
        {"file": f"rows{suffix}", unit: 50, "reason": "empty text"},
    ]
    assert manifest["layout"] == "shards" and manifest["counts"]["rows"]["train"] == 48
    assert [s["rows"] for s in manifest["shards"]["train"]] == [20, 20, 8]


def test_row_order_does_not_change_the_split(tmp_path, labelled_rows):
    write(tmp_path / "rows.csv", labelled_rows)
    ingest(tmp_path, **STREAM)
    before = {split: set(texts) for split, texts in split_texts(tmp_path / "data" / "news").items()}
    shuffled = list(labelled_rows)
    random.Random(3).shuffle(shuffled)
    write(tmp_path / "rows.csv", shuffled)
    ingest(tmp_path, **STREAM)
    after = {split: set(texts) for split, texts in split_texts(tmp_path / "data" / "news").items()}
    assert after == before
    assert {split: len(texts) for split, texts in after.items()} == {"train": 48, "val": 6, "test": 6}
    # Stratified: each label keeps its share in every split.
    data = load_classification_data(tmp_path / "data" / "news")
    assert sorted(data.test_labels) == ["alpha", "alpha", "beta", "beta", "gamma", "gamma"]


def test_streamed_and_in_memory_paths_clean_and_report_alike(tmp_path, labelled_rows):
    write(tmp_path / "rows.csv", with_problems(labelled_rows))
    memory = ingest(tmp_path, name="memory", row_issues="warn", streaming=False)
    streamed = ingest(tmp_path, name="streamed", chunk_rows=4, **STREAM)
    for key in ("dropped", "dropped_rows", "labels", "schema"):
        assert streamed[key] == memory[key]
    assert streamed["counts"]["read"] == memory["counts"]["read"]
    assert streamed["counts"]["rows"] == memory["counts"]["rows"]
    texts = {name: sorted(t for split in split_texts(tmp_path / "data" / name).values() for t in split)
             for name in ("memory", "streamed")}
    assert texts["streamed"] == texts["memory"]
    # The in-memory layout is untouched; only the split method differs (documented).
    assert sorted(p.name for p in (tmp_path / "data" / "memory").iterdir()) == [
        "manifest.json", "test.parquet", "train.parquet", "val.parquet"]


def test_a_dropped_row_fails_the_streamed_ingest_by_file_and_row(tmp_path, labelled_rows):
    write(tmp_path / "rows.csv", with_problems(labelled_rows))
    with pytest.raises(DataValidationError, match=r"rule 'row issues'.*rows\.csv row 45: duplicate text of rows\.csv row 1"):
        ingest(tmp_path, streaming=True, chunk_rows=10)
    assert not (tmp_path / "data" / "news").exists()


def test_bad_lines_are_named_when_streaming(tmp_path, labelled_rows):
    write(tmp_path / "rows.jsonl", labelled_rows)
    lines = (tmp_path / "rows.jsonl").read_text().splitlines()
    lines[6] = "{not json"
    (tmp_path / "rows.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match="rows.jsonl: line 7 is not valid JSON"):
        ingest(tmp_path, "rows.jsonl", streaming=True, chunk_rows=3)

    write(tmp_path / "rows.csv", labelled_rows)
    data = (tmp_path / "rows.csv").read_bytes().split(b"\n")
    data[9] = data[9].replace(b"story", b"st\xffory")
    (tmp_path / "rows.csv").write_bytes(b"\n".join(data))
    with pytest.raises(DataValidationError, match="rows.csv line 10 is not valid UTF-8"):
        ingest(tmp_path, streaming=True, chunk_rows=3)


def test_a_missing_label_is_reported_by_row(tmp_path, labelled_rows):
    rows = list(labelled_rows)
    rows[11] = {"text": "a text without its label", "label": None}
    write(tmp_path / "rows.parquet", rows)
    with pytest.raises(DataValidationError, match=r"rule 'schema'.*rows\.parquet row 12"):
        ingest(tmp_path, "rows.parquet", streaming=True, chunk_rows=5)


def test_a_pinned_split_file_streams_first_and_wins_duplicates(tmp_path, labelled_rows):
    write(tmp_path / "rows.csv", labelled_rows[:45])
    write(tmp_path / "holdout.csv", labelled_rows[45:] + [labelled_rows[0]])
    manifest = ingest(tmp_path, source={"split_files": {"test": "holdout.csv"}}, chunk_rows=4, **STREAM)
    texts = split_texts(tmp_path / "data" / "news")
    assert texts["test"] == [r["text"] for r in labelled_rows[45:]] + [labelled_rows[0]["text"]]
    assert manifest["dropped_rows"] == [
        {"file": "rows.csv", "row": 1, "reason": "duplicate text of holdout.csv row 16"}]
    # val per label: round(0.1 * 14 alpha) + 2 * round(0.1 * 15) (halves round up)
    assert manifest["counts"]["rows"] == {"train": 39, "val": 5, "test": 16}


def test_max_rows_keeps_a_stratified_hash_sample(tmp_path, labelled_rows):
    write(tmp_path / "rows.csv", labelled_rows)
    manifest = ingest(tmp_path, max_rows=30, **STREAM)
    assert manifest["dropped"]["sampled_out"] == 30
    assert manifest["counts"]["per_class"]["train"] == {"alpha": 8, "beta": 8, "gamma": 8}


def test_auto_streams_only_above_the_size_threshold(tmp_path, labelled_rows, class_folder):
    write(tmp_path / "rows.csv", labelled_rows)
    size = (tmp_path / "rows.csv").stat().st_size
    spec = DatasetSpec(name="news", source={"kind": "path", "path": "rows.csv"})
    streams = lambda **kw: should_stream(spec.model_copy(update=kw), base_dir=tmp_path, cache_dir=tmp_path)  # noqa: E731
    assert not streams()  # the default threshold keeps small sources (BBC) on the exact in-memory path
    assert streams(stream_above_bytes=size - 1) and not streams(stream_above_bytes=size)
    corpus = DatasetSpec(name="lm", task="generation", streaming=True, source={"kind": "path", "path": "rows.csv"})
    with pytest.raises(ValueError, match="only classification datasets stream"):
        should_stream(corpus, base_dir=tmp_path, cache_dir=tmp_path)
    # A class folder streams file by file, with the files as row references.
    manifest = ingest(tmp_path, str(class_folder), chunk_rows=8, stream_above_bytes=0, row_issues="warn")
    assert manifest["layout"] == "shards" and sum(manifest["counts"]["rows"].values()) == 60


def test_iter_split_batches_reads_both_layouts(tmp_path, labelled_rows):
    write(tmp_path / "rows.csv", labelled_rows)
    ingest(tmp_path, name="memory")
    ingest(tmp_path, name="streamed", shard_rows=10, **STREAM)
    for name in ("memory", "streamed"):
        folder = tmp_path / "data" / name
        batches = list(iter_split_batches(folder, "train", 7))
        assert all(len(b) <= 7 for b in batches) and list(batches[0].columns) == ["text", "label"]
        assert [t for b in batches for t in b["text"]] == load_classification_data(folder).train_texts
    manifest = read_dataset_manifest(tmp_path / "data" / "streamed")
    shard = tmp_path / "data" / "streamed" / manifest["shards"]["train"][0]["file"]
    assert pq.ParquetFile(shard).metadata.num_rows == 10
    assert json.loads((tmp_path / "data" / "streamed" / "manifest.json").read_text())["files"][0] == "manifest.json"


def test_peak_python_memory_stays_far_below_the_text_size(tmp_path):
    rows, words = 6_000, "river market engine garden signal harbour canvas orbit".split()
    frame = pd.DataFrame({
        "text": [f"{i} " + " ".join(words[(i + k) % 8] for k in range(240)) for i in range(rows)],
        "label": [("alpha", "beta", "gamma")[i % 3] for i in range(rows)],
    })
    frame.to_csv(tmp_path / "rows.csv", index=False)
    frame.iloc[:30].to_csv(tmp_path / "warm.csv", index=False)
    text_bytes = int(frame["text"].str.len().sum())
    del frame
    ingest(tmp_path, "warm.csv", name="warm", **STREAM)  # lazy imports are not what is measured
    tracemalloc.start()
    try:
        # Memory holds a chunk, a row group and the digests: 100 + 500 rows of 6,000 here.
        ingest(tmp_path, streaming=True, chunk_rows=100, shard_rows=500)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert text_bytes > 9_000_000
    assert peak < text_bytes / 4, f"peak {peak} bytes for {text_bytes} bytes of text"


def test_a_streamed_dataset_feeds_another_dataset(tmp_path, labelled_rows):
    write(tmp_path / "rows.csv", labelled_rows)
    ingest(tmp_path, shard_rows=20, **STREAM)
    corpus = DatasetSpec(name="lm", task="generation", source={"kind": "dataset", "dataset": "news"})
    manifest = ingest_dataset(corpus, tmp_path / "data", cache_dir=tmp_path / "cache", base_dir=tmp_path)
    text = "".join((tmp_path / "data" / "lm" / f"{split}.txt").read_text() for split in ("train", "val"))
    assert manifest["counts"]["documents"] == 60
    assert all(row["text"] in text for row in labelled_rows[:40])  # read from every shard of every split
