"""Batch sources for the fit loop: each yields an epoch's batches in an order fixed by (seed, epoch).

A *BatchSource* has ``__len__`` (batches per epoch) and ``batches(epoch, start)``, which yields
the batches of `epoch` from number `start` on; because the order depends only on (seed, epoch),
a resumed run sees exactly the batches it would have seen. ``IndexBatches`` (shuffled
mini-batches of indices, for classifiers) and ``TokenWindowBatches`` (random windows of a token
stream, nanoGPT's ``get_batch``, for language models) are provided; a plain re-iterable (list,
DataLoader) also works, and resume then skips consumed batches by iterating, which is exact
only if it yields the same order each pass. Under DDP, ``shard(rank, world_size)`` gives each
rank its part of every global batch.
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch


def _check_global_batch(batch_size: int, world_size: int) -> None:
    if batch_size % world_size:
        raise ValueError(f"batch_size {batch_size} (global) is not divisible by world size {world_size}")


def _sharded(source: Any, rank: int, world_size: int) -> Any:
    """A copy of `source` that yields rank `rank`'s part of every global batch."""
    _check_global_batch(source.batch_size, world_size)
    shard = copy.copy(source)  # the data and make_batch are shared, read-only
    shard.rank, shard.world_size = rank, world_size
    return shard


@runtime_checkable
class BatchSource(Protocol):
    def __len__(self) -> int: ...

    def batches(self, epoch: int, start: int = 0) -> Iterator[Any]: ...


def epoch_rng(seed: int, epoch: int) -> np.random.Generator:
    """The generator of one epoch's data order: a function of (seed, epoch) only."""
    return np.random.default_rng([int(seed), int(epoch)])


class IndexBatches:
    """Mini-batches of example indices, reshuffled each epoch from (seed, epoch).

    `make_batch(indices)` turns a LongTensor of indices into a batch (e.g. slices of
    pre-padded tensors). After ``shard(rank, world_size)`` each rank gets a contiguous
    ``batch_size // world_size`` slice of every global batch (a short last batch is padded
    by wrapping around the epoch's order, like DistributedSampler), so all ranks take the
    same number of steps and together see exactly the single-process batch.
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        make_batch: Callable[[torch.Tensor], Any],
        *,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ):
        if n <= 0 or batch_size <= 0:
            raise ValueError(f"IndexBatches needs n > 0 and batch_size > 0 (got {n}, {batch_size})")
        _check_global_batch(batch_size, world_size)
        self.n, self.batch_size, self.make_batch = n, batch_size, make_batch
        self.seed, self.shuffle, self.drop_last = seed, shuffle, drop_last
        self.rank, self.world_size = rank, world_size

    def __len__(self) -> int:
        if self.drop_last:
            return max(1, self.n // self.batch_size)
        return math.ceil(self.n / self.batch_size)

    def order(self, epoch: int) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.n)
        return torch.from_numpy(epoch_rng(self.seed, epoch).permutation(self.n))

    def batches(self, epoch: int, start: int = 0) -> Iterator[Any]:
        order = self.order(epoch)
        B = self.batch_size
        for b in range(start, len(self)):
            idx = order[b * B : (b + 1) * B]
            if self.world_size > 1:
                per_rank = math.ceil(len(idx) / self.world_size)
                short = per_rank * self.world_size - len(idx)
                if short:
                    idx = torch.cat([idx, order[:short]])
                idx = idx[self.rank * per_rank : (self.rank + 1) * per_rank]
            yield self.make_batch(idx)

    def shard(self, rank: int, world_size: int) -> IndexBatches:
        return _sharded(self, rank, world_size)


class TokenWindowBatches:
    """Random (x, y) windows of a token stream for language models (nanoGPT's get_batch).

    Each epoch draws ``len(self)`` batches of `batch_size` random offsets from (seed, epoch);
    ``x = data[o : o + T]`` and ``y = data[o + 1 : o + T + 1]``, both (B, T) int64. One
    epoch defaults to about one pass over the tokens. ``shard`` gives each rank its rows.
    """

    def __init__(
        self,
        data: torch.Tensor | np.ndarray,
        block_size: int,
        batch_size: int,
        *,
        seed: int = 0,
        batches_per_epoch: int | None = None,
        rank: int = 0,
        world_size: int = 1,
    ):
        if data.ndim != 1 or len(data) <= block_size + 1:
            raise ValueError(f"need a 1-D token stream longer than block_size + 1 ({block_size + 1})")
        _check_global_batch(batch_size, world_size)
        # A numpy array (a memory-mapped token file) stays on disk: each batch reads only its windows.
        self.data = data.long() if isinstance(data, torch.Tensor) else data
        self.block_size, self.batch_size, self.seed = block_size, batch_size, seed
        self.batches_per_epoch = batches_per_epoch or max(1, (len(data) - 1) // (block_size * batch_size))
        self.rank, self.world_size = rank, world_size
        self._arange = torch.arange(block_size)

    def __len__(self) -> int:
        return self.batches_per_epoch

    def batches(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        high = len(self.data) - self.block_size - 1
        offsets = torch.from_numpy(
            epoch_rng(self.seed, epoch).integers(0, high + 1, size=(len(self), self.batch_size))
        )
        per_rank = self.batch_size // self.world_size
        for b in range(start, len(self)):
            rows = offsets[b, self.rank * per_rank : (self.rank + 1) * per_rank]
            idx = rows[:, None] + self._arange  # (B, T)
            if isinstance(self.data, torch.Tensor):
                yield self.data[idx], self.data[idx + 1]
            else:
                yield self._read(idx), self._read(idx + 1)

    def _read(self, idx: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.data[idx.numpy()].astype(np.int64))

    def shard(self, rank: int, world_size: int) -> TokenWindowBatches:
        return _sharded(self, rank, world_size)


class IterableSource:
    """Adapts a plain re-iterable (list, DataLoader) to the BatchSource interface."""

    def __init__(self, iterable: Iterable[Any]):
        self.iterable = iterable

    def __len__(self) -> int:
        return len(self.iterable)  # type: ignore[arg-type]

    def batches(self, epoch: int, start: int = 0) -> Iterator[Any]:
        sampler = getattr(self.iterable, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        return itertools.islice(iter(self.iterable), start, None)


def as_source(batches: Any) -> Any:
    """`batches` as a BatchSource: itself, or a plain re-iterable wrapped."""
    return batches if isinstance(batches, BatchSource) else IterableSource(batches)


def source_len(source: Any) -> int | None:
    """Batches per epoch, or None for a source without a length."""
    try:
        return len(source)
    except TypeError:
        return None


class BatchStream:
    """Micro-batches across epochs, remembering where the next one comes from (for checkpoints)."""

    def __init__(self, source: Any, epoch: int, batch: int):
        self.source, self.epoch, self.batch = source, epoch, batch
        self._it = source.batches(epoch, batch)

    def next(self) -> Any:
        for _ in range(2):
            for item in self._it:
                self.batch += 1
                return item
            if self.batch == 0:
                break
            self.epoch, self.batch = self.epoch + 1, 0
            self._it = self.source.batches(self.epoch, 0)
        raise RuntimeError(f"the batch source yielded no batches in epoch {self.epoch}")
