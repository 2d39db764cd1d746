"""Candidates by dataset size: the in-memory TF-IDF for small training splits, the streaming one for large.

``admitted(candidates, train_rows, rule)`` is pure: it returns the candidates to train and,
for each one the rule leaves out, why, so the caller can log and report it (a skipped
candidate is never silent). The threshold and the kinds on each side come from
``TaskSpec.size_rule`` (components/config.py); ``streaming_above_rows: null`` turns that part
off. ``min_rows`` keeps a kind out below a number of training rows (the networks trained from
scratch, by default).
"""

from __future__ import annotations

from collections.abc import Sequence

from components.config import ModelSpec, SizeRule


def admitted(
    candidates: Sequence[ModelSpec], train_rows: int, rule: SizeRule
) -> tuple[list[ModelSpec], dict[str, str]]:
    """(the candidates that train, {skipped candidate name: the reason})."""
    limit = rule.streaming_above_rows
    large = limit is not None and train_rows > limit
    small = limit is not None and not large
    kept, skipped = [], {}
    for spec in candidates:
        if train_rows < rule.min_rows.get(spec.kind, 0):
            skipped[spec.name] = (f"{train_rows} training rows < size_rule.min_rows.{spec.kind} "
                                  f"{rule.min_rows[spec.kind]}: too few to train it from scratch")
        elif large and spec.kind in rule.in_memory_kinds:
            skipped[spec.name] = (f"{train_rows} training rows > size_rule.streaming_above_rows {limit}: "
                                  f"kind {spec.kind} holds the whole split in memory")
        elif small and spec.kind in rule.streaming_kinds:
            skipped[spec.name] = (f"{train_rows} training rows <= size_rule.streaming_above_rows {limit}: "
                                  f"the in-memory kinds ({', '.join(rule.in_memory_kinds)}) train instead of {spec.kind}")
        else:
            kept.append(spec)
    return kept, skipped
