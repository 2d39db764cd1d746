"""What the text-classifier trainers share around the fit loop: the evaluator, its monitors, the summary."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from sklearn.utils.class_weight import compute_class_weight

from components.config import TrainingSpec
from components.data.dataset import ClassificationData
from components.evaluation.classification import macro_f1
from components.training.callbacks import MetricsCallback
from components.training.device import model_device, move_to_device
from components.training.engine import FitResult, fit
from components.training.length_batches import length_sorted_batches
from components.training.resume import data_fingerprint, resumable_checkpoint, run_fingerprint

# The metrics `classification_evaluator` returns: what `params.monitor` may name.
MONITORS = ("val_macro_f1", "val_accuracy", "val_loss")


@dataclass(frozen=True)
class ClassifierRun:
    """A classifier training run's labels and checkpoint state, as both trainers set them up."""

    labels: list[str]
    ckpt_dir: Path | None
    fingerprint: str
    resume: bool  # a checkpoint of this very run (same data, params, code) is there to resume
    class_weights: torch.Tensor | None = None  # per label, in `labels` order; None: every class weighs 1

    def label_ids(self, labels) -> torch.Tensor:
        index = {label: i for i, label in enumerate(self.labels)}
        return torch.tensor([index[label] for label in labels], dtype=torch.long)


def start_run(kind: str, params: dict[str, Any], identity: tuple, spec: TrainingSpec, data: ClassificationData,
              workdir: Path) -> ClassifierRun:
    """Labels, checkpoint folder and fingerprint of a run; `identity` adds what else makes it the same run."""
    ckpt_dir = Path(workdir) / "checkpoints" if spec.checkpoint_every else None
    fingerprint = run_fingerprint(
        kind, params, *identity, spec.model_dump(exclude={"checkpoint_every", "num_threads", "device"}),
        data_fingerprint(data),
    )
    resume = ckpt_dir is not None and resumable_checkpoint(ckpt_dir, fingerprint)
    labels = list(data.labels)
    return ClassifierRun(labels, ckpt_dir, fingerprint, resume, loss_class_weights(spec, labels, data.train_labels))


def loss_class_weights(spec: TrainingSpec, labels: list[str], train_labels) -> torch.Tensor | None:
    """The cross-entropy's per-class weights for `spec.class_weight` (scikit-learn's "balanced" rule)."""
    if spec.class_weight == "none":
        return None
    present = sorted(set(train_labels))
    weights = dict(zip(present, compute_class_weight("balanced", classes=np.array(present), y=np.array(train_labels)),
                       strict=True))
    # A label with no training row gets weight 1: it cannot be balanced, and 0 would hide it.
    return torch.tensor([weights.get(label, 1.0) for label in labels], dtype=torch.float32)


def fit_classifier(model: nn.Module, batches, evaluate, spec: TrainingSpec, params: dict[str, Any],
                   run: ClassifierRun, on_metrics: MetricsCallback, extra: dict[str, Any],
                   param_groups=None) -> FitResult:
    """The fit loop with cross-entropy, the configured monitor and the run's checkpoints."""
    loss = cross_entropy_loss if run.class_weights is None else partial(cross_entropy_loss, weight=run.class_weights)
    return fit(
        model,
        batches,
        loss,
        spec,
        evaluate=evaluate,
        monitor=params["monitor"],
        on_metrics=on_metrics,
        checkpoint_dir=run.ckpt_dir,
        resume=run.resume,
        param_groups=param_groups,
        extra=extra,
    )


def cross_entropy_loss(model: nn.Module, batch: tuple[torch.Tensor, ...],
                       weight: torch.Tensor | None = None) -> torch.Tensor:
    """The fit loop's `loss_fn` for a batch of (*inputs, targets); `weight` per class, as F.cross_entropy takes it."""
    *inputs, targets = batch
    logits = model(*inputs)
    return F.cross_entropy(logits, targets, weight=None if weight is None else weight.to(logits.device))


def classification_evaluator(
    make_batch: Callable[[torch.Tensor], Any],
    lengths: torch.Tensor,
    targets: torch.Tensor,
    num_classes: int,
    batch_size: int,
    spec: TrainingSpec,
) -> Callable[[nn.Module], dict[str, float]] | None:
    """An `evaluate(model)` for the fit loop: val_loss, val_accuracy and val_macro_f1 of
    ``model(*make_batch(indices))`` over length-sorted batches; None without validation rows.

    With ``spec.eval_batches`` a fixed subset of that many batches, seeded by ``spec.seed``, is
    scored each time.
    """
    if not len(targets):
        return None
    max_examples = spec.eval_batches * batch_size if spec.eval_batches else None
    rows = torch.arange(len(targets))
    if max_examples is not None and max_examples < len(rows):
        rows = torch.from_numpy(np.random.default_rng(spec.seed).permutation(len(rows))[:max_examples])
    batches = [rows[b] for b in length_sorted_batches(lengths[rows], batch_size)]

    def evaluate(model: nn.Module) -> dict[str, float]:
        device = model_device(model)
        loss_sum, preds, truth = 0.0, [], []
        for idx in batches:
            logits = model(*move_to_device(make_batch(idx), device)).float()  # (b, C)
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


def training_summary(result: FitResult, model: nn.Module) -> dict[str, Any]:
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
