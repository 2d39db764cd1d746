"""Character-level tokenizer built from a training text.

Id 0 is ``<unk>``; the characters of the training text follow in sorted order, so the same
text always gives the same vocabulary. A character the training text never contained (say
an emoji in a prompt) is encoded as ``<unk>`` rather than raising, and ``<unk>`` decodes to
the empty string, so ``decode(encode(s)) == s`` for every ``s`` made of known characters.

The vocabulary is saved as JSON (``{"type": "char", "chars": [...]}``) beside the weights.
Same interface as the BPE wrapper: ``encode``, ``decode``, ``vocab_size``, ``save``, ``load``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

UNK = "<unk>"
UNK_ID = 0


class CharTokenizer:
    def __init__(self, chars: Iterable[str]):
        chars = list(chars)
        if any(len(c) != 1 for c in chars):
            raise ValueError("CharTokenizer: every vocabulary entry must be one character")
        if len(set(chars)) != len(chars):
            raise ValueError("CharTokenizer: duplicate characters in the vocabulary")
        self.chars = chars
        self._stoi = {c: i + 1 for i, c in enumerate(chars)}  # 0 is <unk>
        self._itos = [""] + chars  # <unk> decodes to nothing

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        """The vocabulary is every distinct character of `text`, sorted."""
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self.chars) + 1

    @property
    def unk_id(self) -> int:
        return UNK_ID

    def encode(self, text: str) -> list[int]:
        stoi = self._stoi
        return [stoi.get(c, UNK_ID) for c in text]

    def decode(self, ids: Iterable[int]) -> str:
        itos = self._itos
        return "".join(itos[i] if 0 <= i < len(itos) else "" for i in ids)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps({"type": "char", "unk": UNK, "chars": self.chars}, ensure_ascii=False))
        return path

    @classmethod
    def load(cls, path: str | Path) -> CharTokenizer:
        data = json.loads(Path(path).read_text())
        if data.get("type") != "char":
            raise ValueError(f"{path}: not a character tokenizer (type {data.get('type')!r})")
        return cls(data["chars"])
