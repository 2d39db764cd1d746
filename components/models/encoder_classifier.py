"""The ``pretrained`` kind's network: a Hugging Face encoder, pooled, with a classification head."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn as nn


def load_encoder(source: str | Path, **kwargs: Any):
    """The Hugging Face encoder in float32, whatever dtype its weights were saved in.

    Recent `transformers` load a checkpoint in its saved dtype; many hub models are saved in
    bf16 or fp16, and fine-tuning those weights directly loses AdamW's small updates. The fit
    loop keeps float32 weights and gets bf16 speed from autocast on CUDA instead.
    """
    from transformers import AutoModel

    return AutoModel.from_pretrained(source, dtype=torch.float32, **kwargs)


class EncoderClassifier(nn.Module):
    """A Hugging Face encoder, pooled over the real tokens, then dropout and a linear head."""

    def __init__(self, encoder: nn.Module, num_classes: int, dropout: float = 0.1, pooling: str = "mean"):
        super().__init__()
        self.encoder = encoder
        self.pooling = pooling
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(encoder.config.hidden_size, num_classes)

    def features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """input_ids, attention_mask (B, T) -> pooled features (B, H)."""
        hidden = self.encoder(
            input_ids=input_ids, attention_mask=attention_mask
        ).last_hidden_state  # (B, T, H)
        if self.pooling == "cls":
            return hidden[:, 0]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)  # (B, H)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(input_ids, attention_mask)))  # (B, C)


class FeatureHead(nn.Module):
    """The classifier's own dropout + head, trained on cached features (frozen encoder)."""

    def __init__(self, classifier: EncoderClassifier):
        super().__init__()
        self.dropout = classifier.dropout
        self.head = classifier.head  # the same module: training this trains the classifier's head

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(features))  # (B, C)


def encoder_layers(encoder: nn.Module) -> nn.ModuleList:
    """The encoder's stack of transformer layers (the longest ModuleList: BERT's encoder.layer, ...)."""
    lists = [m for m in encoder.modules() if isinstance(m, nn.ModuleList)]
    if not lists:
        raise ValueError(f"cannot find the layer stack of {type(encoder).__name__}")
    return max(lists, key=len)


def freeze_encoder(encoder: nn.Module, train_layers: int | str) -> None:
    """Leave only the last `train_layers` transformer layers trainable ('all': everything)."""
    if train_layers == "all":
        encoder.requires_grad_(True)
        return
    encoder.requires_grad_(False)
    layers = encoder_layers(encoder)
    if train_layers > len(layers):
        raise ValueError(f"train_layers={train_layers} but the encoder has {len(layers)} layers")
    for layer in list(layers)[len(layers) - train_layers :] if train_layers else []:
        layer.requires_grad_(True)
