"""The promotion gate's decision rules (the flow around them is covered by the smoke test)."""

import pytest

from components.config import ModelSpec, TaskSpec
from flows.promote import is_better, select_best


def _task(**kw) -> TaskSpec:
    return TaskSpec(dataset="d", registered_model="m", candidates=[ModelSpec(name="a", kind="tfidf_logreg")], **kw)


def test_select_best_uses_validation_metric_only():
    results = [
        {"candidate": "a", "val": {"macro_f1": 0.90}, "test": {"macro_f1": 0.99}},
        {"candidate": "b", "val": {"macro_f1": 0.95}, "test": {"macro_f1": 0.80}},
    ]
    assert select_best(results, _task())["candidate"] == "b"


def test_lower_is_better_metrics():
    results = [{"candidate": "a", "val": {"bits_per_char": 2.1}}, {"candidate": "b", "val": {"bits_per_char": 1.9}}]
    assert select_best(results, _task(metric="bits_per_char", greater_is_better=False))["candidate"] == "b"


@pytest.mark.parametrize(
    ("challenger", "champion", "margin", "greater", "expected"),
    [
        (0.95, 0.94, 0.0, True, True),
        (0.94, 0.94, 0.0, True, False),  # a tie never moves the alias
        (0.95, 0.94, 0.02, True, False),  # not better by the margin
        (1.8, 1.9, 0.05, False, True),
        (1.88, 1.9, 0.05, False, False),
    ],
)
def test_is_better_respects_margin_and_direction(challenger, champion, margin, greater, expected):
    assert is_better(challenger, champion, _task(margin=margin, greater_is_better=greater)) is expected
