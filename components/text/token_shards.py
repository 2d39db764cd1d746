"""Token ids cached on disk per (data version, tokenizer), read memory-mapped: nanoGPT's ``train.bin``.

A cache folder ``<root>/<data version>-<tokenizer fingerprint>/<name>/`` holds ``tokens.bin``
(every document's ids back to back, uint16 when the vocabulary fits, else uint32),
``offsets.npy`` (document i is ``tokens[offsets[i]:offsets[i + 1]]``) and ``meta.json``. It is
written in a staging folder and renamed into place, so a folder that exists is complete; the same
data version and tokenizer reuse it, another gets its own. A language-model corpus is one
document: ``stream()`` is then the whole token stream, as TokenWindowBatches wants it.

Texts are encoded batch by batch, so building never holds more than one batch of ids, and reading
maps the file: each process, and under torchrun each rank, pages in only the rows it touches.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

TOKENS_FILE, OFFSETS_FILE, META_FILE = "tokens.bin", "offsets.npy", "meta.json"


def fingerprint_file(path: str | Path) -> str:
    """A short hash of a saved tokenizer (vocab.json, tokenizer.json): the cache's tokenizer key."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def tokenizer_key(tokenizer, folder: Path) -> str:
    """The fingerprint of a tokenizer that has ``save(path)`` (saved once into `folder` to hash it)."""
    folder.mkdir(parents=True, exist_ok=True)
    return fingerprint_file(tokenizer.save(folder / "tokenizer-for-key"))


def texts_key(texts: Iterable[str]) -> str:
    """A short content hash of a list of documents: their data version when no other is at hand."""
    digest = hashlib.sha256()
    for text in texts:
        encoded = text.encode("utf-8")
        digest.update(len(encoded).to_bytes(8, "little"))
        digest.update(encoded)
    return digest.hexdigest()[:16]


def in_batches(texts: Sequence[str], rows: int = 10_000) -> Iterator[Sequence[str]]:
    for start in range(0, len(texts), rows):
        yield texts[start : start + rows]


class TokenShards:
    """The cached ids of one set of documents, memory-mapped."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.meta = json.loads((self.folder / META_FILE).read_text())
        self.offsets = np.load(self.folder / OFFSETS_FILE)
        self.tokens = np.memmap(self.folder / TOKENS_FILE, dtype=self.meta["dtype"], mode="r",
                                shape=(int(self.offsets[-1]),)) if self.offsets[-1] else np.zeros(0, np.uint16)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def document(self, index: int) -> np.ndarray:
        return np.asarray(self.tokens[self.offsets[index] : self.offsets[index + 1]])

    def documents(self) -> Iterator[np.ndarray]:
        """Each document's ids in turn, read from the map one at a time."""
        for index in range(len(self)):
            yield self.document(index)

    def lengths(self, max_length: int) -> torch.Tensor:
        """Every document's length after truncation to `max_length`, (N,) int64."""
        return torch.from_numpy(np.minimum(np.diff(self.offsets), max_length))

    def stream(self) -> torch.Tensor:
        """All ids as one 1-D int64 tensor (the language-model corpus)."""
        return torch.from_numpy(np.asarray(self.tokens, dtype=np.int64))

    def rows(self, indices: Sequence[int], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Documents `indices`, truncated to `max_length`: (ids (b, longest) padded with 0, lengths (b,))."""
        starts = self.offsets[np.asarray(indices, dtype=np.int64)]
        lengths = np.minimum(self.offsets[np.asarray(indices, dtype=np.int64) + 1] - starts, max_length)
        ids = torch.zeros(len(starts), max(1, int(lengths.max(initial=0))), dtype=torch.long)
        for row, (start, length) in enumerate(zip(starts.tolist(), lengths.tolist(), strict=True)):
            ids[row, :length] = torch.from_numpy(self.tokens[start : start + length].astype(np.int64))
        return ids, torch.from_numpy(lengths.astype(np.int64))

    def batcher(self, max_length: int, targets: torch.Tensor | None = None) -> Callable[[torch.Tensor], tuple]:
        """make_batch(indices) for IndexBatches: (ids, lengths[, targets]), read from the map per batch."""

        def make_batch(idx: torch.Tensor):
            ids, lengths = self.rows(idx.tolist(), max_length)
            return (ids, lengths) if targets is None else (ids, lengths, targets[idx])

        return make_batch


def rank_part(n: int, rank: int, world_size: int) -> range:
    """The contiguous documents rank `rank` of `world_size` reads: disjoint, together all of 0..n-1."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside a world of {world_size}")
    return range(rank * n // world_size, (rank + 1) * n // world_size)


def cached_token_shards(
    root: str | Path,
    data_version: str,
    tokenizer_key: str,
    name: str,
    texts: Callable[[], Iterable[Sequence[str]]],
    encode: Callable[[list[str]], list[list[int]]],
    vocab_size: int,
) -> TokenShards:
    """The cache of documents `name` (e.g. "train") for this data version and tokenizer, built if absent.

    `texts()` yields batches of documents (called only when building); `encode` turns a batch into
    id lists (``tokenizer.encode_batch``).
    """
    if not data_version or not tokenizer_key:
        raise ValueError("token shards need a data version and a tokenizer key")
    folder = Path(root) / f"{data_version[:16]}-{tokenizer_key[:16]}" / name
    if (folder / META_FILE).is_file():
        return TokenShards(folder)
    dtype = np.uint16 if vocab_size <= 2**16 else np.uint32
    staging = folder.with_name(f".{name}.staging-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    lengths = [0]
    with open(staging / TOKENS_FILE, "wb") as out:
        for batch in texts():
            for ids in encode(list(batch)):
                out.write(np.asarray(ids, dtype=dtype).tobytes())
                lengths.append(len(ids))
    np.save(staging / OFFSETS_FILE, np.cumsum(lengths, dtype=np.int64))
    meta = {"dtype": np.dtype(dtype).name, "documents": len(lengths) - 1, "data_version": data_version,
            "tokenizer": tokenizer_key, "vocab_size": vocab_size}
    (staging / META_FILE).write_text(json.dumps(meta, sort_keys=True))
    try:
        staging.rename(folder)
    except OSError:  # another process published it first: theirs is complete, use it
        shutil.rmtree(staging, ignore_errors=True)
    return TokenShards(folder)
