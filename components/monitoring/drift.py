"""Drift between served traffic (inference-log records) and the champion's own validation data.

The reference is what the champion does on its held-out validation split, written as the
records the service logs: predicted label, the predicted class's probability, text length,
out-of-vocabulary share and the text. A window of logged traffic is compared with it signal
by signal, each with a test from scipy:

- predicted-label distribution: Pearson's chi-square on the 2 x labels table of counts;
- confidence, text length, OOV share: two-sample Kolmogorov-Smirnov;
- the texts themselves: MMD between MiniLM sentence embeddings (Gaussian kernel, median
  bandwidth), its p-value from `scipy.stats.permutation_test`. It needs the logged texts, so
  it is skipped, and the report says so, when the service does not record them.

Holm's step-down correction turns the p-values into one decision at `alpha` for the whole
window, so in-distribution traffic raises an alarm in about `alpha` of the windows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from components.config import MonitoringSpec

LABEL, CONFIDENCE, TEXT_CHARS, OOV_SHARE, TEXT = "label", "confidence", "text_chars", "oov_share", "text"
EMBEDDING = "embedding"
NUMERIC_SIGNALS = (CONFIDENCE, TEXT_CHARS, OOV_SHARE)
REQUIRED_COLUMNS = (LABEL, *NUMERIC_SIGNALS)
SIGNALS = (LABEL, *NUMERIC_SIGNALS, EMBEDDING)

Embed = Callable[[Sequence[str]], np.ndarray]  # texts -> (N, D) sentence embeddings


@dataclass(frozen=True)
class SignalTest:
    """One signal's test: its statistic and p-value, Holm's adjusted p-value, and whether it drifted."""

    signal: str
    test: str
    statistic: float | None = None
    p_value: float | None = None
    adjusted_p: float | None = None
    drifted: bool = False
    note: str = ""  # why the test was skipped, or what its statistic means


@dataclass(frozen=True)
class DriftReport:
    """The window's verdict: `drift` when any adjusted p-value is at most `alpha`, and why."""

    drift: bool
    window: int
    reference: int
    alpha: float
    signals: list[SignalTest]
    reasons: list[str]

    def p_values(self) -> dict[str, float | None]:
        return {s.signal: s.p_value for s in self.signals}

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"p_values": self.p_values()}


# --------------------------------------------------------------------------- records


def reference_records(predictor, texts: Sequence[str], spec: MonitoringSpec) -> pd.DataFrame:
    """The champion's records on (a seeded sample of at most `spec.reference_size` of) `texts`,
    with the inference log's columns: what the service would have logged for them."""
    texts = list(texts)
    if len(texts) > spec.reference_size:
        keep = np.sort(
            np.random.default_rng(spec.seed).choice(len(texts), spec.reference_size, replace=False)
        )
        texts = [texts[i] for i in keep]
    proba = np.asarray(predictor.predict_proba(texts))  # (N, C)
    best = proba.argmax(axis=1)
    return pd.DataFrame(
        {
            LABEL: [predictor.labels[i] for i in best],
            CONFIDENCE: proba[np.arange(len(texts)), best],
            TEXT_CHARS: [len(text) for text in texts],
            OOV_SHARE: _oov_shares(predictor, texts),
            TEXT: texts,
        }
    )


def _oov_shares(predictor, texts: list[str]) -> list[float | None]:
    # A kind that cannot tell logs null, as the service does; the OOV test is then skipped.
    try:
        return list(predictor.oov_shares(texts))
    except NotImplementedError:
        return [None] * len(texts)


def check_records(frame: pd.DataFrame, what: str) -> None:
    """Raise ValueError naming the column (and row) when `frame` cannot be compared."""
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(
            f"{what}: missing column(s) {missing}; the drift tests need {list(REQUIRED_COLUMNS)}"
        )
    if frame[LABEL].isna().any():
        raise ValueError(
            f"{what}: column 'label' is empty in row {int(np.flatnonzero(frame[LABEL].isna())[0])}"
        )
    for column in NUMERIC_SIGNALS:
        values = pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=float)
        bad = ~np.isfinite(values)
        if column == OOV_SHARE:  # null for a model that cannot tell; any other value must be a number
            bad &= frame[column].notna().to_numpy()
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"{what}: column {column!r} row {row} is {frame[column].iloc[row]!r}, not a finite number"
            )


