"""Candidates by dataset size: the in-memory TF-IDF for small training splits, the streaming one for large.

``admitted(candidates, train_rows, rule)`` is pure: it returns the candidates to train and,
for each one the rule leaves out, why, so the caller can log and report it (a skipped
candidate is never silent). The threshold and the kinds on each side come from
``TaskSpec.size_rule`` (components/config.py); ``streaming_above_rows: null`` turns it off.
"""

from __future__ import annotations

from collections.abc import Sequence

from components.config import ModelSpec, SizeRule


def admitted(
    candidates: Sequence[ModelSpec], train_rows: int, rule: SizeRule
) -> tuple[list[ModelSpec], dict[str, str]]:
    """(the candidates that train, {skipped candidate name: the reason})."""
    limit = rule.streaming_above_rows
    if limit is None:
        return list(candidates), {}
    large = train_rows > limit
    kept, skipped = [], {}
    for spec in candidates:
        if large and spec.kind in rule.in_memory_kinds:
            skipped[spec.name] = (f"{train_rows} training rows > size_rule.streaming_above_rows {limit}: "
                                  f"kind {spec.kind} holds the whole split in memory")
        elif not large and spec.kind in rule.streaming_kinds:
            skipped[spec.name] = (f"{train_rows} training rows <= size_rule.streaming_above_rows {limit}: "
                                  f"the in-memory kinds ({', '.join(rule.in_memory_kinds)}) train instead of {spec.kind}")
        else:
            kept.append(spec)
    return kept, skipped
