"""The only DVC adapter: repository setup, `dvc add` / `push` / `pull`, data versions.

DVC's command line is its stable interface (the `Repo` Python API is undocumented), so
every call here is a `python -m dvc ...` subprocess in the project folder.

Two versions exist: the repository's (the md5 DVC records for `data/` in `data.dvc`) and
each dataset's (the md5 of DVC's per-file hashes under `data/<name>/`, see
`components.data.fingerprint`), so ingesting one dataset does not look like new data for
another.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import yaml

from flows.settings import Settings

log = logging.getLogger(__name__)

DVC_FILE = "data.dvc"
DEFAULT_REMOTE = "maas-local"


class VersioningError(RuntimeError):
    pass


def _dvc(settings: Settings, *args: str) -> str:
    command = [sys.executable, "-m", "dvc", *args]
    result = subprocess.run(command, cwd=settings.project_dir, capture_output=True, text=True)
    if result.returncode != 0:
        raise VersioningError(f"`dvc {' '.join(args)}` failed:\n{result.stdout}\n{result.stderr}".strip())
    return result.stdout


def ensure_repository(settings: Settings) -> None:
    """Make the project a DVC repository with a default remote (idempotent).

    The committed `.dvc/config` names the default remote `maas-local` at `../.maas/dvc-remote`;
    a different MAAS_HOME is written to `.dvc/config.local` (git-ignored), so the committed
    config stays the same on every machine. A user's own default remote (S3, GCS, SSH...) set
    with `dvc remote add -d` is left alone.
    """
    project = settings.project_dir
    if not (project / ".git").exists():
        raise VersioningError(f"{project} is not a git repository: DVC versioning needs one (`git init`)")
    if not (project / ".dvc").is_dir():
        _dvc(settings, "init", "--quiet")
    default_remote = _dvc(settings, "config", "core.remote").strip() if _has_default_remote(settings) else ""
    if not default_remote:
        _dvc(settings, "remote", "add", "--default", DEFAULT_REMOTE, str(settings.dvc_remote))
    elif default_remote == DEFAULT_REMOTE:
        configured = _dvc(settings, "remote", "list").split()
        url = configured[configured.index(DEFAULT_REMOTE) + 1] if DEFAULT_REMOTE in configured else ""
        if Path(url if Path(url).is_absolute() else project / ".dvc" / url).resolve() != settings.dvc_remote:
            _dvc(settings, "remote", "modify", "--local", DEFAULT_REMOTE, "url", str(settings.dvc_remote))
    settings.dvc_remote.mkdir(parents=True, exist_ok=True)


def _has_default_remote(settings: Settings) -> bool:
    result = subprocess.run(
        [sys.executable, "-m", "dvc", "config", "core.remote"],
        cwd=settings.project_dir,
        capture_output=True,
        text=True,
    )
    return result.returncode == 0 and bool(result.stdout.strip())


def pinned_version(settings: Settings) -> str | None:
    """The md5 of `data/` recorded in data.dvc, or None when there is no data.dvc yet."""
    path = settings.project_dir / DVC_FILE
    if not path.is_file():
        return None
    outs = (yaml.safe_load(path.read_text()) or {}).get("outs") or []
    return outs[0].get("md5") if outs else None


def track_and_push(settings: Settings) -> str:
    """`dvc add data` then `dvc push`; returns the repository data version."""
    _dvc(settings, "add", "--quiet", "data")
    _dvc(settings, "push", "--quiet")
    version = pinned_version(settings)
    if version is None:
        raise VersioningError("dvc add wrote no version into data.dvc")
    return version


def pull(settings: Settings) -> None:
    """Fetch `data/` at the version pinned by data.dvc from the default remote."""
    if pinned_version(settings) is None:
        raise VersioningError(f"no {DVC_FILE} in {settings.project_dir}: run `maas ingest` first")
    try:
        _dvc(settings, "pull", "--quiet")
    except VersioningError as error:
        raise VersioningError(
            f"could not pull data/ at {pinned_version(settings)} from the DVC remote (a fresh clone's local "
            "remote is empty): run `maas ingest` to rebuild it from the source, which reproduces the pinned "
            f"version byte for byte.\n{error}"
        ) from error


def remote_holds(settings: Settings, version: str) -> bool:
    """Whether the default local remote stores the `.dir` object of `version` (a local check)."""
    digest = version.removesuffix(".dir")
    return (settings.dvc_remote / "files" / "md5" / digest[:2] / f"{digest[2:]}.dir").is_file()


def tracked_file_hashes(settings: Settings, version: str) -> dict[str, str]:
    """relpath -> md5 for every file DVC recorded under `data/` at `version` (from the cache)."""
    digest = version.removesuffix(".dir")
    path = settings.project_dir / ".dvc" / "cache" / "files" / "md5" / digest[:2] / f"{digest[2:]}.dir"
    return {entry["relpath"]: entry["md5"] for entry in json.loads(path.read_text())}
