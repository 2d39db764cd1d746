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
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from components.config import SourceSpec
from components.data.dataset import MANIFEST_FILE, SPLITS, read_dataset_manifest, split_files
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
        frames[split] = read_table(
            split_file_path(location, base_dir=base_dir, cache_dir=cache_dir),
            source,
            require_label=require_label,
            infer_format=True,
            repaired=repaired,
        )
    return frames


def split_file_path(location: str, *, base_dir: Path, cache_dir: Path) -> Path:
    """A split file's local path: a URL (``://``) downloaded and cached, else a path under ``base_dir``."""
    if "://" in location:
        return download(location, Path(cache_dir))
    return resolve_path(location, Path(base_dir))


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


def table_format(path: Path, source: SourceSpec, infer_format: bool = False) -> str:
    """The format to parse ``path`` with; ``infer_format`` prefers the suffix (split files may differ)."""
    if infer_format and (path.is_dir() or path.suffix.lower() in _SUFFIX_FORMATS):
        return detect_format(path)
    return detect_format(path, source.format)


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
    fmt = table_format(path, source, infer_format)
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
    for text, label, where in iter_class_files(folder, encoding):
        texts.append(text)
        labels.append(label)
        rows.append(where)
    log.info("read %d files in %d class folders under %s", len(texts), len(set(labels)), folder)
    return pd.DataFrame({TEXT: texts, LABEL: labels, ROW: rows}, dtype=object)


def iter_class_files(folder: Path, encoding: str | None = None) -> Iterator[tuple[str, str, RowRef]]:
    """(text, label, where) of each ``<class>/<file>.txt``, one file read at a time, in sorted order."""
    classes = sorted(p for p in Path(folder).iterdir() if p.is_dir() and not p.name.startswith("."))
    found = False
    for class_dir in classes:
        for file in sorted(class_dir.glob("*.txt")):
            where = f"{class_dir.name}/{file.name}"
            data = file.read_bytes()
            text = decode_text(data) if encoding is None else decode_lines(data, file=where, encoding=encoding)
            found = True
            yield text, class_dir.name, RowRef(where)
    if not found:
        raise ValueError(f"{folder}: expected one sub-folder of .txt files per class, found no .txt files")


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
    paths = [path for split in SPLITS for path in split_files(folder, split, manifest)]
    frames = [pd.read_parquet(path) for path in paths]
    rows = (
        [RowRef(f"{folder.name}/{path.relative_to(folder).as_posix()}", number) for number in range(1, len(frame) + 1)]
        for path, frame in zip(paths, frames, strict=True)
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


# --------------------------------------------------------------------------- reading in chunks

# Kinds and formats a streamed ingest reads in chunks; the others are read whole.
STREAMABLE_KINDS = ("package", "path", "url")
STREAMABLE_FORMATS = ("csv", "jsonl", "parquet", "folder")
_CSV_BLOCK_BYTES = 1 << 22


def source_file(source: SourceSpec, *, base_dir: Path, cache_dir: Path) -> Path:
    """The local file or folder a package, path or url source reads (a url is downloaded once)."""
    if source.kind == "package":
        return find_package_folder(source.package or "", source.subdir)
    if source.kind == "path":
        return resolve_path(source.path or "", Path(base_dir))
    if source.kind == "url":
        return download(source.url or "", Path(cache_dir), sha256=source.sha256)
    raise ValueError(f"source kind '{source.kind}' cannot be read in chunks (only {list(STREAMABLE_KINDS)})")


def source_bytes(path: Path) -> int:
    """Size on disk of a source file, or of every file under a source folder."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def iter_source_chunks(
    path: Path,
    source: SourceSpec,
    *,
    chunk_rows: int,
    require_label: bool = True,
    infer_format: bool = False,
    repaired: list[RowIssue] | None = None,
) -> Iterator[pd.DataFrame]:
    """The rows :func:`read_table` would return, as frames of at most ``chunk_rows`` rows.

    CSV goes through pyarrow's streaming reader, Parquet by batches of its row groups,
    JSONL line by line, a class folder file by file, so memory holds one chunk whatever
    the source size. Row numbers (``source_row``) are those of the whole file.
    """
    fmt = table_format(path, source, infer_format)
    if fmt not in STREAMABLE_FORMATS:
        raise ValueError(f"{path.name}: format '{fmt}' cannot be read in chunks (only {list(STREAMABLE_FORMATS)})")
    if fmt == "folder":
        yield from _folder_chunks(path, source.encoding, chunk_rows)
        return
    if fmt == "jsonl":
        chunks = _jsonl_chunks(path, source, chunk_rows, repaired)
    elif fmt == "csv":
        chunks = _csv_chunks(path, source, chunk_rows, require_label)
    else:
        chunks = _parquet_chunks(path, source, chunk_rows, require_label)
    for raw, rows in chunks:
        yield select_columns(
            raw, source.text_columns, source.label_column, origin=path.name, require_label=require_label, rows=rows
        )


def _folder_chunks(folder: Path, encoding: str | None, chunk_rows: int) -> Iterator[pd.DataFrame]:
    batch: list[tuple[str, str, RowRef]] = []
    for item in iter_class_files(folder, encoding):
        batch.append(item)
        if len(batch) == chunk_rows:
            yield pd.DataFrame(batch, columns=[TEXT, LABEL, ROW], dtype=object)
            batch = []
    if batch:
        yield pd.DataFrame(batch, columns=[TEXT, LABEL, ROW], dtype=object)


def _jsonl_chunks(
    path: Path, source: SourceSpec, chunk_rows: int, repaired: list[RowIssue] | None
) -> Iterator[tuple[pd.DataFrame, list[RowRef]]]:
    """JSONL read a line at a time; each line decoded as :func:`read_jsonl` would (repairs included)."""
    records: list[dict[str, Any]] = []
    rows: list[RowRef] = []
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, start=1):
            text = decode_lines(
                line, file=path.name, encoding=source.encoding, errors=source.encoding_errors,
                repaired=repaired, first_line=number,
            )
            if not text.strip():
                continue
            records.append(parse_jsonl_line(text, number, path.name))
            rows.append(RowRef(path.name, number, "line"))
            if len(records) == chunk_rows:
                yield pd.DataFrame.from_records(records), rows
                records, rows = [], []
    if records:
        yield pd.DataFrame.from_records(records), rows
    elif not rows and path.stat().st_size == 0:
        raise DataValidationError("no rows", f"{path.name} is empty: no rows")


def _csv_header(path: Path, encoding: str) -> list[str]:
    import csv

    # A bad byte further down is pyarrow's to find (and ours to name by line), not the header's.
    with open(path, encoding=encoding, errors="replace", newline="") as handle:
        header = next(csv.reader(handle), None)
    if not header:
        raise DataValidationError("no rows", f"{path.name} is empty: no header and no rows")
    return header


def _csv_chunks(
    path: Path, source: SourceSpec, chunk_rows: int, require_label: bool
) -> Iterator[tuple[pd.DataFrame, list[RowRef]]]:
    """CSV through ``pyarrow.csv.open_csv``: only the needed columns, all as strings, no NA guessing."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    if source.encoding_errors != "reject":
        raise ValueError(
            f"{path.name}: `encoding_errors: {source.encoding_errors}` is not supported when a CSV is streamed; "
            "fix or re-encode the file, or set `streaming: false` on the dataset"
        )
    encoding = source.encoding or "utf-8"
    header = _csv_header(path, "utf-8-sig" if encoding.lower().replace("_", "-") in ("utf-8", "utf8") else encoding)
    columns = _needed_columns(header, source, path.name, require_label)
    try:
        reader = pacsv.open_csv(
            path,
            read_options=pacsv.ReadOptions(block_size=_CSV_BLOCK_BYTES, encoding=encoding),
            parse_options=pacsv.ParseOptions(newlines_in_values=True),
            convert_options=pacsv.ConvertOptions(
                include_columns=columns,
                column_types={column: pa.string() for column in columns},
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            ),
        )
        yield from _rebatched(reader, chunk_rows, path.name)
    except pa.ArrowInvalid as error:
        if "UTF8" in str(error) and source.encoding is None:
            _raise_first_bad_line(path)
        raise ValueError(f"{path.name} is not a valid CSV file: {error}") from None


def _raise_first_bad_line(path: Path) -> None:
    """Decode line by line, which raises the usual error naming the first line that is not UTF-8."""
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, start=1):
            decode_lines(line, file=path.name, first_line=number)


