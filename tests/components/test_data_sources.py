"""Readers of every source kind return the same text/label/source_row frame, in a fixed order."""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import sys
import threading
from pathlib import Path

import pandas as pd
import pytest
from pydantic import ValidationError

from components.config import DatasetSpec, SourceSpec
from components.data.decoding import decode_lines, decode_text
from components.data.ingest import ingest_dataset
from components.data.locations import download, redact_url
from components.data.rows import RowIssue, RowRef
from components.data.sources import read_source, read_split_files
from components.data.validation import DataValidationError


def read(source: dict, tmp_path: Path, **kwargs) -> pd.DataFrame:
    return read_source(
        SourceSpec(**source),
        base_dir=tmp_path,
        cache_dir=tmp_path / "cache",
        data_root=tmp_path / "data",
        **kwargs,
    )


# --------------------------------------------------------------------------- package and folders


def test_package_source_reads_class_folders_without_importing(tmp_path, monkeypatch):
    package = tmp_path / "site" / "fakecorpus"
    (package / "corpus" / "sport").mkdir(parents=True)
    (package / "corpus" / "arts").mkdir(parents=True)
    # Importing the package would fail the test: the reader must only locate it.
    (package / "__init__.py").write_text("raise RuntimeError('imported!')\n")
    (package / "corpus" / "sport" / "b.txt").write_text("second sport", encoding="utf-8")
    (package / "corpus" / "sport" / "a.txt").write_text("first sport", encoding="utf-8")
    (package / "corpus" / "arts" / "z.txt").write_bytes("Tickets cost \u00a315".encode("cp1252"))
    (package / "corpus" / "sport" / "notes.md").write_text("not a text file")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))

    frame = read({"kind": "package", "package": "fakecorpus", "subdir": "corpus"}, tmp_path)

    assert "fakecorpus" not in sys.modules
    # Sorted class folder, then sorted file name; cp1252 bytes decoded, not mangled.
    assert frame["text"].tolist() == ["Tickets cost \u00a315", "first sport", "second sport"]
    assert frame["label"].tolist() == ["arts", "sport", "sport"]
    assert [str(r) for r in frame["source_row"]] == ["arts/z.txt", "sport/a.txt", "sport/b.txt"]


def test_package_source_missing_package_says_so(tmp_path):
    with pytest.raises(ModuleNotFoundError, match="no_such_corpus_pkg"):
        read({"kind": "package", "package": "no_such_corpus_pkg"}, tmp_path)


def test_path_folder_of_classes(tmp_path, class_folder, labelled_rows):
    frame = read({"kind": "path", "path": "classes"}, tmp_path)  # relative to base_dir
    assert len(frame) == len(labelled_rows)
    assert sorted(set(frame["label"])) == ["alpha", "beta", "gamma"]
    # Grouped by class folder (sorted), files sorted within each.
    assert frame["label"].tolist() == sorted(frame["label"].tolist())
    assert frame["text"].iloc[0] == labelled_rows[0]["text"] + "\n"


def test_decode_text_falls_back_from_utf8():
    assert decode_text("caf\u00e9".encode()) == "caf\u00e9"
    assert decode_text("\ufeffbom".encode()) == "bom"
    assert decode_text("\u201cquoted\u201d".encode("cp1252")) == "\u201cquoted\u201d"
    assert decode_text(b"\x81") == "\x81"  # undefined in cp1252: latin-1 last resort


# --------------------------------------------------------------------------- files


def test_csv_with_two_text_columns_joined(tmp_path):
    pd.DataFrame(
        {
            "title": ["Rates rise", "Cup final"],
            "body": ["Bank acts.", "Late goal."],
            "topic": ["biz", "sport"],
        }
    ).to_csv(tmp_path / "news.csv", index=False)
    frame = read(
        {"kind": "path", "path": "news.csv", "text_columns": ["title", "body"], "label_column": "topic"},
        tmp_path,
    )
    assert frame["text"].tolist() == ["Rates rise\nBank acts.", "Cup final\nLate goal."]
    assert frame["label"].tolist() == ["biz", "sport"]


