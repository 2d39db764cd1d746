"""Next-token sampling: temperature, top-k and top-p (nucleus), driven by a seeded ``torch.Generator``.

``make_sampler(...)`` validates the parameters once and returns a function from logits
(B, V) to token ids (B, 1) that the models' ``generate`` loops call each step. All the
randomness comes from the one generator, so the same seed (on the same device) gives the
same tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

Sampler = Callable[[torch.Tensor], torch.Tensor]
# Positive temperatures below this are computed as this: dividing logits by a far smaller one
# overflows to inf and the softmax to NaN. Greedy in practice; 0 is greedy by definition.
MIN_TEMPERATURE = 1e-3


def validate_sampling(max_new_tokens: int, temperature: float, top_k: int, top_p: float) -> None:
    """Raise ValueError naming the first parameter out of range."""
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
    if not isinstance(temperature, (int, float)) or not temperature >= 0 or temperature == float("inf"):
        raise ValueError(f"temperature must be a finite number >= 0 (0: greedy), got {temperature!r}")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
        raise ValueError(f"top_k must be an integer >= 0 (0 disables it), got {top_k!r}")
    if not isinstance(top_p, (int, float)) or not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1] (1 disables it), got {top_p!r}")


def make_generator(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator on `device`, seeded with `seed`, or from fresh entropy when seed is None."""
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(int(seed))
    return generator


def filter_logits(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """Scale by temperature and set logits outside the top-k / nucleus to -inf. logits: (B, V)."""
    logits = logits / temperature
    vocab = logits.size(-1)
    if 0 < top_k < vocab:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, sorted_idx = torch.sort(logits, dim=-1, descending=True)  # (B, V)
        sorted_probs = torch.softmax(sorted_logits, dim=-1)
        # Drop a token when the tokens before it already reach top_p; the most likely one always stays.
        drop_sorted = (sorted_probs.cumsum(dim=-1) - sorted_probs) >= top_p
        drop_sorted[:, 0] = False
        drop = drop_sorted.scatter(1, sorted_idx, drop_sorted)  # back to vocabulary order
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def make_sampler(
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    banned_ids: Sequence[int] = (),
) -> Sampler:
    """A function logits (B, V) → ids (B, 1). `banned_ids` are never drawn (e.g. ``<unk>``).

    Temperature 0 is greedy decoding, as LLM APIs take it: the most likely token, no randomness
    (top-k and top-p cannot change the most likely token, so they do not matter then).
    """
    validate_sampling(1, temperature, top_k, top_p)
    banned = list(banned_ids)

    def sample(logits: torch.Tensor) -> torch.Tensor:
        if banned:
            logits = logits.clone()
            logits[:, banned] = float("-inf")
        if temperature == 0:
            return logits.argmax(dim=-1, keepdim=True)  # (B, 1)
        probs = torch.softmax(filter_logits(logits, max(temperature, MIN_TEMPERATURE), top_k, top_p), dim=-1)
        return torch.multinomial(probs, num_samples=1, generator=generator)  # (B, 1)

    return sample
