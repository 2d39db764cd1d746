"""benchmarks/explain_faithfulness.py on a tiny ingested dataset: the report's shape and a faithful TF-IDF."""

from __future__ import annotations

import json

import pytest

from tests.benchmarks.scripts import load_benchmark
from tests.benchmarks.test_classifier_accuracy import config, dataset  # noqa: F401 (fixtures)


def test_the_report_has_a_row_per_model_and_k_and_tfidf_deletions_beat_random(dataset, config, capsys):  # noqa: F811
    benchmark = load_benchmark("explain_faithfulness")
    args = ["--config", str(config), "--data", str(dataset), "--texts", "6", "--max-k", "3", "--json"]
    report = benchmark.main([*args, "--models", "tfidf-logreg,lstm"])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == report
    methods = [("tfidf-logreg", "linear"), ("lstm", "occlusion"), ("lstm", "integrated_gradients")]
    assert [(row["model"], row["method"], row["k"]) for row in report["rows"]] == [
        (model, method, k) for model, method in methods for k in (1, 2, 3)
    ]  # --method both: each torch model twice, TF-IDF once
    assert set(report["rows"][0]) == {"model", "method", "k", "top_drop", "random_drop", "ms_per_text"}
    tfidf, _, _ = report["models"]
    assert [(m["model"], m["method"]) for m in report["models"]] == methods
    # Each text names its topic with two words in every split: deleting them is the biggest drop.
    assert tfidf["top_area"] > max(tfidf["random_area"], 0) and tfidf["ms_per_text"] > 0


def test_unknown_models_are_refused(dataset, config):  # noqa: F811
    with pytest.raises(SystemExit, match="unknown candidates"):
        load_benchmark("explain_faithfulness").main(
            ["--config", str(config), "--data", str(dataset), "--models", "nope"]
        )
