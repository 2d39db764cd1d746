"""Language-model metrics over a whole text: loss, perplexity and bits per character.

The text's token ids are cut into consecutive windows of ``block_size`` targets; each target
is scored exactly once, with the tokens before it in its window as context (the last,
partial window takes a full window of context and scores only its new targets). No
randomness, so the same model and text always give the same numbers.

Bits per character is comparable across tokenizers: the total loss in nats over every
predicted token, divided by the characters those tokens spell, divided by ln 2. (The first
token has no context and is not scored; its characters are left out of the count.)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

import torch
import torch.nn.functional as F


class _Tokenizer(Protocol):
    def encode(self, text: str) -> list[int]: ...
    def decode(self, ids: Sequence[int]) -> str: ...


@torch.no_grad()
def token_nats(
    model: torch.nn.Module, ids: torch.Tensor, block_size: int, batch_size: int = 32
) -> tuple[float, int]:
    """Total cross-entropy (nats) over targets ids[1:], and how many targets. ids: (N,).

    `model(x)` must return logits (B, T, V) first (as GPT and LSTMLanguageModel do).
    """
    ids = ids.view(-1)
    n_targets = ids.numel() - 1
    if n_targets < 1:
        raise ValueError("need at least 2 tokens to evaluate a language model")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=device)

    def score(x: torch.Tensor, y: torch.Tensor, keep_last: int | None = None) -> None:
        nonlocal total
        logits = model(x.to(device))[0].float()  # (B, T, V)
        y = y.to(device)
        if keep_last is not None:
            logits, y = logits[:, -keep_last:], y[:, -keep_last:]
        total += F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1), reduction="sum").double()

    T = min(block_size, n_targets)
    n_full = n_targets // T
    x_all = ids[: n_full * T].view(n_full, T)  # (n_full, T)
    y_all = ids[1 : n_full * T + 1].view(n_full, T)
    for i in range(0, n_full, batch_size):
        score(x_all[i : i + batch_size], y_all[i : i + batch_size])
    rest = n_targets - n_full * T
    if rest:  # the tail: a full window of context ending at the last token, scoring its last `rest` targets
        score(ids[-T - 1 : -1].view(1, T), ids[-T:].view(1, T), keep_last=rest)
    model.train(was_training)
    return float(total.item()), n_targets


def evaluate_text(
    model: torch.nn.Module,
    tokenizer: _Tokenizer,
    text: str,
    block_size: int,
    batch_size: int = 32,
    max_chars: int | None = None,
) -> dict[str, float]:
    """loss (nats per token), perplexity, bits_per_char, tokens and chars for `text`.

    `max_chars` evaluates only the start of a long text (to bound the cost).
    """
    if max_chars is not None:
        text = text[:max_chars]
    ids = torch.tensor(tokenizer.encode(text), dtype=torch.long)
    nats, n_tokens = token_nats(model, ids, block_size, batch_size)
    n_chars = max(1, len(text) - len(tokenizer.decode(ids[:1].tolist())))
    loss = nats / n_tokens
    return {
        "loss": loss,
        "perplexity": math.exp(loss),
        "bits_per_char": nats / n_chars / math.log(2),
        "tokens": float(n_tokens),
        "chars": float(n_chars),
    }
