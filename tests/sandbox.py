"""A throwaway copy of this project (git + DVC), for tests and benchmarks that run real flows.

The copy holds what a pipeline run reads (configs, the library, the bentofile, the service
and the DVC config), never the repo's data/, .maas or DVC cache, so nothing they do can
touch the developer's own state.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def make_project(folder: Path) -> Path:
    """Copy the project files into `folder` and make it a git repository; returns `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("configs", "components"):
        shutil.copytree(REPO / name, folder / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("bentofile.yaml", "service.py", "compat.py", ".gitignore", ".dvcignore"):
        if (REPO / name).exists():
            shutil.copy(REPO / name, folder / name)
    shutil.copytree(REPO / ".dvc", folder / ".dvc", ignore=shutil.ignore_patterns("cache", "tmp", "config.local"))
    subprocess.run(["git", "init", "-q"], cwd=folder, check=True)
    return folder
