"""Language-model candidates (kinds ``gpt`` and ``lstm_lm``): training and the Predictor.

``train(spec, data, workdir, on_metrics)`` builds a tokenizer from the training text, cuts
the token stream into random contiguous windows of ``block_size`` (nanoGPT's batches,
seeded), trains through the shared fit loop (``components.training.engine.fit``), scores
the validation text and returns a :class:`LanguageModelPredictor`.

``spec.params`` (unknown keys are errors):

- tokenizer: ``tokenizer`` = ``char`` (default) | ``bpe``; ``bpe_vocab_size`` (1024) and
  ``bpe_min_frequency`` (2) for BPE.
- ``sample_tokens`` (200): the length of the three fixed-seed samples kept in the metadata.
- ``eval_max_chars`` (None = all): score only the start of a long validation text.
- model, kind ``gpt`` (:class:`~components.models.gpt.GPTConfig`): ``block_size`` 64,
  ``n_layer`` 4, ``n_head`` 4, ``n_embd`` 128, ``dropout`` 0.0, ``bias`` false, ``activation``
  gelu (or relu2).
- model, kind ``lstm_lm`` (:class:`~components.models.lstm_lm.LSTMLMConfig`): ``block_size``
  64, ``n_embd`` 128, ``hidden_size`` 256, ``n_layer`` 2, ``dropout`` 0.0, ``tie_weights`` true.

``spec.training`` is the TrainingSpec of the fit loop. ``max_steps`` wins; otherwise one
epoch is about one pass over the training tokens. ``eval_every`` steps (default once per
epoch and at the end), the validation loss is the mean over ``eval_batches`` fixed windows of
the validation text (None: every window of it, the same as the final score).

Metrics kept in ``metadata["metrics"]`` (validation text, fixed windows, see
``components.evaluation.language_model``): ``loss`` (nats per token), ``perplexity`` and
``bits_per_char`` (comparable across tokenizers). ``metadata["samples"]``: three samples from
an empty prompt with seeds 0, 1, 2; ``metadata["training"]``: steps, time and throughput.

Bundle: ``bundle.json`` (config: kind's model config and the tokenizer type),
``tokenizer.json`` and ``model.safetensors``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model

from components.config import ModelSpec, TrainingSpec
from components.data.dataset import CorpusData
from components.evaluation.language_model import evaluate_text
from components.models.gpt import GPTBatchDecoder
from components.models.lstm_lm import LSTMBatchDecoder
from components.models.registry import KINDS, model_kind
from components.predictor import BatchDecoder, DecodePlan, TokenGenerator
from components.text.char_tokenizer import CharTokenizer
from components.text.token_shards import cached_token_shards, texts_key, tokenizer_key
from components.training import distributed
from components.training.callbacks import MetricsCallback, no_metrics
from components.training.device import (
    attention_for_varied_shapes,
    inference_context,
    resolve_device,
    seed_everything,
    torch_threads,
)

log = logging.getLogger(__name__)

TOKENIZER_FILE = "tokenizer.json"
WEIGHTS_FILE = "model.safetensors"
SAMPLE_SEEDS = (0, 1, 2)


def network_classes(kind: str) -> tuple[type, type]:
    """(config dataclass, nn.Module class) of a language-model kind, from the registry."""
    entry = model_kind(kind)
    if not entry.is_language_model:
        expected = sorted(name for name, k in KINDS.items() if k.is_language_model)
        raise ValueError(f"not a language-model kind: {kind!r} (expected one of {expected})")
    return entry.config_class(), entry.network_class()


@dataclasses.dataclass(frozen=True)
class LMOptions:
    """The params that are not the model's own (see the module docstring)."""

    tokenizer: str = "char"
    bpe_vocab_size: int = 1024
    bpe_min_frequency: int = 2
    sample_tokens: int = 200
    eval_max_chars: int | None = None

    def __post_init__(self) -> None:
        if self.tokenizer not in ("char", "bpe"):
            raise ValueError(f"params.tokenizer must be 'char' or 'bpe', got {self.tokenizer!r}")
        if self.sample_tokens < 1:
            raise ValueError(f"params.sample_tokens must be >= 1, got {self.sample_tokens}")


def split_params(kind: str, params: dict[str, Any]) -> tuple[LMOptions, dict[str, Any]]:
    """Split `params` into the options and the model config fields; unknown keys are errors."""
    config_cls = network_classes(kind)[0]
    model_keys = {f.name for f in dataclasses.fields(config_cls)} - {"vocab_size"}
    option_keys = {f.name for f in dataclasses.fields(LMOptions)}
    unknown = set(params) - model_keys - option_keys
    if unknown:
        raise ValueError(
            f"unknown params for kind {kind!r}: {sorted(unknown)}; "
            f"accepted: {sorted(model_keys | option_keys)}"
        )
    options = LMOptions(**{k: v for k, v in params.items() if k in option_keys})
    return options, {k: v for k, v in params.items() if k in model_keys}


