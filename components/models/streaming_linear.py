"""Hashed TF-IDF + SGD: the linear baseline that trains out of core, for datasets too big for memory.

The in-memory baseline (components/models/tfidf.py) keeps a vocabulary dict and the whole
TF-IDF matrix; this one holds neither. scikit-learn's ``HashingVectorizer`` maps n-grams to
``n_features`` columns without a vocabulary, the document frequencies are summed chunk by
chunk in one streaming pass (then set as a ``TfidfTransformer``'s ``idf_``, the same numbers
its own ``fit`` gives on the whole matrix), and ``SGDClassifier.partial_fit`` learns from one
block of rows at a time, for ``passes`` passes.

The texts are read once. The hashed counts of each chunk go to a spill folder under the
workdir (CSR arrays, read back memory-mapped), so later passes do not tokenise again. Every
row gets a key from a hash of (seed, row number); a training block is the rows whose keys fall
in one slice of the key range, in key order. Blocks are therefore uniform samples of the
whole split, whatever the source order (BBC's rows come grouped by class), and the sequence
SGD sees does not depend on ``chunk_rows``: the same seed and passes give the same model.

Memory is bounded by ``chunk_rows`` (texts read at once) and ``block_rows`` (rows learnt at
once), not by the dataset. The bundle is a scikit-learn pipeline (hasher, TF-IDF transform,
classifier) saved with joblib; explanations use the default word occlusion.
"""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import scipy.sparse as sp
from sklearn.feature_extraction.text import HashingVectorizer, TfidfTransformer
from sklearn.linear_model import SGDClassifier
from sklearn.pipeline import FeatureUnion, Pipeline

from components.config import ModelSpec
from components.data.dataset import ClassificationData, iter_split_batches
from components.evaluation.classification import classification_metrics
from components.predictor import ClassifierPredictor
from components.training.callbacks import MetricsCallback, no_metrics

log = logging.getLogger(__name__)

KIND = "hashing_sgd"
PIPELINE_FILE = "pipeline.joblib"

DEFAULT_PARAMS: dict[str, Any] = {
    "n_features": 2**20,
    "word_ngrams": [1, 2],
    "char_ngrams": None,  # char_wb n-grams in a second hashed branch; null leaves them out
    "sublinear_tf": True,
    "loss": "log_loss",  # log_loss or modified_huber: both give predict_proba
    "alpha": 1e-6,
    "passes": 5,
    "chunk_rows": 20_000,  # texts read and hashed at once
    "block_rows": 50_000,  # rows in one partial_fit call
}
LOSSES = ("log_loss", "modified_huber")
Chunk = tuple[Sequence[str], Sequence[str]]  # (texts, labels)


def resolve_params(params: dict[str, Any]) -> dict[str, Any]:
    """The defaults overridden by `params`; unknown keys and bad values are errors."""
    unknown = set(params) - set(DEFAULT_PARAMS)
    if unknown:
        raise ValueError(f"unknown {KIND} params {sorted(unknown)}; known: {sorted(DEFAULT_PARAMS)}")
    resolved = {**DEFAULT_PARAMS, **params}
    if resolved["loss"] not in LOSSES:
        raise ValueError(f"params.loss must be one of {LOSSES} (they give probabilities), got {resolved['loss']!r}")
    for key in ("n_features", "passes", "chunk_rows", "block_rows"):
        if not isinstance(resolved[key], int) or resolved[key] < 1:
            raise ValueError(f"params.{key} must be a positive integer, got {resolved[key]!r}")
    return resolved


# ------------------------------------------------------------------------------------------
# features
# ------------------------------------------------------------------------------------------
def build_hasher(params: dict[str, Any]) -> HashingVectorizer | FeatureUnion:
    """Raw n-gram counts in hashed columns (weighting and normalisation come after); with
    char n-grams, a second branch of `n_features` columns beside the words'."""
    common = {"n_features": params["n_features"], "alternate_sign": False, "norm": None,
              "lowercase": True, "dtype": np.float32}
    word = HashingVectorizer(ngram_range=tuple(params["word_ngrams"]), **common)
    if not params.get("char_ngrams"):
        return word
    char = HashingVectorizer(analyzer="char_wb", ngram_range=tuple(params["char_ngrams"]), **common)
    return FeatureUnion([("word", word), ("char", char)])


def hashed_width(params: dict[str, Any]) -> int:
    return params["n_features"] * (2 if params.get("char_ngrams") else 1)


def document_frequencies(counts: sp.csr_matrix) -> np.ndarray:
    """Per column, the rows where it is non-zero (`counts` in canonical CSR: one entry per cell)."""
    return np.bincount(counts.indices, minlength=counts.shape[1])


def idf_transformer(df: np.ndarray, n_rows: int, sublinear_tf: bool) -> TfidfTransformer:
    """A TfidfTransformer whose idf_ is computed from summed document frequencies, with the
    smoothing its own ``fit`` uses: ln((1 + n) / (1 + df)) + 1."""
    transformer = TfidfTransformer(sublinear_tf=sublinear_tf, smooth_idf=True, norm="l2")
    transformer.idf_ = np.log((n_rows + 1.0) / (df.astype(np.float64) + 1.0)) + 1.0
    return transformer


