"""Ingest one dataset: read, clean, de-duplicate, split, validate, then publish atomically.

The published folder ``data_root/<name>/`` follows the contract in
:mod:`components.data.dataset`. It is rebuilt from scratch in a staging folder beside it
and swapped in by renaming only once everything is written: invalid data never
replaces the current version, a failure leaves no half-written folder, and files of the
previous version are never modified in place (they may be links into DVC's cache).

Everything written is a pure function of the source and the spec: rows in source order
within each split, no timestamps, no absolute paths, fixed Parquet settings. Ingesting
the same source twice therefore gives the same bytes and the same data version.

Every row cleaning drops and every line repaired under ``encoding_errors`` is reported by
file and row, in the log and in the manifest (``dropped_rows``, ``repaired_rows``). A
dropped row fails the ingest unless the dataset says ``row_issues: warn``.

A large classification source is streamed instead (:func:`ingest_streaming`, chosen by
:func:`should_stream` from ``DatasetSpec.streaming`` and the source's size): the same
cleaning, checks and reports in bounded memory, Parquet shards, and a hash split.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd

from components.config import DatasetSpec, SourceSpec
from components.data.cleaning import Dropped, clean, downsample
from components.data.dataset import CORPUS_SPLITS, MANIFEST_FILE, SHARDS_LAYOUT, SPLITS
from components.data.locations import describe_source, redact_url
from components.data.rows import LABEL, TEXT, RowIssue, RowRef
from components.data.sources import (
    STREAMABLE_FORMATS,
    STREAMABLE_KINDS,
    detect_format,
    iter_source_chunks,
    read_source,
    read_split_files,
    source_bytes,
    source_file,
    split_file_path,
)
from components.data.splitting import join_corpus, split_classification, split_corpus
from components.data.streaming import (
    Mapper,
    chunk_dir,
    class_counts,
    plan,
    run_chunks,
    stream_chunks,
    write_shards,
)
from components.data.validation import (
    check_has_rows,
    check_labels,
    check_row_issues,
    check_schema,
    validate_class_counts,
    validate_classification,
    validate_corpus,
)

log = logging.getLogger(__name__)

PARQUET_COMPRESSION = "zstd"
CLASSIFICATION_SCHEMA = {TEXT: "string", LABEL: "string"}
CORPUS_SCHEMA = {TEXT: "string"}
# Source options added after data.dvc was pinned: recorded only when set, so the manifest of
# a source that does not use them keeps its bytes (and the dataset its version).
_LATER_SOURCE_FIELDS = ("encoding", "encoding_errors")


def ingest_dataset(
    spec: DatasetSpec, data_root: Path, *, cache_dir: Path, base_dir: Path, map_chunks: Mapper | None = None
) -> dict:
    """Build ``data_root/<spec.name>/`` from ``spec.source`` and return its manifest.

    ``base_dir`` resolves relative source paths (the project root); ``cache_dir`` keeps
    URL downloads. Raises :class:`~components.data.validation.DataValidationError` (or
    a reading error) without touching the existing folder. ``map_chunks`` (like the
    builtin ``map``, in order) runs a streamed ingest's chunk work, e.g. on a cluster.
    """
    data_root = Path(data_root)
    if should_stream(spec, base_dir=base_dir, cache_dir=cache_dir):
        return ingest_streaming(spec, data_root, cache_dir=cache_dir, base_dir=base_dir, map_chunks=map_chunks)
    labelled = spec.task == "classification"
    origin = describe_source(spec.source)
    log.info("ingesting '%s' (%s) from %s", spec.name, spec.task, origin)

    repaired: list[RowIssue] = []
    source = read_source(
        spec.source,
        base_dir=base_dir,
        cache_dir=cache_dir,
        data_root=data_root,
        require_label=labelled,
        repaired=repaired,
    )
    pinned = read_split_files(
        spec.source, base_dir=base_dir, cache_dir=cache_dir, require_label=labelled, repaired=repaired
    )
    _check_pinned_splits(spec, pinned)
    check_has_rows(source, origin)
    for split, frame in pinned.items():
        check_has_rows(frame, f"{split} split file {_location(spec.source.split_files[split])}")
    rows_read = len(source) + sum(len(frame) for frame in pinned.values())
    log.info(
        "read %d rows (%d from the source, pinned splits %s)",
        rows_read,
        len(source),
        {split: len(frame) for split, frame in pinned.items()},
    )

    source, pinned, dropped = _clean_all(spec, source, pinned)
    log.info(
        "dropped %d empty or short rows and %d duplicates; %d rows remain",
        dropped.empty,
        dropped.duplicates,
        len(source) + sum(len(f) for f in pinned.values()),
    )
    check_row_issues(spec.name, dropped.rows, spec.row_issues)
    _log_dropped_rows(spec, dropped.rows)
    check_has_rows(source, origin, after_cleaning=True)

    if labelled:
        # Schema and label checks before sampling and stratifying, whose errors would be obscure.
        check_schema({"source": source})
        check_labels({"source": source})
    source, sampled_out = downsample(source, spec.max_rows, seed=spec.seed, stratify=labelled)
    if sampled_out:
        log.info("max_rows=%d: sampled out %d rows", spec.max_rows, sampled_out)
    dropped = dropped + Dropped(sampled_out=sampled_out)

    write, counts, labels = _prepare(spec, source, pinned)
    counts["read"] = rows_read
    manifest = build_manifest(spec, counts=counts, dropped=dropped, labels=labels, repaired=repaired)

    def write_all(folder: Path) -> None:
        write(folder)
        write_manifest(manifest, folder)

    publish(data_root / spec.name, write_all)
    log.info("published %s", data_root / spec.name)
    return manifest


# --------------------------------------------------------------------------- streaming


def should_stream(spec: DatasetSpec, *, base_dir: Path, cache_dir: Path) -> bool:
    """``streaming: true/false`` as set; ``auto`` streams a streamable source above ``stream_above_bytes``."""
    if spec.streaming is False:
        return False
    reason = _why_not_streamable(spec)
    if reason and spec.streaming is True:
        raise ValueError(f"dataset '{spec.name}' sets `streaming: true`, but {reason}")
    if reason:
        return False
    path = source_file(spec.source, base_dir=Path(base_dir), cache_dir=Path(cache_dir))
    fmt = detect_format(path, spec.source.format)
    if fmt not in STREAMABLE_FORMATS or (fmt == "csv" and spec.source.encoding_errors != "reject"):
        if spec.streaming is True:
            return True  # the chunked reader names the problem
        return False
    return spec.streaming is True or source_bytes(path) > spec.stream_above_bytes


def _why_not_streamable(spec: DatasetSpec) -> str | None:
    if spec.task != "classification":
        return "only classification datasets stream (a corpus is cut from one joined text)"
    if spec.source.kind not in STREAMABLE_KINDS:
        return f"source kind '{spec.source.kind}' is read whole (streamed kinds: {list(STREAMABLE_KINDS)})"
    return None


def ingest_streaming(
    spec: DatasetSpec, data_root: Path, *, cache_dir: Path, base_dir: Path, map_chunks: Mapper | None = None
) -> dict:
    """:func:`ingest_dataset` in bounded memory: chunks, digests, a hash split, Parquet shards."""
    data_root, base_dir, cache_dir = Path(data_root), Path(base_dir), Path(cache_dir)
    origin = describe_source(spec.source)
    log.info("streaming '%s' from %s in chunks of %d rows", spec.name, origin, spec.chunk_rows)
    _check_pinned_splits(spec, spec.source.split_files)
    repaired: list[RowIssue] = []
    chunks = partial(iter_source_chunks, chunk_rows=spec.chunk_rows, repaired=repaired)
    pinned = {
        split: chunks(split_file_path(location, base_dir=base_dir, cache_dir=cache_dir), spec.source, infer_format=True)
        for split, location in spec.source.split_files.items()
    }
    source = chunks(source_file(spec.source, base_dir=base_dir, cache_dir=cache_dir), spec.source)
    data_root.mkdir(parents=True, exist_ok=True)
    with chunk_dir(data_root, spec.name) as work:
        results = run_chunks(stream_chunks(pinned, source), spec, Path(work), map_chunks)
        check_has_rows(sum(r.read for r in results if r.split is None), origin)
        planned = plan(results, spec)
        _log_dropped_rows(spec, planned.dropped.rows)
        log.info("read %d rows; dropped %d empty or short rows and %d duplicates; sampled out %d",
                 planned.read, planned.dropped.empty, planned.dropped.duplicates, planned.dropped.sampled_out)
        validate_class_counts(planned.per_class)
        counts = class_counts(planned)
        log.info("rows per split %s", counts["rows"])
        manifest = build_manifest(spec, counts=counts, dropped=planned.dropped, labels=planned.labels,
                                  repaired=repaired)

        def write_all(folder: Path) -> None:
            shards = write_shards(results, planned, folder, spec.shard_rows)
            manifest.update(
                layout=SHARDS_LAYOUT,
                shards=shards,
                shard_rows=spec.shard_rows,
                split_method="per label, rows ranked by a seeded hash of their text",
                files=sorted([shard["file"] for split in SPLITS for shard in shards[split]] + [MANIFEST_FILE]),
            )
            write_manifest(manifest, folder)

        publish(data_root / spec.name, write_all)
    log.info("published %s", data_root / spec.name)
    return manifest


# --------------------------------------------------------------------------- steps


def _check_pinned_splits(spec: DatasetSpec, pinned: dict[str, Any]) -> None:
    """Only held-out splits can be pinned: train is always what the main source leaves."""
    allowed = ("val", "test") if spec.task == "classification" else ("val",)
    bad = sorted(set(pinned) - set(allowed))
    if bad:
        raise ValueError(f"split_files of a {spec.task} dataset may pin {list(allowed)}, not {bad}")


def _clean_all(
    spec: DatasetSpec, source: pd.DataFrame, pinned: dict[str, pd.DataFrame]
) -> tuple[pd.DataFrame, dict[str, pd.DataFrame], Dropped]:
    """Clean pinned splits first (test, then val), then the source, sharing one duplicate set.

    A pinned split is kept exactly; a source row repeating one of its texts is dropped.
    """
    seen: dict[str, RowRef] = {}
    dropped = Dropped()
    cleaned: dict[str, pd.DataFrame] = {}
    for split in sorted(pinned, key=lambda s: ("test", "val").index(s)):
        cleaned[split], step = clean(pinned[split], task=spec.task, min_chars=spec.min_chars, seen=seen)
        dropped = dropped + step
    source, step = clean(source, task=spec.task, min_chars=spec.min_chars, seen=seen)
    return source, cleaned, dropped + step


def _log_dropped_rows(spec: DatasetSpec, rows: tuple[RowIssue, ...]) -> None:
    """One warning that says how many and where to look, then each row (allowed by ``row_issues: warn``)."""
    if not rows:
        return
    log.warning(
        "dataset '%s': dropped %d rows in cleaning (allowed by row_issues: warn), first %s",
        spec.name,
        len(rows),
        "; ".join(str(issue) for issue in rows[:3]),
    )
    for issue in rows:
        log.info("dropped %s", issue)


def _location(value: str) -> str:
    """A split file's path as given, or its URL without secrets."""
    return redact_url(value) if "://" in value else value


