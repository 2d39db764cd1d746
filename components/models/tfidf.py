"""TF-IDF (word and character n-grams) + logistic regression: the baseline classifier.

A scikit-learn pipeline behind the common Predictor interface. The fitted pipeline
(vectorisers' vocabularies and IDF weights included) is saved in the bundle with joblib,
so the preprocessing fitted on the training split travels with the model.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import joblib
import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import FeatureUnion, Pipeline

from components.config import ModelSpec
from components.data.dataset import ClassificationData
from components.evaluation.classification import classification_metrics
from components.explain.linear import LinearAttribution, LinearTfidfExplainer
from components.models.tfidf_inference import LinearTfidfScorer, word_unigrams
from components.predictor import ClassifierPredictor
from components.text.oov import share
from components.training.callbacks import MetricsCallback

PIPELINE_FILE = "pipeline.joblib"

DEFAULT_PARAMS: dict[str, Any] = {
    "word_ngrams": [1, 2],
    "char_ngrams": [2, 5],  # char_wb n-grams; null disables the character branch
    "min_df": 2,
    "max_features": 200_000,
    "sublinear_tf": True,
    "C": 10.0,
    "max_iter": 1000,
    # "balanced" weights each class by n_rows / (n_classes * its rows) in the loss, as
    # training.class_weight does for the torch classifiers; "none" weighs every row alike.
    "class_weight": "none",
}
CLASS_WEIGHTS = {"none": None, "balanced": "balanced"}  # our spelling -> LogisticRegression's


def build_pipeline(params: dict[str, Any], seed: int) -> Pipeline:
    features = [
        (
            "word",
            TfidfVectorizer(
                ngram_range=tuple(params["word_ngrams"]),
                min_df=params["min_df"],
                max_features=params["max_features"],
                sublinear_tf=params["sublinear_tf"],
                lowercase=True,
            ),
        )
    ]
    if params.get("char_ngrams"):
        features.append(
            (
                "char",
                TfidfVectorizer(
                    analyzer="char_wb",
                    ngram_range=tuple(params["char_ngrams"]),
                    min_df=params["min_df"],
                    max_features=params["max_features"],
                    sublinear_tf=params["sublinear_tf"],
                    lowercase=True,
                ),
            )
        )
    if params["class_weight"] not in CLASS_WEIGHTS:
        raise ValueError(f"tfidf_logreg param class_weight must be one of {sorted(CLASS_WEIGHTS)}, "
                         f"got {params['class_weight']!r}")
    classifier = LogisticRegression(C=params["C"], max_iter=params["max_iter"], random_state=seed,
                                    class_weight=CLASS_WEIGHTS[params["class_weight"]])
    # One branch goes in directly: FeatureUnion's parallel wrapper and sparse stacking cost about
    # 0.5 ms per predict call, which a server answering small batches pays on every batch.
    features_step = features[0][1] if len(features) == 1 else FeatureUnion(features)
    return Pipeline([("features", features_step), ("classifier", classifier)])


class TfidfPredictor(ClassifierPredictor):
    def __init__(self, pipeline: Pipeline, config: dict[str, Any], labels: Sequence[str], metadata=None):
        super().__init__("tfidf_logreg", config, labels, metadata)
        self.pipeline = pipeline
        # The pipeline's class order must be the bundle's label order: predict_proba columns follow it.
        classes = [str(c) for c in pipeline.classes_]
        if classes != self.labels:
            raise ValueError(f"pipeline classes {classes} differ from labels {self.labels}")
        # The same probabilities without scikit-learn's per-call overhead (components/models/tfidf_inference.py).
        self._scorer = LinearTfidfScorer.from_pipeline(pipeline)

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        if len(texts) == 0:
            return np.zeros((0, len(self.labels)), dtype=np.float64)
        if self._scorer is not None:
            return self._scorer.predict_proba(texts)
        return self.pipeline.predict_proba(list(texts))

    def oov_shares(self, texts: Sequence[str]) -> list[float]:
        """The share of each text's words that the word vectoriser's fitted vocabulary lacks (a
        word dropped by min_df or max_features is unknown to the model too)."""
        words_of, vocabulary = self._vocabulary_words
        known = vocabulary.__contains__
        shares = []
        for text in texts:
            words = words_of(text)
            shares.append(share(len(words) - sum(map(known, words)), len(words)))  # map: lookups at C speed
        return shares

    def proba_and_oov(self, texts: Sequence[str]) -> tuple[np.ndarray, list[float]]:
        """A word-unigram model counts the OOV shares from the lookups its prediction makes anyway."""
        if self._scorer is None or self._scorer.oov_branch is None or len(texts) == 0:
            return super().proba_and_oov(texts)
        oov: list[float] = []
        return self._scorer.predict_proba(texts, oov), oov

    @cached_property
    def _vocabulary_words(self) -> tuple[Callable[[str], list[str]], dict[str, int]]:
        """The word vectoriser's words of a text, and the words its vocabulary holds (as unigrams)."""
        step = self.pipeline.steps[0][1]
        branches = [s for _, s in step.transformer_list] if isinstance(step, FeatureUnion) else [step]
        word = [v for v in branches if isinstance(v, TfidfVectorizer) and v.analyzer == "word"]
        if not word:
            raise NotImplementedError(f"{self.kind}: no word vectoriser, so no out-of-vocabulary share")
        return word_unigrams(word[0]), word[0].vocabulary_

    @cached_property
    def _explainer(self) -> LinearTfidfExplainer:
        # Built on the first explanation only: it keeps the feature names, which serving never needs.
        if self._scorer is None:
            raise NotImplementedError(
                f"{self.kind}: exact explanations need a TF-IDF + LogisticRegression pipeline, "
                f"not {[name for name, _ in self.pipeline.steps]}"
            )
        return LinearTfidfExplainer(self._scorer)

    def attribute(self, texts: Sequence[str]) -> list[LinearAttribution]:
        """Exact linear contributions per word (components/explain/linear.py)."""
        return self._explainer.attribute(texts)

    def _save_files(self, folder: Path) -> None:
        joblib.dump(self.pipeline, folder / PIPELINE_FILE)

    @classmethod
    def _load(cls, folder: Path, manifest: dict[str, Any]) -> TfidfPredictor:
        pipeline = joblib.load(folder / PIPELINE_FILE)
        return cls(pipeline, manifest["config"], manifest["labels"], manifest.get("metadata"))


def train(
    spec: ModelSpec, data: ClassificationData, workdir: Path, on_metrics: MetricsCallback
) -> TfidfPredictor:
    params = {**DEFAULT_PARAMS, **spec.params}
    unknown = set(params) - set(DEFAULT_PARAMS)
    if unknown:
        raise ValueError(f"unknown tfidf_logreg params {sorted(unknown)}; known: {sorted(DEFAULT_PARAMS)}")
    pipeline = build_pipeline(params, spec.training.seed)
    started = time.perf_counter()
    pipeline.fit(data.train_texts, data.train_labels)
    fit_s = time.perf_counter() - started
    predictor = TfidfPredictor(pipeline, {"params": params}, data.labels)
    metrics = {"fit_s": fit_s}
    if data.val_texts:  # a refit on train+val (components/selection.py) has no validation split
        val = classification_metrics(data.val_labels, predictor.predict_proba(data.val_texts), data.labels)
        metrics |= {"val_accuracy": val["accuracy"], "val_macro_f1": val["macro_f1"]}
    on_metrics(metrics, 0)
    return predictor
