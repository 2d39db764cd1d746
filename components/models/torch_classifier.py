"""What the torch classifiers' predictors share: a tokenizer, the network in eval mode, its device."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from components.predictor import ClassifierPredictor
from components.training.device import model_device


class TorchClassifierPredictor(ClassifierPredictor):
    """A classifier whose network is a torch module; `batch_size` None lets the subclass choose."""

    default_batch_size: int | None = None

    def __init__(
        self,
        kind: str,
        config: dict[str, Any],
        labels: Sequence[str],
        tokenizer: Any,
        model: nn.Module,
        metadata: dict[str, Any] | None = None,
        batch_size: int | None = None,
    ):
        super().__init__(kind, config, labels, metadata)
        self.tokenizer = tokenizer
        self.model = model.eval()
        self.batch_size = batch_size if batch_size is not None else self.default_batch_size

    @property
    def on_accelerator(self) -> bool:
        return model_device(self.model).type != "cpu"

    @property
    def max_length(self) -> int:
        return int(self.config["max_length"])

    @torch.no_grad()
    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        if not texts:
            return np.zeros((0, len(self.labels)), dtype=np.float64)
        self.model.eval()
        return self.predict_texts(texts)

    @abstractmethod
    def predict_texts(self, texts: list[str]) -> np.ndarray:
        """Probabilities (n, labels) of a non-empty list of texts (no gradients, the model in eval mode)."""
