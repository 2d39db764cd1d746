"""benchmarks/scale.py: its seeded synthetic generator, and a small run end to end with --json."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest

from tests.benchmarks.scripts import REPO, load_benchmark

KEYS = {"rows", "text_bytes", "ingest_s", "train_s", "wall_s", "peak_rss_mb", "test_accuracy",
        "ingest_rows_per_s", "train_rows_per_s", "lstm_rows"}


def test_the_generator_is_seeded_and_draws_each_document_from_one_class(tmp_path):
    scale = load_benchmark("scale")
    first, again = tmp_path / "a.csv", tmp_path / "b.csv"
    text_bytes = scale.write_synthetic(first, 300, seed=3)
    scale.write_synthetic(again, 300, seed=3)
    assert first.read_bytes() == again.read_bytes()
    frame = pd.read_csv(first)
    assert len(frame) == 300 and text_bytes == sum(len(t.encode()) for t in frame["text"])
    sentences = scale.bbc_sentences()
    assert set(frame["label"]) == set(sentences) == {"business", "entertainment", "politics", "sports", "tech"}
    row = frame.iloc[0]
    own = set(sentences[row["label"]])
    assert sum(sentence in row["text"] for sentence in own) >= 3


@pytest.mark.slow
def test_a_small_run_prints_one_json_object_with_the_keys():
    out = subprocess.run(
        [sys.executable, "benchmarks/scale.py", "--rows", "2000", "--lstm-rows", "200", "--json"],
        cwd=REPO, capture_output=True, text=True, timeout=600, check=True,
    )
    result = json.loads(out.stdout)
    assert KEYS <= set(result)
    assert result["rows"] == 2000 and result["lstm_rows"] == 200
    assert result["test_accuracy"] >= 0.95 and result["peak_rss_mb"] > 100
