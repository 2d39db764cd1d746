"""The leaderboard row and its one renderer: the same rows as a terminal table, Markdown, JSON and records."""

from __future__ import annotations

import json

import pytest
from rich.console import Console

from flows.leaderboard import LeaderboardRow, describe_decision, render, summary_rows

RESULTS = [
    {"candidate": "tfidf-logreg", "kind": "tfidf_logreg", "version": "3", "run_id": "r1", "data_version": "abc",
     "val": {"accuracy": 0.98, "macro_f1": 0.98061, "log_loss": 0.1}, "test": {"accuracy": 0.9859, "log_loss": 0.2},
     "latency_ms_p50": 0.123, "train_s": 4.04, "model_size_mb": 1.0, "cached": False},
    {"candidate": "lstm", "kind": "lstm", "version": "4", "run_id": "r2", "data_version": "abc",
     "val": {"accuracy": 0.94, "macro_f1": 0.9397, "log_loss": 0.3}, "test": {"accuracy": 0.9576, "log_loss": 0.4},
     "latency_ms_p50": 1.5, "train_s": 60.0, "model_size_mb": 5.0, "cached": True},
]
GENERATION = [
    {"candidate": "gpt", "kind": "gpt", "version": "1", "run_id": "r3", "data_version": "def",
     "val": {"bits_per_char": 2.883}, "test": {}, "latency_ms_p50": 9.0, "train_s": 100.0},
]
DECISION = {"registered_model": "bbc", "promoted": True, "reason": "there was no champion", "champion_version": "3"}
TASKS = {
    "classification": {"results": RESULTS, "decision": DECISION, "trained": ["tfidf-logreg"]},
    "generation": {"results": GENERATION, "trained": [],
                   "decision": {"registered_model": "lm", "promoted": False, "reason": "tie", "champion_version": "1"}},
}


def test_rows_from_a_summary_mark_the_champion_by_its_version():
    rows = summary_rows(TASKS)
    assert [(r.task, r.candidate, r.alias) for r in rows] == [
        ("classification", "tfidf-logreg", "champion"), ("classification", "lstm", None), ("generation", "gpt", "champion")
    ]


def test_json_is_a_list_of_row_objects_named_candidate():
    rows = json.loads(render(summary_rows(TASKS), "json"))
    assert rows[0]["candidate"] == "tfidf-logreg" and "model" not in rows[0]
    assert {"task", "candidate", "version", "alias", "val", "test", "latency_ms_p50"} <= set(rows[0])
    assert rows[0]["val"]["log_loss"] == 0.1  # the JSON keeps every metric
    assert [r["alias"] for r in rows] == ["champion", None, "champion"]


def test_markdown_has_a_table_per_task_with_a_column_per_metric():
    text = render(summary_rows(TASKS), "markdown")
    classification, generation = text.split("## generation")
    assert classification.startswith("## classification")
    lines = classification.strip().splitlines()
    assert lines[2] == "| candidate | version | alias | val accuracy | val macro_f1 | test accuracy | p50 ms | train s |"
    assert lines[4] == "| tfidf-logreg | 3 | champion | 0.9800 | 0.9806 | 0.9859 | 0.12 | 4.0 |"
    assert "log_loss" not in classification
    assert "| gpt | 1 | champion | 2.8830 | 9.00 | 100.0 |" in generation


def test_records_and_the_terminal_table_hold_the_same_cells():
    rows = summary_rows(TASKS)
    records = render(rows, "records")
    assert records[1] == {"task": "classification", "candidate": "lstm", "version": "4", "alias": "",
                          "val accuracy": "0.9400", "val macro_f1": "0.9397", "test accuracy": "0.9576",
                          "p50 ms": "1.50", "train s": "60.0"}
    console = Console(record=True, width=200)
    console.print(render(rows, "table"))
    shown = console.export_text()
    assert "classification: candidates" in shown and "generation: candidates" in shown
    assert "0.9397" in shown and "2.8830" in shown


def test_missing_numbers_show_as_a_dash():
    row = LeaderboardRow(task="classification", candidate="c", kind=None, version=None, alias=None, data_version=None,
                         val={"accuracy": 0.5}, test={}, latency_ms_p50=None, train_s=None)
    assert render([row], "records") == [{"task": "classification", "candidate": "c", "version": "-", "alias": "",
                                         "val accuracy": "0.5000", "p50 ms": "-", "train s": "-"}]


def test_an_unknown_format_is_refused():
    with pytest.raises(ValueError, match="unknown leaderboard format 'html'"):
        render([], "html")


def test_a_decision_is_one_line():
    assert describe_decision(DECISION) == "bbc: promoted (there was no champion); champion v3"
    assert describe_decision(TASKS["generation"]["decision"]) == "lm: kept the champion (tie); champion v1"
