"""LSTM and transformer-encoder classifiers: training through the shared fit loop, and their Predictor.

``train(spec, data, workdir, on_metrics)`` fits a tokenizer on the training split, encodes
every split once into padded id tensors, and trains the network with
``components.training.engine.fit`` (early stopping on ``params.monitor``, the best
weights kept). The bundle holds ``bundle.json`` (architecture, model config, tokenizer
kind, max length, labels), the tokenizer (``vocab.json`` or ``tokenizer.json``) and
``model.safetensors``.

Params (``ModelSpec.params``; unknown keys are errors), with their defaults:

=================  ================  =================  ==========================================
param              lstm              transformer        meaning
=================  ================  =================  ==========================================
tokenizer          "word"            "bpe"              "word" (WordVocab) or "bpe" (byte-level BPE)
vocab_size         20000             8000               word: max vocabulary size; bpe: target size
min_freq           2                 2                  least count of a word / a BPE merge
lowercase          true              true               lowercase before tokenizing
embed_dim          128               -                  word embedding size
hidden_size        128               -                  LSTM units per layer (and direction)
num_layers         2                 2                  LSTM layers / transformer blocks
bidirectional      false             -                  bidirectional LSTM
pooling            "last"            -                  "last" real timestep or masked "mean"
dim                -                 128                transformer width
num_heads          -                 4                  attention heads
mlp_ratio          -                 4                  MLP width / dim
dropout            0.2               0.1                dropout
attention_dropout  -                 null               dropout on attention weights (null: dropout)
monitor            "val_macro_f1"    "val_macro_f1"     early stopping metric: val_macro_f1,
                                                        val_accuracy or val_loss
embedding_init     "random"          "random"           "random", or "ppmi_svd": token embeddings
                                                        start from word vectors learnt from the
                                                        training split (components/text/word_vectors.py)
=================  ================  =================  ==========================================

``spec.training`` drives the loop (batch size, epochs, lr, ...); ``max_length`` truncates
texts (and sizes the transformer's position table). AdamW with ``weight_decay: 0`` is
the plain Adam of the original LSTM design.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from components.config import ModelSpec, TrainingSpec
from components.data.dataset import ClassificationData
from components.models.lstm import LSTMClassifier, LSTMConfig
from components.models.transformer_encoder import TransformerClassifier, TransformerConfig
from components.predictor import ClassifierPredictor
from components.text.bpe import BPETokenizer
from components.text.word_vectors import ppmi_svd_vectors
from components.text.word_vocab import WordVocab
from components.training import checkpoint as ckpt
from components.training import distributed
from components.training.callbacks import MetricsCallback, no_metrics
from components.training.device import (
    attention_for_varied_shapes,
    model_device,
    move_to_device,
    resolve_device,
    seed_everything,
)
from components.training.engine import IndexBatches, fit

log = logging.getLogger(__name__)

WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILES = {"word": "vocab.json", "bpe": "tokenizer.json"}
RUN_FILE = "run.json"
MONITORS = ("val_macro_f1", "val_accuracy", "val_loss")

_COMMON = {
    "tokenizer": "word",
    "vocab_size": 20000,
    "min_freq": 2,
    "lowercase": True,
    "monitor": "val_macro_f1",
    "embedding_init": "random",
}
EMBEDDING_INITS = ("random", "ppmi_svd")
# Tokens either side of a word counted as its context for the PPMI-SVD vectors.
COOCCURRENCE_WINDOW = 5
DEFAULT_PARAMS: dict[str, dict[str, Any]] = {
    "lstm": {
        **_COMMON,
        "embed_dim": 128,
        "hidden_size": 128,
        "num_layers": 2,
        "bidirectional": False,
        "pooling": "last",
        "dropout": 0.2,
    },
    "transformer": {
        **_COMMON,
        "tokenizer": "bpe",
        "vocab_size": 8000,
        "dim": 128,
        "num_layers": 2,
        "num_heads": 4,
        "mlp_ratio": 4,
        "dropout": 0.1,
        "attention_dropout": None,
    },
}
# Params that are not fields of the network's config (LSTMConfig, TransformerConfig).
_NON_ARCHITECTURE_KEYS = ("tokenizer", "vocab_size", "min_freq", "lowercase", "monitor", "embedding_init")

Tokenizer = WordVocab | BPETokenizer


# ------------------------------------------------------------------------------------------
# parameters, tokenizers, models
# ------------------------------------------------------------------------------------------
def resolve_params(kind: str, params: dict[str, Any]) -> dict[str, Any]:
    """The kind's defaults overridden by `params`; unknown keys and bad values are errors."""
    if kind not in DEFAULT_PARAMS:
        raise ValueError(f"neural classifier kind must be one of {sorted(DEFAULT_PARAMS)}, got {kind!r}")
    defaults = DEFAULT_PARAMS[kind]
    unknown = set(params) - set(defaults)
    if unknown:
        raise ValueError(f"unknown {kind} params {sorted(unknown)}; known: {sorted(defaults)}")
    resolved = {**defaults, **params}
    if resolved["tokenizer"] not in TOKENIZER_FILES:
        raise ValueError(
            f"params.tokenizer must be one of {sorted(TOKENIZER_FILES)}, got {resolved['tokenizer']!r}"
        )
    if resolved["monitor"] not in MONITORS:
        raise ValueError(f"params.monitor must be one of {MONITORS}, got {resolved['monitor']!r}")
    if resolved["embedding_init"] not in EMBEDDING_INITS:
        raise ValueError(
            f"params.embedding_init must be one of {EMBEDDING_INITS}, got {resolved['embedding_init']!r}"
        )
    return resolved


