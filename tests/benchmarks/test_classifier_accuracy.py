"""benchmarks/classifier_accuracy.py --seeds: one training per seed, summarised per candidate."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from components.predictor import load_predictor
from tests.benchmarks.scripts import REPO, load_benchmark

LABELS = ("alpha", "beta", "gamma")
TOPIC_WORDS = {"alpha": "river harbour", "beta": "market signal", "gamma": "engine orbit"}


def _benchmark():
    return load_benchmark("classifier_accuracy")


def ingested(folder: Path, sizes: dict[str, int], text) -> Path:
    """An ingested-layout classification folder: `sizes[split]` rows per label, `text(split, i, label)` each."""
    folder.mkdir()
    for split, n in sizes.items():
        rows = [{"text": text(split, i, label), "label": label} for i in range(n) for label in LABELS]
        pd.DataFrame(rows).to_parquet(folder / f"{split}.parquet", index=False)
    (folder / "manifest.json").write_text(json.dumps({"task": "classification"}))
    return folder


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    """Three splits of a learnable three-topic task."""
    return ingested(tmp_path / "data", {"train": 24, "val": 6, "test": 6},
                    lambda split, i, label: f"{split} note {i}: the {TOPIC_WORDS[label]} story {i}")


@pytest.fixture
def config(tmp_path: Path) -> Path:
    """smoke.yaml's TF-IDF and a two-epoch LSTM, nothing else."""
    for preset in ("default", "smoke"):
        (tmp_path / f"{preset}.yaml").write_text((REPO / "configs" / f"{preset}.yaml").read_text())
    path = tmp_path / "seeds.yaml"
    path.write_text(
        "extends: smoke\n"
        "name: seeds\n"
        "classification:\n"
        "  candidates:\n"
        "    transformer: {enabled: false}\n"
        "    pretrained: {enabled: false}\n"
        "    lstm:\n"
        "      params: {embedding_init: random}\n"
        "      training: {epochs: 2, batch_size: 8, max_length: 16, num_threads: 1}\n"
    )
    return path


def test_every_candidate_trains_once_per_seed_and_is_chosen_on_its_mean(dataset, config, tmp_path):
    bench = _benchmark()
    report = bench.run(str(config), dataset, None, save=tmp_path / "bundles", seeds=[3, 7])

    assert [(r["candidate"], r["seed"]) for r in report["rows"]] == [
        ("tfidf-logreg", 3), ("tfidf-logreg", 7), ("lstm", 3), ("lstm", 7),
    ]  # fmt: skip
    # The seed reached training: the two LSTMs start from different weights, so they end apart.
    first, second = (load_predictor(tmp_path / "bundles" / f"lstm-seed{s}") for s in (3, 7))
    weights = [p.model.token_embedding.weight for p in (first, second)]
    assert not torch.allclose(*weights)

    summaries = {s["candidate"]: s for s in report["summaries"]}
    lstm_rows = [r for r in report["rows"] if r["candidate"] == "lstm"]
    values = [r["val_macro_f1"] for r in lstm_rows]
    assert summaries["lstm"]["seeds"] == [3, 7]
    assert summaries["lstm"]["val_macro_f1"] == pytest.approx(sum(values) / 2, abs=1e-4)
    assert (summaries["lstm"]["val_macro_f1_min"], summaries["lstm"]["val_macro_f1_max"]) == (
        min(values),
        max(values),
    )
    best_mean = max(report["summaries"], key=lambda s: s["val_macro_f1"])
    assert report["chosen"] == best_mean["candidate"]


@pytest.mark.parametrize("bad", ["1,x", "2,2", "-1"])
def test_bad_seed_lists_are_refused(bad, capsys):
    with pytest.raises(SystemExit):
        _benchmark().main(["--seeds", bad])
    assert "seeds must be" in capsys.readouterr().err


# --dataset bbc-brief ----------------------------------------------------------------------------


@pytest.fixture
def articles(tmp_path: Path) -> Path:
    """'Articles': a title joined to sentences, as BBC News is ingested."""
    return ingested(tmp_path / "articles", {"train": 30, "val": 10, "test": 8},
                    lambda split, i, label: f"Title {i} of {split} The {TOPIC_WORDS[label]} story number {i}. "
                                            f"Later text {LABELS[0]}! End")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Dollar gains The dollar rose 1.5% on Friday. Traders said", "Dollar gains The dollar rose 1.5% on Friday."),
        ('Row over "cuts" Ministers said "no." Then more.', 'Row over "cuts" Ministers said "no."'),
        ("Is it over? Not yet.", "Is it over?"),
        ("No sentence ends here", "No sentence ends here"),
    ],
)
def test_brief_keeps_the_title_and_first_sentence(text, expected):
    assert _benchmark().brief(text) == expected


def test_brief_splits_draw_stratified_training_rows_and_keep_the_whole_test_split(articles):
    from components.data.dataset import load_classification_data

    bench = _benchmark()
    data = load_classification_data(articles)
    train, test = bench.brief_splits(data, train_rows=60)
    assert len(train) == 60 and sorted({r["label"] for r in train}) == list(LABELS)
    assert {label: sum(r["label"] == label for r in train) for label in LABELS} == dict.fromkeys(LABELS, 20)
    assert [r["label"] for r in test] == data.test_labels
    assert all(r["text"].endswith(".") and "Later" not in r["text"] for r in train + test)
    assert bench.brief_splits(data, train_rows=60) == (train, test)  # seed 42: the same rows every time
    with pytest.raises(SystemExit, match="wants 500 training articles"):
        bench.brief_splits(data)


TWO_TFIDF = """extends: smoke
name: two-tfidf
classification:
  candidates:
    lstm: {enabled: false}
    transformer: {enabled: false}
    pretrained: {enabled: false}
    tfidf-chars:
      kind: tfidf_logreg
      params: {word_ngrams: [1, 1], char_ngrams: [2, 3], min_df: 1, C: 1.0}
"""


@pytest.mark.slow
def test_bbc_brief_runs_the_real_pipeline_and_reports_every_candidate_and_the_champion(articles, tmp_path):
    """The script as a user runs it, on a tiny set: `maas pipeline` in a throwaway project, then its leaderboard."""
    import subprocess
    import sys

    preset = tmp_path / "two-tfidf.yaml"
    preset.write_text(TWO_TFIDF)
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "classifier_accuracy.py"), "--dataset", "bbc-brief", "--data",
         str(articles), "--config", str(preset), "--train-rows", "60", "--keep", str(tmp_path / "run"), "--json"],
        capture_output=True, text=True, timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert report["splits"] == {"train": 60, "test": 24}
    names = {row["candidate"] for row in report["rows"]}
    assert {"tfidf-logreg", "tfidf-chars", "ensemble"} <= names
    assert report["champion"] in names and report["passed"] == (report["champion_test_macro_f1"] >= 0.92)
    for row in report["rows"]:
        assert 0 <= row["selection_macro_f1"] <= 1 and 0 <= row["test_accuracy"] <= 1 and row["train_s"] >= 0
    # It ran in its own folder: the pipeline wrote the config and the CSVs there, not in the repo.
    assert (tmp_path / "run" / "project" / "configs" / "bbc-brief.yaml").is_file()
    assert not (REPO / "configs" / "bbc-brief.yaml").exists()
