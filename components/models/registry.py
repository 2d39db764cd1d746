"""The one list of model kinds: each kind's task, trainer, predictor, network config class and flags.

Every other place (ModelSpec validation, ``train_candidate``, ``load_predictor``, the
training flow) asks this module. Entries name their code as ``"module:attribute"`` and
import it on first use, so that training or loading the TF-IDF baseline never imports
torch; this module itself imports nothing from the project (``components.config`` reads it).
Adding a model kind means adding one entry here.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any


def _resolve(reference: str) -> Any:
    module_name, attribute = reference.split(":")
    return getattr(importlib.import_module(module_name), attribute)


@dataclass(frozen=True)
class ModelKind:
    """One model kind. References are ``"module:attribute"`` strings, imported when asked for."""

    name: str
    task: str  # "classification" (texts -> label probabilities) or "generation" (a language model)
    trainer: str  # train(spec, data, workdir, on_metrics) -> Predictor
    predictor: str  # the Predictor subclass that loads the kind's bundle
    # The network's config dataclass; None where the model is not one network built from one
    # (the scikit-learn pipeline, the pretrained Hugging Face encoder).
    config: str | None = None
    network: str | None = None  # the nn.Module built as network(config)
    needs_torch: bool = True

    @property
    def is_language_model(self) -> bool:
        return self.task == "generation"

    def trainer_function(self) -> Any:
        return _resolve(self.trainer)

    def predictor_class(self) -> type:
        return _resolve(self.predictor)

    def config_class(self) -> type | None:
        return _resolve(self.config) if self.config else None

    def network_class(self) -> type | None:
        return _resolve(self.network) if self.network else None


KINDS: dict[str, ModelKind] = {
    kind.name: kind
    for kind in (
        ModelKind(
            "tfidf_logreg",
            "classification",
            trainer="components.models.tfidf:train",
            predictor="components.models.tfidf:TfidfPredictor",
            needs_torch=False,
        ),
        ModelKind(
            "lstm",
            "classification",
            trainer="components.models.neural_classifier:train",
            predictor="components.models.neural_classifier:NeuralClassifierPredictor",
            config="components.models.lstm:LSTMConfig",
            network="components.models.lstm:LSTMClassifier",
        ),
        ModelKind(
            "transformer",
            "classification",
            trainer="components.models.neural_classifier:train",
            predictor="components.models.neural_classifier:NeuralClassifierPredictor",
            config="components.models.transformer_encoder:TransformerConfig",
            network="components.models.transformer_encoder:TransformerClassifier",
        ),
        ModelKind(
            "pretrained",
            "classification",
            trainer="components.models.pretrained:train",
            predictor="components.models.pretrained:PretrainedPredictor",
        ),
        ModelKind(
            "hashing_sgd",
            "classification",
            trainer="components.models.streaming_linear:train",
            predictor="components.models.streaming_linear:HashingSGDPredictor",
            needs_torch=False,
        ),
        ModelKind(
            "ensemble",
            "classification",
            # Built from trained candidates by the pipeline (flows/ensemble.py); the trainer only refuses.
            trainer="components.models.ensemble:train",
            predictor="components.models.ensemble:EnsemblePredictor",
            # Its own code is numpy; a member that needs torch imports it when that member loads.
            needs_torch=False,
        ),
        ModelKind(
            "gpt",
            "generation",
            trainer="components.models.lm_predictor:train",
            predictor="components.models.lm_predictor:LanguageModelPredictor",
            config="components.models.gpt:GPTConfig",
            network="components.models.gpt:GPT",
        ),
        ModelKind(
            "lstm_lm",
            "generation",
            trainer="components.models.lm_predictor:train",
            predictor="components.models.lm_predictor:LanguageModelPredictor",
            config="components.models.lstm_lm:LSTMLMConfig",
            network="components.models.lstm_lm:LSTMLanguageModel",
        ),
        ModelKind(
            "pretrained_lm",
            "generation",
            # A Hugging Face causal LM, fine-tuned in full or with LoRA: no config dataclass of ours.
            trainer="components.models.pretrained_lm:train",
            predictor="components.models.pretrained_lm:PretrainedLMPredictor",
        ),
    )
}


def unknown_kind_message(name: object) -> str:
    return f"unknown model kind {name!r}; the known kinds are {', '.join(KINDS)}"


def model_kind(name: str) -> ModelKind:
    """The registered kind called `name`; an unknown name is a ValueError listing the known kinds."""
    if name not in KINDS:
        raise ValueError(unknown_kind_message(name))
    return KINDS[name]