def init_embedding_from_ids(embedding: nn.Embedding, token_ids: Sequence[Sequence[int]], seed: int) -> None:
    """Overwrite `embedding` with PPMI-SVD vectors of `token_ids` (whole texts, not truncated: the
    co-occurrences want every word), scaled to the standard deviation of the layer's own
    initialisation; the padding row stays zero."""
    vocab_size, dim = embedding.weight.shape
    vectors = ppmi_svd_vectors(token_ids, vocab_size, dim, window=COOCCURRENCE_WINDOW, seed=seed)
    with torch.no_grad():
        scale = embedding.weight.std()
        embedding.weight.copy_(torch.as_tensor(vectors, dtype=embedding.weight.dtype) * scale)
        if embedding.padding_idx is not None:
            embedding.weight[embedding.padding_idx].zero_()


def fit_tokenizer(params: dict[str, Any], texts: Sequence[str]) -> Tokenizer:
    if params["tokenizer"] == "word":
        return WordVocab.build(
            texts, min_freq=params["min_freq"], max_size=params["vocab_size"], lowercase=params["lowercase"]
        )
    return BPETokenizer.train(
        texts,
        vocab_size=params["vocab_size"],
        min_frequency=params["min_freq"],
        lowercase=params["lowercase"],
    )


def load_tokenizer(kind: str, path: Path) -> Tokenizer:
    return WordVocab.load(path) if kind == "word" else BPETokenizer.load(path)


def model_config(kind: str, params: dict[str, Any], vocab_size: int, num_classes: int, max_length: int):
    arch = {k: v for k, v in params.items() if k not in _NON_ARCHITECTURE_KEYS}
    if kind == "lstm":
        return LSTMConfig(vocab_size=vocab_size, num_classes=num_classes, **arch)
    return TransformerConfig(vocab_size=vocab_size, num_classes=num_classes, max_length=max_length, **arch)


def build_model(kind: str, config: LSTMConfig | TransformerConfig) -> nn.Module:
    return LSTMClassifier(config) if kind == "lstm" else TransformerClassifier(config)


