"""A lean predict_proba for a fitted TF-IDF + logistic regression pipeline.

scikit-learn's ``Pipeline.predict_proba`` costs about 1 ms per call before any text is read
(parameter validation, feature-name checks, a Python loop that counts every token one dict
update at a time), which a server answering small batches pays on every batch: under load at
concurrency 32 the model's share of the server's CPU was a third, most of it that overhead.

``LinearTfidfScorer`` reads the fitted pipeline's own state (each vectoriser's analyzer,
vocabulary and IDF weights; the classifier's coefficients) and computes the same numbers with
a handful of NumPy/SciPy calls per batch. The saved model stays the scikit-learn pipeline; this
is only a faster way to evaluate it, and ``from_pipeline`` returns None for any pipeline shape
it does not reproduce exactly, so the caller falls back to scikit-learn.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from itertools import repeat

import numpy as np
import scipy.sparse as sp
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import FeatureUnion, Pipeline

# scikit-learn's default token pattern. For findall, `\w\w+` finds exactly the same tokens (a
# greedy run of word characters always ends where a word boundary is) about 20 % faster.
SKLEARN_TOKEN_PATTERN = r"(?u)\b\w\w+\b"
SAME_TOKENS_FASTER = r"\w\w+"
# In ASCII text `\w` is exactly [A-Za-z0-9_]. Mapping every other byte to a space and splitting
# gives the same runs of word characters three times faster than the regex (18 against 54 us for
# a 2,000-character BBC article), and most served text is ASCII (71 % of BBC News).
_ASCII_WORD_BYTES = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")
_NON_WORD_TO_SPACE = bytes(c if c in _ASCII_WORD_BYTES else 0x20 for c in range(256))


_find_words = re.compile(SAME_TOKENS_FASTER).findall


def _default_pattern_tokens(text: str) -> list[str]:
    """scikit-learn's default-pattern tokens: runs of two or more word characters."""
    if not text.isascii():
        return _find_words(text)
    runs = text.encode("ascii").translate(_NON_WORD_TO_SPACE).decode("ascii").split()
    return [run for run in runs if len(run) > 1]


def _word_tokenizer(
    vectorizer: TfidfVectorizer, any_ngrams: bool = False
) -> Callable[[str], list[str]] | None:
    """For a plain word-unigram vectoriser, its analyzer without scikit-learn's layers of calls;
    None for anything else (n-grams, character analyzers, stop words, custom callables).
    `any_ngrams`: the words of a plain word vectoriser of any n-gram range (not its n-grams)."""
    plain = (
        vectorizer.analyzer == "word"
        and (any_ngrams or tuple(vectorizer.ngram_range) == (1, 1))
        and vectorizer.input == "content"
        and vectorizer.preprocessor is None
        and vectorizer.tokenizer is None
        and vectorizer.stop_words is None
        and vectorizer.strip_accents is None
    )
    if not plain:
        return None
    pattern = re.compile(vectorizer.token_pattern)
    if pattern.groups > 1:  # scikit-learn refuses such a pattern: let it say so
        return None
    default = vectorizer.token_pattern == SKLEARN_TOKEN_PATTERN
    findall = _default_pattern_tokens if default else pattern.findall
    if vectorizer.lowercase:
        return lambda text: findall(text.lower())
    return findall


def word_unigrams(vectorizer: TfidfVectorizer) -> Callable[[str], list[str]]:
    """The single words a word-analyzer vectoriser reads in a text (its n-grams are built from
    these): preprocessing, token pattern and stop words as fitted, without the n-grams."""
    plain = _word_tokenizer(vectorizer, any_ngrams=True)
    if plain is not None:
        return plain
    preprocess, tokenize = vectorizer.build_preprocessor(), vectorizer.build_tokenizer()
    stop_words = vectorizer.get_stop_words() or frozenset()
    return lambda text: [word for word in tokenize(preprocess(text)) if word not in stop_words]