# -- tokenizers ---------------------------------------------------------------------------
def build_tokenizer(options: LMOptions, train_text: str) -> Any:
    if options.tokenizer == "char":
        return CharTokenizer.from_text(train_text)
    from components.text.bpe import BPETokenizer

    return BPETokenizer.train(
        train_text.splitlines(keepends=True),
        vocab_size=options.bpe_vocab_size,
        min_frequency=options.bpe_min_frequency,
    )


def load_tokenizer(kind: str, path: Path) -> Any:
    if kind == "char":
        return CharTokenizer.load(path)
    if kind == "bpe":
        from components.text.bpe import BPETokenizer

        return BPETokenizer.load(path)
    raise ValueError(f"unknown tokenizer type {kind!r}")


def special_ids(tokenizer: Any) -> list[int]:
    """Ids never to sample: <unk> (and <pad> for BPE); the model never saw them as targets."""
    return sorted(
        {i for i in (getattr(tokenizer, "unk_id", None), getattr(tokenizer, "pad_id", None)) if i is not None}
    )


# -- the predictor ------------------------------------------------------------------------
class LanguageModelPredictor(TokenGenerator):
    """A trained GPT or LSTM language model with its tokenizer; generates continuations."""

    def __init__(
        self,
        kind: str,
        model: torch.nn.Module,
        tokenizer: Any,
        tokenizer_type: str,
        metadata: dict[str, Any] | None = None,
    ):
        config = {"model": model.config.to_dict(), "tokenizer": tokenizer_type}
        super().__init__(kind, config, metadata)
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.tokenizer_type = tokenizer_type
        self._banned = special_ids(tokenizer)
        self._start = self._start_ids()

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def on_accelerator(self) -> bool:
        return self.device.type != "cpu"

    @property
    def block_size(self) -> int:
        return self.model.config.block_size

    def _start_ids(self) -> list[int]:
        """What an empty prompt starts from: a newline (the usual text boundary), else id 0."""
        ids = [i for i in self.tokenizer.encode("\n") if i not in self._banned]
        return ids or [0]

    def _prompt_ids(self, prompt: str, max_new_tokens: int) -> tuple[list[int], int]:
        return self.tokenizer.encode(prompt)[-self.block_size :] or self._start, max_new_tokens

    def _piece_decoder(self, prompt_ids: list[int]) -> ContinuationText:
        return ContinuationText(self, prompt_ids)

    def batch_decoder(self) -> BatchDecoder:
        """Many requests decoding together (components/serving/batching.py)."""
        decoder = GPTBatchDecoder(self.model) if self.kind == "gpt" else LSTMBatchDecoder(self.model)
        return InferenceSteps(decoder, self.device)

    def _pieces(self, plan: DecodePlan) -> Iterator[str]:
        """The new text, yielded as each token extends it."""
        device = self.device
        idx = torch.tensor([plan.prompt_ids], dtype=torch.long, device=device)  # (1, T)
        tokens = self.model.stream(idx, plan.max_new_tokens, plan.sample)  # (1, 1) each
        count = 0
        try:
            while True:
                # The contexts are entered per step, not across the yield: they are thread-local
                # (inference mode) or global (the attention kernels), and the consumer runs between steps.
                with torch.inference_mode(), attention_for_varied_shapes(device):
                    token = next(tokens, None)
                if token is None:
                    break
                count += 1
                piece = plan.text.push(int(token[0, 0]), last=count == plan.max_new_tokens)
                if piece:
                    yield piece
        finally:
            tokens.close()

    def continuation(self, prompt_ids: list[int], new_ids: list[int]) -> str:
        # Decode the whole text and cut the prompt off, so that BPE pieces that join across the
        # boundary decode as they would in one text; fall back to the new ids alone.
        full, head = self.tokenizer.decode(prompt_ids + new_ids), self.tokenizer.decode(prompt_ids)
        return full[len(head) :] if full.startswith(head) else self.tokenizer.decode(new_ids)

    def evaluate(self, text: str, max_chars: int | None = None) -> dict[str, float]:
        """loss, perplexity and bits_per_char of `text` in fixed windows."""
        with inference_context(self.device):
            metrics = evaluate_text(self.model, self.tokenizer, text, self.block_size, max_chars=max_chars)
        return {k: metrics[k] for k in ("loss", "perplexity", "bits_per_char")}

    # -- bundle ---------------------------------------------------------------------------
    def _save_files(self, folder: Path) -> None:
        self.tokenizer.save(folder / TOKENIZER_FILE)
        save_model(self.model, str(folder / WEIGHTS_FILE))  # handles the tied weights

    @classmethod
    def _load(cls, folder: Path, manifest: dict[str, Any]) -> LanguageModelPredictor:
        kind = manifest["kind"]
        config_cls, model_cls = network_classes(kind)
        model = model_cls(config_cls(**manifest["config"]["model"]))
        load_model(model, str(folder / WEIGHTS_FILE))
        tokenizer_type = manifest["config"]["tokenizer"]
        tokenizer = load_tokenizer(tokenizer_type, folder / TOKENIZER_FILE)
        model.to(resolve_device("auto"))
        return cls(kind, model, tokenizer, tokenizer_type, manifest.get("metadata"))


