"""Integrated gradients on a torch classifier's token embeddings (Captum), summed back to words.

The path runs from a baseline input, where every real token is replaced by the padding token
(special tokens such as [CLS] and [SEP] and the padding itself stay), to the text, in
``n_steps`` steps; Captum's ``LayerIntegratedGradients`` integrates the gradient of the
predicted class's log-probability along it at the embedding layer's output. The log-probability
(not the raw logit) is explained because a softmax ignores what all logits share, and the
probability is what a deletion lowers. Completeness: a row's token attributions sum to
``log p(label | text) - log p(label | baseline)`` up to the integration error.

A token's attribution is the sum over its embedding dimensions; a word's is the sum over the
tokens whose characters overlap it (word pieces and byte-level pieces merge into whole words,
keyed as in ``words``). Tokens that overlap no word (punctuation, specials) are left out.
Cost: ``n_steps`` forward and backward passes per text, whatever its number of words.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
from captum.attr import LayerIntegratedGradients

from components.explain.words import TextWords, WordAttribution

DEFAULT_STEPS = 20
# Rows (texts x steps) in one forward/backward pass: bounds memory whatever the batch of texts.
ROWS_PER_PASS = 256

Span = tuple[int, int]  # a token's characters in the text, [start, end); (0, 0) for a special token


def token_attributions(
    model: nn.Module,
    embedding: nn.Module,
    ids: torch.Tensor,
    baseline_ids: torch.Tensor,
    targets: torch.Tensor,
    extra: tuple = (),
    n_steps: int = DEFAULT_STEPS,
) -> tuple[np.ndarray, np.ndarray]:
    """Per token (N, L), the attribution to the `targets` class's log-probability, and per row
    (N,) Captum's convergence delta (completeness error). `model(ids, *extra)` gives logits (N, C)."""
    if n_steps < 1:
        raise ValueError(f"n_steps must be at least 1, got {n_steps}")

    def log_proba(batch_ids: torch.Tensor, *args: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(model(batch_ids, *args).float(), dim=-1)  # (B, C)

    device = next(model.parameters()).device
    ig = LayerIntegratedGradients(log_proba, embedding)
    # cuDNN's RNN refuses a backward pass in eval mode; the native kernels do not.
    with torch.backends.cudnn.flags(enabled=False):
        attributions, delta = ig.attribute(
            ids.to(device),
            baselines=baseline_ids.to(device),
            target=targets.to(device),
            additional_forward_args=tuple(a.to(device) for a in extra),
            n_steps=n_steps,
            internal_batch_size=max(n_steps, ROWS_PER_PASS),
            return_convergence_delta=True,
        )  # (N, L, D), (N,)
    return attributions.sum(dim=-1).detach().cpu().double().numpy(), delta.detach().cpu().double().numpy()


def word_scores(text: str, spans: Sequence[Span], scores: Sequence[float]) -> dict[str, float]:
    """Token scores summed per word key; a token overlapping several words is shared equally."""
    words = TextWords(text)
    owner: list[str | None] = [None] * len(text)  # character -> the key of the word it is in
    for start, end, key in words.matches:
        owner[start:end] = [key] * (end - start)
    result: dict[str, float] = {}
    for (start, end), score in zip(spans, scores, strict=False):
        keys = list(dict.fromkeys(k for k in owner[start:end] if k is not None))
        for key in keys:
            result[key] = result.get(key, 0.0) + float(score) / len(keys)
    return result


def integrated_gradients(
    model: nn.Module,
    embedding: nn.Module,
    texts: Sequence[str],
    predict_proba: Callable[[Sequence[str]], np.ndarray],
    encode: Callable[[list[str]], tuple[torch.Tensor, torch.Tensor, tuple, list[list[Span]]]],
    n_steps: int = DEFAULT_STEPS,
) -> list[WordAttribution]:
    """One WordAttribution per text, for the class `predict_proba` predicts.

    `encode(texts)` gives the model's input ids (N, L), the baseline ids (N, L), the other forward
    arguments (lengths or an attention mask) and each row's token spans (in the text's characters).
    """
    texts = list(texts)
    if not texts:
        return []
    proba = predict_proba(texts)  # (N, C): the label and probability the service reports
    labels = proba.argmax(axis=1)
    results: list[WordAttribution] = []
    chunk = max(1, ROWS_PER_PASS // n_steps)
    model.eval()
    for start in range(0, len(texts), chunk):
        part = texts[start : start + chunk]
        ids, baseline_ids, extra, spans = encode(part)
        targets = torch.as_tensor(labels[start : start + chunk], dtype=torch.long)
        scores, _ = token_attributions(model, embedding, ids, baseline_ids, targets, extra, n_steps)
        for i, text in enumerate(part):
            label = int(targets[i])
            results.append(
                WordAttribution(
                    label, float(proba[start + i, label]), "integrated_gradients",
                    word_scores(text, spans[i], scores[i]), TextWords(text).shown,
                )
            )  # fmt: skip
    return results
