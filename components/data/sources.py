"""Read a dataset's raw rows from wherever its :class:`SourceSpec` points.

Every reader returns the same shape: a DataFrame with a ``text`` column (str), a
``label`` column (str, or None where the source has no labels, as for a generation
corpus) and a ``source_row`` column (a :class:`RowRef`: the file and row each row came
from, so that a dropped or repaired row can be reported where the user can find it).
Rows come in a fixed order (file order, or sorted class folder then sorted file name)
so that ingesting the same source twice gives byte-identical files. Nothing here cleans
text: that is :mod:`components.data.cleaning`'s job.

Decoding lives in :mod:`components.data.decoding`, finding the bytes (paths, packages,
downloads) in :mod:`components.data.locations`.
"""

from __future__ import annotations

import io
import json
import logging
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from components.config import SourceSpec
from components.data.dataset import MANIFEST_FILE, SPLITS, read_dataset_manifest
from components.data.decoding import decode_lines, decode_text, read_text_file
from components.data.locations import download, find_package_folder, resolve_path
from components.data.rows import LABEL, ROW, TEXT, RowIssue, RowRef
from components.data.validation import DataValidationError

log = logging.getLogger(__name__)

_SUFFIX_FORMATS = {
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".txt": "text",
}


# --------------------------------------------------------------------------- entry points


def read_source(
    source: SourceSpec,
    *,
    base_dir: Path,
    cache_dir: Path,
    data_root: Path,
    require_label: bool = True,
    repaired: list[RowIssue] | None = None,
) -> pd.DataFrame:
    """Rows of the main source as a ``text``/``label``/``source_row`` frame.

    ``base_dir`` resolves relative paths (the project root), ``cache_dir`` keeps URL
    downloads, ``data_root`` holds already-ingested datasets (for ``kind: dataset``).
    With ``require_label`` False (generation corpora) a missing label column is fine.
    Lines repaired under ``source.encoding_errors`` are appended to ``repaired``.
    """
    base_dir, cache_dir, data_root = Path(base_dir), Path(cache_dir), Path(data_root)
    if source.kind == "package":
        folder = find_package_folder(source.package or "", source.subdir)
        return read_class_folder(folder, encoding=source.encoding)
    if source.kind == "path":
        return read_table(
            resolve_path(source.path or "", base_dir), source, require_label=require_label, repaired=repaired
        )
    if source.kind == "url":
        local = download(source.url or "", cache_dir, sha256=source.sha256)
        return read_table(local, source, require_label=require_label, repaired=repaired)
    if source.kind == "hf":
        return read_hf(source, base_dir, require_label=require_label)
    if source.kind == "dataset":
        return read_ingested_dataset(data_root / (source.dataset or ""))
    raise ValueError(f"unknown source kind '{source.kind}'")


def read_split_files(
    source: SourceSpec,
    *,
    base_dir: Path,
    cache_dir: Path,
    require_label: bool = True,
    repaired: list[RowIssue] | None = None,
) -> dict[str, pd.DataFrame]:
    """Rows of each explicit split file (``source.split_files``), keyed by split name.

    A value with ``://`` is a URL (downloaded and cached like a url source, without a
    checksum); anything else is a path relative to ``base_dir``. Each file is parsed
    with the source's column and encoding settings; its format comes from its suffix.
    """
    frames: dict[str, pd.DataFrame] = {}
    for split, location in sorted(source.split_files.items()):
        if split not in SPLITS:
            raise ValueError(f"split_files: unknown split '{split}' (expected one of {list(SPLITS)})")
        if "://" in location:
            path = download(location, Path(cache_dir))
        else:
            path = resolve_path(location, Path(base_dir))
        frames[split] = read_table(
            path, source, require_label=require_label, infer_format=True, repaired=repaired
        )
    return frames


# --------------------------------------------------------------------------- parsing


def detect_format(path: Path, declared: str = "auto") -> str:
    """``declared`` unless it is "auto"; else a folder, or the format of the suffix."""
    if declared != "auto":
        return declared
    if path.is_dir():
        return "folder"
    fmt = _SUFFIX_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(
            f"cannot tell the format of '{path.name}' from its suffix: set `format` to one of "
            f"csv, jsonl, parquet, text or folder (known suffixes: {sorted(_SUFFIX_FORMATS)})"
        )
    return fmt


