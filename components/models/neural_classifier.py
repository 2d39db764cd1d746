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

import logging
from collections.abc import Iterable, Sequence
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from components.config import ModelSpec, TrainingSpec
from components.data.dataset import ClassificationData
from components.explain.occlusion import truncation_offset
from components.models.registry import model_kind
from components.models.torch_classifier import TorchClassifierPredictor
from components.text.bpe import BPETokenizer
from components.text.classifier_tokenizer import (
    TOKENIZER_FILES,
    encode_padded,
    fit_tokenizer,
    load_tokenizer,
)
from components.text.oov import split_word_share, unknown_id_share
from components.text.token_shards import cached_token_shards, fingerprint_file, in_batches, texts_key
from components.text.word_vectors import ppmi_svd_vectors
from components.training.batches import IndexBatches
from components.training.callbacks import MetricsCallback, no_metrics
from components.training.classifier_fit import (
    MONITORS,
    classification_evaluator,
    fit_classifier,
    start_run,
    training_summary,
)
from components.training.device import model_device, resolve_device, seed_everything
from components.training.distributed import shared_artifact
from components.training.length_batches import predict_in_length_batches
from components.training.resume import mark_run

log = logging.getLogger(__name__)

WEIGHTS_FILE = "model.safetensors"

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


def init_embedding_from_ids(embedding: nn.Embedding, token_ids: Iterable[Sequence[int]], seed: int) -> None:
    """Overwrite `embedding` with PPMI-SVD vectors of `token_ids` (whole texts, not truncated: the
    co-occurrences want every word), scaled to the standard deviation of the layer's own
    initialisation; the padding row stays zero."""
    vocab_size, dim = embedding.weight.shape
    # A small dataset's vocabulary can be smaller than the embedding: the SVD then fills as many
    # dimensions as it has (at most vocab_size - 1) and the others keep their random start.
    rank = min(dim, vocab_size - 1)
    if rank < dim:
        log.info("PPMI-SVD fills %d of the %d embedding dimensions (vocabulary of %d)", rank, dim, vocab_size)
    vectors = ppmi_svd_vectors(token_ids, vocab_size, rank, window=COOCCURRENCE_WINDOW, seed=seed)
    with torch.no_grad():
        scale = embedding.weight.std()
        embedding.weight[:, :rank] = torch.as_tensor(vectors, dtype=embedding.weight.dtype) * scale
        if embedding.padding_idx is not None:
            embedding.weight[embedding.padding_idx].zero_()


def model_config(kind: str, params: dict[str, Any], vocab_size: int, num_classes: int, max_length: int):
    """The network's config (LSTMConfig or TransformerConfig, as the registry names it)."""
    arch = {k: v for k, v in params.items() if k not in _NON_ARCHITECTURE_KEYS}
    config_cls = model_kind(kind).config_class()
    if "max_length" in {f.name for f in fields(config_cls)}:
        arch["max_length"] = max_length  # the transformer's position table
    return config_cls(vocab_size=vocab_size, num_classes=num_classes, **arch)


def build_model(kind: str, config: Any) -> nn.Module:
    return model_kind(kind).network_class()(config)