def row_keys(seed: int, start: int, n: int) -> np.ndarray:
    """A pseudo-random uint64 per row number (splitmix64 of seed and row): the training order."""
    with np.errstate(over="ignore"):
        z = np.arange(start, start + n, dtype=np.uint64) + np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


# ------------------------------------------------------------------------------------------
# the spill: hashed counts per chunk, sorted by row key
# ------------------------------------------------------------------------------------------
class _Spill:
    """Hashed chunks on disk; ``block(lo, hi)`` gathers the rows whose keys lie in [lo, hi)."""

    FIELDS = ("indptr", "indices", "data", "keys", "labels")

    def __init__(self, folder: Path, n_features: int):
        self.folder, self.n_features, self.chunks = folder, n_features, 0

    def add(self, counts: sp.csr_matrix, keys: np.ndarray, labels: np.ndarray) -> None:
        order = np.argsort(keys, kind="stable")
        counts = counts[order]
        arrays = {"indptr": counts.indptr.astype(np.int64), "indices": counts.indices.astype(np.int32),
                  "data": counts.data, "keys": keys[order], "labels": labels[order]}
        for name, array in arrays.items():
            np.save(self.folder / f"{self.chunks:06d}-{name}.npy", array)
        self.chunks += 1

    def _arrays(self, chunk: int) -> dict[str, np.ndarray]:
        return {name: np.load(self.folder / f"{chunk:06d}-{name}.npy", mmap_mode="r") for name in self.FIELDS}

    def block(self, lo: int, hi: int) -> tuple[sp.csr_matrix, np.ndarray]:
        """Counts and label ids of the rows with lo <= key < hi, in key order."""
        parts, labels, keys = [], [], []
        for chunk in range(self.chunks):
            a = self._arrays(chunk)
            first, last = np.searchsorted(a["keys"], [lo, hi])
            if first == last:
                continue
            start, stop = int(a["indptr"][first]), int(a["indptr"][last])
            indptr = np.asarray(a["indptr"][first : last + 1]) - start
            parts.append(sp.csr_matrix((np.asarray(a["data"][start:stop]), np.asarray(a["indices"][start:stop]),
                                        indptr), shape=(last - first, self.n_features)))
            labels.append(np.asarray(a["labels"][first:last]))
            keys.append(np.asarray(a["keys"][first:last]))
        if not parts:
            return sp.csr_matrix((0, self.n_features), dtype=np.float32), np.zeros(0, np.int64)
        order = np.argsort(np.concatenate(keys), kind="stable")
        return sp.vstack(parts, format="csr")[order], np.concatenate(labels)[order]


