"""Exact word contributions of the TF-IDF + logistic regression baseline.

The model's logit for class c is ``b_c + sum_f x_f * w_fc`` (x: the text's TF-IDF values). A
softmax ignores a shift common to all logits, so a feature's contribution to the predicted
class p is taken relative to the mean class: ``x_f * (w_fp - mean_c w_fc)``, and the bias is
``b_p - mean_c b_c``; together they sum to ``z_p - mean_c z_c``. A binary model has one logit
(class 1 against class 0): the contribution is ``x_f * w_f`` for class 1 and its negative for
class 0, summing to the predicted class's log-odds.

Rule from features to words: a feature's contribution is shared equally among its occurrences
in the text, and each occurrence's share equally among the words it covers (a word n-gram
covers its n words; a ``char_wb`` n-gram covers the words of the whitespace-separated chunk it
was cut from). What covers no word (a chunk of punctuation only, a ``char`` analyzer that
crosses words) is reported as ``unattributed``, so that bias + words + unattributed is exactly
the logit margin above.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from itertools import repeat

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer

from components.explain.words import WORD, TextWords, WordAttribution
from components.models.tfidf_inference import LinearTfidfScorer, probabilities

CHUNK_CACHE = 2**16  # distinct whitespace-separated chunks whose n-gram columns are kept


@dataclass
class LinearAttribution(WordAttribution):
    bias: float = 0.0  # the intercept's share of the margin
    unattributed: float = 0.0  # features that cover no word


def relative_to_mean_class(weights: np.ndarray) -> np.ndarray:
    """(rows, C) or binary (rows, 1) -> (rows, classes): each class's weight against the mean class."""
    if weights.shape[1] == 1:  # binary: one logit, for class 1
        return np.hstack([-weights, weights])
    return weights - weights.mean(axis=1, keepdims=True)


@dataclass
class _Features:
    """One text's non-zero features in one branch; for char_wb, also each n-gram occurrence's
    chunk, its feature (an index into `columns`) and its share of that feature's contribution."""

    columns: np.ndarray
    values: np.ndarray
    chunks: list[str] | None = None
    chunk_of: np.ndarray | None = None
    inverse: np.ndarray | None = None
    weights: np.ndarray | None = None


class _BranchExplainer:
    """One vectoriser's features, mapped back to words."""

    def __init__(self, vectorizer: TfidfVectorizer, branch):
        self.branch = branch  # the scorer's branch: TF-IDF values without scikit-learn's overhead
        self.weights = relative_to_mean_class(branch.weights)  # (features, classes)
        self.analyzer = vectorizer.analyzer if isinstance(vectorizer.analyzer, str) else None
        self.analyze = vectorizer.build_analyzer()
        # Chunks (mostly words) repeat across texts: their features are looked up once.
        self.chunk_columns = lru_cache(maxsize=CHUNK_CACHE)(self._chunk_columns)
        self.names = vectorizer.get_feature_names_out() if self.analyzer == "word" else None

    def features(self, text: str) -> _Features:
        """The text's non-zero features in this branch, with where each came from."""
        if self.analyzer != "char_wb":
            _, columns, values = self.branch.entries([text])  # columns ascending
            return _Features(columns, values)
        # char_wb cuts n-grams from each whitespace-separated chunk on its own: analysing each
        # distinct chunk alone gives exactly the text's n-grams, now with the chunk they came from.
        chunks = Counter(text.split())
        per_chunk = [self.chunk_columns(chunk) for chunk in chunks]
        lengths = [len(found) for found in per_chunk]
        if not any(lengths):
            return _Features(np.zeros(0, np.int64), np.zeros(0))
        chunk_of = np.repeat(np.arange(len(chunks)), lengths)
        repeats = np.fromiter(chunks.values(), np.float64, len(chunks))[chunk_of]
        columns, inverse = np.unique(np.concatenate(per_chunk), return_inverse=True)
        counts = np.bincount(inverse, weights=repeats)  # each feature's count in the whole text
        values = self.branch.weigh(np.zeros(len(columns), np.int64), columns, counts, 1)
        return _Features(columns, values, list(chunks), chunk_of, inverse, repeats / counts[inverse])

    def logits(self, features: _Features) -> np.ndarray:
        """This branch's part of the model's logits, (classes,) or (1,) for a binary model."""
        return features.values @ self.branch.weights[features.columns]

    def add(self, features: _Features, label: int, scores: dict[str, float]) -> float:
        """Add this branch's word contributions to `scores`; returns what covers no word."""
        contributions = features.values * self.weights[features.columns, label]
        if self.analyzer == "word":
            return self._add_ngrams(features.columns, contributions, scores)
        if self.analyzer == "char_wb" and features.chunks:
            return self._add_chunks(features, contributions, scores)
        return float(contributions.sum())

    def _chunk_columns(self, chunk: str) -> np.ndarray:
        """The vocabulary columns of a chunk's n-grams, one per occurrence (unknown ones left out)."""
        found = np.fromiter(map(self.branch.lookup, self.analyze(chunk), repeat(-1)), np.int64)
        return found[found >= 0]

    def _add_ngrams(self, columns: np.ndarray, contributions: np.ndarray, scores: dict[str, float]) -> float:
        # Every occurrence of an n-gram covers the same words, so its whole contribution splits over them.
        rest = 0.0
        for column, contribution in zip(columns.tolist(), contributions.tolist(), strict=True):
            tokens = self.names[column].split(" ")
            share = contribution / len(tokens)
            for token in tokens:
                if token in scores:
                    scores[token] += share
                else:  # a token the word rule does not produce (a custom token pattern)
                    rest += share
        return rest

    def _add_chunks(self, features: _Features, contributions: np.ndarray, scores: dict[str, float]) -> float:
        occurrence_shares = contributions[features.inverse] * features.weights  # n-gram occurrences
        per_chunk = np.bincount(features.chunk_of, weights=occurrence_shares, minlength=len(features.chunks))
        rest = 0.0
        for chunk, share in zip(features.chunks, per_chunk.tolist(), strict=True):
            keys = [word.lower() for word in WORD.findall(chunk)]
            if not keys:
                rest += share
            for key in keys:
                scores[key] += share / len(keys)
        return rest


class LinearTfidfExplainer:
    """Word contributions for a TF-IDF + logistic regression model (built once per model)."""

    def __init__(self, scorer: LinearTfidfScorer):
        self.scorer = scorer
        self.branches = [
            _BranchExplainer(vectorizer, branch)
            for vectorizer, branch in zip(scorer.vectorizers, scorer.branches, strict=True)
        ]
        self.intercept = np.asarray(scorer.intercept, dtype=np.float64)
        self.bias = relative_to_mean_class(self.intercept[None, :])[0]

    def attribute(self, texts: Sequence[str]) -> list[LinearAttribution]:
        texts = list(texts)
        if not texts:
            return []
        results = []
        for text in texts:
            # The probabilities come from the same features (scoring the text again would double the cost).
            features = [branch.features(text) for branch in self.branches]
            logits = self.intercept + sum(b.logits(f) for b, f in zip(self.branches, features, strict=True))
            row = probabilities(logits[None, :])[0]
            label = int(row.argmax())
            words = TextWords(text)
            scores = dict.fromkeys(words.keys, 0.0)  # every word is read: unused ones score 0
            rest = sum(b.add(f, label, scores) for b, f in zip(self.branches, features, strict=True))
            results.append(
                LinearAttribution(
                    label, float(row[label]), "linear", scores, words.shown,
                    bias=float(self.bias[label]), unattributed=rest,
                )
            )  # fmt: skip
        return results