class ContinuationText:
    """A request's new tokens to text pieces (a `PieceDecoder`) for the GPT and the LSTM LM."""

    def __init__(self, predictor: LanguageModelPredictor, prompt_ids: list[int]):
        self.predictor = predictor
        self.prompt_ids = prompt_ids
        self.new_ids: list[int] = []
        self.sent = ""

    def push(self, token: int, last: bool) -> str:
        self.new_ids.append(token)
        text = self.predictor.continuation(self.prompt_ids, self.new_ids)
        # A byte-level BPE token can end inside a multi-byte character, which decodes as
        # U+FFFD until the next token completes it: hold that back, and text not yet stable.
        ready = text if last else text.rstrip("\ufffd")
        if ready.startswith(self.sent) and len(ready) > len(self.sent):
            piece, self.sent = ready[len(self.sent) :], ready
            return piece
        return ""

    def finish(self) -> str:
        return ""  # every token's text went out with it (the last one unheld)


class InferenceSteps:
    """A model's batch decoder with inference mode and the inference attention kernels entered per
    call (not across calls: the consumer runs between steps)."""

    def __init__(self, decoder: GPTBatchDecoder | LSTMBatchDecoder, device: torch.device):
        self.decoder = decoder
        self.device = device

    def prefill(self, prompt_ids: list[int]) -> tuple[Any, torch.Tensor]:
        with torch.inference_mode(), attention_for_varied_shapes(self.device):
            return self.decoder.prefill(prompt_ids)

    def step(self, rows: Sequence[Any], last_ids: Sequence[int]) -> torch.Tensor:
        with torch.inference_mode(), attention_for_varied_shapes(self.device):
            return self.decoder.step(rows, last_ids)


# -- training -----------------------------------------------------------------------------
def fixed_windows(ids: torch.Tensor, block_size: int, n_batches: int, batch_size: int, seed: int) -> list:
    """`n_batches` (x, y) batches of random windows, the same for a given seed (for evaluation)."""
    from components.training.batches import TokenWindowBatches

    block_size = min(block_size, len(ids) - 2)
    source = TokenWindowBatches(ids, block_size, batch_size, seed=seed, batches_per_epoch=n_batches)
    return list(source.batches(0))


def validation_evaluator(
    val_ids: torch.Tensor,
    val_text: str,
    tokenizer: Any,
    block_size: int,
    training: TrainingSpec,
    device: torch.device,
    eval_max_chars: int | None = None,
) -> Callable[[torch.nn.Module], dict[str, float]]:
    """The fit loop's ``evaluate(model)`` for a language model whose ``model(x, y)`` returns
    (logits, loss): the mean loss over ``training.eval_batches`` fixed validation windows, or
    (eval_batches None) the loss and bits per char of the whole validation text."""
    if training.eval_batches:
        eval_set = [
            tuple(t.to(device) for t in batch)
            for batch in fixed_windows(
                val_ids, block_size, training.eval_batches, training.batch_size, seed=training.seed + 1
            )
        ]

        def evaluate(model: torch.nn.Module) -> dict[str, float]:
            total = torch.zeros((), device=device)
            for x, y in eval_set:
                total += model(x, y)[1].float()
            return {"val_loss": (total / len(eval_set)).item()}

        return evaluate

    def evaluate_all(model: torch.nn.Module) -> dict[str, float]:
        nats = evaluate_text(model, tokenizer, val_text, block_size, max_chars=eval_max_chars)
        return {"val_loss": nats["loss"], "val_bits_per_char": nats["bits_per_char"]}

    return evaluate_all


def check_token_counts(train_ids: Sequence[int], val_ids: Sequence[int], block_size: int) -> None:
    """ValueError when the texts are too short to train a `block_size` model or to score it."""
    if len(train_ids) <= block_size + 1:
        raise ValueError(
            f"training text has {len(train_ids)} tokens: needs more than block_size + 1 ({block_size + 1})"
        )
    if len(val_ids) < 3:
        raise ValueError(f"validation text has {len(val_ids)} tokens: needs at least 3")


