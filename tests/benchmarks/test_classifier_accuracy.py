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


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    """An ingested-layout classification folder: three splits of a learnable three-topic task."""
    folder = tmp_path / "data"
    folder.mkdir()
    sizes = {"train": 24, "val": 6, "test": 6}
    for split, n in sizes.items():
        rows = [
            {"text": f"{split} note {i}: the {TOPIC_WORDS[label]} story {i}", "label": label}
            for i in range(n)
            for label in LABELS
        ]
        pd.DataFrame(rows).to_parquet(folder / f"{split}.parquet", index=False)
    (folder / "manifest.json").write_text(json.dumps({"task": "classification"}))
    return folder


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
