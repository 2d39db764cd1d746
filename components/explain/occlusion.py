"""Occlusion: a word's score is how much the predicted class's probability drops without it.

For each text, every word the model reads is deleted in turn (all its occurrences: see
``words``), the variants are classified in one batched call, and the score is
``p(label | text) - p(label | text without the word)``: positive words pushed towards the label.
It needs only the model's ``predict_proba``, so it serves any classifier, and whole words come
back whatever the tokenizer splits them into. Cost: one extra prediction per distinct word read.

Words the model never reads (past its truncation) are left out: deleting them cannot change
its input, so they score exactly zero and cost nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from components.explain.words import TextWords, WordAttribution

ProbaFn = Callable[[Sequence[str]], np.ndarray]


def truncation_offset(text: str, count_tokens: Callable[[str], int], max_tokens: int) -> int:
    """The character offset up to which a model that keeps its first `max_tokens` tokens reads
    `text`: the end of the text, or the start of the first word whose first token is cut off.

    `count_tokens(prefix)` counts what the truncation counts (special tokens included). A
    binary search over word starts: about log2(words) tokenizer calls.
    """
    if count_tokens(text) <= max_tokens:
        return len(text)
    starts = [m[0] for m in TextWords(text).matches]
    # The prefix before a word is cut at its trailing whitespace, which byte-level BPE would
    # otherwise count as a token of its own (in the full text it merges into the next word).
    lo, hi = 0, len(starts)  # invariant: words before `lo` are read, words from `hi` on are not
    while lo < hi:
        mid = (lo + hi) // 2
        if count_tokens(text[: starts[mid]].rstrip()) < max_tokens:
            lo = mid + 1
        else:
            hi = mid
    return starts[lo] if lo < len(starts) else len(text)


def occlusion_attributions(
    predict_proba: ProbaFn, texts: Sequence[str], read_end: Callable[[str], int] | None = None
) -> list[WordAttribution]:
    """One WordAttribution per text; `read_end(text)` is where the model stops reading (None: the end)."""
    texts = list(texts)
    base = predict_proba(texts)  # (N, C)
    words = [TextWords(text) for text in texts]
    variants: list[str] = []
    owners: list[tuple[int, str]] = []  # (text index, deleted word) of each variant
    for i, (text, tw) in enumerate(zip(texts, words, strict=True)):
        end = len(text) if read_end is None else read_end(text)
        for key in tw.keys:
            if tw.first_start[key] < end:
                variants.append(tw.without({key}))
                owners.append((i, key))
    occluded = predict_proba(variants) if variants else np.zeros((0, base.shape[1]))  # (V, C)
    labels = base.argmax(axis=1)
    results = [
        WordAttribution(int(label), float(row[label]), "occlusion", {}, tw.shown)
        for label, row, tw in zip(labels, base, words, strict=True)
    ]
    for (i, key), row in zip(owners, occluded, strict=True):
        result = results[i]
        result.scores[key] = result.probability - float(row[result.label])
    return results