# ------------------------------------------------------------------------------------------
# predictor
# ------------------------------------------------------------------------------------------
class NeuralClassifierPredictor(TorchClassifierPredictor):
    """Tokenizer + network + label map; ``predict_proba`` batches texts sorted by length."""

    default_batch_size = 64

    def read_until(self, text: str) -> int:
        return truncation_offset(text, lambda prefix: len(self.tokenizer.encode(prefix)), self.max_length)

    def oov_shares(self, texts: Sequence[str]) -> list[float]:
        """Word vocabulary: the share of tokens encoded as <unk>. Byte-level BPE never has an unknown
        token, so there: the share of words it cannot hold whole (components/text/oov.py)."""
        if isinstance(self.tokenizer, BPETokenizer):
            encodings = self.tokenizer.tokenizer.encode_batch(list(texts), add_special_tokens=False)
            return [split_word_share(e.word_ids, e.ids, self.tokenizer.unk_id) for e in encodings]
        return [unknown_id_share(ids, self.tokenizer.unk_id) for ids in self.tokenizer.encode_batch(texts)]

    def embedding_layer(self) -> nn.Module:
        return self.model.token_embedding

    def gradient_inputs(self, texts: list[str]):
        ids, lengths = encode_padded(self.tokenizer, texts, self.max_length)
        if isinstance(self.tokenizer, BPETokenizer):
            encodings = self.tokenizer.tokenizer.encode_batch(texts, add_special_tokens=False)
            spans = [e.offsets[: self.max_length] for e in encodings]
        else:
            spans = [self.tokenizer.token_spans(text)[: self.max_length] for text in texts]
        # Baseline: every token the padding one, the lengths kept (the LSTM's pad row is zero).
        return ids, torch.full_like(ids, self.tokenizer.pad_id), (lengths,), spans

    def predict_texts(self, texts: list[str]) -> np.ndarray:
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
        model = build_model(kind, model_kind(kind).config_class()(**config["model"]))
        model.load_state_dict(load_file(str(folder / WEIGHTS_FILE)))
        model.to(resolve_device("auto"))
        return cls(kind, config, manifest["labels"], tokenizer, model, manifest.get("metadata"))


# ------------------------------------------------------------------------------------------
# training
# ------------------------------------------------------------------------------------------
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
    run = start_run(spec.kind, params, (), t, data, workdir)
    labels, ckpt_dir = run.labels, run.ckpt_dir

    log.info("fitting the %s tokenizer on %d training texts", params["tokenizer"], len(data.train_texts))
    tok_kind = params["tokenizer"]
    tokenizer = shared_artifact(
        build=lambda: fit_tokenizer(params, data.train_texts),
        save=lambda tok, path: tok.save(path),
        load=lambda path: load_tokenizer(tok_kind, path),
        path=(ckpt_dir or workdir) / TOKENIZER_FILES[tok_kind],
        reuse=run.resume,
    )
    if ckpt_dir is not None:
        mark_run(ckpt_dir, run.fingerprint)

    # The training split is encoded whole, once, into memory-mapped token ids keyed by its content and
    # the tokenizer (a resumed run reuses them); batches read their rows from the map, truncated to
    # max_length: the same ids as encoding truncated (both tokenizers drop trailing tokens), without
    # an (N, longest) tensor in memory. PPMI-SVD vectors read the whole documents from it too.
    ppmi_svd = params["embedding_init"] == "ppmi_svd"
    train_tokens = cached_token_shards(
        workdir / "tokens", texts_key(data.train_texts),
        fingerprint_file((ckpt_dir or workdir) / TOKENIZER_FILES[tok_kind]), "train",
        lambda: in_batches(data.train_texts), lambda batch: tokenizer.encode_batch(list(batch)), tokenizer.vocab_size,
    )
    val_ids, val_len = encode_padded(tokenizer, data.val_texts, t.max_length)
    y_train, y_val = run.label_ids(data.train_labels), run.label_ids(data.val_labels)

    seed_everything(t.seed)
    cfg = model_config(spec.kind, params, tokenizer.vocab_size, len(labels), t.max_length)
    model = build_model(spec.kind, cfg)
    if ppmi_svd:
        log.info("initialising the token embeddings from PPMI-SVD word vectors of the training split")
        init_embedding_from_ids(model.token_embedding, train_tokens.documents(), t.seed)
    log.info(
        "training %s (%d parameters) on %d texts",
        spec.kind,
        sum(p.numel() for p in model.parameters()),
        len(y_train),
    )

    batches = IndexBatches(len(y_train), t.batch_size, train_tokens.batcher(t.max_length, y_train), seed=t.seed)
    eval_bs = max(64, t.batch_size)
    evaluate = classification_evaluator(_row_batcher(val_ids, val_len), val_len, y_val, len(labels), eval_bs, t)
    result = fit_classifier(
        model, batches, evaluate, t, params, run, on_metrics, extra={"kind": spec.kind, "model": asdict(cfg)}
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