def test_csv_keeps_na_like_strings_and_reads_a_named_encoding(tmp_path):
    (tmp_path / "t.csv").write_bytes("text,label\nNA,None\ncaf\u00e9 \u00a33,x\n".encode("cp1252"))
    with pytest.raises(DataValidationError, match=r"t.csv line 3 is not valid UTF-8"):
        read({"kind": "path", "path": "t.csv"}, tmp_path)  # cp1252 is not guessed for a whole file
    frame = read({"kind": "path", "path": "t.csv", "encoding": "cp1252"}, tmp_path)
    assert frame["text"].tolist() == ["NA", "caf\u00e9 \u00a33"]
    assert frame["label"].tolist() == ["None", "x"]
    assert [str(r) for r in frame["source_row"]] == ["t.csv row 1", "t.csv row 2"]


# --------------------------------------------------------------------------- encodings

POUND_ROWS = [f"Item {i} costs \u00a3{i}.50" for i in range(1, 6)]


def pound_csv(path: Path) -> Path:
    """A UTF-8 CSV: five rows holding "£", and one (line 4) holding a bare cp1252 0xA3 byte."""
    lines = [b"text,label"] + [f"{t},shop".encode() for t in POUND_ROWS]
    lines.insert(3, b"Broken \xa35 row,shop")
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def test_bad_utf8_line_is_rejected_naming_line_and_byte_offset(tmp_path):
    pound_csv(tmp_path / "shop.csv")
    with pytest.raises(DataValidationError) as caught:
        read({"kind": "path", "path": "shop.csv"}, tmp_path)
    message = str(caught.value)
    offset = (tmp_path / "shop.csv").read_bytes().index(b"Broken \xa3") + len("Broken ")
    assert caught.value.rule == "encoding"
    assert f"shop.csv line 4 is not valid UTF-8, first bad byte 0xa3 at byte offset {offset}" in message
    assert "encoding_errors: replace" in message  # says how to allow it


@pytest.mark.parametrize(
    ("how", "repaired_text"), [("replace", "Broken \ufffd5 row"), ("cp1252", "Broken \u00a35 row")]
)
def test_encoding_errors_repair_only_the_bad_line(tmp_path, how, repaired_text):
    pound_csv(tmp_path / "shop.csv")
    repaired: list[RowIssue] = []
    frame = read({"kind": "path", "path": "shop.csv", "encoding_errors": how}, tmp_path, repaired=repaired)
    assert frame["text"].tolist() == [*POUND_ROWS[:2], repaired_text, *POUND_ROWS[2:]]  # every "£" intact
    assert [issue.where for issue in repaired] == [RowRef("shop.csv", 4, "line")]
    assert f"encoding_errors: {how}" in repaired[0].reason


def test_decode_lines_drops_a_bom_and_a_named_encoding_is_strict():
    assert decode_lines("\ufeffa,\u00a3\n".encode(), file="f.csv") == "a,\u00a3\n"
    assert decode_lines("\ufeffa\n".encode(), file="f.csv", encoding="utf-8") == "a\n"
    with pytest.raises(
        DataValidationError,
        match=r"f.csv is not valid ascii: first bad byte 0xc2 at byte offset 4 \(line 2\)",
    ):
        decode_lines("ok\r\n\u00a3\n".encode(), file="f.csv", encoding="ascii")


def test_unknown_encoding_is_a_config_error():
    with pytest.raises(ValidationError, match="encoding 'klingon'"):
        SourceSpec(kind="path", path="x.csv", encoding="klingon")


def test_empty_csv_says_no_rows(tmp_path):
    (tmp_path / "t.csv").write_bytes(b"")
    with pytest.raises(DataValidationError, match=r"rule 'no rows': t.csv is empty"):
        read({"kind": "path", "path": "t.csv"}, tmp_path)


def test_missing_column_error_names_it_and_lists_columns(tmp_path):
    pd.DataFrame({"body": ["a"], "label": ["x"]}).to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(KeyError, match=r"text column 'text' not found.*\['body', 'label'\]"):
        read({"kind": "path", "path": "t.csv"}, tmp_path)
    with pytest.raises(KeyError, match=r"label column 'topic' not found.*\['body', 'label'\]"):
        read({"kind": "path", "path": "t.csv", "text_columns": ["body"], "label_column": "topic"}, tmp_path)