def _parquet_chunks(
    path: Path, source: SourceSpec, chunk_rows: int, require_label: bool
) -> Iterator[tuple[pd.DataFrame, list[RowRef]]]:
    import pyarrow.parquet as pq

    with pq.ParquetFile(path) as parquet:
        columns = _needed_columns(parquet.schema_arrow.names, source, path.name, require_label)
        yield from _rebatched(parquet.iter_batches(batch_size=chunk_rows, columns=columns), chunk_rows, path.name)


def _needed_columns(present: list[str], source: SourceSpec, origin: str, require_label: bool) -> list[str]:
    """The text columns and the label column (when present), checked as :func:`select_columns` does."""
    for column in source.text_columns:
        if column not in present:
            raise KeyError(f"{origin}: text column '{column}' not found; columns present: {present}")
    label = source.label_column
    if label is not None and label not in present and require_label:
        raise KeyError(f"{origin}: label column '{label}' not found; columns present: {present}")
    wanted = [*source.text_columns, *([label] if label in present else [])]
    return list(dict.fromkeys(wanted))


def _rebatched(batches: Iterable, chunk_rows: int, origin: str) -> Iterator[tuple[pd.DataFrame, list[RowRef]]]:
    """Arrow record batches regrouped into frames of exactly ``chunk_rows`` rows (the last may be short)."""
    import pyarrow as pa

    pending: list = []
    held = 0
    first = 1
    for batch in batches:
        pending.append(batch)
        held += batch.num_rows
        while held >= chunk_rows:
            table = pa.Table.from_batches(pending)
            yield table.slice(0, chunk_rows).to_pandas(), _numbered(origin, first, chunk_rows)
            first += chunk_rows
            rest = table.slice(chunk_rows)
            pending, held = rest.to_batches(), rest.num_rows
    if held:
        yield pa.Table.from_batches(pending).to_pandas(), _numbered(origin, first, held)


def _numbered(origin: str, first: int, count: int) -> list[RowRef]:
    return [RowRef(origin, number) for number in range(first, first + count)]
