"""Every validation rule fails on a dataset that breaks it, naming the rule and the rows."""

from __future__ import annotations

import pandas as pd
import pytest

from components.data.rows import RowIssue, RowRef
from components.data.validation import (
    DataValidationError,
    check_has_rows,
    check_row_issues,
    validate_classification,
    validate_corpus,
)


def frame(texts, labels) -> pd.DataFrame:
    return pd.DataFrame({"text": texts, "label": labels}, dtype=object)


def good_splits() -> dict[str, pd.DataFrame]:
    return {
        "train": frame(["a1", "a2", "b1", "b2"], ["a", "a", "b", "b"]),
        "val": frame(["a3", "b3"], ["a", "b"]),
        "test": frame(["a4", "b4"], ["a", "b"]),
    }


def fails(splits) -> DataValidationError:
    with pytest.raises(DataValidationError) as caught:
        validate_classification(splits)
    assert isinstance(caught.value, ValueError)
    return caught.value


def test_valid_dataset_passes():
    validate_classification(good_splits())


def test_schema_missing_column():
    splits = good_splits()
    splits["val"] = splits["val"].drop(columns=["label"])
    error = fails(splits)
    assert error.rule == "schema"
    assert "rule 'schema'" in str(error) and "['label']" in str(error)


def test_schema_non_string_label():
    splits = good_splits()
    splits["train"].loc[2, "label"] = None
    splits["test"].loc[1, "label"] = 7
    error = fails(splits)
    assert error.rule == "schema"
    assert error.rows == ["train[2]"]
    assert "rule 'schema'" in str(error) and "train[2]" in str(error)


def test_empty_text():
    splits = good_splits()
    splits["test"].loc[1, "text"] = "  "
    error = fails(splits)
    assert error.rule == "empty text"
    assert error.rows == ["test[1]"]
    assert "rule 'empty text'" in str(error) and "test[1]" in str(error)


def test_empty_split():
    splits = good_splits()
    splits["val"] = splits["val"].iloc[0:0]
    splits["test"] = frame(["a3", "b3", "a4", "b4"], ["a", "b", "a", "b"])
    error = fails(splits)
    assert error.rule == "empty split"
    assert "rule 'empty split'" in str(error) and "['val']" in str(error)


def test_too_few_classes():
    splits = {name: f.assign(label="a") for name, f in good_splits().items()}
    error = fails(splits)
    assert error.rule == "too few classes"
    assert "rule 'too few classes'" in str(error) and "['a']" in str(error)


def test_single_member_label():
    splits = good_splits()
    splits["train"] = frame(["a1", "a2", "b1", "b2", "lonely"], ["a", "a", "b", "b", "c"])
    error = fails(splits)
    assert error.rule == "single-member label"
    assert error.rows == ["train[4]"]
    assert "rule 'single-member label'" in str(error) and "['c']" in str(error) and "train[4]" in str(error)


def test_unknown_label():
    splits = good_splits()
    splits["test"] = frame(["a4", "c1", "c2"], ["a", "c", "c"])
    error = fails(splits)
    assert error.rule == "unknown label"
    assert error.rows == ["test[1]", "test[2]"]
    assert "rule 'unknown label'" in str(error) and "['c']" in str(error) and "test[2]" in str(error)


def test_leakage_lists_shared_texts():
    splits = good_splits()
    splits["test"] = frame(["a1", "b2"], ["a", "b"])
    error = fails(splits)
    assert error.rule == "leakage"
    assert sorted(error.rows) == ["a1", "b2"]
    assert "rule 'leakage': 2 texts appear in more than one split (test and train)" in str(error)
    assert "'a1'" in str(error)


def test_message_shows_five_rows_and_keeps_all():
    splits = good_splits()
    many = [f"x{i}" for i in range(12)]
    splits["test"] = frame(["a4", *many], ["a", *["z"] * 12])
    error = fails(splits)
    assert error.rule == "unknown label"
    assert len(error.rows) == 12
    assert "test[5]" in str(error) and "test[6]" not in str(error) and "7 more" in str(error)


def test_long_texts_are_shortened_in_the_message():
    splits = good_splits()
    long_text = "word " * 100
    splits["train"] = frame(["a1", "a2", "b1", long_text], ["a", "a", "b", "b"])
    splits["val"] = frame(["a3", long_text], ["a", "b"])
    error = fails(splits)
    assert error.rows == [long_text]
    assert len(str(error)) < 200


def test_corpus_rules():
    validate_corpus({"train": "some text", "val": "more"})
    with pytest.raises(DataValidationError, match="rule 'empty split'.*val") as caught:
        validate_corpus({"train": "some text", "val": "  \n"})
    assert caught.value.rule == "empty split"
    with pytest.raises(DataValidationError, match="rule 'schema'"):
        validate_corpus({"train": "x", "val": None})


def test_no_rows_names_the_origin():
    empty = frame([], [])
    with pytest.raises(DataValidationError, match=r"rule 'no rows': data/x.csv has no data rows"):
        check_has_rows(empty, "data/x.csv")
    with pytest.raises(DataValidationError, match=r"rule 'no rows': every row of data/x.csv was dropped"):
        check_has_rows(empty, "data/x.csv", after_cleaning=True)
    check_has_rows(frame(["a"], ["b"]), "data/x.csv")


def test_row_issues_fail_unless_warned():
    issues = [RowIssue(RowRef("x.csv", n), "empty text") for n in range(1, 8)]
    with pytest.raises(DataValidationError) as caught:
        check_row_issues("news", issues, "error")
    message = str(caught.value)
    assert caught.value.rule == "row issues" and caught.value.rows == issues
    assert "drop 7 rows" in message and "set `row_issues: warn` on dataset 'news'" in message
    # The first rows in full (file, row, reason), then how many more.
    assert "'x.csv row 1: empty text', 'x.csv row 2: empty text'" in message and "... 2 more" in message
    check_row_issues("news", issues, "warn")
    check_row_issues("news", [], "error")