def read_table(
    path: Path,
    source: SourceSpec,
    *,
    require_label: bool = True,
    infer_format: bool = False,
    repaired: list[RowIssue] | None = None,
) -> pd.DataFrame:
    """Parse one file or class folder with the source's column and encoding settings.

    ``infer_format`` prefers the suffix over ``source.format`` (split files may differ
    from the main source); the declared format is the fallback for unknown suffixes.
    """
    fmt = source.format
    if infer_format and (path.is_dir() or path.suffix.lower() in _SUFFIX_FORMATS):
        fmt = "auto"
    fmt = detect_format(path, fmt)
    if fmt == "folder":
        return read_class_folder(path, encoding=source.encoding)
    rows = None
    if fmt == "text":
        text = read_text_file(path, source, repaired)
        return pd.DataFrame({TEXT: [text], LABEL: [None], ROW: [RowRef(path.name)]}, dtype=object)
    if fmt == "csv":
        raw = read_csv_text(read_text_file(path, source, repaired), path.name)
    elif fmt == "jsonl":
        records, lines = read_jsonl(path, source, repaired)
        raw = pd.DataFrame.from_records(records)
        rows = [RowRef(path.name, line, "line") for line in lines]
    elif fmt == "parquet":
        raw = pd.read_parquet(path)
    else:
        raise ValueError(f"unsupported format '{fmt}'")
    return select_columns(
        raw,
        source.text_columns,
        source.label_column,
        origin=path.name,
        require_label=require_label,
        rows=rows,
    )


def read_csv_text(text: str, file: str) -> pd.DataFrame:
    """A decoded CSV as a frame of strings; an empty or malformed file names itself."""
    try:
        # dtype=str and no NA guessing: a text "NA" or a label "None" stays a string.
        return pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise DataValidationError("no rows", f"{file} is empty: no header and no rows") from None
    except pd.errors.ParserError as error:
        raise ValueError(f"{file} is not a valid CSV file: {error}") from None


def read_jsonl(
    path: Path, source: SourceSpec | None = None, repaired: list[RowIssue] | None = None
) -> tuple[list[dict[str, Any]], list[int]]:
    """One JSON object per non-blank line, with the line numbers; a bad line is reported."""
    records, lines = [], []
    for number, line in enumerate(read_text_file(path, source, repaired).splitlines(), start=1):
        if not line.strip():
            continue
        records.append(parse_jsonl_line(line, number, path.name))
        lines.append(number)
    return records, lines


