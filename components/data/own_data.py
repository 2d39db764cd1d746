"""`maas pipeline --data FILE`: a user's file and column names checked and turned into a config.

The config written is a normal one (`extends:` a preset, one dataset, the classification
task), so `maas retrain -c NAME`, `maas schedule -c NAME` and `maas compare -c NAME` use it
like any other. Columns are checked from the file's header before anything is written.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from components.config import ConfigError
from components.data.sources import detect_format, parse_jsonl_line

FORMATS = ("csv", "jsonl", "parquet")  # the table formats a source reads by suffix (detect_format)
_NAME = re.compile(r"[^a-z0-9_-]+")


def data_format(path: Path) -> str:
    """csv, jsonl or parquet, from the suffix; a clear error for anything else."""
    try:
        fmt = detect_format(path)
    except ValueError:
        fmt = None
    if fmt not in FORMATS:
        raise ConfigError(f"{path}: cannot read a '{path.suffix}' file; --data takes .csv, .jsonl or .parquet")
    return fmt


def peek_columns(path: Path) -> list[str]:
    """The column names of a CSV header, the first JSONL object, or a Parquet schema."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    fmt = data_format(path)
    if fmt == "parquet":
        import pyarrow.parquet as pq

        return list(pq.read_schema(path).names)
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            line = raw.decode("utf-8-sig", errors="replace").strip()
            if not line:
                continue
            if fmt == "csv":
                import csv

                return next(csv.reader([line]))
            return list(parse_jsonl_line(line, number, str(path)))
    raise ConfigError(f"{path}: the file is empty (no header, no rows)")


def check_columns(path: Path, text_columns: list[str], label_column: str) -> None:
    """Every named column is in the file; the error lists those that are."""
    present = peek_columns(path)
    missing = [c for c in [*text_columns, label_column] if c not in present]
    if missing:
        raise ConfigError(f"{path}: no column {', '.join(repr(c) for c in missing)}; the file has {present}")


def dataset_name(name: str | None, data: Path) -> str:
    """A dataset and config name: the one given, else the file's stem, lower-cased to [a-z0-9_-]."""
    raw = name if name is not None else data.stem
    cleaned = _NAME.sub("-", raw.lower()).strip("-_")
    if not cleaned or (name is not None and cleaned != name):
        raise ConfigError(f"--name {raw!r}: use lower-case letters, digits, '-' and '_' (e.g. {cleaned or 'reviews'!r})")
    return cleaned


def relative_to(path: Path, project_dir: Path) -> str:
    """`path` relative to the project when it lies inside it (the config then moves with a clone)."""
    path = path.resolve()
    try:
        return path.relative_to(project_dir.resolve()).as_posix()
    except ValueError:
        return str(path)


def own_data_config(
    *,
    name: str,
    data: Path,
    text_columns: list[str],
    label_column: str,
    project_dir: Path,
    test_file: Path | None = None,
    preset: str = "default",
) -> dict[str, Any]:
    """The config for one labelled file: the preset's candidates and settings, this dataset, no generation."""
    check_columns(data, text_columns, label_column)
    if test_file is not None:
        check_columns(test_file, text_columns, label_column)
    source: dict[str, Any] = {
        "kind": "path",
        "path": relative_to(data, project_dir),
        "format": data_format(data),
        "text_columns": list(text_columns),
        "label_column": label_column,
    }
    if test_file is not None:
        source["split_files"] = {"test": relative_to(test_file, project_dir)}
    return {
        "extends": preset,
        "name": name,
        "datasets": [{"name": name, "task": "classification", "source": source}],
        "classification": {"dataset": name, "registered_model": f"{name}-classifier"},
        "generation": None,
    }