# --------------------------------------------------------------------------- tests


def label_test(reference: Sequence[str], window: Sequence[str]) -> SignalTest:
    """Chi-square test of homogeneity on the predicted-label counts of the two samples."""
    labels = sorted(set(reference) | set(window))
    if len(labels) < 2:
        return SignalTest(LABEL, "chi-square", 0.0, 1.0, note="both samples hold one and the same label")
    ref, win = pd.Series(list(reference)), pd.Series(list(window))
    table = np.array(
        [[int((ref == label).sum()) for label in labels], [int((win == label).sum()) for label in labels]]
    )
    result = stats.chi2_contingency(table, correction=False)
    shares = ", ".join(f"{label} {c / len(win):.0%}" for label, c in zip(labels, table[1], strict=True) if c)
    return SignalTest(
        LABEL, "chi-square", float(result.statistic), float(result.pvalue), note=f"window: {shares}"
    )


def distribution_test(signal: str, reference: np.ndarray, window: np.ndarray) -> SignalTest:
    """Two-sample Kolmogorov-Smirnov test of one numeric signal (null values left out)."""
    reference, window = reference[~np.isnan(reference)], window[~np.isnan(window)]
    if len(reference) < 2 or len(window) < 2:
        return SignalTest(signal, "kolmogorov-smirnov", note="skipped: the model records no value for it")
    result = stats.ks_2samp(reference, window)
    note = f"median {np.median(reference):.3g} in the reference, {np.median(window):.3g} in the window"
    return SignalTest(signal, "kolmogorov-smirnov", float(result.statistic), float(result.pvalue), note=note)