def _prepare(
    spec: DatasetSpec, source: pd.DataFrame, pinned: dict[str, pd.DataFrame]
) -> tuple[Callable[[Path], None], dict[str, Any], list[str]]:
    """Split and validate; return the writer, the counts and the label set (none for a corpus)."""
    if spec.task == "classification":
        splits = _classification_splits(spec, source, pinned)
        validate_classification(splits)
        labels = sorted(set().union(*(set(frame[LABEL]) for frame in splits.values())))
        unit, sizes = "rows", {split: len(frame) for split, frame in splits.items()}
        write, counts = partial(_write_classification, splits), _classification_counts(splits, labels)
    else:
        # A corpus: the documents joined, then train/val cut from the joined text.
        texts = _corpus_splits(spec, source, pinned)
        validate_corpus(texts)
        labels, unit, sizes = [], "characters", {split: len(text) for split, text in texts.items()}
        documents = len(source) + sum(len(frame) for frame in pinned.values())
        write, counts = partial(_write_corpus, texts), {"documents": documents, "characters": sizes}
    log.info("%s per split %s", unit, sizes)
    return write, counts, labels


def _classification_splits(
    spec: DatasetSpec, source: pd.DataFrame, pinned: dict[str, pd.DataFrame]
) -> dict[str, pd.DataFrame]:
    """Pinned splits as given; the others carved from the source. Indices become file positions."""
    wanted = {"val": spec.val_fraction, "test": spec.test_fraction}
    carved = split_classification(
        source, fractions={s: f for s, f in wanted.items() if s not in pinned}, seed=spec.seed
    )
    merged = {**carved, **pinned}
    return {split: merged[split].reset_index(drop=True) for split in SPLITS}


