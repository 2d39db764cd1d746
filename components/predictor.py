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
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

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


@dataclass(frozen=True)
class Sampling:
    """How a generator continues a prompt: the arguments of `stream` and `generate` after the prompt.

    max_new_tokens: tokens at most; temperature: 0 is greedy; top_k: 0 disables it; top_p: 1
    disables it; seed: the same seed gives the same text (None: fresh entropy); stop: the text
    ends before the first of these strings it produces.
    """

    max_new_tokens: int = 100
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    stop: Sequence[str] = ()


class GeneratorPredictor(Predictor):
    """A text generator. A kind implements `stream`; `generate` is its joined text."""

    task: ClassVar[str] = "generation"

    @abstractmethod
    def stream(self, prompt: str, *args: Any, **kwargs: Any) -> Iterator[str]:
        """The continuation of `prompt` (never the prompt itself), in pieces as tokens are produced.

        The other arguments are the fields of `Sampling`, by position or by name. Bad arguments
        raise ValueError from this call, before any piece. The text ends after `max_new_tokens`
        tokens or before the first `stop` string it produces (see `cut_at_stops`); the same seed
        gives the same pieces. Closing the iterator stops all further computation.
        """

    def generate(self, prompt: str, *args: Any, **kwargs: Any) -> str:
        """The whole continuation at once: exactly ``"".join(stream(...))`` for the same arguments."""
        return "".join(self.stream(prompt, *args, **kwargs))

    def batch_decoder(self) -> BatchDecoder | None:
        """The kind's batched decode step (components/serving/batching.py), or None: the kind
        generates one request at a time through `stream`."""
        return None


class PieceDecoder(Protocol):
    """One request's new tokens to text pieces: what a kind's decoding holds back and lets go."""

    def push(self, token: int, last: bool) -> str:
        """The text that `token` completes ('' if none yet); `last`: no token follows."""

    def finish(self) -> str:
        """What is still held back when the generation ends."""


class BatchDecoder(Protocol):
    """A model's decode step over several requests at once; each request is a row state object."""

    def prefill(self, prompt_ids: list[int]) -> tuple[Any, Any]:
        """Run a prompt alone: (its row state, the next-token logits (1, V))."""

    def step(self, rows: Sequence[Any], last_ids: Sequence[int]) -> Any:
        """Feed each row its last sampled token: next-token logits (len(rows), V), in row order."""


@dataclass
class DecodePlan:
    """One generation request, validated and tokenised: what a decode loop needs to run it."""

    prompt_ids: list[int]
    max_new_tokens: int
    sample: Callable[[Any], Any]  # logits (1, V) -> ids (1, 1), with the request's own seeded generator
    text: PieceDecoder
    stops: list[str]
    end_ids: frozenset[int] = frozenset()  # tokens that end the text (an end-of-text token)


class TokenGenerator(GeneratorPredictor):
    """A generator that samples token by token (the GPT, the LSTM LM, a Hugging Face causal LM).

    `plan` validates and tokenises a request; `stream` runs it through the kind's own loop
    (`_pieces`), and the service's batched loop runs the same plans through `batch_decoder()`.
    A kind sets `device`, `_banned` (ids never sampled) and `_end_ids` (ids that end the text).
    """

    device: Any
    _banned: Sequence[int] = ()
    _end_ids: frozenset[int] = frozenset()

    def stream(self, prompt: str, *args: Any, **kwargs: Any) -> Iterator[str]:
        """See `GeneratorPredictor.stream` (the same arguments, passed to `plan`); the text also
        ends at the model's end-of-text token, if any."""
        plan = self.plan(prompt, *args, **kwargs)  # raises now, before any piece
        return cut_at_stops(self._pieces(plan), plan.stops)

    def plan(self, prompt: str, *args: Any, **kwargs: Any) -> DecodePlan:
        """`stream`'s arguments (`Sampling`), validated (ValueError) and tokenised, with the
        request's own seeded sampler."""
        from components.models.sampling import make_generator, make_sampler, validate_sampling

        sampling = Sampling(*args, **kwargs)
        validate_sampling(sampling.max_new_tokens, sampling.temperature, sampling.top_k, sampling.top_p)
        prompt_ids, max_new_tokens = self._prompt_ids(prompt, sampling.max_new_tokens)
        generator = make_generator(sampling.seed, self.device)
        sample = make_sampler(sampling.temperature, sampling.top_k, sampling.top_p, generator, self._banned)
        text = self._piece_decoder(prompt_ids)
        return DecodePlan(prompt_ids, max_new_tokens, sample, text, list(sampling.stop), self._end_ids)

    @abstractmethod
    def _prompt_ids(self, prompt: str, max_new_tokens: int) -> tuple[list[int], int]:
        """The prompt's token ids as the model reads them, and the tokens there is room for."""

    @abstractmethod
    def _piece_decoder(self, prompt_ids: list[int]) -> PieceDecoder:
        """A fresh `PieceDecoder` for one request."""

    @abstractmethod
    def _pieces(self, plan: DecodePlan) -> Iterator[str]:
        """The kind's own decode loop: `plan`'s text in pieces, one request alone."""


class StopCutter:
    """The push form of `cut_at_stops`: text in, text out up to the first stop string."""

    def __init__(self, stops: Sequence[str]):
        self.stops = [s for s in stops if s]
        self.pending = ""  # text received but not yet let out: it may begin a stop string
        self.stopped = False

    def push(self, piece: str) -> str:
        """What of the text so far can go out now; sets `stopped` at a stop string."""
        if not self.stops:
            return piece
        self.pending += piece
        found = [i for i in (self.pending.find(s) for s in self.stops) if i >= 0]
        if found:
            self.stopped = True
            out, self.pending = self.pending[: min(found)], ""
            return out
        keep = len(self.pending) - _stop_prefix_length(self.pending, self.stops)
        out, self.pending = self.pending[:keep], self.pending[keep:]
        return out

    def finish(self) -> str:
        """The held-back tail, once no more text comes."""
        out, self.pending = self.pending, ""
        return out


def cut_at_stops(pieces: Iterator[str], stops: Sequence[str]) -> Iterator[str]:
    """`pieces` up to (not including) the first occurrence of any of `stops` in their joined text.

    A tail that could be the start of a stop string is held back until the next pieces show it
    is not one, so a stop string is never partly yielded. On a stop, or when the consumer closes
    this iterator, `pieces` is closed too, so whatever produces them stops computing.
    """
    cutter = StopCutter(stops)
    try:
        for piece in pieces:
            out = cutter.push(piece)
            if out:
                yield out
            if cutter.stopped:
                return
        tail = cutter.finish()
        if tail:
            yield tail
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