def test_missing_label_column_is_fine_without_labels(tmp_path):
    pd.DataFrame({"text": ["a", "b"]}).to_csv(tmp_path / "t.csv", index=False)
    frame = read({"kind": "path", "path": "t.csv"}, tmp_path, require_label=False)
    assert frame["label"].tolist() == [None, None]


def test_jsonl(tmp_path):
    lines = [{"text": "one", "label": 1}, {"text": "two", "label": " 0 "}, {"text": None, "label": None}]
    (tmp_path / "rows.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n\n")
    frame = read({"kind": "path", "path": "rows.jsonl"}, tmp_path)
    assert frame["text"].tolist() == ["one", "two", ""]
    assert frame["label"].tolist() == ["1", "0", None]
    assert [str(r) for r in frame["source_row"]] == [
        "rows.jsonl line 1",
        "rows.jsonl line 2",
        "rows.jsonl line 3",
    ]


def test_jsonl_bad_line_is_reported_with_its_number(tmp_path):
    (tmp_path / "rows.jsonl").write_text('{"text": "ok", "label": "a"}\n{broken\n')
    with pytest.raises(ValueError, match="line 2"):
        read({"kind": "path", "path": "rows.jsonl"}, tmp_path)


def test_parquet_and_explicit_format(tmp_path):
    pd.DataFrame({"text": ["x", "y"], "label": [3, 4]}).to_parquet(tmp_path / "rows.bin")
    frame = read({"kind": "path", "path": "rows.bin", "format": "parquet"}, tmp_path)
    assert frame["text"].tolist() == ["x", "y"]
    assert frame["label"].tolist() == ["3", "4"]


def test_unknown_suffix_asks_for_a_format(tmp_path):
    (tmp_path / "rows.bin").write_text("x")
    with pytest.raises(ValueError, match="set `format`"):
        read({"kind": "path", "path": "rows.bin"}, tmp_path)


def test_text_file_is_one_unlabelled_row(tmp_path):
    (tmp_path / "corpus.txt").write_text("First line.\nSecond line.\n", encoding="utf-8")
    frame = read({"kind": "path", "path": "corpus.txt"}, tmp_path, require_label=False)
    assert frame["text"].tolist() == ["First line.\nSecond line.\n"]
    assert frame["label"].tolist() == [None]


def test_missing_path_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.csv"):
        read({"kind": "path", "path": "nowhere.csv"}, tmp_path)


def test_split_files_are_read_per_split(tmp_path):
    pd.DataFrame({"text": ["held out"], "label": ["a"]}).to_csv(tmp_path / "holdout.csv", index=False)
    source = SourceSpec(kind="path", path="main.jsonl", split_files={"test": "holdout.csv"})
    frames = read_split_files(source, base_dir=tmp_path, cache_dir=tmp_path / "cache")
    assert list(frames) == ["test"]
    assert frames["test"]["text"].tolist() == ["held out"]


def test_split_files_reject_unknown_split(tmp_path):
    source = SourceSpec(kind="path", path="main.csv", split_files={"holdout": "h.csv"})
    with pytest.raises(ValueError, match="unknown split 'holdout'"):
        read_split_files(source, base_dir=tmp_path, cache_dir=tmp_path / "cache")


# --------------------------------------------------------------------------- url


def _csv_bytes() -> bytes:
    return b"text,label\nhello,a\nworld,b\n"


def test_url_file_scheme_is_cached_under_url_hash(tmp_path):
    remote = tmp_path / "remote" / "rows.csv"
    remote.parent.mkdir()
    remote.write_bytes(_csv_bytes())
    url = remote.as_uri()
    sha = hashlib.sha256(_csv_bytes()).hexdigest()

    frame = read({"kind": "url", "url": url, "sha256": sha}, tmp_path)
    assert frame["text"].tolist() == ["hello", "world"]
    cached = tmp_path / "cache" / hashlib.sha256(url.encode()).hexdigest() / "rows.csv"
    assert cached.read_bytes() == _csv_bytes()

    remote.unlink()  # a second read must not fetch again
    assert read({"kind": "url", "url": url}, tmp_path)["label"].tolist() == ["a", "b"]


