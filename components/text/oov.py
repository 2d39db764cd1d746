"""Out-of-vocabulary shares: how much of a text a model's vocabulary does not know (for the inference log).

One rule for every kind: the share of a text's units (words, or a word tokenizer's tokens) that
the vocabulary does not hold. A text with no unit the model reads counts as wholly unknown (1.0):
to the model it is nothing it has seen.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

# A subword tokenizer never fails on a word: it splits it. A word the vocabulary holds whole is a
# word it knows; one it must split into pieces (or maps to its unknown token) is one it lacks.
MAX_KNOWN_PIECES = 1


def share(unknown: int, total: int) -> float:
    """`unknown` / `total`, and 1.0 for a text with no unit at all."""
    return unknown / total if total else 1.0


def unknown_id_share(ids: Sequence[int], unk_id: int) -> float:
    """The share of token ids that are the unknown id (a word vocabulary's <unk>)."""
    return share(sum(1 for i in ids if i == unk_id), len(ids))


def split_word_share(word_ids: Iterable[int | None], ids: Sequence[int], unk_id: int | None) -> float:
    """The share of words a subword tokenizer split into more than MAX_KNOWN_PIECES pieces or mapped
    to `unk_id`; `word_ids` gives each token's word (None for special tokens), as Hugging Face
    tokenizers' encodings do."""
    pieces: dict[int, int] = {}
    unknown: set[int] = set()
    for word, token in zip(word_ids, ids, strict=True):
        if word is None:
            continue
        pieces[word] = pieces.get(word, 0) + 1
        if token == unk_id:
            unknown.add(word)
    split = sum(1 for word, count in pieces.items() if count > MAX_KNOWN_PIECES or word in unknown)
    return share(split, len(pieces))
