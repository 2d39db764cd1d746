"""A classifier's tokenizer: a word vocabulary or byte-level BPE fitted from params, and padded id tensors.

``params`` are the neural classifier's (``tokenizer``, ``vocab_size``, ``min_freq``,
``lowercase``); the bundle stores the fitted tokenizer under ``TOKENIZER_FILES[kind]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from components.text.bpe import BPETokenizer
from components.text.word_vocab import WordVocab

TOKENIZER_FILES = {"word": "vocab.json", "bpe": "tokenizer.json"}

Tokenizer = WordVocab | BPETokenizer


def fit_tokenizer(params: dict[str, Any], texts: Sequence[str]) -> Tokenizer:
    if params["tokenizer"] == "word":
        return WordVocab.build(
            texts, min_freq=params["min_freq"], max_size=params["vocab_size"], lowercase=params["lowercase"]
        )
    return BPETokenizer.train(
        texts,
        vocab_size=params["vocab_size"],
        min_frequency=params["min_freq"],
        lowercase=params["lowercase"],
    )


def load_tokenizer(kind: str, path: Path) -> Tokenizer:
    return WordVocab.load(path) if kind == "word" else BPETokenizer.load(path)


def encode_padded(
    tokenizer: Tokenizer, texts: Sequence[str], max_length: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Texts -> (ids (N, L) padded with 0, lengths (N,)), L the longest encoding (<= max_length)."""
    return pad_encoded(tokenizer.encode_batch(list(texts), max_length=max_length))


def pad_encoded(encoded: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Token id lists -> (ids (N, L) padded with 0, lengths (N,)), L the longest list."""
    lengths = torch.tensor([len(e) for e in encoded], dtype=torch.long)
    width = max(1, int(lengths.max())) if len(encoded) else 1
    ids = torch.zeros(len(encoded), width, dtype=torch.long)
    for row, e in enumerate(encoded):
        if e:
            ids[row, : len(e)] = torch.tensor(e, dtype=torch.long)
    return ids, lengths
