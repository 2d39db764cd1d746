"""Stratified, deterministic classification splits and contiguous corpus splits."""

from __future__ import annotations

from collections import Counter

import pandas as pd
import pytest

from components.data.splitting import join_corpus, split_classification, split_corpus


@pytest.fixture
def rows() -> pd.DataFrame:
    labels = ["a"] * 50 + ["b"] * 30 + ["c"] * 20
    # Shuffle label order deterministically so that source order is not label order.
    order = sorted(range(100), key=lambda i: (i * 37) % 101)
    return pd.DataFrame({"text": [f"t{i}" for i in order], "label": [labels[i] for i in order]}, dtype=object)


def test_stratified_sizes_balance_and_disjointness(rows):
    splits = split_classification(rows, fractions={"val": 0.1, "test": 0.2}, seed=42)
    assert list(splits) == ["train", "val", "test"]
    assert {name: len(frame) for name, frame in splits.items()} == {"train": 70, "val": 10, "test": 20}
    assert Counter(splits["test"]["label"]) == {"a": 10, "b": 6, "c": 4}
    assert Counter(splits["val"]["label"]) == {"a": 5, "b": 3, "c": 2}
    indices = [set(frame.index) for frame in splits.values()]
    assert set.union(*indices) == set(rows.index)
    assert sum(len(i) for i in indices) == len(rows)


def test_split_is_deterministic_and_keeps_source_order(rows):
    first = split_classification(rows, fractions={"val": 0.1, "test": 0.1}, seed=3)
    again = split_classification(rows, fractions={"val": 0.1, "test": 0.1}, seed=3)
    other = split_classification(rows, fractions={"val": 0.1, "test": 0.1}, seed=4)
    for name in first:
        assert first[name].index.tolist() == again[name].index.tolist()
        assert first[name].index.is_monotonic_increasing
    assert first["test"].index.tolist() != other["test"].index.tolist()


def test_only_requested_splits_are_carved(rows):
    splits = split_classification(rows, fractions={"val": 0.2}, seed=0)
    assert list(splits) == ["train", "val"]
    assert (len(splits["train"]), len(splits["val"])) == (80, 20)


def test_zero_fraction_gives_empty_split(rows):
    splits = split_classification(rows, fractions={"val": 0.1, "test": 0.0}, seed=0)
    assert len(splits["test"]) == 0 and len(splits["train"]) == 90


def test_impossible_stratification_is_explained():
    tiny = pd.DataFrame({"text": list("abcdef"), "label": list("xxyyzz")}, dtype=object)
    with pytest.raises(ValueError, match=r"stratified 'test' split .*rows per label"):
        split_classification(tiny, fractions={"test": 0.2}, seed=0)


def test_corpus_split_is_contiguous_like_nanogpt():
    text = join_corpus(["first document", "second document"])
    assert text == "first document\n\nsecond document"
    parts = split_corpus(text, val_fraction=0.25)
    assert parts["train"] + parts["val"] == text
    assert len(parts["train"]) == int(len(text) * 0.75)
    # Tiny Shakespeare's length gives nanoGPT's cut: 1,003,854 training characters.
    assert len(split_corpus("x" * 1_115_394, val_fraction=0.1)["train"]) == 1_003_854
