"""Byte-level BPE trained with Hugging Face ``tokenizers`` on the training split only.

Byte-level (GPT-2 style): the 256 byte symbols are always in the vocabulary, so no text is
ever unknown and ``decode(encode(text)) == text`` exactly (spaces and newlines included),
which language models need. ``<pad>`` = 0 and ``<unk>`` = 1 come first, like the word
vocabulary, so classifiers can treat both tokenizers alike; more special tokens (say an
end-of-text marker) can be added at training time. ``lowercase=True`` adds a lowercasing
normaliser (then decoding gives the lowercased text).

Same interface as the word and char tokenizers: ``encode(text) -> list[int]``,
``decode(ids) -> str``, ``vocab_size``, ``save(path)`` / ``load(path)`` (a ``tokenizer.json``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

PAD, UNK = "<pad>", "<unk>"
PAD_ID, UNK_ID = 0, 1
MIN_VOCAB = 256 + 2  # the byte alphabet plus <pad> and <unk>


class BPETokenizer:
    pad_id = PAD_ID
    unk_id = UNK_ID

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        if tokenizer.token_to_id(PAD) != PAD_ID or tokenizer.token_to_id(UNK) != UNK_ID:
            raise ValueError(f"BPETokenizer: {PAD!r} must have id 0 and {UNK!r} id 1")

    @classmethod
    def train(
        cls,
        texts: Iterable[str],
        vocab_size: int = 8000,
        min_frequency: int = 2,
        lowercase: bool = False,
        special_tokens: Sequence[str] = (),
    ) -> BPETokenizer:
        """Learn merges from `texts` (the training split; pass a long corpus as lines or chunks)."""
        specials = [PAD, UNK, *[t for t in special_tokens if t not in (PAD, UNK)]]
        if vocab_size < MIN_VOCAB + len(specials) - 2:
            raise ValueError(
                f"BPE vocab_size must be at least {MIN_VOCAB + len(specials) - 2}, got {vocab_size}"
            )
        tok = Tokenizer(models.BPE(unk_token=UNK))
        if lowercase:
            tok.normalizer = normalizers.Lowercase()
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=specials,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(texts, trainer=trainer)
        return cls(tok)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def __len__(self) -> int:
        return self.vocab_size

    def token_to_id(self, token: str) -> int | None:
        return self.tokenizer.token_to_id(token)

    def encode(self, text: str, max_length: int | None = None) -> list[int]:
        """Token ids; the first `max_length` when given."""
        ids = self.tokenizer.encode(text, add_special_tokens=False).ids
        return ids[:max_length] if max_length is not None else ids

    def encode_batch(self, texts: Sequence[str], max_length: int | None = None) -> list[list[int]]:
        """Encode many texts at once (parallel in Rust)."""
        encodings = self.tokenizer.encode_batch(list(texts), add_special_tokens=False)
        if max_length is None:
            return [e.ids for e in encodings]
        return [e.ids[:max_length] for e in encodings]

    def decode(self, ids: Iterable[int], skip_special: bool = True) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=skip_special)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        self.tokenizer.save(str(path))
        return path

    @classmethod
    def load(cls, path: str | Path) -> BPETokenizer:
        return cls(Tokenizer.from_file(str(path)))
