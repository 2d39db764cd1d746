"""Checks an ingested dataset must pass before it is written or replaces the current one.

Each check raises :class:`DataValidationError` naming its rule and the offending rows,
so a failed ingest says what to fix. Rows are given as ``"<split>[<i>]"``, where ``i`` is
the row's position in that split's file (or its row number in the source, before the
split), except for leakage, which lists the shared texts.

Rules (classification): ``schema`` (columns ``text`` and ``label``, both str), ``empty
text``, ``empty split`` (train and val need rows), ``too few classes`` (at least 2),
``single-member label`` (a label with fewer than 2 rows overall: it cannot be both
learnt and evaluated, and stratification fails on it), ``unknown label`` (a label in
val or test absent from train: no model can predict it) and ``leakage`` (a text in two
splits inflates every test score). Generation: ``schema``, ``empty split``.

While reading and cleaning, both tasks: ``no rows`` (a source or split file with no data
rows, or none left after cleaning), ``encoding`` (a line that is not valid UTF-8, raised by
:mod:`components.data.decoding`) and ``row issues`` (rows cleaning would drop, unless the
dataset allows it with ``row_issues: warn``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from components.data.rows import LABEL, TEXT, RowIssue

PREVIEW_ROWS = 5
_PREVIEW_CHARS = 60


class DataValidationError(ValueError):
    """A dataset broke a validation rule; ``rows`` holds every offending row (or text)."""

    def __init__(self, rule: str, problem: str, rows: Sequence[Any] = ()):
        self.rule = rule
        self.rows = list(rows)
        message = f"rule '{rule}': {problem}"
        if self.rows:
            message += f" (rows: {preview(self.rows)})"
        super().__init__(message)


def preview(rows: Sequence[Any], limit: int = PREVIEW_ROWS) -> str:
    """The first ``limit`` rows, long texts shortened, and how many were left out."""
    shown = [_short(r) for r in rows[:limit]]
    more = f", ... {len(rows) - limit} more" if len(rows) > limit else ""
    return ", ".join(shown) + more


def _short(row: Any) -> str:
    if isinstance(row, str) and len(row) > _PREVIEW_CHARS:
        row = row[: _PREVIEW_CHARS - 3] + "..."
    return repr(row)


def _ref(split: str, index: Any) -> str:
    return f"{split}[{index}]"


# --------------------------------------------------------------------------- single checks


def check_schema(splits: Mapping[str, pd.DataFrame]) -> None:
    """Columns ``text`` and ``label`` exist and every value in them is a str."""
    for split, frame in splits.items():
        missing = [c for c in (TEXT, LABEL) if c not in frame.columns]
        if missing:
            raise DataValidationError(
                "schema",
                f"{split} lacks columns {missing} (columns present: {[str(c) for c in frame.columns]})",
            )
        for column in (TEXT, LABEL):
            bad = [
                _ref(split, i)
                for i, v in zip(frame.index, frame[column], strict=True)
                if not isinstance(v, str)
            ]
            if bad:
                raise DataValidationError(
                    "schema", f"{len(bad)} rows of {split} have a {column} that is not a string", bad
                )


def check_no_empty_texts(splits: Mapping[str, pd.DataFrame]) -> None:
    bad = [
        _ref(split, i)
        for split, frame in splits.items()
        for i, text in zip(frame.index, frame[TEXT], strict=True)
        if not text.strip()
    ]
    if bad:
        raise DataValidationError("empty text", f"{len(bad)} rows have an empty text", bad)


def check_split_sizes(sizes: Mapping[str, int], required: Sequence[str] = ("train", "val")) -> None:
    empty = [split for split in required if sizes.get(split, 0) == 0]
    if empty:
        raise DataValidationError("empty split", f"splits {empty} have no rows (sizes: {dict(sizes)})")


def check_labels(splits: Mapping[str, pd.DataFrame]) -> None:
    """At least two classes, and no label with fewer than two rows overall."""
    counts = Counter(label for frame in splits.values() for label in frame[LABEL])
    if len(counts) < 2:
        raise DataValidationError(
            "too few classes", f"a classifier needs at least 2 labels, found {sorted(counts)}"
        )
    rare = sorted(label for label, n in counts.items() if n < 2)
    if rare:
        rows = [
            _ref(split, i)
            for split, frame in splits.items()
            for i, label in zip(frame.index, frame[LABEL], strict=True)
            if label in rare
        ]
        raise DataValidationError("single-member label", f"labels {rare} have fewer than 2 rows", rows)


def check_unknown_labels(splits: Mapping[str, pd.DataFrame]) -> None:
    """Every label of val and test also occurs in train."""
    known = set(splits["train"][LABEL])
    rows: list[str] = []
    unknown: set[str] = set()
    for split, frame in splits.items():
        if split == "train":
            continue
        for i, label in zip(frame.index, frame[LABEL], strict=True):
            if label not in known:
                rows.append(_ref(split, i))
                unknown.add(label)
    if rows:
        raise DataValidationError(
            "unknown label", f"{len(rows)} rows have labels {sorted(unknown)} that train does not have", rows
        )


def check_leakage(splits: Mapping[str, pd.DataFrame]) -> None:
    """No text appears in more than one split."""
    where: dict[str, set[str]] = {}
    for split, frame in splits.items():
        for text in frame[TEXT]:
            where.setdefault(text, set()).add(split)
    shared = [text for text, found in where.items() if len(found) > 1]
    if shared:
        pairs = sorted({" and ".join(sorted(where[t])) for t in shared})
        raise DataValidationError(
            "leakage", f"{len(shared)} texts appear in more than one split ({'; '.join(pairs)})", shared
        )


def check_has_rows(frame: pd.DataFrame | int, origin: str, *, after_cleaning: bool = False) -> None:
    """``origin`` (a file, URL or dataset) gave at least one row, or kept one through cleaning.

    ``frame`` may be a row count (a streamed source is never one frame).
    """
    if frame if isinstance(frame, int) else len(frame):
        return
    if after_cleaning:
        raise DataValidationError("no rows", f"every row of {origin} was dropped in cleaning")
    raise DataValidationError("no rows", f"{origin} has no data rows (a header alone, or nothing)")


def check_row_issues(dataset: str, issues: Sequence[RowIssue], policy: str) -> None:
    """Rows that cleaning dropped fail the ingest unless the dataset says ``row_issues: warn``."""
    if issues and policy == "error":
        raise DataValidationError(
            "row issues",
            f"dataset '{dataset}': cleaning would drop {len(issues)} rows (empty, too short or duplicate "
            f"texts); fix the source, or set `row_issues: warn` on dataset '{dataset}' to drop them "
            "with a warning",
            issues,
        )


# --------------------------------------------------------------------------- whole datasets


def validate_classification(splits: Mapping[str, pd.DataFrame]) -> None:
    """All classification rules, cheapest and most basic first."""
    check_schema(splits)
    check_no_empty_texts(splits)
    check_split_sizes({split: len(frame) for split, frame in splits.items()})
    # A label only val/test have is reported as unknown (the more telling rule), not as rare.
    check_unknown_labels(splits)
    check_labels(splits)
    check_leakage(splits)


def validate_class_counts(per_class: Mapping[str, Mapping[str, int]]) -> None:
    """The classification rules that counts decide, for a streamed dataset whose texts are never all
    in memory; there, schema and empty texts hold by cleaning, leakage by unique text digests."""
    totals: Counter = Counter()
    for counts in per_class.values():
        totals.update({label: n for label, n in counts.items() if n})
    if len(totals) < 2:
        raise DataValidationError(
            "too few classes", f"a classifier needs at least 2 labels, found {sorted(totals)}"
        )
    rare = sorted(label for label, n in totals.items() if n < 2)
    if rare:
        raise DataValidationError("single-member label", f"labels {rare} have fewer than 2 rows")
    check_split_sizes({split: sum(counts.values()) for split, counts in per_class.items()})
    known = {label for label, n in per_class["train"].items() if n}
    unknown = {
        f"{split}: {label}" for split, counts in per_class.items() if split != "train"
        for label, n in counts.items() if n and label not in known
    }
    if unknown:
        raise DataValidationError(
            "unknown label", f"labels {sorted(unknown)} have rows outside train but none in train"
        )


def validate_corpus(texts: Mapping[str, Any]) -> None:
    """A generation corpus: train and val are non-empty strings."""
    bad = [split for split, text in texts.items() if not isinstance(text, str)]
    if bad:
        raise DataValidationError("schema", f"corpus splits {bad} are not strings", bad)
    check_split_sizes({split: len(text.strip()) for split, text in texts.items()})
