"""Streaming ingestion: a classification source of any size, in bounded memory, to Parquet shards.

Three steps, none of which holds the texts of the whole source:

1. **Chunks** (:func:`process_chunk`, independent, so they can run in parallel on a
   cluster): each chunk of ``chunk_rows`` rows is cleaned exactly as the in-memory path
   cleans (:func:`components.data.cleaning.clean`), its kept rows are written to a
   temporary Parquet file, and only a 64-bit blake2b digest of each normalised text, its
   label and where it came from are returned.
2. **Plan** (in the driver, on the digests only): a duplicate is a digest seen in an
   earlier row (first occurrence wins, as in memory; pinned split files come first); the
   split ranks each label's rows by a seeded mix of their digest and cuts the ranks at the
   fractions, so it is stratified and does not depend on row order or chunk size.
3. **Write**: the temporary files are read back in order and each kept row goes to its
   split's shards ``<split>/part-NNNNN.parquet`` in fixed row groups, so the bytes (and the
   data version) depend only on the source and the spec.

Two different texts share a digest with probability about n²/2⁶⁵ (3·10⁻⁸ for a million
rows); such a pair would be counted as a duplicate. Because the digests of the kept rows
are unique, no text can sit in two splits (the leakage rule holds by construction).
The hash split differs from the in-memory path's (scikit-learn's stratified shuffle): a
source that switches paths keeps its rows, cleaning and counts, but not its split.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from components.config import DatasetSpec, Task
from components.data.cleaning import Dropped, clean
from components.data.dataset import SPLITS
from components.data.rows import LABEL, ROW, TEXT, RowIssue, RowRef
from components.data.splitting import hash_split_codes, largest_remainder, rank_within_labels, split_keys

log = logging.getLogger(__name__)

DIGEST_BYTES = 8
ROW_GROUP_ROWS = 20_000
# Splits kept whole when pinned (test, then val), before the source: their texts win duplicates.
PINNED_ORDER = ("test", "val")
Mapper = Callable[[Callable[[Any], Any], Iterable[Any]], Iterable[Any]]


def text_digests(texts: Iterable[str]) -> np.ndarray:
    """A 64-bit blake2b digest of each text (UTF-8), as unsigned ints: stable across runs and machines."""
    return np.fromiter(
        (int.from_bytes(hashlib.blake2b(t.encode("utf-8"), digest_size=DIGEST_BYTES).digest(), "little")
         for t in texts),
        dtype=np.uint64,
    )


# --------------------------------------------------------------------------- step 1: chunks


@dataclass(frozen=True)
class Chunk:
    """One chunk of raw rows (``text``/``label``/``source_row``) and the split it is pinned to, if any."""

    index: int
    frame: pd.DataFrame
    split: str | None = None


@dataclass
class ChunkResult:
    """What the driver keeps of a chunk: digests, labels and origins of its kept rows, never texts."""

    index: int
    split: str | None
    path: str
    read: int
    digests: np.ndarray
    labels: list[str | None]  # the chunk's distinct labels; `codes` index into it
    codes: np.ndarray
    positions: np.ndarray  # each kept row's position in the raw chunk (orders the reports)
    files: list[str]  # distinct files of the chunk's rows, with their row unit
    units: list[str]
    file_of: np.ndarray
    numbers: np.ndarray  # row number in its file, -1 where the whole file is the row
    dropped: Dropped = field(default_factory=Dropped)
    dropped_positions: tuple[int, ...] = ()

    def ref(self, i: int) -> RowRef:
        number = int(self.numbers[i])
        f = int(self.file_of[i])
        return RowRef(self.files[f], None if number < 0 else number, self.units[f])  # type: ignore[arg-type]


def process_chunk(chunk: Chunk, *, task: Task, min_chars: int, work_dir: str) -> ChunkResult:
    """Clean one chunk, write its kept rows to ``work_dir``, return their digests (a pure function of the chunk)."""
    raw = chunk.frame.reset_index(drop=True)
    kept, dropped = clean(raw, task=task, min_chars=min_chars, seen={})
    path = Path(work_dir) / f"chunk-{chunk.index:08d}.parquet"
    _write_rows(kept, path)
    positions = {ref: i for i, ref in enumerate(raw[ROW])} if dropped.rows else {}
    labels = pd.Series(kept[LABEL], dtype=object)
    codes, distinct = pd.factorize(labels, use_na_sentinel=False)
    files, units, file_of, numbers = _pack_refs(kept[ROW].tolist())
    return ChunkResult(
        index=chunk.index,
        split=chunk.split,
        path=str(path),
        read=len(raw),
        digests=text_digests(kept[TEXT]),
        labels=[None if _missing(v) else v for v in distinct.tolist()],
        codes=codes.astype(np.int32),
        positions=kept.index.to_numpy(dtype=np.int64),
        files=files,
        units=units,
        file_of=file_of,
        numbers=numbers,
        dropped=dropped,
        dropped_positions=tuple(positions[issue.where] for issue in dropped.rows),
    )


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))


def _pack_refs(refs: list[RowRef]) -> tuple[list[str], list[str], np.ndarray, np.ndarray]:
    index: dict[tuple[str, str], int] = {}
    file_of = np.empty(len(refs), dtype=np.int32)
    numbers = np.empty(len(refs), dtype=np.int64)
    for i, ref in enumerate(refs):
        file_of[i] = index.setdefault((ref.file, ref.unit), len(index))
        numbers[i] = -1 if ref.number is None else ref.number
    keys = list(index)
    return [k[0] for k in keys], [k[1] for k in keys], file_of, numbers


def _write_rows(frame: pd.DataFrame, path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    labels = [None if _missing(v) else v for v in frame[LABEL].tolist()]  # reported by plan()
    table = pa.table({TEXT: pa.array(frame[TEXT].tolist(), type=pa.string()),
                      LABEL: pa.array(labels, type=pa.string())})
    pq.write_table(table, path, compression="zstd")


# --------------------------------------------------------------------------- step 2: plan


@dataclass
class Plan:
    """Per kept row (in read order): its split code (index into SPLITS, -1 = dropped); and the report."""

    split_of: np.ndarray
    labels: list[str]
    per_class: dict[str, dict[str, int]]
    dropped: Dropped
    read: int


def plan(results: list[ChunkResult], spec: DatasetSpec) -> Plan:
    """Duplicates across chunks, the max_rows sample and the hash split, from digests and labels only."""
    from components.data.validation import DataValidationError

    digests = np.concatenate([r.digests for r in results]) if results else np.empty(0, np.uint64)
    labels = sorted({label for r in results for label in r.labels if label is not None})
    label_id = {label: i for i, label in enumerate(labels)}
    ids = np.concatenate([
        np.array([label_id.get(v, -1) if v is not None else -1 for v in r.labels], dtype=np.int64)[r.codes]
        if len(r.codes) else np.empty(0, np.int64)
        for r in results
    ]) if results else np.empty(0, np.int64)
    chunk_of = np.repeat(np.arange(len(results)), [len(r.digests) for r in results])
    offsets = np.cumsum([0] + [len(r.digests) for r in results])

    # First occurrence wins: np.unique's index is the first row holding each digest.
    _, first, inverse = np.unique(digests, return_index=True, return_inverse=True)
    first_of_row = first[inverse]
    duplicate = first_of_row != np.arange(len(digests))

    issues = _issues(results, duplicate, first_of_row, chunk_of, offsets)
    dropped = Dropped(
        empty=sum(r.dropped.empty for r in results),
        duplicates=sum(r.dropped.duplicates for r in results) + int(duplicate.sum()),
        rows=tuple(issues),
    )
    from components.data.validation import check_row_issues

    check_row_issues(spec.name, dropped.rows, spec.row_issues)
    unlabeled = np.flatnonzero((ids < 0) & ~duplicate)
    if len(unlabeled):
        refs = [str(_ref(results, chunk_of, offsets, i)) for i in unlabeled[:100]]
        raise DataValidationError(
            "schema", f"{len(unlabeled)} rows have a label that is missing or not a string", refs
        )

    split_of = np.full(len(digests), -1, dtype=np.int8)
    pinned = np.array([r.split or "" for r in results], dtype=object)[chunk_of] if results else np.empty(0, object)
    for split in PINNED_ORDER:
        split_of[(pinned == split) & ~duplicate] = SPLITS.index(split)
    source = (pinned == "") & ~duplicate
    if not source.any():
        raise DataValidationError("no rows", "every row of the source was dropped in cleaning")
    keys = split_keys(digests[source], spec.seed)
    source_ids = ids[source]
    ranks = rank_within_labels(keys, source_ids)
    per_label = np.bincount(source_ids, minlength=len(labels))
    sampled_out = 0
    if spec.max_rows is not None and source.sum() > spec.max_rows:
        quota = largest_remainder(per_label, spec.max_rows)
        keep = ranks < quota[source_ids]
        sampled_out = int((~keep).sum())
        per_label = quota
    else:
        keep = np.ones(len(ranks), dtype=bool)
    carved = {s: f for s, f in (("test", spec.test_fraction), ("val", spec.val_fraction))
              if not any(r.split == s for r in results)}
    codes = hash_split_codes(ranks, source_ids, per_label, carved)
    codes[~keep] = -1
    split_of[source] = codes

    per_class = {
        split: {label: int(n) for label, n in zip(
            labels, np.bincount(ids[split_of == i], minlength=len(labels)), strict=True)}
        for i, split in enumerate(SPLITS)
    }
    return Plan(split_of=split_of, labels=labels, per_class=per_class,
                dropped=dropped + Dropped(sampled_out=sampled_out), read=sum(r.read for r in results))


def _ref(results: list[ChunkResult], chunk_of: np.ndarray, offsets: np.ndarray, i: int) -> RowRef:
    c = int(chunk_of[i])
    return results[c].ref(int(i - offsets[c]))


def _issues(results, duplicate, first_of_row, chunk_of, offsets) -> list[RowIssue]:
    """Every dropped row, in the order the rows were read (as the in-memory path reports them)."""
    found: list[tuple[int, int, RowIssue]] = []
    for r in results:
        found += [(r.index, pos, issue) for pos, issue in zip(r.dropped_positions, r.dropped.rows, strict=True)]
    for i in np.flatnonzero(duplicate):
        c = int(chunk_of[i])
        original = _ref(results, chunk_of, offsets, int(first_of_row[i]))
        where = results[c].ref(int(i - offsets[c]))
        found.append((results[c].index, int(results[c].positions[i - offsets[c]]),
                      RowIssue(where, f"duplicate text of {original}")))
    return [issue for _, _, issue in sorted(found, key=lambda item: item[:2])]


# --------------------------------------------------------------------------- step 3: write


class ShardWriter:
    """One split's rows into ``<split>/part-NNNNN.parquet`` files of ``shard_rows`` rows, fixed row groups."""

    def __init__(self, folder: Path, split: str, shard_rows: int):
        self.folder, self.split, self.shard_rows = folder, split, shard_rows
        self.pending: list[pd.DataFrame] = []
        self.pending_rows = 0
        self.shards: list[dict[str, Any]] = []
        self.writer = None
        (folder / split).mkdir(parents=True, exist_ok=True)

    def add(self, frame: pd.DataFrame) -> None:
        self.pending.append(frame)
        self.pending_rows += len(frame)
        while self.pending_rows >= self._group_rows():
            self._flush(self._group_rows())

    def close(self) -> list[dict[str, Any]]:
        while self.pending_rows:
            self._flush(min(self.pending_rows, self._group_rows()))
        if not self.shards:  # an empty split still has one (empty) shard, so readers find the schema
            self._open()
        self._close_writer()
        return self.shards

    def _group_rows(self) -> int:
        room = self.shard_rows - (self.shards[-1]["rows"] if self.writer is not None else 0)
        return min(ROW_GROUP_ROWS, room)

    def _flush(self, rows: int) -> None:
        import pyarrow as pa

        frame = pd.concat(self.pending, ignore_index=True)
        group, rest = frame.iloc[:rows], frame.iloc[rows:]
        self.pending, self.pending_rows = ([rest] if len(rest) else []), len(rest)
        if self.writer is None:
            self._open()
        table = pa.table({TEXT: pa.array(group[TEXT].tolist(), type=pa.string()),
                          LABEL: pa.array(group[LABEL].tolist(), type=pa.string())})
        self.writer.write_table(table, row_group_size=rows)
        self.shards[-1]["rows"] += rows
        if self.shards[-1]["rows"] == self.shard_rows:
            self._close_writer()

    def _open(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        relative = f"{self.split}/part-{len(self.shards):05d}.parquet"
        schema = pa.schema([(TEXT, pa.string()), (LABEL, pa.string())])
        self.writer = pq.ParquetWriter(self.folder / relative, schema, compression="zstd")
        self.shards.append({"file": relative, "rows": 0})

    def _close_writer(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def write_shards(results: list[ChunkResult], planned: Plan, folder: Path, shard_rows: int) -> dict[str, list]:
    """Route each kept row of each chunk file to its split's shards, in read order; returns the shard lists."""
    writers = {split: ShardWriter(folder, split, shard_rows) for split in SPLITS}
    start = 0
    for r in results:
        codes = planned.split_of[start:start + len(r.digests)]
        start += len(r.digests)
        frame = pd.read_parquet(r.path)
        for i, split in enumerate(SPLITS):
            rows = frame[codes == i]
            if len(rows):
                writers[split].add(rows)
    return {split: writer.close() for split, writer in writers.items()}


# --------------------------------------------------------------------------- the whole ingest


def stream_chunks(
    pinned: Mapping[str, Iterable[pd.DataFrame]], source: Iterable[pd.DataFrame]
) -> Iterator[Chunk]:
    """Pinned split files first (test, then val), then the source, numbered in that order."""
    index = 0
    for split in PINNED_ORDER:
        for frame in pinned.get(split, ()):
            yield Chunk(index, frame, split)
            index += 1
    for frame in source:
        yield Chunk(index, frame)
        index += 1


def run_chunks(
    chunks: Iterable[Chunk], spec: DatasetSpec, work_dir: Path, map_chunks: Mapper | None = None
) -> list[ChunkResult]:
    """:func:`process_chunk` over every chunk with ``map_chunks`` (default: here, one by one), in order."""
    work = partial(process_chunk, task=spec.task, min_chars=spec.min_chars, work_dir=str(work_dir))
    results = list((map_chunks or map)(work, chunks))
    log.info("cleaned %d chunks of up to %d rows", len(results), spec.chunk_rows)
    return results


def chunk_dir(data_root: Path, name: str) -> tempfile.TemporaryDirectory:
    """A scratch folder for the chunk files beside the dataset (same disk), removed afterwards."""
    return tempfile.TemporaryDirectory(prefix=f".{name}.chunks-", dir=data_root)


def class_counts(planned: Plan) -> dict[str, Any]:
    rows = {split: sum(planned.per_class[split].values()) for split in SPLITS}
    return {"rows": rows, "per_class": planned.per_class, "read": planned.read}
