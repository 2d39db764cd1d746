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
from itertools import repeat

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer

from components.explain.words import WORD, TextWords, WordAttribution
from components.models.tfidf_inference import LinearTfidfScorer


@dataclass
class LinearAttribution(WordAttribution):
    bias: float = 0.0  # the intercept's share of the margin
    unattributed: float = 0.0  # features that cover no word


def relative_to_mean_class(weights: np.ndarray) -> np.ndarray:
    """(rows, C) or binary (rows, 1) -> (rows, classes): each class's weight against the mean class."""
    if weights.shape[1] == 1:  # binary: one logit, for class 1
        return np.hstack([-weights, weights])
    return weights - weights.mean(axis=1, keepdims=True)


class _BranchExplainer:
    """One vectoriser's features, mapped back to words."""

    def __init__(self, vectorizer: TfidfVectorizer, branch):
        self.branch = branch  # the scorer's branch: TF-IDF values without scikit-learn's overhead
        self.weights = relative_to_mean_class(branch.weights)  # (features, classes)
        self.analyzer = vectorizer.analyzer if isinstance(vectorizer.analyzer, str) else None
        self.analyze = vectorizer.build_analyzer()
        self.names = vectorizer.get_feature_names_out() if self.analyzer == "word" else None

    def add(self, text: str, label: int, scores: dict[str, float]) -> float:
        """Add this branch's word contributions to `scores`; returns what covers no word."""
        _, columns, values = self.branch.entries([text])  # columns ascending
        contributions = values * self.weights[columns, label]
        if self.analyzer == "word":
            return self._add_ngrams(columns, contributions, scores)
        if self.analyzer == "char_wb":
            return self._add_chunks(text, columns, contributions, scores)
        return float(contributions.sum())

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

    def _add_chunks(
        self, text: str, columns: np.ndarray, contributions: np.ndarray, scores: dict[str, float]
    ) -> float:
        # char_wb cuts n-grams from each whitespace-separated chunk on its own: analysing each
        # distinct chunk alone gives exactly the text's n-grams, now with where they came from.
        chunks = Counter(text.split())
        grams: list[str] = []
        lengths: list[int] = []
        for chunk in chunks:
            found = self.analyze(chunk)
            grams.extend(found)
            lengths.append(len(found))
        if not grams:
            return 0.0
        found_columns = np.fromiter(map(self.branch.lookup, grams, repeat(-1)), np.int64, len(grams))
        chunk_of = np.repeat(np.arange(len(chunks)), lengths)
        known = found_columns >= 0
        found_columns, chunk_of = found_columns[known], chunk_of[known]
        repeats = np.fromiter(chunks.values(), np.float64, len(chunks))[chunk_of]
        unique, inverse = np.unique(found_columns, return_inverse=True)
        occurrences = np.bincount(inverse, weights=repeats)  # of each feature in the whole text
        contribution = contributions[np.searchsorted(columns, unique)]
        per_chunk = np.bincount(
            chunk_of, weights=(contribution / occurrences)[inverse] * repeats, minlength=len(chunks)
        )
        rest = 0.0
        for chunk, share in zip(chunks, per_chunk.tolist(), strict=True):
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
        self.bias = relative_to_mean_class(np.asarray(scorer.intercept, dtype=np.float64)[None, :])[0]

    def attribute(self, texts: Sequence[str]) -> list[LinearAttribution]:
        texts = list(texts)
        if not texts:
            return []
        proba = self.scorer.predict_proba(texts)
        results = []
        for text, row in zip(texts, proba, strict=True):
            label = int(row.argmax())
            words = TextWords(text)
            scores = dict.fromkeys(words.keys, 0.0)  # every word is read: unused ones score 0
            rest = sum(branch.add(text, label, scores) for branch in self.branches)
            results.append(
                LinearAttribution(
                    label, float(row[label]), "linear", scores, words.shown,
                    bias=float(self.bias[label]), unattributed=rest,
                )
            )  # fmt: skip
        return results