def parse_jsonl_line(line: str, number: int, origin: str) -> dict[str, Any]:
    """One JSONL line as a JSON object; anything else is an error naming the file and the line."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise ValueError(f"{origin}: line {number} is not valid JSON: {error}") from error
    if not isinstance(record, dict):
        raise ValueError(f"{origin}: line {number} is not a JSON object")
    return record


def read_class_folder(folder: Path, encoding: str | None = None) -> pd.DataFrame:
    """One row per ``<class>/<file>.txt``, label = class folder name, in sorted order.

    Each file is decoded on its own (:func:`decode_text`), or strictly with ``encoding``.
    """
    folder = Path(folder)
    texts: list[str] = []
    labels: list[str] = []
    rows: list[RowRef] = []
    classes = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    for class_dir in classes:
        for file in sorted(class_dir.glob("*.txt")):
            where = f"{class_dir.name}/{file.name}"
            data = file.read_bytes()
            texts.append(
                decode_text(data) if encoding is None else decode_lines(data, file=where, encoding=encoding)
            )
            labels.append(class_dir.name)
            rows.append(RowRef(where))
    if not texts:
        raise ValueError(f"{folder}: expected one sub-folder of .txt files per class, found no .txt files")
    log.info("read %d files in %d class folders under %s", len(texts), len(classes), folder)
    return pd.DataFrame({TEXT: texts, LABEL: labels, ROW: rows}, dtype=object)


def select_columns(
    raw: pd.DataFrame,
    text_columns: Sequence[str],
    label_column: str | None,
    *,
    origin: str,
    require_label: bool = True,
    rows: Sequence[RowRef] | None = None,
) -> pd.DataFrame:
    """Reduce a parsed table to ``text`` (text columns joined by a newline), ``label`` and
    ``source_row`` (``rows``, by default row ``i + 1`` of ``origin``)."""
    present = [str(c) for c in raw.columns]
    for column in text_columns:
        if column not in raw.columns:
            raise KeyError(f"{origin}: text column '{column}' not found; columns present: {present}")
    parts = [[_as_str(v) for v in raw[column].tolist()] for column in text_columns]
    texts = ["\n".join(row) for row in zip(*parts, strict=True)] if parts else [""] * len(raw)

    if label_column is not None and label_column in raw.columns:
        labels: list[str | None] = [_as_label(v) for v in raw[label_column].tolist()]
    elif label_column is not None and require_label:
        raise KeyError(f"{origin}: label column '{label_column}' not found; columns present: {present}")
    else:
        labels = [None] * len(raw)
    if rows is None:
        rows = [RowRef(origin, number) for number in range(1, len(raw) + 1)]
    return pd.DataFrame({TEXT: texts, LABEL: labels, ROW: list(rows)}, dtype=object)


def _is_missing(value: Any) -> bool:
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    return isinstance(value, float) and math.isnan(value)


def _as_str(value: Any) -> str:
    """A text cell as str; a missing cell becomes "" (dropped later as empty)."""
    return "" if _is_missing(value) else str(value)


def _as_label(value: Any) -> str | None:
    """A label cell as a stripped str; missing stays None (validation reports it)."""
    return None if _is_missing(value) else str(value).strip()


# --------------------------------------------------------------------------- hf and dataset


def read_hf(source: SourceSpec, base_dir: Path, *, require_label: bool = True) -> pd.DataFrame:
    """A Hugging Face dataset: a local ``save_to_disk`` folder, else a hub name.

    ``datasets`` is an optional dependency (the ``hf`` extra), imported only here.
    Integer ``ClassLabel`` labels are mapped to their names.
    """
    try:
        import datasets
    except ImportError as error:
        raise ImportError(
            "source kind 'hf' needs the Hugging Face `datasets` package: pip install maas[hf]"
        ) from error

    name = source.hf_name or ""
    local = Path(name).expanduser()
    local = local if local.is_absolute() else Path(base_dir) / local
    if local.is_dir():
        loaded = datasets.load_from_disk(str(local))
        if isinstance(loaded, datasets.DatasetDict):
            if source.hf_split not in loaded:
                raise KeyError(f"{name}: no split '{source.hf_split}' (have {sorted(loaded)})")
            loaded = loaded[source.hf_split]
    else:
        loaded = datasets.load_dataset(name, source.hf_config, split=source.hf_split)

    raw = loaded.to_pandas()
    label_column = source.label_column
    if label_column and label_column in raw.columns:
        feature = loaded.features.get(label_column)
        if isinstance(feature, datasets.ClassLabel):
            raw[label_column] = [
                feature.int2str(int(v)) if not _is_missing(v) else None for v in raw[label_column]
            ]
    return select_columns(raw, source.text_columns, label_column, origin=name, require_label=require_label)


def read_ingested_dataset(folder: Path) -> pd.DataFrame:
    """Texts (and labels) of an already-ingested classification dataset: train, val, test."""
    if not (folder / MANIFEST_FILE).is_file():
        raise FileNotFoundError(
            f"source dataset '{folder.name}' has not been ingested ({folder / MANIFEST_FILE} missing): "
            "ingest it first (list it before this dataset)"
        )
    manifest = read_dataset_manifest(folder)
    if manifest.get("task") != "classification":
        raise ValueError(
            f"source dataset '{folder.name}' is a {manifest.get('task')} dataset; "
            "only classification datasets can feed another dataset"
        )
    frames = [pd.read_parquet(folder / f"{split}.parquet") for split in SPLITS]
    rows = (
        [RowRef(f"{folder.name}/{split}.parquet", number) for number in range(1, len(frame) + 1)]
        for split, frame in zip(SPLITS, frames, strict=True)
    )
    return pd.DataFrame(
        {
            TEXT: list(_concat(f[TEXT].tolist() for f in frames)),
            LABEL: list(_concat(f[LABEL].tolist() for f in frames)),
            ROW: list(_concat(rows)),
        },
        dtype=object,
    )


def _concat(lists: Iterable[list]) -> Iterable:
    for items in lists:
        yield from items
