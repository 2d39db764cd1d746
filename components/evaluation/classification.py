"""Classification metrics, the confusion matrix and inference latency.

Metrics are computed from probabilities so every model kind is scored the same way.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, log_loss, precision_recall_fscore_support


def classification_metrics(y_true: Sequence[str], proba: np.ndarray, labels: Sequence[str]) -> dict:
    """Accuracy, macro-F1, log loss and per-class precision/recall/F1 for string labels."""
    labels = list(labels)
    index = {label: i for i, label in enumerate(labels)}
    unknown = sorted(set(y_true) - set(index))
    if unknown:
        raise ValueError(f"labels {unknown} are not known to the model (it knows {labels})")
    y = np.array([index[label] for label in y_true])
    pred = proba.argmax(axis=1)
    precision, recall, f1, support = per_class_scores(y, pred, len(labels))
    return {
        "accuracy": float(accuracy_score(y, pred)),
        "macro_f1": float(f1.mean()),
        "log_loss": float(log_loss(y, _normalised(proba), labels=list(range(len(labels))))),
        "per_class": {
            label: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, label in enumerate(labels)
        },
        "confusion_matrix": confusion_matrix(y, pred, labels=list(range(len(labels)))).tolist(),
    }


def per_class_scores(
    y_true: np.ndarray, y_pred: np.ndarray, num_classes: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall, F1 and support of each class id 0..num_classes-1 (0 where undefined)."""
    return precision_recall_fscore_support(y_true, y_pred, labels=list(range(num_classes)), zero_division=0)


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> float:
    """Unweighted mean of per-class F1 over all classes (a class never seen nor predicted scores 0)."""
    return float(per_class_scores(y_true, y_pred, num_classes)[2].mean())


def _normalised(proba: np.ndarray) -> np.ndarray:
    """Rows that sum to one in float64 (float32 softmax rows miss by ~1e-7, which sklearn warns about)."""
    clipped = np.clip(np.asarray(proba, dtype=np.float64), 1e-12, 1.0)
    return clipped / clipped.sum(axis=1, keepdims=True)


def flat_metrics(metrics: dict, prefix: str) -> dict[str, float]:
    """Scalar metrics with a split prefix (`val_accuracy`, `test_f1_sport`) for a tracker."""
    flat = {f"{prefix}_{k}": v for k, v in metrics.items() if isinstance(v, float | int)}
    for label, scores in metrics.get("per_class", {}).items():
        for name in ("precision", "recall", "f1"):
            flat[f"{prefix}_{name}_{label}"] = scores[name]
    return flat


def plot_confusion_matrix(matrix: Sequence[Sequence[int]], labels: Sequence[str], path: Path, title: str) -> Path:
    """Write a confusion matrix PNG (counts in each cell; rows are true labels)."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers
    import matplotlib.pyplot as plt

    matrix = np.asarray(matrix)
    size = max(4.0, 0.8 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    threshold = matrix.max() / 2 if matrix.size else 0
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            color = "white" if matrix[i, j] > threshold else "black"
            ax.text(j, i, str(matrix[i, j]), ha="center", va="center", color=color)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def measure_latency(
    predict: Callable[[list[str]], object], texts: Sequence[str], repeats: int = 50, batch_size: int = 64
) -> dict[str, float]:
    """Per-text latency at batch size 1 (p50, p95 over `repeats` texts) and batched throughput."""
    sample = list(texts[:repeats]) or [""]
    predict(sample[:1])  # warm-up: lazy initialisation must not count
    single = []
    for text in sample:
        started = time.perf_counter()
        predict([text])
        single.append((time.perf_counter() - started) * 1000)
    batch = list(texts[:batch_size]) or sample
    started = time.perf_counter()
    predict(batch)
    batched_s = time.perf_counter() - started
    return {
        "latency_ms_p50": float(np.percentile(single, 50)),
        "latency_ms_p95": float(np.percentile(single, 95)),
        "batched_texts_per_s": len(batch) / batched_s if batched_s > 0 else float("inf"),
    }
