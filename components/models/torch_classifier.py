"""What the torch classifiers' predictors share: a tokenizer, the network in eval mode, its device."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from components.explain.gradients import DEFAULT_STEPS, Span, integrated_gradients
from components.explain.words import WordAttribution
from components.predictor import ClassifierPredictor
from components.training.device import model_device

EXPLAIN_METHODS = ("occlusion", "integrated_gradients")
# Kinds explained by integrated gradients by default: for the LSTM they were as faithful as
# occlusion at less than half its cost; elsewhere occlusion was as cheap and at least as faithful.
INTEGRATED_GRADIENTS_KINDS = frozenset({"lstm"})


class TorchClassifierPredictor(ClassifierPredictor):
    """A classifier whose network is a torch module; `batch_size` None lets the subclass choose.

    `explain_method` picks how `attribute` explains ("occlusion" or "integrated_gradients", each
    kind's default chosen by benchmarks/explain_faithfulness.py); set it on an instance to switch.
    """

    default_batch_size: int | None = None
    explain_method: str = "occlusion"  # set per kind in __init__
    ig_steps: int = DEFAULT_STEPS

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
        self.explain_method = "integrated_gradients" if kind in INTEGRATED_GRADIENTS_KINDS else "occlusion"

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

    def attribute(self, texts: Sequence[str]) -> list[WordAttribution]:
        if self.explain_method == "occlusion":
            return super().attribute(texts)
        if self.explain_method != "integrated_gradients":
            raise ValueError(f"explain_method must be one of {EXPLAIN_METHODS}, got {self.explain_method!r}")
        return integrated_gradients(
            self.model, self.embedding_layer(), texts, self.predict_proba, self.gradient_inputs, self.ig_steps
        )

    def embedding_layer(self) -> nn.Module:
        """The token embedding whose output integrated gradients attribute."""
        raise NotImplementedError(f"{self.kind}: no integrated gradients for this kind")

    def gradient_inputs(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor, tuple, list[list[Span]]]:
        """(ids, baseline ids, other forward args, token spans per text) as `integrated_gradients` wants."""
        raise NotImplementedError(f"{self.kind}: no integrated gradients for this kind")

    @abstractmethod
    def predict_texts(self, texts: list[str]) -> np.ndarray:
        """Probabilities (n, labels) of a non-empty list of texts (no gradients, the model in eval mode)."""
