"""Words as the unit of an explanation, and the per-text result every explanation method returns.

A word is a maximal run of word characters (``\\w+``); its occurrences are grouped
case-insensitively (``"Goal"`` and ``"goal"`` are one word), so deleting a word deletes all of
them. Punctuation and whitespace are never explained. The same rule serves every model kind,
so an explanation reads the same whatever tokenizer (words, BPE, WordPiece) the model has.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

WORD = re.compile(r"\w+")


class TextWords:
    """The words of one text: each occurrence's span, grouped by key (the lowercased word)."""

    def __init__(self, text: str):
        self.text = text
        self.matches = [(m.start(), m.end(), m.group().lower()) for m in WORD.finditer(text)]
        self.shown: dict[str, str] = {}  # key -> its first occurrence as written (dict order: first seen)
        self.first_start: dict[str, int] = {}
        for start, end, key in self.matches:
            if key not in self.shown:
                self.shown[key] = text[start:end]
                self.first_start[key] = start

    @property
    def keys(self) -> list[str]:
        return list(self.shown)

    def without(self, keys: set[str] | frozenset[str]) -> str:
        """The text with every occurrence of these words cut out (the characters around them stay)."""
        pieces, last = [], 0
        for start, end, key in self.matches:
            if key in keys:
                pieces.append(self.text[last:start])
                last = end
        pieces.append(self.text[last:])
        return "".join(pieces)


@dataclass
class WordAttribution:
    """One text's explanation: the predicted class, its probability and a signed score per word.

    A positive score pushed the prediction towards ``label``, a negative one away from it. The
    unit depends on ``method``: "linear" scores are logit contributions, "occlusion" scores are
    drops of the predicted class's probability when the word is deleted, "integrated_gradients"
    scores are shares of the change of its log-probability from the all-padding baseline.
    """

    label: int  # index of the predicted class
    probability: float
    method: str
    scores: dict[str, float]  # word key -> score, for every word the model reads
    shown: dict[str, str] = field(default_factory=dict)  # word key -> as written in the text

    def ranked(self) -> list[str]:
        """Word keys, most positive score first (ties keep the order of first appearance)."""
        return sorted(self.scores, key=lambda key: -self.scores[key])

    def explanation(self, labels: list[str], top_k: int) -> dict[str, Any]:
        """The service's shape: label, probability, method, and the top-k words each way."""
        ranked = self.ranked()
        towards = [key for key in ranked if self.scores[key] > 0][:top_k]
        against = [key for key in reversed(ranked) if self.scores[key] < 0][:top_k]
        return {
            "label": labels[self.label],
            "probability": self.probability,
            "method": self.method,
            "towards": [self._item(key) for key in towards],
            "against": [self._item(key) for key in against],
        }

    def _item(self, key: str) -> dict[str, Any]:
        return {"word": self.shown.get(key, key), "score": self.scores[key]}
