"""Normalise texts, drop empty rows and exact duplicates, and optionally down-sample.

All of it runs before splitting, so a text can never sit in two splits and the counts
in the manifest describe exactly what was removed. Every step keeps the frame's index
(the row number in the source) so that later steps can restore the source order, and
every dropped row is reported with where it came from (its ``source_row``) and why.

Classification texts are NFKC-normalised and every whitespace run becomes one space:
labels depend on words, not layout, and "same article, different line breaks" must
count as a duplicate. Generation corpora keep their line structure (only NFKC and
``\\r\\n`` to ``\\n``): a language model learns the layout too, and a char-level model on
Tiny Shakespeare must see the same characters as the reference trainer.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

import numpy as np
import pandas as pd

from components.config import Task
from components.data.rows import LABEL, ROW, TEXT, RowIssue, RowRef

_NEWLINES = re.compile(r"\r\n?")


@dataclass(frozen=True)
class Dropped:
    """How many rows each cleaning step removed (recorded in the manifest), and which."""

    empty: int = 0
    duplicates: int = 0
    sampled_out: int = 0
    # The rows cleaning dropped (empty, short, duplicate), in the order they were read.
    rows: tuple[RowIssue, ...] = ()

    def __add__(self, other: Dropped) -> Dropped:
        return Dropped(
            self.empty + other.empty,
            self.duplicates + other.duplicates,
            self.sampled_out + other.sampled_out,
            self.rows + other.rows,
        )


def normalize_text(text: str) -> str:
    """NFKC, then every whitespace run (newlines, tabs, NBSP...) becomes one space; stripped."""
    return " ".join(unicodedata.normalize("NFKC", text).split())


def normalize_document(text: str) -> str:
    """NFKC and unix newlines only: the layout of a generation corpus is part of the data."""
    return _NEWLINES.sub("\n", unicodedata.normalize("NFKC", text))


def normalize_frame(frame: pd.DataFrame, task: Task) -> pd.DataFrame:
    """Normalised texts (per task) and labels stripped of surrounding whitespace."""
    normalize = normalize_text if task == "classification" else normalize_document
    out = frame.copy()
    out[TEXT] = [normalize(t) if isinstance(t, str) else t for t in frame[TEXT]]
    out[LABEL] = [label.strip() if isinstance(label, str) else label for label in frame[LABEL]]
    return out


def drop_short(frame: pd.DataFrame, min_chars: int) -> tuple[pd.DataFrame, int]:
    """Drop rows whose text is blank or shorter than ``min_chars`` characters."""
    keep = [isinstance(t, str) and bool(t.strip()) and len(t) >= min_chars for t in frame[TEXT]]
    kept = frame[_mask(keep)]
    return kept, len(frame) - len(kept)


def drop_duplicates(frame: pd.DataFrame, seen: dict[str, RowRef] | None = None) -> tuple[pd.DataFrame, int]:
    """Drop exact duplicate texts, keeping the first occurrence.

    ``seen`` maps each text kept from frames processed earlier to the row that kept it
    (pinned split files go first, so a source row repeating a pinned test text is the one
    dropped); it is updated.
    """
    seen = {} if seen is None else seen
    keep = []
    for text, where in zip(frame[TEXT], source_rows(frame), strict=True):
        keep.append(text not in seen)
        seen.setdefault(text, where)
    kept = frame[_mask(keep)]
    return kept, len(frame) - len(kept)


def _mask(keep: list[bool]) -> np.ndarray:
    # A plain empty list would select no columns rather than no rows (a chunk of dropped rows).
    return np.asarray(keep, dtype=bool)


def source_rows(frame: pd.DataFrame) -> list[RowRef]:
    """Each row's origin: its ``source_row``, else its position (a frame built in memory)."""
    if ROW in frame.columns:
        return frame[ROW].tolist()
    return [RowRef("rows", int(i) + 1) for i in range(len(frame))]


def downsample(
    frame: pd.DataFrame, max_rows: int | None, *, seed: int, stratify: bool
) -> tuple[pd.DataFrame, int]:
    """At most ``max_rows`` rows: a stratified sample (classification) or the first rows.

    A generation corpus keeps its first rows, so the text stays contiguous. The sample
    keeps source order, so the result does not depend on how the sampler shuffles.
    """
    if max_rows is None or len(frame) <= max_rows:
        return frame, 0
    if not stratify:
        return frame.iloc[:max_rows], len(frame) - max_rows
    from sklearn.model_selection import train_test_split

    labels = frame[LABEL].tolist()
    try:
        kept_index, _ = train_test_split(
            frame.index.to_numpy(), train_size=max_rows, stratify=labels, random_state=seed
        )
    except ValueError as error:
        raise ValueError(f"max_rows={max_rows}: cannot draw a stratified sample: {error}") from error
    kept = frame.loc[sorted(kept_index)]
    return kept, len(frame) - len(kept)


def clean(
    frame: pd.DataFrame, *, task: Task, min_chars: int, seen: dict[str, RowRef] | None = None
) -> tuple[pd.DataFrame, Dropped]:
    """Normalise, drop short/empty rows, then drop duplicates (in that order).

    The returned :class:`Dropped` lists each dropped row with its reason, in frame order.
    """
    seen = {} if seen is None else seen
    normalized = normalize_frame(frame, task)
    non_empty, empty = drop_short(normalized, min_chars)
    unique, duplicates = drop_duplicates(non_empty, seen)
    rows = []
    for index, text, where in zip(normalized.index, normalized[TEXT], source_rows(normalized), strict=True):
        if index in unique.index:
            continue
        if index in non_empty.index:
            rows.append(RowIssue(where, f"duplicate text of {seen[text]}"))
        elif isinstance(text, str) and text.strip():
            rows.append(RowIssue(where, f"shorter than min_chars={min_chars}"))
        else:
            rows.append(RowIssue(where, "empty text"))
    return unique, Dropped(empty=empty, duplicates=duplicates, rows=tuple(rows))
