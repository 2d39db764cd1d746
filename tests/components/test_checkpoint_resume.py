"""Checkpoint/resume: a run stopped after step k and resumed ends where an uninterrupted run ends."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from components.config import TrainingSpec
from components.training import checkpoint as ckpt
from components.training.batches import IndexBatches
from components.training.device import seed_everything
from components.training.engine import fit


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Every test here runs torch on one thread (the fixture is in conftest.py)."""


X = torch.randn(90, 6, generator=torch.Generator().manual_seed(0))
Y = (X[:, 0] + X[:, 1] > 0).long()


def model_with_dropout() -> nn.Module:
    seed_everything(0)
    return nn.Sequential(nn.Linear(6, 24), nn.ReLU(), nn.Dropout(0.2), nn.Linear(24, 2))


def loss_fn(model, batch):
    x, y = batch
    return F.cross_entropy(model(x), y)


def evaluate(model):
    return {"val_loss": F.cross_entropy(model(X), Y).item()}


def batches():
    return IndexBatches(len(Y), 8, lambda i: (X[i], Y[i]), seed=5)  # 12 batches per epoch, the last short


SPEC = TrainingSpec(
    device="cpu",
    epochs=3,
    batch_size=8,
    grad_accum=2,
    lr=5e-3,
    warmup_steps=3,
    eval_every=3,
    early_stopping_patience=50,
    checkpoint_every=4,
    num_threads=1,
)


def run(spec: TrainingSpec, folder=None, resume=False, stop_after=None, on_metrics=None):
    model = model_with_dropout()
    kwargs = {"on_metrics": on_metrics} if on_metrics else {}
    result = fit(
        model,
        batches(),
        loss_fn,
        spec,
        evaluate=evaluate,
        checkpoint_dir=folder,
        resume=resume,
        stop_after=stop_after,
        **kwargs,
    )
    return model, result


def assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.allclose(x, y, atol=1e-6), name


def without_timing(history):
    return [{k: v for k, v in h.items() if k != "samples_per_s"} for h in history]


def test_stopped_then_resumed_equals_uninterrupted(tmp_path):
    full, full_result = run(SPEC)
    _, first = run(SPEC, tmp_path, stop_after=7)  # "killed" after step 7 (mid-epoch, odd step)
    assert first.interrupted and first.steps == 7
    resumed, result = run(SPEC, tmp_path, resume=True)
    assert result.steps == full_result.steps == 18  # 3 epochs x 12 micro-batches / 2
    assert_same_weights(resumed, full)
    assert without_timing(result.history) == without_timing(full_result.history)  # losses, evaluations, best


def test_resume_from_the_last_periodic_checkpoint_after_a_crash(tmp_path):
    full, _ = run(SPEC)

    def crash_at_step_10(metrics, step):
        if step == 10 and "train_loss" in metrics:
            raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError, match="simulated crash"):
        run(SPEC, tmp_path, on_metrics=crash_at_step_10)
    assert ckpt.load_checkpoint(tmp_path)["step"] == 8  # the last checkpoint_every=4 boundary
    resumed, _ = run(SPEC, tmp_path, resume=True)
    assert_same_weights(resumed, full)


def test_run_with_max_steps_k_then_resume_with_the_full_max_steps(tmp_path):
    constant = SPEC.model_copy(update={"warmup_steps": 0, "min_lr": SPEC.lr, "epochs": 1, "max_steps": 15})
    full, _ = run(constant)
    run(constant.model_copy(update={"max_steps": 6}), tmp_path)
    resumed, result = run(constant, tmp_path, resume=True)
    assert result.steps == 15
    assert_same_weights(resumed, full)


def test_checkpoint_holds_the_training_state(tmp_path):
    run(SPEC, tmp_path, stop_after=5)
    state = ckpt.load_checkpoint(tmp_path)  # weights_only=True: no pickled code
    assert state["step"] == 5 and state["finished"] is False
    assert state["data"] == {"epoch": 0, "batch": 10, "micro_batches": 10}
    assert set(state) >= {"model", "optimizer", "best", "history", "config", "samples"}
    assert state["config"]["checkpoint_every"] == 4
    assert (tmp_path / "rng-rank0.pt").is_file()


def test_resume_without_a_checkpoint_starts_fresh_and_a_finished_run_stays_finished(tmp_path):
    fresh, result = run(SPEC, tmp_path, resume=True)
    assert result.steps == 18
    again, second = run(SPEC, tmp_path, resume=True)
    assert second.steps == 18 and second.samples == 0  # nothing left to do
    assert_same_weights(again, fresh)  # the best weights come back from the checkpoint


def test_rng_state_round_trip():
    import random

    import numpy as np

    state = ckpt.capture_rng_state()
    expected = (torch.rand(3), np.random.rand(3), random.random())
    ckpt.restore_rng_state(state)
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1])
    assert random.random() == expected[2]
