"""One Predictor per trained model, saved as a self-describing bundle.

A bundle is a folder holding ``bundle.json`` (format, kind, task, labels, the model's
config and free-form metadata) plus whatever files the kind needs (weights, vocabulary,
fitted pipeline). ``load_predictor(folder)`` needs nothing else: MLflow wraps the same
folder as a pyfunc, BentoML stores it for serving, and both load it through here, so
preprocessing is never re-implemented.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from components.explain.occlusion import occlusion_attributions
from components.explain.words import WordAttribution
from components.models.registry import KINDS, unknown_kind_message

BUNDLE_FORMAT = 1
MANIFEST_NAME = "bundle.json"


class BundleError(ValueError):
    """A folder that is not a loadable bundle (missing, wrong format, unknown kind)."""


class Predictor(ABC):
    """Common base: identity, metadata and the bundle round trip."""

    task: ClassVar[str]

    def __init__(self, kind: str, config: dict[str, Any], metadata: dict[str, Any] | None = None):
        self.kind = kind
        self.config = config
        self.metadata = dict(metadata or {})

    # -- bundle -------------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self._save_files(folder)
        manifest = {
            "format": BUNDLE_FORMAT,
            "kind": self.kind,
            "task": self.task,
            "config": self.config,
            "metadata": self.metadata,
            **self._manifest_extra(),
        }
        (folder / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=True))
        return folder

    def _manifest_extra(self) -> dict[str, Any]:
        return {}

    @property
    def on_accelerator(self) -> bool:
        """Whether the model runs on a GPU (or another accelerator) rather than the CPU."""
        return False

    @abstractmethod
    def _save_files(self, folder: Path) -> None:
        """Write the kind's own files (weights, vocabulary, fitted pipeline) into `folder`."""

    @classmethod
    @abstractmethod
    def _load(cls, folder: Path, manifest: dict[str, Any]) -> Predictor:
        """Rebuild the predictor from `folder`; `manifest` is the parsed bundle.json."""


class ClassifierPredictor(Predictor):
    task: ClassVar[str] = "classification"

    def __init__(self, kind: str, config: dict[str, Any], labels: Sequence[str], metadata=None):
        super().__init__(kind, config, metadata)
        self.labels = list(labels)

    def _manifest_extra(self) -> dict[str, Any]:
        return {"labels": self.labels}

    @abstractmethod
    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """Class probabilities, shape (len(texts), len(self.labels)), rows summing to 1."""

    def predict(self, texts: Sequence[str]) -> list[dict[str, Any]]:
        """Label and per-class probabilities for each text (what the service returns)."""
        return self.labelled(self.predict_proba(texts))

    def predict_with_oov(self, texts: Sequence[str]) -> tuple[list[dict[str, Any]], list[float]]:
        """`predict` and `oov_shares` of the same texts (NotImplementedError: the kind has no OOV share)."""
        proba, oov = self.proba_and_oov(texts)
        return self.labelled(proba), oov

    def proba_and_oov(self, texts: Sequence[str]) -> tuple[np.ndarray, list[float]]:
        """`predict_proba` and `oov_shares`; a kind that reads the words once for both overrides it."""
        oov = self.oov_shares(texts)  # first: a kind without OOV shares fails before the model runs
        return self.predict_proba(texts), oov

    def labelled(self, proba: np.ndarray) -> list[dict[str, Any]]:
        """`predict`'s items from `predict_proba`'s rows."""
        return [
            {
                "label": self.labels[int(row.argmax())],
                "probabilities": {label: float(p) for label, p in zip(self.labels, row, strict=True)},
            }
            for row in proba
        ]

    def attribute(self, texts: Sequence[str]) -> list[WordAttribution]:
        """A signed score per word of each text for its predicted label. Occlusion by default
        (it needs only predict_proba); a kind with an exact method overrides this."""
        return occlusion_attributions(self.predict_proba, texts, self.read_until)

    def read_until(self, text: str) -> int:
        """The character offset where the model stops reading `text` (truncation); the end by default."""
        return len(text)

    def oov_shares(self, texts: Sequence[str]) -> list[float]:
        """Per text, the share of its words (or tokens) the model's vocabulary does not know, in
        [0, 1] (components/text/oov.py); the inference log records it. Each kind implements it."""
        raise NotImplementedError(f"{self.kind}: this model kind gives no out-of-vocabulary share")

    def explain(self, texts: Sequence[str], top_k: int = 10) -> list[dict[str, Any]]:
        """Per text: the predicted label, its probability, the method, and the `top_k` words that
        pushed towards the label and the `top_k` that pushed away, each ``{"word", "score"}``."""
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}")
        return [item.explanation(self.labels, top_k) for item in self.attribute(texts)]


class GeneratorPredictor(Predictor):
    """A text generator. A kind implements `stream`; `generate` is its joined text."""

    task: ClassVar[str] = "generation"

    @abstractmethod
    def stream(
        self,
        prompt: str,
        max_new_tokens: int = 100,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop: Sequence[str] = (),
    ) -> Iterator[str]:
        """The continuation of `prompt` (never the prompt itself), in pieces as tokens are produced.

        Bad arguments raise ValueError from this call, before any piece. The text ends after
        `max_new_tokens` tokens or before the first `stop` string it produces (see `cut_at_stops`);
        the same seed gives the same pieces. Closing the iterator stops all further computation.
        """

    def generate(self, prompt: str, *args: Any, **kwargs: Any) -> str:
        """The whole continuation at once: exactly ``"".join(stream(...))`` for the same arguments."""
        return "".join(self.stream(prompt, *args, **kwargs))


def cut_at_stops(pieces: Iterator[str], stops: Sequence[str]) -> Iterator[str]:
    """`pieces` up to (not including) the first occurrence of any of `stops` in their joined text.

    A tail that could be the start of a stop string is held back until the next pieces show it
    is not one, so a stop string is never partly yielded. On a stop, or when the consumer closes
    this iterator, `pieces` is closed too, so whatever produces them stops computing.
    """
    stops = [s for s in stops if s]
    try:
        if not stops:
            yield from pieces
            return
        pending = ""  # text received but not yet yielded: it may begin a stop string
        for piece in pieces:
            pending += piece
            found = [i for i in (pending.find(s) for s in stops) if i >= 0]
            if found:
                if min(found) > 0:
                    yield pending[: min(found)]
                return
            held = _stop_prefix_length(pending, stops)
            if held < len(pending):
                yield pending[: len(pending) - held]
                pending = pending[len(pending) - held :]
        if pending:
            yield pending
    finally:
        close = getattr(pieces, "close", None)
        if close is not None:
            close()


def _stop_prefix_length(text: str, stops: Sequence[str]) -> int:
    """Length of the longest end of `text` that is the beginning of a stop string."""
    longest = min(len(text), max(len(s) for s in stops) - 1)
    for n in range(longest, 0, -1):
        tail = text[-n:]
        if any(s.startswith(tail) for s in stops):
            return n
    return 0


def read_manifest(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / MANIFEST_NAME
    if not path.is_file():
        raise BundleError(f"{folder} is not a model bundle: {MANIFEST_NAME} is missing")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{path}: bundle format {manifest.get('format')!r}, expected {BUNDLE_FORMAT}")
    return manifest


def load_predictor(folder: str | Path) -> Predictor:
    """Load any bundle written by `Predictor.save`."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    kind = manifest.get("kind")
    if kind not in KINDS:
        raise BundleError(f"{folder}: {unknown_kind_message(kind)}")
    # The registry imports the kind's module only now: loading a TF-IDF bundle never imports torch.
    return KINDS[kind].predictor_class()._load(folder, manifest)