def key_ranges(n_rows: int, block_rows: int) -> list[tuple[int, int]]:
    """Equal slices of the uint64 key range, about `block_rows` rows each; [lo, hi) as Python ints."""
    blocks = max(1, math.ceil(n_rows / block_rows))
    edges = [(2**64 * b) // blocks for b in range(blocks + 1)]
    return list(zip(edges[:-1], edges[1:], strict=True))


# ------------------------------------------------------------------------------------------
# training
# ------------------------------------------------------------------------------------------
def fit_streaming(
    chunks: Iterable[Chunk],
    params: dict[str, Any],
    seed: int,
    spill_dir: Path,
    on_metrics: MetricsCallback = no_metrics,
) -> tuple[Pipeline, list[str]]:
    """Learn hashed TF-IDF + SGD from (texts, labels) chunks read once; returns (pipeline, labels).

    `params` are resolved ones (``resolve_params``). The spill folder is created under
    `spill_dir` and removed before returning.
    """
    hasher = build_hasher(params)
    spill_root = Path(tempfile.mkdtemp(prefix="hashed-", dir=spill_dir))
    try:
        spill = _Spill(spill_root, hashed_width(params))
        df = np.zeros(hashed_width(params), dtype=np.int64)
        label_ids: dict[str, int] = {}
        n_rows, started = 0, time.perf_counter()
        for texts, labels in chunks:
            counts = hasher.transform(list(texts))
            df += document_frequencies(counts)
            ids = np.fromiter((label_ids.setdefault(str(label), len(label_ids)) for label in labels),
                              np.int64, len(labels))
            spill.add(counts, row_keys(seed, n_rows, len(ids)), ids)
            n_rows += len(ids)
        if n_rows == 0:
            raise ValueError(f"{KIND}: the training split has no rows")
        hash_s = time.perf_counter() - started
        log.info("hashed %d training rows in %d chunks (%.1f s)", n_rows, spill.chunks, hash_s)

        labels = sorted(label_ids)
        if len(labels) < 2:
            raise ValueError(f"{KIND}: the training split has one label only ({labels}); a classifier needs two")
        # Spilled ids follow first appearance; the classifier learns the label strings, sorted.
        names = np.array(list(label_ids), dtype=object)
        tfidf = idf_transformer(df, n_rows, params["sublinear_tf"])
        classifier = SGDClassifier(loss=params["loss"], alpha=params["alpha"], random_state=seed)
        classes = np.array(labels, dtype=object)
        ranges = key_ranges(n_rows, params["block_rows"])
        for p in range(params["passes"]):
            pass_started = time.perf_counter()
            for index in np.random.default_rng([seed, p]).permutation(len(ranges)):
                counts, ids = spill.block(*ranges[index])
                if len(ids):
                    classifier.partial_fit(tfidf.transform(counts), names[ids], classes=classes)
            on_metrics({"pass_s": time.perf_counter() - pass_started}, p + 1)
        on_metrics({"hash_s": hash_s, "train_rows": float(n_rows)}, params["passes"])
    finally:
        shutil.rmtree(spill_root, ignore_errors=True)
    return Pipeline([("hash", hasher), ("tfidf", tfidf), ("classifier", classifier)]), labels


class HashingSGDPredictor(ClassifierPredictor):
    """The fitted hasher + TF-IDF + SGD pipeline behind the common Predictor interface."""

    def __init__(self, pipeline: Pipeline, config: dict[str, Any], labels: Sequence[str], metadata=None):
        super().__init__(KIND, config, labels, metadata)
        classes = [str(c) for c in pipeline.classes_]
        if classes != self.labels:
            raise ValueError(f"pipeline classes {classes} differ from labels {self.labels}")
        self.pipeline = pipeline

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        if len(texts) == 0:
            return np.zeros((0, len(self.labels)), dtype=np.float64)
        return self.pipeline.predict_proba(list(texts))

    def _save_files(self, folder: Path) -> None:
        joblib.dump(self.pipeline, folder / PIPELINE_FILE)

    @classmethod
    def _load(cls, folder: Path, manifest: dict[str, Any]) -> HashingSGDPredictor:
        pipeline = joblib.load(folder / PIPELINE_FILE)
        return cls(pipeline, manifest["config"], manifest["labels"], manifest.get("metadata"))


def list_chunks(texts: Sequence[str], labels: Sequence[str], rows: int) -> Iterator[Chunk]:
    for start in range(0, len(texts), rows):
        yield texts[start : start + rows], labels[start : start + rows]


def folder_chunks(folder: Path, split: str, rows: int) -> Iterator[Chunk]:
    """(texts, labels) chunks of one split of an ingested dataset folder, `rows` at a time."""
    for frame in iter_split_batches(folder, split, rows):
        yield frame["text"].astype(str).tolist(), frame["label"].astype(str).tolist()


def _finish(pipeline: Pipeline, labels: list[str], params: dict[str, Any], val: Iterable[Chunk],
            on_metrics: MetricsCallback, fit_s: float) -> HashingSGDPredictor:
    predictor = HashingSGDPredictor(pipeline, {"params": params}, labels)
    truth, probabilities = [], []
    for texts, chunk_labels in val:
        truth.extend(chunk_labels)
        probabilities.append(predictor.predict_proba(texts))
    metrics: dict[str, float] = {"fit_s": fit_s}
    if truth:
        scores = classification_metrics(truth, np.vstack(probabilities), labels)
        metrics |= {"val_accuracy": scores["accuracy"], "val_macro_f1": scores["macro_f1"]}
    on_metrics(metrics, params["passes"])
    return predictor


def train(spec: ModelSpec, data: ClassificationData, workdir: Path,
          on_metrics: MetricsCallback = no_metrics) -> HashingSGDPredictor:
    """The registry's trainer: the splits are in memory, the model still learns chunk by chunk."""
    params = resolve_params(spec.params)
    return _train(params, spec.training.seed, list_chunks(data.train_texts, data.train_labels, params["chunk_rows"]),
                  lambda: list_chunks(data.val_texts, data.val_labels, params["chunk_rows"]), workdir, on_metrics)


def train_from_folder(spec: ModelSpec, folder: str | Path, workdir: Path,
                      on_metrics: MetricsCallback = no_metrics) -> HashingSGDPredictor:
    """Train from an ingested dataset folder, reading its train and val splits in chunks."""
    params = resolve_params(spec.params)
    folder = Path(folder)
    return _train(params, spec.training.seed, folder_chunks(folder, "train", params["chunk_rows"]),
                  lambda: folder_chunks(folder, "val", params["chunk_rows"]), workdir, on_metrics)


def _train(params: dict[str, Any], seed: int, train_chunks: Iterable[Chunk], val_chunks: Callable[[], Iterable[Chunk]],
           workdir: Path, on_metrics: MetricsCallback) -> HashingSGDPredictor:
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    pipeline, labels = fit_streaming(train_chunks, params, seed, workdir, on_metrics)
    return _finish(pipeline, labels, params, val_chunks(), on_metrics, time.perf_counter() - started)