def test_url_sha256_mismatch_names_both_hashes_and_deletes(tmp_path):
    remote = tmp_path / "rows.csv"
    remote.write_bytes(_csv_bytes())
    actual = hashlib.sha256(_csv_bytes()).hexdigest()
    with pytest.raises(ValueError, match=rf"expected {'0' * 64}, got {actual}"):
        download(remote.as_uri(), tmp_path / "cache", sha256="0" * 64)
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]


@pytest.fixture
def http_root(tmp_path):
    """A local HTTP server on 127.0.0.1 serving tmp_path/www."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_url_over_local_http(tmp_path, http_root):
    root, base = http_root
    (root / "rows.jsonl").write_text('{"body": "served", "label": "x"}\n')
    frame = read({"kind": "url", "url": f"{base}/rows.jsonl", "text_columns": ["body"]}, tmp_path)
    assert frame["text"].tolist() == ["served"]


def test_redact_url_drops_credentials_query_and_fragment():
    assert redact_url("https://alice:s3cret@data.example.com:8443/a/b.csv?X-Amz-Signature=abc&t=1#part") == (
        "https://data.example.com:8443/a/b.csv"
    )
    assert redact_url("http://token@host/x.csv") == "http://host/x.csv"
    assert redact_url("file:///tmp/rows.csv") == "file:///tmp/rows.csv"


def test_redact_url_keeps_store_uris_whole():
    """Tracking-store URIs the CLI prints: an absolute SQLite path keeps its four slashes."""
    assert redact_url("sqlite:////srv/maas/mlflow.db") == "sqlite:////srv/maas/mlflow.db"
    assert redact_url("sqlite:///rel.db") == "sqlite:///rel.db"
    assert redact_url("postgresql://mlflow:pw@db:5432/mlflow") == "postgresql://db:5432/mlflow"


def test_url_secrets_stay_out_of_the_manifest_and_the_log(tmp_path, http_root, caplog, labelled_rows):
    root, base = http_root
    pd.DataFrame(labelled_rows).to_csv(root / "rows.csv", index=False)
    pd.DataFrame(labelled_rows[:3]).to_csv(root / "held.csv", index=False)
    url = f"{base}/rows.csv?sig=TOPSECRET#frag"
    spec = DatasetSpec(
        name="web",
        source={"kind": "url", "url": url, "split_files": {"test": f"{base}/held.csv?sig=TOPSECRET"}},
        row_issues="warn",
    )
    with caplog.at_level("DEBUG"):
        manifest = ingest_dataset(spec, tmp_path / "data", cache_dir=tmp_path / "cache", base_dir=tmp_path)
    assert manifest["source"]["url"] == f"{base}/rows.csv"
    assert manifest["source"]["split_files"] == {"test": f"{base}/held.csv"}
    assert "TOPSECRET" not in (tmp_path / "data" / "web" / "manifest.json").read_text()
    assert "downloading" in caplog.text and "TOPSECRET" not in caplog.text


def test_failed_download_names_the_url_without_secrets(tmp_path, http_root):
    _, base = http_root
    with pytest.raises(ConnectionError, match=rf"could not download {base}/gone.csv: ") as caught:
        download(f"{base}/gone.csv?sig=TOPSECRET", tmp_path / "cache")
    assert "TOPSECRET" not in str(caught.value)


# --------------------------------------------------------------------------- hf


def test_hf_local_save_to_disk_maps_class_labels(tmp_path):
    datasets = pytest.importorskip("datasets")
    features = datasets.Features(
        {"sentence": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])}
    )
    ds = datasets.Dataset.from_dict(
        {"sentence": ["bad film", "good film"], "label": [0, 1]}, features=features
    )
    datasets.DatasetDict({"train": ds}).save_to_disk(str(tmp_path / "hf_local"))

    frame = read({"kind": "hf", "hf_name": "hf_local", "text_columns": ["sentence"]}, tmp_path)
    assert frame["text"].tolist() == ["bad film", "good film"]
    assert frame["label"].tolist() == ["neg", "pos"]


def test_hf_without_datasets_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(ImportError, match=r"pip install maas\[hf\]"):
        read({"kind": "hf", "hf_name": "anything"}, tmp_path)


def test_dataset_source_needs_an_ingested_dataset(tmp_path):
    with pytest.raises(FileNotFoundError, match="'bbc' has not been ingested"):
        read({"kind": "dataset", "dataset": "bbc"}, tmp_path)
