"""Normalisation, empty and duplicate removal, down-sampling; and the real BBC counts."""

from __future__ import annotations

from collections import Counter

import pandas as pd

from components.data.cleaning import (
    clean,
    downsample,
    drop_duplicates,
    normalize_document,
    normalize_text,
)
from components.data.rows import RowIssue, RowRef
from components.data.sources import read_class_folder


def frame(texts, labels=None) -> pd.DataFrame:
    labels = labels if labels is not None else ["a"] * len(texts)
    return pd.DataFrame({"text": texts, "label": labels}, dtype=object)


def test_normalize_text_nfkc_and_whitespace():
    # Ligature, full-width letters and a no-break space are NFKC-folded; runs collapse.
    assert normalize_text("  \ufb01ne\u00a0\uff21\uff22\n\n\tend \r\n") == "fine AB end"


def test_normalize_document_keeps_layout():
    assert normalize_document("line one\r\n  indented\rlast\n") == "line one\n  indented\nlast\n"
    assert normalize_document("\ufb01") == "fi"


def test_clean_drops_empty_short_and_duplicates_keeping_first():
    raw = frame(
        ["Hello   world", "   ", "hi", "Hello world", "Another\ntext", "hello world"],
        [" a ", "a", "b", "b", "b\n", "a"],
    )
    cleaned, dropped = clean(raw, task="classification", min_chars=3)
    assert cleaned["text"].tolist() == ["Hello world", "Another text", "hello world"]
    assert cleaned["label"].tolist() == ["a", "b", "a"]  # labels stripped
    assert cleaned.index.tolist() == [0, 4, 5]  # source row numbers survive
    assert (dropped.empty, dropped.duplicates) == (2, 1)
    assert [str(issue) for issue in dropped.rows] == [  # in source order, each with its reason
        "rows row 2: empty text",
        "rows row 3: shorter than min_chars=3",
        "rows row 4: duplicate text of rows row 1",
    ]


def test_dropped_rows_name_their_source_row():
    raw = frame(["kept", "", "kept"])
    raw["source_row"] = [RowRef("a.csv", 1), RowRef("a.csv", 2), RowRef("a.csv", 3)]
    seen = {"pinned": RowRef("test.csv", 5)}
    more = frame(["pinned"])
    more["source_row"] = [RowRef("b.jsonl", 9, "line")]
    _, first = clean(raw, task="classification", min_chars=1, seen=seen)
    _, second = clean(more, task="classification", min_chars=1, seen=seen)
    assert (first + second).rows == (
        RowIssue(RowRef("a.csv", 2), "empty text"),
        RowIssue(RowRef("a.csv", 3), "duplicate text of a.csv row 1"),
        RowIssue(RowRef("b.jsonl", 9, "line"), "duplicate text of test.csv row 5"),
    )
    assert (first + second).rows[2].as_dict() == {
        "file": "b.jsonl",
        "line": 9,
        "reason": "duplicate text of test.csv row 5",
    }


def test_generation_cleaning_keeps_newlines():
    cleaned, dropped = clean(frame(["Act I\n\nScene", "\n\n"], [None, None]), task="generation", min_chars=1)
    assert cleaned["text"].tolist() == ["Act I\n\nScene"]
    assert dropped.empty == 1


def test_drop_duplicates_honours_texts_seen_earlier():
    seen = {"pinned": RowRef("test.csv", 1)}
    kept, n = drop_duplicates(frame(["pinned", "fresh", "fresh"]), seen)
    assert kept["text"].tolist() == ["fresh"]
    assert n == 2
    assert seen == {"pinned": RowRef("test.csv", 1), "fresh": RowRef("rows", 2)}  # the first rows kept


def test_downsample_stratified_deterministic_and_in_source_order():
    labels = ["a"] * 60 + ["b"] * 30 + ["c"] * 10
    raw = frame([f"t{i}" for i in range(100)], labels)
    sample, out = downsample(raw, 50, seed=7, stratify=True)
    assert out == 50 and len(sample) == 50
    assert Counter(sample["label"]) == {"a": 30, "b": 15, "c": 5}
    assert sample.index.is_monotonic_increasing
    again, _ = downsample(raw, 50, seed=7, stratify=True)
    assert again.index.tolist() == sample.index.tolist()
    other, _ = downsample(raw, 50, seed=8, stratify=True)
    assert other.index.tolist() != sample.index.tolist()


def test_downsample_unstratified_keeps_first_rows_and_noop_when_small():
    raw = frame([f"t{i}" for i in range(10)], [None] * 10)
    first, out = downsample(raw, 4, seed=0, stratify=False)
    assert first["text"].tolist() == ["t0", "t1", "t2", "t3"] and out == 6
    same, out = downsample(raw, None, seed=0, stratify=True)
    assert len(same) == 10 and out == 0


def test_real_bbc_counts_after_cleaning(bbc_folder):
    raw = read_class_folder(bbc_folder)
    assert len(raw) == 2225
    assert Counter(raw["label"]) == {
        "business": 510,
        "entertainment": 386,
        "politics": 417,
        "sports": 511,
        "tech": 401,
    }
    cleaned, dropped = clean(raw, task="classification", min_chars=1)
    assert dropped.empty == 0
    assert dropped.duplicates == 100
    assert len(cleaned) == 2125
    assert cleaned["text"].is_unique
    # sports/199.txt is cp1252, not UTF-8: its pound sign must survive decoding.
    mutu = [t for t in cleaned["text"] if "Mutu" in t and "15.8m" in t]
    assert mutu and all("\u00a315.8m" in t for t in mutu)