def fit_language_model(
    model: torch.nn.Module,
    ids: tuple[Any, torch.Tensor],
    val_text: str,
    tokenizer: Any,
    block_size: int,
    training: TrainingSpec,
    eval_max_chars: int | None,
    workdir: Path,
    on_metrics: MetricsCallback,
    extra: dict[str, Any],
) -> Any:
    """The fit loop on random `block_size` windows of the training ids (`ids`: train, val), for a
    model whose ``model(x, y)`` returns (logits, loss); the best step by validation loss is kept,
    and the model ends on the fit's device in eval mode. Returns the loop's FitResult."""
    from components.training.batches import TokenWindowBatches
    from components.training.engine import fit

    train_ids, val_ids = ids
    device = resolve_device(training.device)
    batches = TokenWindowBatches(train_ids, block_size, training.batch_size, seed=training.seed)
    evaluate = validation_evaluator(val_ids, val_text, tokenizer, block_size, training, device, eval_max_chars)
    result = fit(
        model,
        batches,
        lambda m, batch: m(*batch)[1],  # batch: (x, y), each (B, T)
        training,
        evaluate=evaluate,
        monitor="val_loss",
        on_metrics=on_metrics,
        checkpoint_dir=workdir / "checkpoints",
        resume=True,
        device=device,
        extra=extra,
    )
    model.to(device).eval()
    return result


def train(
    spec: ModelSpec,
    data: CorpusData,
    workdir: Path,
    on_metrics: MetricsCallback = no_metrics,
) -> LanguageModelPredictor:
    """Train a language model; the whole job (fit, scoring, samples) runs on training.num_threads."""
    with torch_threads(spec.training.num_threads):
        return _train(spec, data, Path(workdir), on_metrics)


def _train(
    spec: ModelSpec, data: CorpusData, workdir: Path, on_metrics: MetricsCallback
) -> LanguageModelPredictor:
    training = spec.training
    options, model_params = split_params(spec.kind, spec.params)
    config_cls, model_cls = network_classes(spec.kind)

    log.info("building the %s tokenizer from %d characters", options.tokenizer, len(data.train_text))
    # Under torchrun every rank must hold the same vocabulary: rank 0's tokenizer wins.
    tokenizer = distributed.broadcast_object(build_tokenizer(options, data.train_text))
    # The corpus is tokenised once into a memory-mapped array (nanoGPT's train.bin, keyed by the text and
    # the tokenizer): the batches read their windows from it, the stream never sits in memory whole.
    cache = workdir / "tokens"
    train_ids = cached_token_shards(
        cache, texts_key([data.train_text]), tokenizer_key(tokenizer, cache), "corpus",
        lambda: [[data.train_text]], lambda batch: [tokenizer.encode(text) for text in batch], tokenizer.vocab_size,
    ).tokens
    val_ids = torch.tensor(tokenizer.encode(data.val_text), dtype=torch.long)
    config = config_cls(vocab_size=tokenizer.vocab_size, **model_params)
    check_token_counts(train_ids, val_ids, config.block_size)

    seed_everything(training.seed)
    model = model_cls(config)
    log.info("%s: %.2fM parameters, vocabulary %d", spec.kind, model.num_params() / 1e6, config.vocab_size)
    result = fit_language_model(
        model,
        (train_ids, val_ids),
        data.val_text,
        tokenizer,
        config.block_size,
        training,
        options.eval_max_chars,
        workdir,
        on_metrics,
        extra={"kind": spec.kind, "model": config.to_dict(), "tokenizer": options.tokenizer},
    )

    predictor = LanguageModelPredictor(spec.kind, model, tokenizer, options.tokenizer)
    metrics = predictor.evaluate(data.val_text, max_chars=options.eval_max_chars)
    log.info("validation: loss %.4f, perplexity %.2f, %.4f bits/char", *metrics.values())
    samples = [predictor.generate("", options.sample_tokens, seed=seed) for seed in SAMPLE_SEEDS]
    tokens_per_step = training.batch_size * training.grad_accum * config.block_size
    predictor.metadata = {
        "metrics": metrics,
        # How much validation text `metrics` covers, so a later re-evaluation scores the same span.
        "eval_max_chars": options.eval_max_chars,
        "samples": samples,
        "training": {
            "steps": result.steps,
            "best_step": result.best_step,
            "train_time_s": result.train_time_s,
            "wall_time_s": result.wall_time_s,
            "tokens_per_s": result.samples_per_s * config.block_size,
            "tokens_seen": result.steps * tokens_per_step,
            "device": result.device,
            "params": model.num_params(),
            "vocab_size": config.vocab_size,
        },
    }
    if not all(math.isfinite(v) for v in metrics.values()):
        raise FloatingPointError(f"non-finite validation metrics: {metrics}")
    return predictor