def _corpus_splits(
    spec: DatasetSpec, source: pd.DataFrame, pinned: dict[str, pd.DataFrame]
) -> dict[str, str]:
    corpus = join_corpus(source[TEXT].tolist())
    if "val" in pinned:
        return {"train": corpus, "val": join_corpus(pinned["val"][TEXT].tolist())}
    return split_corpus(corpus, val_fraction=spec.val_fraction)


def _classification_counts(splits: dict[str, pd.DataFrame], labels: list[str]) -> dict[str, Any]:
    per_class = {}
    for split, frame in splits.items():
        found = Counter(frame[LABEL])
        per_class[split] = {label: found.get(label, 0) for label in labels}
    return {"rows": {split: len(frame) for split, frame in splits.items()}, "per_class": per_class}


def build_manifest(
    spec: DatasetSpec,
    *,
    counts: dict,
    dropped: Dropped,
    labels: list[str],
    repaired: list[RowIssue] | tuple[RowIssue, ...] = (),
) -> dict:
    """What the folder holds and how it was made; nothing machine- or time-dependent.

    ``dropped_rows`` lists the numbered rows (of CSV, JSONL, Parquet or dataset files)
    that cleaning dropped, ``repaired_rows`` the lines ``encoding_errors`` repaired; each
    key is there only when it has entries. Whole files a class folder's cleaning dropped
    are logged, not listed: that folder's file names are their own listing, and listing
    them would change the pinned BBC News manifest (it drops 100 known duplicates).
    """
    classification = spec.task == "classification"
    splits = SPLITS if classification else CORPUS_SPLITS
    suffix = ".parquet" if classification else ".txt"
    manifest = {
        "name": spec.name,
        "task": spec.task,
        "source": source_record(spec.source),
        "seed": spec.seed,
        "val_fraction": spec.val_fraction,
        "test_fraction": spec.test_fraction if classification else 0.0,
        "min_chars": spec.min_chars,
        "max_rows": spec.max_rows,
        "counts": counts,
        "schema": CLASSIFICATION_SCHEMA if classification else CORPUS_SCHEMA,
        "dropped": {
            "empty": dropped.empty,
            "duplicates": dropped.duplicates,
            "sampled_out": dropped.sampled_out,
        },
        "labels": labels,
        "files": sorted([f"{split}{suffix}" for split in splits] + [MANIFEST_FILE]),
    }
    numbered = [issue.as_dict() for issue in dropped.rows if issue.where.number is not None]
    if numbered:
        manifest["dropped_rows"] = numbered
    if repaired:
        manifest["repaired_rows"] = [issue.as_dict() for issue in repaired]
    return manifest


