"""Content hashes of dataset folders: the data version.

``dataset_version`` is computed the way DVC 3 hashes a directory: the md5 of the JSON
list of ``{"md5": <md5 of file bytes>, "relpath": <posix path>}`` sorted by path
(``dvc_data.hashfile.tree.Tree.as_bytes``: ``json.dumps(..., sort_keys=True)`` with the
default separators). It is therefore a pure function of the files' content and names,
and equals the ``md5`` DVC records for the folder in a ``.dvc`` file, without its
``.dir`` suffix, when DVC hashes the same files (no ``.dvcignore`` excludes).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

_CHUNK = 1 << 20


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