def encode_padded(
    tokenizer: Tokenizer, texts: Sequence[str], max_length: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Texts -> (ids (N, L) padded with 0, lengths (N,)), L the longest encoding (<= max_length)."""
    return pad_encoded(tokenizer.encode_batch(list(texts), max_length=max_length))


def pad_encoded(encoded: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Token id lists -> (ids (N, L) padded with 0, lengths (N,)), L the longest list."""
    lengths = torch.tensor([len(e) for e in encoded], dtype=torch.long)
    width = max(1, int(lengths.max())) if len(encoded) else 1
    ids = torch.zeros(len(encoded), width, dtype=torch.long)
    for row, e in enumerate(encoded):
        if e:
            ids[row, : len(e)] = torch.tensor(e, dtype=torch.long)
    return ids, lengths


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> float:
    """Unweighted mean of per-class F1 over all classes (a class never seen nor predicted scores 0)."""
    f1 = []
    for c in range(num_classes):
        tp = np.sum((y_pred == c) & (y_true == c))
        fp = np.sum((y_pred == c) & (y_true != c))
        fn = np.sum((y_pred != c) & (y_true == c))
        f1.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return float(np.mean(f1))


def length_sorted_batches(lengths: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    """Index batches over rows sorted by length (little padding per batch)."""
    order = torch.argsort(lengths, descending=True, stable=True)
    return list(order.split(batch_size))


@torch.no_grad()
def predict_in_length_batches(
    logits_fn: Callable[[Any], torch.Tensor],
    make_batch: Callable[[torch.Tensor], Any],
    lengths: torch.Tensor,
    batch_size: int,
    num_classes: int,
    device: torch.device,
) -> np.ndarray:
    """Class probabilities (N, C), float64: `logits_fn` on each length-sorted batch, on `device`."""
    out = np.zeros((len(lengths), num_classes), dtype=np.float64)
    with attention_for_varied_shapes(device):
        for idx in length_sorted_batches(lengths, batch_size):
            logits = logits_fn(move_to_device(make_batch(idx), device)).float()  # (b, C)
            out[idx.numpy()] = torch.softmax(logits, dim=-1).cpu().double().numpy()
    return out


def classification_evaluator(
    logits_fn: Callable[[nn.Module, Any], torch.Tensor],
    make_batch: Callable[[torch.Tensor], Any],
    lengths: torch.Tensor,
    targets: torch.Tensor,
    num_classes: int,
    batch_size: int,
    max_examples: int | None = None,
    seed: int = 0,
) -> Callable[[nn.Module], dict[str, float]]:
    """An `evaluate(model)` for the fit loop: val_loss, val_accuracy and val_macro_f1.

    With `max_examples` a fixed seeded subset is scored each time (spec.eval_batches).
    """
    rows = torch.arange(len(targets))
    if max_examples is not None and max_examples < len(rows):
        rows = torch.from_numpy(np.random.default_rng(seed).permutation(len(rows))[:max_examples])
    batches = [rows[b] for b in length_sorted_batches(lengths[rows], batch_size)]

    def evaluate(model: nn.Module) -> dict[str, float]:
        device = model_device(model)
        loss_sum, preds, truth = 0.0, [], []
        for idx in batches:
            logits = logits_fn(model, move_to_device(make_batch(idx), device)).float()  # (b, C)
            y = targets[idx].to(device)
            loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
            preds.append(logits.argmax(dim=1).cpu())
            truth.append(targets[idx])
        y_pred, y_true = torch.cat(preds).numpy(), torch.cat(truth).numpy()
        return {
            "val_loss": loss_sum / len(y_true),
            "val_accuracy": float(np.mean(y_pred == y_true)),
            "val_macro_f1": macro_f1(y_true, y_pred, num_classes),
        }

    return evaluate


def training_summary(result: Any, model: nn.Module) -> dict[str, Any]:
    """Bundle metadata from a FitResult: how the weights came about."""
    summary = {
        "steps": result.steps,
        "epochs": round(result.epochs, 4),
        "best_step": result.best_step,
        "stopped_early": result.stopped_early,
        "train_time_s": round(result.train_time_s, 3),
        "samples_per_s": round(result.samples_per_s, 2),
        "device": result.device,
        "world_size": result.world_size,
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }
    summary.update({k: float(v) for k, v in result.best_metrics.items()})
    return summary


def run_fingerprint(*parts: Any) -> str:
    """A hash of what determines a training run (to resume only the same run)."""
    h = hashlib.sha256()
    for part in parts:
        h.update(json.dumps(part, sort_keys=True, default=str).encode())
        h.update(b"\x00")
    return h.hexdigest()


def data_fingerprint(data: ClassificationData) -> str:
    h = hashlib.sha256()
    for texts in (data.train_texts, data.train_labels, data.val_texts, data.val_labels, data.labels):
        for t in texts:
            h.update(t.encode("utf-8", "surrogatepass"))
            h.update(b"\x00")
        h.update(b"\x01")
    return h.hexdigest()


def resumable_checkpoint(ckpt_dir: Path, fingerprint: str) -> bool:
    """True when `ckpt_dir` holds a checkpoint of the very same run (else start afresh)."""
    run_file = ckpt_dir / RUN_FILE
    if not (ckpt.has_checkpoint(ckpt_dir) and run_file.is_file()):
        return False
    same = json.loads(run_file.read_text()).get("fingerprint") == fingerprint
    if not same:
        log.info("checkpoint in %s belongs to another run: starting afresh", ckpt_dir)
    return same


def shared_artifact(
    build: Callable[[], Any],
    save: Callable[[Any, Path], Any],
    load: Callable[[Path], Any],
    path: Path,
    reuse: bool,
) -> Any:
    """Build (rank 0) or reuse an artifact saved at `path`; under DDP the other ranks load rank 0's."""
    ctx = distributed.context()
    if reuse and path.is_file():
        return load(path)
    if ctx.is_main:
        obj = build()
        path.parent.mkdir(parents=True, exist_ok=True)
        save(obj, path)
    distributed.barrier()
    return obj if ctx.is_main else load(path)


# ------------------------------------------------------------------------------------------
# predictor
# ------------------------------------------------------------------------------------------
class NeuralClassifierPredictor(ClassifierPredictor):
    """Tokenizer + network + label map; ``predict_proba`` batches texts sorted by length."""

    def __init__(
        self,
        kind: str,
        config: dict[str, Any],
        labels: Sequence[str],
        tokenizer: Tokenizer,
        model: nn.Module,
        metadata: dict[str, Any] | None = None,
        batch_size: int = 64,
    ):
        super().__init__(kind, config, labels, metadata)
        self.tokenizer = tokenizer
        self.model = model.eval()
        self.batch_size = batch_size

    @property
    def on_accelerator(self) -> bool:
        return model_device(self.model).type != "cpu"

    @property
    def max_length(self) -> int:
        return int(self.config["max_length"])

    @torch.no_grad()
    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        if not texts:
            return np.zeros((0, len(self.labels)), dtype=np.float64)
        self.model.eval()
        ids, lengths = encode_padded(self.tokenizer, texts, self.max_length)
        return predict_in_length_batches(
            lambda batch: self.model(*batch),
            _row_batcher(ids, lengths),
            lengths,
            self.batch_size,
            len(self.labels),
            model_device(self.model),
        )

    def _save_files(self, folder: Path) -> None:
        from safetensors.torch import save_file

        self.tokenizer.save(folder / TOKENIZER_FILES[self.config["tokenizer"]])
        state = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        save_file(state, str(folder / WEIGHTS_FILE))

    @classmethod
    def _load(cls, folder: Path, manifest: dict[str, Any]) -> NeuralClassifierPredictor:
        from safetensors.torch import load_file

        kind, config = manifest["kind"], manifest["config"]
        tokenizer = load_tokenizer(config["tokenizer"], folder / TOKENIZER_FILES[config["tokenizer"]])
        model_cfg = (LSTMConfig if kind == "lstm" else TransformerConfig)(**config["model"])
        model = build_model(kind, model_cfg)
        model.load_state_dict(load_file(str(folder / WEIGHTS_FILE)))
        model.to(resolve_device("auto"))
        return cls(kind, config, manifest["labels"], tokenizer, model, manifest.get("metadata"))


# ------------------------------------------------------------------------------------------
# training
# ------------------------------------------------------------------------------------------
def _loss_fn(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> torch.Tensor:
    ids, lengths, targets = batch
    return F.cross_entropy(model(ids, lengths), targets)


def _logits_fn(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    return model(*batch)


def _row_batcher(ids: torch.Tensor, lengths: torch.Tensor, targets: torch.Tensor | None = None):
    """make_batch(indices) -> (ids (b, longest), lengths (b,)[, targets (b,)]): padding cut per batch."""

    def make_batch(idx: torch.Tensor):
        width = max(1, int(lengths[idx].max()))
        if targets is None:
            return ids[idx, :width], lengths[idx]
        return ids[idx, :width], lengths[idx], targets[idx]

    return make_batch


def train(
    spec: ModelSpec,
    data: ClassificationData,
    workdir: Path,
    on_metrics: MetricsCallback = no_metrics,
) -> NeuralClassifierPredictor:
    """Train an `lstm` or `transformer` classifier; see the module docstring for params."""
    params = resolve_params(spec.kind, spec.params)
    t: TrainingSpec = spec.training
    workdir = Path(workdir)
    labels = list(data.labels)
    index = {label: i for i, label in enumerate(labels)}
    ckpt_dir = workdir / "checkpoints" if t.checkpoint_every else None
    fingerprint = run_fingerprint(
        spec.kind,
        params,
        t.model_dump(exclude={"checkpoint_every", "num_threads", "device"}),
        data_fingerprint(data),
    )
    reuse = ckpt_dir is not None and resumable_checkpoint(ckpt_dir, fingerprint)

    log.info("fitting the %s tokenizer on %d training texts", params["tokenizer"], len(data.train_texts))
    tok_kind = params["tokenizer"]
    tokenizer = shared_artifact(
        build=lambda: fit_tokenizer(params, data.train_texts),
        save=lambda tok, path: tok.save(path),
        load=lambda path: load_tokenizer(tok_kind, path),
        path=(ckpt_dir or workdir) / TOKENIZER_FILES[tok_kind],
        reuse=reuse,
    )
    if ckpt_dir is not None and distributed.is_main_process():
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        (ckpt_dir / RUN_FILE).write_text(json.dumps({"fingerprint": fingerprint}))

    # PPMI-SVD vectors want the whole training texts: then they are encoded whole, once, and
    # truncated for training (the same ids: both tokenizers truncate by dropping trailing tokens).
    ppmi_svd = params["embedding_init"] == "ppmi_svd"
    train_encoded = tokenizer.encode_batch(
        list(data.train_texts), max_length=None if ppmi_svd else t.max_length
    )
    train_ids, train_len = pad_encoded([ids[: t.max_length] for ids in train_encoded])
    val_ids, val_len = encode_padded(tokenizer, data.val_texts, t.max_length)
    y_train = torch.tensor([index[label] for label in data.train_labels], dtype=torch.long)
    y_val = torch.tensor([index[label] for label in data.val_labels], dtype=torch.long)

    seed_everything(t.seed)
    cfg = model_config(spec.kind, params, tokenizer.vocab_size, len(labels), t.max_length)
    model = build_model(spec.kind, cfg)
    if ppmi_svd:
        log.info("initialising the token embeddings from PPMI-SVD word vectors of the training split")
        init_embedding_from_ids(model.token_embedding, train_encoded, t.seed)
    log.info(
        "training %s (%d parameters) on %d texts",
        spec.kind,
        sum(p.numel() for p in model.parameters()),
        len(y_train),
    )

    batches = IndexBatches(
        len(y_train), t.batch_size, _row_batcher(train_ids, train_len, y_train), seed=t.seed
    )
    eval_bs = max(64, t.batch_size)
    evaluate = (
        classification_evaluator(
            _logits_fn,
            _row_batcher(val_ids, val_len),
            val_len,
            y_val,
            len(labels),
            eval_bs,
            max_examples=t.eval_batches * eval_bs if t.eval_batches else None,
            seed=t.seed,
        )
        if len(y_val)
        else None
    )
    result = fit(
        model,
        batches,
        _loss_fn,
        t,
        evaluate=evaluate,
        monitor=params["monitor"],
        on_metrics=on_metrics,
        checkpoint_dir=ckpt_dir,
        resume=reuse,
        extra={"kind": spec.kind, "model": asdict(cfg)},
    )

    config = {"tokenizer": tok_kind, "max_length": t.max_length, "model": asdict(cfg), "params": params}
    return NeuralClassifierPredictor(
        spec.kind,
        config,
        labels,
        tokenizer,
        model,
        metadata=training_summary(result, model),
        batch_size=eval_bs,
    )