def source_record(source: SourceSpec) -> dict[str, Any]:
    """The source as written in the spec (relative paths stay relative, so the manifest is
    portable), with URLs stripped of secrets and later options left out while unset."""
    record = source.model_dump(mode="json")
    for field in _LATER_SOURCE_FIELDS:
        if record[field] == SourceSpec.model_fields[field].get_default(call_default_factory=True):
            del record[field]
    if record["url"]:
        record["url"] = redact_url(record["url"])
    record["split_files"] = {split: _location(value) for split, value in record["split_files"].items()}
    return record


# --------------------------------------------------------------------------- writing


def write_parquet(frame: pd.DataFrame, path: Path) -> None:
    """Two string columns, built from plain lists.

    Building the Arrow table from lists (not ``Table.from_pandas``) stores no pandas
    metadata (which records the pandas version and index), so the bytes depend only on
    the rows and the pinned pyarrow version.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(
        {
            TEXT: pa.array(frame[TEXT].tolist(), type=pa.string()),
            LABEL: pa.array(frame[LABEL].tolist(), type=pa.string()),
        }
    )
    pq.write_table(table, path, compression=PARQUET_COMPRESSION)


def _write_classification(splits: dict[str, pd.DataFrame], folder: Path) -> None:
    for split in SPLITS:
        write_parquet(splits[split], folder / f"{split}.parquet")


def _write_corpus(texts: dict[str, str], folder: Path) -> None:
    for split in CORPUS_SPLITS:
        # Bytes, not write_text: no newline translation on any platform.
        (folder / f"{split}.txt").write_bytes(texts[split].encode("utf-8"))


def write_manifest(manifest: dict, folder: Path) -> None:
    text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    (folder / MANIFEST_FILE).write_bytes(text.encode("utf-8"))


def publish(target: Path, write: Callable[[Path], Any]) -> None:
    """Run ``write`` into a fresh staging folder beside ``target``, then swap it in.

    The swap is two renames on the same file system (current → ``.<name>.old-*``,
    staging → target); if the second fails, the first is undone. Leftovers of an
    interrupted earlier run are removed first, so they never end up in a DVC hash of
    ``data_root``. One dataset must not be ingested by two processes at once.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(target)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.staging-", dir=target.parent))
    try:
        write(staging)
        os.chmod(staging, 0o755)  # mkdtemp makes it private; the dataset folder should not be
        _swap(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _swap(staging: Path, target: Path) -> None:
    if not target.exists():
        os.replace(staging, target)
        return
    old = target.with_name(staging.name.replace(".staging-", ".old-", 1))
    os.replace(target, old)
    try:
        os.replace(staging, target)
    except BaseException:
        os.replace(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _remove_leftovers(target: Path) -> None:
    for pattern in (f".{target.name}.staging-*", f".{target.name}.old-*"):
        for leftover in target.parent.glob(pattern):
            log.warning("removing %s, left over by an interrupted ingest", leftover)
            shutil.rmtree(leftover, ignore_errors=True)
