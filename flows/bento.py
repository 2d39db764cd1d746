"""The only BentoML adapter: bundles into the model store, the Bento build, and look-ups.

Flows call these functions; components never import bentoml. The store is the one BentoML
reads from ``BENTOML_HOME`` (``Settings.apply()`` points it under MAAS_HOME).

How the service finds its models: ``service.py`` serves the BentoML models named
``maas-classifier`` (required) and ``maas-generator`` (optional). ``build_bento`` pins the
exact versions that are the latest in the store at build time through Bento arguments
(``--arg classifier=maas-classifier:<version> --arg generator=...``), so an older Bento keeps
serving the models it was built with even after newer ones are imported. ``bentoml serve
service:MaasService`` (development, no arguments) serves the latest of each.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import bentoml
import yaml
from bentoml.exceptions import NotFound

from components.config import ServingSpec
from components.predictor import MANIFEST_NAME, read_manifest

CLASSIFIER_MODEL = "maas-classifier"
GENERATOR_MODEL = "maas-generator"
BENTO_NAME = "maas"
# Bento argument -> BentoML model name; service.py reads the same arguments.
SERVICE_MODEL_ARGS = {"classifier": CLASSIFIER_MODEL, "generator": GENERATOR_MODEL}
NO_MODEL = "none"
BUILD_TIMEOUT_S = 600

# Labels must be usable everywhere a Bento goes (BentoCloud, Kubernetes, container labels):
# letters, digits, '-', '_' and '.', at most 63 characters, starting and ending alphanumeric.
_LABEL_MAX_CHARS = 63
_LABEL_FORBIDDEN = re.compile(r"[^A-Za-z0-9._-]+")


class BentoBuildError(RuntimeError):
    """`bentoml build` failed; the message carries its output. The previous Bento is untouched."""


def sanitize_label(value: Any) -> str:
    """A label value in the portable alphabet; idempotent, so stored labels compare equal."""
    text = _LABEL_FORBIDDEN.sub("-", str(value))
    return text[:_LABEL_MAX_CHARS].strip("-._")


def sanitize_labels(labels: dict[str, Any]) -> dict[str, str]:
    clean: dict[str, str] = {}
    for key, value in labels.items():
        clean_key = sanitize_label(key)
        if not clean_key:
            raise ValueError(f"label key {key!r} has no usable characters")
        clean[clean_key] = sanitize_label(value)
    return clean


def _clean_metadata(value: Any) -> Any:
    """JSON-like values BentoML accepts: paths become strings, None entries are dropped."""
    if isinstance(value, dict):
        return {str(k): _clean_metadata(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_clean_metadata(v) for v in value if v is not None]
    if isinstance(value, (str, bool, int, float)):
        return value
    return str(value)


def import_bundle(
    bundle_dir: str | Path, *, name: str, labels: dict[str, Any], metadata: dict[str, Any]
) -> str:
    """Copy a Predictor bundle into the BentoML store as a new version of model `name`.

    The bundle's files sit at the model's root (``<model path>/bundle.json``), so the service
    loads it with ``load_predictor(model.path)``. `labels` (``model_name``, ``model_version``,
    ``data_version``, ...) are sanitised; ``metadata["serving"]`` is validated as a
    ServingSpec and stored complete (defaults filled in). Returns the tag, ``name:version``.
    """
    bundle_dir = Path(bundle_dir)
    manifest = read_manifest(bundle_dir)  # fails early on a folder that is not a bundle
    if (bundle_dir / "model.yaml").exists():
        raise ValueError(f"{bundle_dir}: a bundle file named model.yaml would clash with BentoML's own")
    serving = ServingSpec.model_validate(metadata.get("serving") or {})
    model_metadata = _clean_metadata(
        {
            **metadata,
            "serving": serving.model_dump(),
            "bundle": {"kind": manifest["kind"], "task": manifest["task"], "format": manifest["format"]},
        }
    )
    with bentoml.models.create(name, labels=sanitize_labels(labels), metadata=model_metadata) as model:
        shutil.copytree(bundle_dir, model.path, dirs_exist_ok=True)
    if not (Path(model.path) / MANIFEST_NAME).is_file():  # model.path is the stored copy now
        raise RuntimeError(f"import of {bundle_dir} as {model.tag} lost {MANIFEST_NAME}")
    return str(model.tag)


def latest_model(name: str) -> bentoml.models.ModelInfo | None:
    """The newest version of model `name` in the store (``.tag``, ``.labels``, ``.metadata``), or None."""
    try:
        return bentoml.models.get(f"{name}:latest").info
    except NotFound:
        return None


def latest_bento(name: str = BENTO_NAME) -> bentoml.Bento | None:
    """The newest Bento called `name` (``.tag``; ``.info.labels``, ``.info.args``), or None."""
    try:
        return bentoml.bentos.get(f"{name}:latest")
    except NotFound:
        return None


def bentoml_home() -> Path:
    """The BentoML home this process uses: ``BENTOML_HOME`` or ``~/bentoml``, BentoML's own rule.

    (``compat.use_bentoml_home`` switches a process's stores and sets the variable with them.)
    """
    return Path(os.path.expandvars(os.environ.get("BENTOML_HOME") or "~/bentoml")).expanduser()


def pinned_models() -> dict[str, str]:
    """Bento arguments naming the exact model versions to serve: the latest of each in the store."""
    args: dict[str, str] = {}
    for arg, name in SERVICE_MODEL_ARGS.items():
        info = latest_model(name)
        args[arg] = str(info.tag) if info is not None else NO_MODEL
    return args


def build_bento(project_dir: str | Path, *, labels: dict[str, Any], bentofile: str = "bentofile.yaml") -> str:
    """Build ``project_dir/<bentofile>`` into a Bento labelled with `labels`; returns its tag.

    The build runs ``bentoml build`` in a child process (a fresh import of ``service.py``, its
    full output kept for the error message) against this process's BentoML home, with the
    current latest models pinned as Bento arguments. BentoML only stores a Bento once the build
    succeeded, so a failed build raises BentoBuildError and leaves the previous Bento in place.
    """
    project_dir = Path(project_dir).resolve()
    bentofile = project_dir / bentofile
    if not bentofile.is_file():
        raise FileNotFoundError(f"{bentofile} does not exist")
    args = pinned_models()
    if args["classifier"] == NO_MODEL:
        raise BentoBuildError(
            f"no '{CLASSIFIER_MODEL}' model in the BentoML store: import one before building"
        )
    with tempfile.TemporaryDirectory(prefix="maas-bento-context-") as context:
        result = _run_build(build_context(project_dir, bentofile, Path(context)), labels, args)
    output = f"{result.stdout}\n{result.stderr}".strip()
    if result.returncode != 0:
        raise BentoBuildError(f"bentoml build failed (exit {result.returncode}):\n{output}")
    tags = [line.split("__tag__:", 1)[1].strip() for line in result.stdout.splitlines() if "__tag__:" in line]
    if not tags:
        raise BentoBuildError(f"bentoml build printed no Bento tag:\n{output}")
    return tags[-1]


def build_context(project_dir: Path, bentofile: Path, context: Path) -> Path:
    """`context` holding only the bentofile and the files its `include` patterns match.

    BentoML walks its whole build context, folders included: MAAS_HOME (default `.maas/` in the
    project, with BentoML's own build folder) would come along, and two builds at once recursed
    into each other's folders until the path was too long.
    """
    spec = yaml.safe_load(bentofile.read_text()) or {}
    for pattern in spec.get("include") or []:
        for path in project_dir.glob(pattern):
            if path.is_file() and "__pycache__" not in path.parts:
                target = context / path.relative_to(project_dir)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target)
    shutil.copy2(bentofile, context / "bentofile.yaml")
    return context


def _run_build(context: Path, labels: dict[str, Any], args: dict[str, str]) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "bentoml", "build", str(context), "-f", str(context / "bentofile.yaml"),
               "-o", "tag"]
    for key, value in sanitize_labels(labels).items():
        command += ["--label", f"{key}={value}"]
    for key, value in args.items():
        command += ["--arg", f"{key}={value}"]
    env = {**_child_env(), "BENTOML_HOME": str(bentoml_home())}
    try:
        return subprocess.run(
            command, cwd=context, env=env, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S
        )
    except subprocess.TimeoutExpired as exc:
        raise BentoBuildError(
            f"bentoml build timed out after {BUILD_TIMEOUT_S} s:\n{exc.stdout}\n{exc.stderr}"
        ) from exc


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("BENTOML_DO_NOT_TRACK", "True")
    return env


def describe_bento(tag: str) -> dict[str, Any]:
    """Labels, pinned model arguments and packed models of a Bento (for logs and reports)."""
    bento = bentoml.bentos.get(tag)
    return {
        "tag": str(bento.tag),
        "labels": dict(bento.info.labels),
        "args": json.loads(json.dumps(bento.info.args, default=str)),
        "models": [str(m.tag) for m in bento.info.all_models],
    }
