"""Train one candidate from its ModelSpec: the single entry point flows call.

Each model kind names its ``train(spec, data, workdir, on_metrics) -> Predictor`` function
in ``components.models.registry``; `data` is ClassificationData or CorpusData, `workdir` is
where checkpoints may go.
"""

from __future__ import annotations

from pathlib import Path

from components.config import ModelSpec
from components.data.dataset import ClassificationData, CorpusData
from components.models.registry import model_kind
from components.predictor import Predictor
from components.training.callbacks import MetricsCallback, no_metrics


def train_candidate(
    spec: ModelSpec,
    data: ClassificationData | CorpusData,
    workdir: str | Path,
    on_metrics: MetricsCallback = no_metrics,
) -> Predictor:
    trainer = model_kind(spec.kind).trainer_function()
    return trainer(spec, data, Path(workdir), on_metrics)
