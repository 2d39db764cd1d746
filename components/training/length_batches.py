"""Batches of rows sorted by length (little padding in each), and class probabilities computed over them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from components.training.device import attention_for_varied_shapes, move_to_device


def length_sorted_batches(lengths: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    """Index batches over rows sorted by length (little padding per batch)."""
    order = torch.argsort(lengths, descending=True, stable=True)
    return list(order.split(batch_size))


@torch.no_grad()
def predict_in_length_batches(
    logits_fn: Callable[[Any], torch.Tensor],
    make_batch: Callable[[torch.Tensor], Any],
    lengths: torch.Tensor,
    batch_size: int,
    num_classes: int,
    device: torch.device,
) -> np.ndarray:
    """Class probabilities (N, C), float64: `logits_fn` on each length-sorted batch, on `device`."""
    out = np.zeros((len(lengths), num_classes), dtype=np.float64)
    with attention_for_varied_shapes(device):
        for idx in length_sorted_batches(lengths, batch_size):
            logits = logits_fn(move_to_device(make_batch(idx), device)).float()  # (b, C)
            out[idx.numpy()] = torch.softmax(logits, dim=-1).cpu().double().numpy()
    return out
