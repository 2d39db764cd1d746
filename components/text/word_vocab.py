"""Word-level vocabulary fitted on the training split.

Words are runs of letters/digits/underscore, and every other non-space character is a
token of its own (``"Don't stop!"`` -> ``don ' t stop !`` with ``lowercase=True``). The
vocabulary keeps the words seen at least `min_freq` times, most frequent first (ties in
alphabetical order, so the same texts always give the same ids), up to `max_size` entries
including the two specials: ``<pad>`` = 0 and ``<unk>`` = 1.

Same interface as the BPE and char tokenizers: ``encode``, ``decode``, ``vocab_size``,
``save``, ``load`` (JSON: ``{"type": "word", "lowercase": ..., "tokens": [...]}``).
``decode`` joins words with single spaces: word-level encoding does not keep the spacing.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

PAD, UNK = "<pad>", "<unk>"
PAD_ID, UNK_ID = 0, 1
_TOKEN_RE = re.compile(r"\w+|[^\w\s]")


class WordVocab:
    pad_id = PAD_ID
    unk_id = UNK_ID

    def __init__(self, tokens: Sequence[str], lowercase: bool = True):
        tokens = list(tokens)
        if tokens[:2] != [PAD, UNK]:
            raise ValueError(f"WordVocab: the first two tokens must be {PAD!r} and {UNK!r}")
        if len(set(tokens)) != len(tokens):
            raise ValueError("WordVocab: duplicate tokens")
        self.tokens = tokens
        self.lowercase = lowercase
        self._stoi = {t: i for i, t in enumerate(tokens)}

    @classmethod
    def build(
        cls,
        texts: Iterable[str],
        min_freq: int = 1,
        max_size: int | None = None,
        lowercase: bool = True,
    ) -> WordVocab:
        """Fit on `texts` (the training split only)."""
        counts: Counter[str] = Counter()
        for text in texts:
            counts.update(_split(text, lowercase))
        words = sorted((w for w, c in counts.items() if c >= min_freq), key=lambda w: (-counts[w], w))
        if max_size is not None:
            if max_size < 2:
                raise ValueError("WordVocab: max_size must leave room for <pad> and <unk>")
            words = words[: max_size - 2]
        return cls([PAD, UNK, *words], lowercase=lowercase)

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    def __len__(self) -> int:
        return len(self.tokens)

    def tokenize(self, text: str) -> list[str]:
        return _split(text, self.lowercase)

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        """Each token's characters in `text`, [start, end), in the order `encode` gives the ids."""
        return [m.span() for m in _TOKEN_RE.finditer(text)]  # lowercasing keeps the tokens' places

    def encode(self, text: str, max_length: int | None = None) -> list[int]:
        """Token ids, unknown words as ``<unk>``; the first `max_length` tokens when given."""
        words = self.tokenize(text)
        if max_length is not None:
            words = words[:max_length]
        stoi = self._stoi
        return [stoi.get(w, UNK_ID) for w in words]

    def encode_batch(self, texts: Iterable[str], max_length: int | None = None) -> list[list[int]]:
        return [self.encode(t, max_length) for t in texts]

    def decode(self, ids: Iterable[int], skip_special: bool = True) -> str:
        tokens = self.tokens
        out = []
        for i in ids:
            i = int(i)
            if skip_special and i == PAD_ID:
                continue
            out.append(tokens[i] if 0 <= i < len(tokens) else UNK)
        return " ".join(out)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        payload = {"type": "word", "lowercase": self.lowercase, "tokens": self.tokens}
        path.write_text(json.dumps(payload, ensure_ascii=False), encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> WordVocab:
        payload = json.loads(Path(path).read_text(encoding="utf-8"))
        if payload.get("type") != "word":
            raise ValueError(f"{path} is not a word vocabulary (type {payload.get('type')!r})")
        return cls(payload["tokens"], lowercase=payload["lowercase"])


def _split(text: str, lowercase: bool) -> list[str]:
    return _TOKEN_RE.findall(text.lower() if lowercase else text)
