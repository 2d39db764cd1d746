"""Train one candidate from its ModelSpec: the single entry point flows call.

Each model kind has a ``train(spec, data, workdir, on_metrics) -> Predictor`` function;
`data` is ClassificationData or CorpusData, `workdir` is where checkpoints may go.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from components.config import ModelSpec
from components.data.dataset import ClassificationData, CorpusData
from components.predictor import Predictor
from components.training.callbacks import MetricsCallback, no_metrics

TRAINERS: dict[str, str] = {
    "tfidf_logreg": "components.models.tfidf:train",
    "lstm": "components.models.neural_classifier:train",
    "transformer": "components.models.neural_classifier:train",
    "pretrained": "components.models.pretrained:train",
    "gpt": "components.models.lm_predictor:train",
    "lstm_lm": "components.models.lm_predictor:train",
}


def train_candidate(
    spec: ModelSpec,
    data: ClassificationData | CorpusData,
    workdir: str | Path,
    on_metrics: MetricsCallback = no_metrics,
) -> Predictor:
    module_name, function_name = TRAINERS[spec.kind].split(":")
    trainer = getattr(importlib.import_module(module_name), function_name)
    return trainer(spec, data, Path(workdir), on_metrics)