def mmd_test(reference: np.ndarray, window: np.ndarray, permutations: int, seed: int) -> SignalTest:
    """MMD² (biased) between two embedding samples with a Gaussian kernel; permutation p-value.

    The bandwidth is the median squared distance of the pooled sample, which does not depend
    on how the pool is split, so the permutation test stays exact.
    """
    pooled = np.vstack([reference, window]).astype(np.float64)  # (N, D)
    norms = (pooled**2).sum(axis=1)
    squared = np.clip(norms[:, None] + norms[None, :] - 2.0 * pooled @ pooled.T, 0.0, None)  # (N, N)
    bandwidth = float(np.median(squared[np.triu_indices(len(pooled), k=1)])) or 1.0
    kernel = np.exp(-squared / bandwidth)

    def statistic(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
        # x, y: index arrays (..., n), (..., m) into the pool; weights w give MMD² = w K wᵀ.
        x, y = np.atleast_2d(x).astype(int), np.atleast_2d(y).astype(int)
        weights = np.zeros((x.shape[0], len(pooled)))  # (B, N)
        np.put_along_axis(weights, x, 1.0 / x.shape[1], axis=1)
        np.put_along_axis(weights, y, -1.0 / y.shape[1], axis=1)
        return ((weights @ kernel) * weights).sum(axis=1)  # (B,)

    indices = (np.arange(len(reference)), np.arange(len(reference), len(pooled)))
    result = stats.permutation_test(
        indices,
        statistic,
        permutation_type="independent",
        vectorized=True,
        n_resamples=permutations,
        alternative="greater",
        batch=500,
        rng=seed,
    )
    return SignalTest(
        EMBEDDING,
        "mmd-permutation",
        float(np.squeeze(result.statistic)),
        float(result.pvalue),
        note=f"{len(window)} texts against {len(reference)}",
    )


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (reject where adjusted <= alpha). scipy has only FDR
    corrections (`false_discovery_control`), which do not bound the family-wise alarm rate."""
    p = np.asarray(p_values, dtype=float)
    adjusted = np.empty_like(p)
    running = 0.0
    for rank, index in enumerate(np.argsort(p)):
        running = max(running, min(1.0, (len(p) - rank) * p[index]))
        adjusted[index] = running
    return adjusted


def detect_drift(
    reference: pd.DataFrame, window: pd.DataFrame, spec: MonitoringSpec, embed: Embed | None = None
) -> DriftReport:
    """Compare a window of logged records with the reference records, signal by signal.

    The embedding test runs when `embed` is given and the window holds at least
    `spec.min_texts` texts; otherwise it is listed as skipped, with the reason.
    """
    check_records(reference, "reference")
    check_records(window, "window")
    if len(reference) < 2 or len(window) < 2:
        raise ValueError(
            f"drift needs at least 2 records on each side (reference {len(reference)}, window {len(window)})"
        )
    tests = [label_test(reference[LABEL].astype(str).tolist(), window[LABEL].astype(str).tolist())]
    tests += [
        distribution_test(c, reference[c].to_numpy(dtype=float), window[c].to_numpy(dtype=float))
        for c in NUMERIC_SIGNALS
    ]
    skipped = _embedding_skip_reason(reference, window, spec, embed)
    if skipped:
        tests.append(SignalTest(EMBEDDING, "mmd-permutation", note=f"skipped: {skipped}"))
    else:
        ref_texts = reference[TEXT].dropna().astype(str).tolist()
        win_texts = window[TEXT].dropna().astype(str).tolist()
        tests.append(mmd_test(embed(ref_texts), embed(win_texts), spec.permutations, spec.seed))

    ran = [t for t in tests if t.p_value is not None]
    adjusted = dict(zip((t.signal for t in ran), holm([t.p_value for t in ran]), strict=True))
    tests = [
        t
        if t.p_value is None
        else SignalTest(
            **(
                asdict(t)
                | {"adjusted_p": float(adjusted[t.signal]), "drifted": bool(adjusted[t.signal] <= spec.alpha)}
            )
        )
        for t in tests
    ]
    reasons = [
        f"{t.signal}: {t.test} {t.statistic:.3g}, p={t.p_value:.2g} (Holm {t.adjusted_p:.2g} <= "
        f"alpha {spec.alpha}); {t.note}"
        for t in tests
        if t.drifted
    ]
    reasons += [f"{t.signal}: {t.note}" for t in tests if t.p_value is None]
    return DriftReport(
        drift=any(t.drifted for t in tests),
        window=len(window),
        reference=len(reference),
        alpha=spec.alpha,
        signals=tests,
        reasons=reasons,
    )


def _embedding_skip_reason(
    reference: pd.DataFrame, window: pd.DataFrame, spec: MonitoringSpec, embed: Embed | None
) -> str | None:
    if embed is None:
        return "no sentence embedder given"
    texts = int(window[TEXT].notna().sum()) if TEXT in window.columns else 0
    if texts < spec.min_texts:
        return (
            f"the window holds {texts} logged texts, fewer than {spec.min_texts} "
            "(the service records texts only with MAAS_LOG_TEXTS=1)"
        )
    if TEXT not in reference.columns or int(reference[TEXT].notna().sum()) < spec.min_texts:
        return "the reference holds too few texts"
    return None


# --------------------------------------------------------------------------- embeddings


class SentenceEmbedder:
    """MiniLM-L6 sentence embeddings (mean-pooled over the real tokens, unit length), remembered
    per text so a reference embedded once costs nothing the next time. Loads on first use."""

    def __init__(self, max_tokens: int, batch_size: int = 32, folder: str | Path | None = None):
        self.max_tokens, self.batch_size, self.folder = max_tokens, batch_size, folder
        self._model = self._tokenizer = None
        self._cache: dict[str, np.ndarray] = {}

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        missing = [t for t in dict.fromkeys(texts) if t not in self._cache]
        if missing:
            self._cache.update(zip(missing, self._encode(missing), strict=True))
        return np.stack([self._cache[t] for t in texts]) if texts else np.zeros((0, 0))

    def _encode(self, texts: list[str]) -> np.ndarray:
        from components.models.encoder_classifier import EncoderClassifier, load_encoder
        from components.models.pretrained import default_model_folder, encode_features, tokenize

        if self._model is None:
            from transformers import AutoTokenizer

            folder = self.folder or default_model_folder()
            self._tokenizer = AutoTokenizer.from_pretrained(folder)
            # The classifier's pooling, without using its (untrained, one-class) head.
            self._model = EncoderClassifier(load_encoder(folder), num_classes=1, pooling="mean")
        ids, mask = tokenize(self._tokenizer, texts, self.max_tokens)
        features = encode_features(self._model, ids, mask, self.batch_size).numpy()  # (N, H)
        return features / np.clip(np.linalg.norm(features, axis=1, keepdims=True), 1e-12, None)
