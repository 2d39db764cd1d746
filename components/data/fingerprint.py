"""Content hashes of dataset folders (the data version) and fingerprints of raw sources.

``dataset_version`` is computed the way DVC 3 hashes a directory: the md5 of the JSON
list of ``{"md5": <md5 of file bytes>, "relpath": <posix path>}`` sorted by path
(``dvc_data.hashfile.tree.Tree.as_bytes``: ``json.dumps(..., sort_keys=True)`` with the
default separators). It is therefore a pure function of the files' content and names,
and equals the ``md5`` DVC records for the folder in a ``.dvc`` file, without its
``.dir`` suffix, when DVC hashes the same files (no ``.dvcignore`` excludes).

``source_fingerprint`` identifies a dataset's raw source without ingesting it, so a
scheduled retrain can skip ingestion when nothing upstream changed.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
from pathlib import Path
from typing import Any

from components.config import DatasetSpec
from components.data.locations import file_sha256, find_package_folder

_CHUNK = 1 << 20
DATA_CODE_DIR = Path(__file__).resolve().parent


def file_md5(path: Path) -> str:
    """md5 hex digest of a file's bytes, read in chunks."""
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def folder_listing(folder: Path) -> list[dict[str, str]]:
    """Every file under ``folder`` as ``{"md5", "relpath"}``, sorted by relative posix path."""
    folder = Path(folder)
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder} is not a folder")
    files = (p for p in folder.rglob("*") if p.is_file())
    entries = [{"md5": file_md5(p), "relpath": p.relative_to(folder).as_posix()} for p in files]
    return sorted(entries, key=lambda entry: entry["relpath"])


def dataset_version(folder: Path) -> str:
    """md5 hex of the canonical listing of ``folder`` (see the module docstring)."""
    listing = json.dumps(folder_listing(folder), sort_keys=True)
    return hashlib.md5(listing.encode("utf-8")).hexdigest()


def distribution_version(package: str) -> str:
    """The installed version of the distribution that provides `package` ("unknown" if none does)."""
    top = package.split(".")[0]
    try:
        return importlib.metadata.version(top)
    except importlib.metadata.PackageNotFoundError:
        names = importlib.metadata.packages_distributions().get(top, [])
        return importlib.metadata.version(names[0]) if names else "unknown"


def file_listing(path: Path, *, content: bool) -> list[list[Any]]:
    """[relative path, size(, md5 with `content`)] of a file or of every file under a folder, sorted."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    root = path.parent if path.is_file() else path
    return [[p.relative_to(root).as_posix(), p.stat().st_size, *([file_md5(p)] if content else [])] for p in files]


def _resolve(location: str, base_dir: Path) -> Path:
    path = Path(location).expanduser()
    return path if path.is_absolute() else base_dir / path


def _url_fingerprint(url: str, sha256: str | None, download_cache: Path) -> dict[str, Any]:
    # Without a pinned sha256, the cached download (which ingestion reuses) is the content.
    cached = download_cache / hashlib.sha256(url.encode()).hexdigest()
    files = sorted(p for p in cached.glob("*") if p.is_file() and not p.name.startswith(".")) if cached.is_dir() else []
    return {"url": url, "sha256": sha256 or (file_sha256(files[0]) if files else "not-downloaded")}


def _located_files(location: str, base_dir: Path) -> list[list[Any]] | str:
    path = _resolve(location, base_dir)
    return file_listing(path, content=True) if path.exists() else "missing"


def source_fingerprint(spec: DatasetSpec, *, base_dir: Path, download_cache: Path, data_root: Path) -> dict[str, Any]:
    """What identifies the raw data of a dataset without ingesting it.

    package: name, installed version and the sorted (file name, size) listing; path: file
    names, sizes and md5s; url: the url and its sha256; hf: the name (and the files of a
    local dataset folder); dataset: the listing of the dataset it reads. Explicit split
    files are fingerprinted like paths or urls. Relative paths resolve under `base_dir`.
    """
    source = spec.source
    found: dict[str, Any] = {"kind": source.kind}
    if source.kind == "package":
        folder = find_package_folder(source.package or "", source.subdir)
        found |= {"package": source.package, "version": distribution_version(source.package or ""),
                  "files": file_listing(folder, content=False)}
    elif source.kind == "path":
        found["files"] = _located_files(source.path or "", base_dir)
    elif source.kind == "url":
        found |= _url_fingerprint(source.url or "", source.sha256, download_cache)
    elif source.kind == "hf":
        local = _resolve(source.hf_name or "", base_dir)
        found["files"] = file_listing(local, content=True) if local.is_dir() else source.hf_name
    elif source.kind == "dataset":
        folder = data_root / (source.dataset or "")
        found["listing"] = folder_listing(folder) if folder.is_dir() else "missing"
    splits = {
        split: _url_fingerprint(location, None, download_cache) if "://" in location
        else _located_files(location, base_dir)
        for split, location in sorted(source.split_files.items())
    }
    return found | {"split_files": splits}


def ingest_code_version() -> str:
    """A hash of the ingestion code (this package): cleaning or splitting differently is new data."""
    digest = hashlib.sha256()
    for path in sorted(DATA_CODE_DIR.rglob("*.py")):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]
