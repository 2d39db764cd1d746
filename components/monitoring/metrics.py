"""The service's prediction metrics for Prometheus: confidence histogram, label counts, dropped log records.

They are prometheus_client objects (BentoML 1.4 deprecates ``bentoml.metrics`` in favour of
prometheus_client itself, and its ``/metrics`` collects every metric of the worker processes).
``prediction_metrics()`` creates them on its first call, once per process: under ``bentoml serve``
that is in the worker, after BentoML has set up Prometheus' multiprocess folder (a metric created
before that, at import time, would never show), and a process that builds the service several
times (the tests) does not register the same names twice.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

CONFIDENCE = "maas_prediction_confidence"
LABELS = "maas_predicted_label"  # exposed as maas_predicted_label_total
DROPPED = "maas_inference_log_dropped_records"  # exposed as ..._total
# Finer near 1: a confident model lives there, and a drift shows first as mass leaving the top buckets.
CONFIDENCE_BUCKETS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)


@dataclass(frozen=True)
class PredictionMetrics:
    confidence: Any  # Histogram, by endpoint
    labels: Any  # Counter, by endpoint and label
    dropped: Any  # Counter

    def observe(self, endpoint: str, labels: Sequence[str], confidences: Sequence[float]) -> None:
        """Count a batch's predictions: one histogram sample per text, one counter step per label."""
        histogram = self.confidence.labels(endpoint=endpoint)
        for confidence in confidences:
            histogram.observe(confidence)
        for label, count in Tally(labels).items():
            self.labels.labels(endpoint=endpoint, label=label).inc(count)


@cache
def prediction_metrics() -> PredictionMetrics:
    """This process's prediction metrics (created on the first call)."""
    from prometheus_client import Counter, Histogram  # imported late: see the module docstring

    return PredictionMetrics(
        confidence=Histogram(
            CONFIDENCE,
            "Probability of the predicted label, per text",
            labelnames=("endpoint",),
            buckets=CONFIDENCE_BUCKETS,
        ),
        labels=Counter(LABELS, "Texts per predicted label", labelnames=("endpoint", "label")),
        dropped=Counter(DROPPED, "Inference log records lost (the writer fell behind, or a write failed)"),
    )


GENERATIONS = "maas_generations_in_progress"


@cache
def generations_in_progress() -> Any:
    """This process's gauge of generations running on the model thread (streamed or not)."""
    from prometheus_client import Gauge  # imported late: see the module docstring

    # livesum: the sum over the live worker processes, as Prometheus' multiprocess mode reports it.
    return Gauge(GENERATIONS, "Generations running now (streamed or not)", multiprocess_mode="livesum")