class _Branch:
    """One fitted TfidfVectorizer, as the (row, column, value) entries of its TF-IDF matrix."""

    def __init__(self, vectorizer: TfidfVectorizer, weights: np.ndarray):
        words = _word_tokenizer(vectorizer)
        self.analyze: Callable[[str], list[str]] = words or vectorizer.build_analyzer()
        self.reads_words = words is not None  # its features are the text's words: unknown ones are OOV
        self.lookup = vectorizer.vocabulary_.get
        self.width = len(vectorizer.vocabulary_)
        self.binary = vectorizer.binary
        self.sublinear_tf = vectorizer.sublinear_tf
        self.idf = vectorizer.idf_ if vectorizer.use_idf else None
        self.norm = vectorizer.norm
        self.weights = weights  # this branch's rows of the classifier's coefficients, (width, classes)

    def entries(
        self, texts: Sequence[str], oov_out: list[float] | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Row, column and TF-IDF value of every non-zero feature, rows ascending. `oov_out`
        (a list, filled), for a branch that `reads_words`: each text's share of words outside the
        vocabulary (1.0 for a text without words), counted from the same lookups."""
        columns: list[int] = []
        lengths: list[int] = []
        for text in texts:
            before = len(columns)
            # map() looks every token up at C speed; a token outside the vocabulary maps to -1.
            columns.extend(map(self.lookup, self.analyze(text), repeat(-1)))
            lengths.append(len(columns) - before)
        found = np.asarray(columns, dtype=np.int64)
        rows = np.repeat(np.arange(len(texts), dtype=np.int64), lengths)
        known = found >= 0
        if oov_out is not None:  # few NumPy calls: served batches are often a text or two
            unknown = np.bincount(rows, weights=~known, minlength=len(texts)).tolist()
            oov_out[:] = [u / total if total else 1.0 for u, total in zip(unknown, lengths, strict=True)]
        # One key per (text, term): counting the sorted unique keys gives the term counts.
        keys, counts = np.unique(rows[known] * self.width + found[known], return_counts=True)
        rows, columns_out = np.divmod(keys, self.width)
        return rows, columns_out, self.weigh(rows, columns_out, counts, len(texts))

    def weigh(self, rows: np.ndarray, columns: np.ndarray, counts: np.ndarray, n_texts: int) -> np.ndarray:
        """The TF-IDF values of term counts given as (row, column, count) entries, rows ascending
        (explanations count the n-grams themselves, to know which word each came from)."""
        values = counts.astype(np.float64)
        if self.binary:
            values[:] = 1.0
        elif self.sublinear_tf:
            np.log(values, out=values)
            values += 1.0
        if self.idf is not None:
            values *= self.idf[columns]
        if self.norm is not None:
            magnitude = np.abs(values) if self.norm == "l1" else values**2
            norms = np.bincount(rows, weights=magnitude, minlength=n_texts)
            if self.norm == "l2":
                norms = np.sqrt(norms)
            norms[norms == 0] = 1.0
            values /= norms[rows]
        return values

    def transform(self, texts: Sequence[str]) -> sp.csr_matrix:
        rows, columns, values = self.entries(texts)
        return sp.csr_matrix((values, (rows, columns)), shape=(len(texts), self.width))

    def add_scores(
        self, texts: Sequence[str], scores: np.ndarray, oov_out: list[float] | None = None
    ) -> None:
        """scores += this branch's TF-IDF matrix @ its weights, without building the matrix."""
        rows, columns, values = self.entries(texts, oov_out)
        if len(rows) == 0:
            return
        contributions = self.weights[columns] * values[:, None]
        starts = np.concatenate(([0], np.flatnonzero(rows[1:] != rows[:-1]) + 1))  # each row's first entry
        scores[rows[starts]] += np.add.reduceat(contributions, starts, axis=0)


class LinearTfidfScorer:
    """Class probabilities of a fitted TF-IDF (one or several vectorisers) + LogisticRegression."""

    def __init__(self, vectorizers: list[TfidfVectorizer], classifier: LogisticRegression):
        self.vectorizers = vectorizers  # explanations map their features back to words
        weights = np.ascontiguousarray(classifier.coef_.T)  # (features, classes or 1)
        offsets = np.cumsum([0] + [len(v.vocabulary_) for v in vectorizers])
        # A FeatureUnion lays the branches' columns side by side, so each owns a slice of the weights.
        self.branches = [
            _Branch(v, weights[start:stop])
            for v, start, stop in zip(vectorizers, offsets[:-1], offsets[1:], strict=True)
        ]
        self.intercept = classifier.intercept_
        # The first word vectoriser (the one whose words OOV shares count), when its features are
        # its words: then predict_proba counts the OOV shares from the lookups it makes anyway.
        word = next(
            (b for v, b in zip(vectorizers, self.branches, strict=True) if v.analyzer == "word"), None
        )
        self.oov_branch = word if word is not None and word.reads_words else None

    @classmethod
    def from_pipeline(cls, pipeline: Pipeline) -> LinearTfidfScorer | None:
        """The scorer for `pipeline`, or None when its shape is not one this reproduces exactly."""
        if len(pipeline.steps) != 2:
            return None
        features, classifier = pipeline.steps[0][1], pipeline.steps[1][1]
        if type(classifier) is not LogisticRegression:
            return None
        # Older scikit-learn could fit one-vs-rest; its probabilities are not a softmax.
        if getattr(classifier, "multi_class", "auto") not in ("auto", "multinomial", "deprecated"):
            return None
        if isinstance(features, FeatureUnion):
            if features.transformer_weights:
                return None
            vectorizers = [step for _, step in features.transformer_list if step != "drop"]
        else:
            vectorizers = [features]
        if not vectorizers or any(type(v) is not TfidfVectorizer for v in vectorizers):
            return None
        if any(v.norm not in ("l1", "l2", None) for v in vectorizers):
            return None
        return cls(vectorizers, classifier)

    def transform(self, texts: Sequence[str]) -> sp.csr_matrix:
        rows = [branch.transform(texts) for branch in self.branches]
        return rows[0] if len(rows) == 1 else sp.hstack(rows, format="csr")

    def predict_proba(self, texts: Sequence[str], oov_out: list[float] | None = None) -> np.ndarray:
        """Class probabilities; `oov_out` (a list), only when `oov_branch` is set, receives the
        texts' OOV shares of that branch."""
        if oov_out is not None and self.oov_branch is None:
            raise ValueError("this pipeline's word vectoriser does not read plain words: no OOV share here")
        scores = np.tile(self.intercept, (len(texts), 1))
        for branch in self.branches:
            branch.add_scores(texts, scores, oov_out if branch is self.oov_branch else None)
        return probabilities(scores)


def probabilities(scores: np.ndarray) -> np.ndarray:
    """Logistic regression's class probabilities from its logits (N, C), or (N, 1) for two
    classes (the second class's logit); `scores` is overwritten."""
    if scores.shape[1] == 1:  # two classes: one logit for the second class
        positive = 1.0 / (1.0 + np.exp(-scores[:, 0]))
        return np.column_stack([1.0 - positive, positive])
    scores -= scores.max(axis=1, keepdims=True)
    np.exp(scores, out=scores)
    scores /= scores.sum(axis=1, keepdims=True)
    return scores
