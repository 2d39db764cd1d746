"""The shared fit loop: learning, schedule, accumulation, early stopping, batch sources, devices."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from components.config import TrainingSpec
from components.training.batches import IndexBatches, TokenWindowBatches
from components.training.device import autocast_context, resolve_device, seed_everything
from components.training.engine import fit, lr_at


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Every test here runs torch on one thread (the fixture is in conftest.py)."""


def toy_problem(n: int = 128, dim: int = 8, classes: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, dim, generator=g)
    y = (X @ torch.randn(dim, classes, generator=g)).argmax(dim=1)
    return X, y


def toy_model(dim: int = 8, classes: int = 3, dropout: float = 0.0, seed: int = 0) -> nn.Module:
    seed_everything(seed)
    return nn.Sequential(nn.Linear(dim, 32), nn.ReLU(), nn.Dropout(dropout), nn.Linear(32, classes))


def ce_loss(model, batch):
    x, y = batch
    return F.cross_entropy(model(x), y)


def spec(**overrides) -> TrainingSpec:
    base = {"device": "cpu", "epochs": 3, "batch_size": 16, "lr": 1e-2, "num_threads": 1}
    return TrainingSpec(**{**base, **overrides})


def test_loss_falls_and_metrics_reach_the_callback():
    X, y = toy_problem()
    model = toy_model()
    records = []
    batches = IndexBatches(len(y), 16, lambda i: (X[i], y[i]), seed=0)

    def evaluate(m):
        logits = m(X)
        return {
            "val_loss": F.cross_entropy(logits, y).item(),
            "val_accuracy": (logits.argmax(1) == y).float().mean(),
        }

    result = fit(
        model,
        batches,
        ce_loss,
        spec(epochs=6),
        evaluate=evaluate,
        monitor="val_accuracy",
        on_metrics=lambda m, s: records.append((s, dict(m))),
        log_every=4,
    )

    assert result.steps == 6 * math.ceil(128 / 16)
    train = [m for _, m in records if "train_loss" in m]
    assert {"train_loss", "lr", "samples_per_s", "grad_norm"} <= set(train[0])
    assert train[-1]["train_loss"] < 0.7 * train[0]["train_loss"]
    evals = [m for _, m in records if "val_accuracy" in m]
    assert len(evals) == 6  # once per epoch by default
    assert result.best_metric == max(e["val_accuracy"] for e in evals) > 0.8
    assert result.samples == 6 * 128 and result.samples_per_s > 0
    assert result.history[-1] == {"step": result.steps, "best_val_accuracy": result.best_metric}


def test_warmup_then_cosine_to_min_lr():
    s = spec(lr=1.0, min_lr=0.1, warmup_steps=4)
    assert lr_at(0, s, 20) == pytest.approx(1 / 5)
    assert lr_at(3, s, 20) == pytest.approx(4 / 5)
    assert lr_at(4, s, 20) == pytest.approx(1.0)
    assert lr_at(12, s, 20) == pytest.approx(0.55)  # half way through the decay
    assert lr_at(20, s, 20) == pytest.approx(0.1)
    assert lr_at(20, spec(lr=1.0), 20) == pytest.approx(0.1)  # min_lr None -> lr / 10
    assert lr_at(7, spec(lr=1.0, min_lr=1.0), 20) == pytest.approx(1.0)  # constant


def test_gradient_accumulation_equals_the_larger_batch():
    X, y = toy_problem(n=64)
    results = []
    for batch_size, accum in ((16, 1), (8, 2)):
        model = toy_model()
        batches = IndexBatches(len(y), batch_size, lambda i: (X[i], y[i]), seed=3)
        fit(model, batches, ce_loss, spec(batch_size=batch_size, grad_accum=accum, epochs=2, grad_clip=0.5))
        results.append(model.state_dict())
    for key in results[0]:
        torch.testing.assert_close(results[0][key], results[1][key], rtol=1e-5, atol=1e-6)


def test_same_seed_same_weights_with_dropout():
    X, y = toy_problem()
    states = []
    for _ in range(2):
        model = toy_model(dropout=0.3)
        fit(model, IndexBatches(len(y), 16, lambda i: (X[i], y[i]), seed=1), ce_loss, spec(epochs=2))
        states.append(model.state_dict())
    for key in states[0]:
        assert torch.equal(states[0][key], states[1][key])


def test_early_stopping_stops_and_restores_the_best_weights():
    X, y = toy_problem()
    model = toy_model()
    scripted = iter([0.5, 0.9, 0.6, 0.7, 0.8, 0.95])
    seen = []

    def evaluate(m):
        seen.append({k: v.clone() for k, v in m.state_dict().items()})
        return {"val_macro_f1": next(scripted)}

    result = fit(
        model,
        IndexBatches(len(y), 16, lambda i: (X[i], y[i]), seed=0),
        ce_loss,
        spec(max_steps=100, eval_every=2, early_stopping_patience=2),
        evaluate=evaluate,
        monitor="val_macro_f1",
    )
    assert result.stopped_early and result.steps == 8  # evaluations at 2, 4 (best), 6, 8
    assert result.best_step == 4 and result.best_metric == 0.9
    for key, value in model.state_dict().items():
        assert torch.equal(value, seen[1][key])


def test_monitor_min_mode_is_inferred_from_loss_names():
    X, y = toy_problem()
    values = iter([3.0, 2.0, 2.5])
    result = fit(
        toy_model(),
        IndexBatches(len(y), 16, lambda i: (X[i], y[i])),
        ce_loss,
        spec(max_steps=6, eval_every=2),
        evaluate=lambda m: {"val_loss": next(values)},
    )
    assert result.best_metric == 2.0 and result.best_step == 4


def test_index_batches_cover_each_epoch_in_a_seeded_order():
    batches = IndexBatches(10, 4, lambda i: i, seed=7)
    epoch0 = list(batches.batches(0))
    assert [len(b) for b in epoch0] == [4, 4, 2]
    assert sorted(torch.cat(epoch0).tolist()) == list(range(10))
    assert all(
        torch.equal(a, b)
        for a, b in zip(epoch0, IndexBatches(10, 4, lambda i: i, seed=7).batches(0), strict=True)
    )
    assert not torch.equal(torch.cat(epoch0), torch.cat(list(batches.batches(1))))
    assert torch.equal(list(batches.batches(0, start=2))[0], epoch0[2])  # resume skips consumed batches


def test_shards_together_make_the_global_batch():
    batches = IndexBatches(12, 4, lambda i: i, seed=0)
    shards = [batches.shard(r, 2) for r in range(2)]
    for full, a, b in zip(batches.batches(0), *(s.batches(0) for s in shards), strict=True):
        assert len(a) == len(b) == 2
        assert torch.equal(torch.cat([a, b]), full)
    with pytest.raises(ValueError, match="divisible"):
        batches.shard(0, 3)


def test_token_windows_are_shifted_pairs_and_seeded():
    data = torch.arange(100)
    source = TokenWindowBatches(data, block_size=8, batch_size=4, seed=0)
    assert len(source) == 99 // 32
    x, y = next(source.batches(0))
    assert x.shape == y.shape == (4, 8)
    assert torch.equal(y, x + 1)
    assert torch.equal(next(TokenWindowBatches(data, 8, 4, seed=0).batches(0))[0], x)
    shard_rows = torch.cat([next(source.shard(r, 2).batches(0))[0] for r in range(2)])
    assert torch.equal(shard_rows, x)


def test_a_plain_list_of_batches_works_and_threads_are_restored(capsys):
    X, y = toy_problem(n=32)
    batches = [(X[i : i + 8], y[i : i + 8]) for i in range(0, 32, 8)]
    torch.set_num_threads(1)
    result = fit(toy_model(), batches, ce_loss, spec(epochs=2, num_threads=2), progress=True)
    assert result.steps == 8 and torch.get_num_threads() == 1
    assert "/8 [" in capsys.readouterr().err  # a tqdm bar over the 8 steps


def test_a_non_finite_loss_is_an_error():
    X, y = toy_problem(n=32)
    with pytest.raises(FloatingPointError, match="nan"):
        fit(toy_model(), [(X, y)], lambda m, b: ce_loss(m, b) * float("nan"), spec(epochs=1))


def test_cpu_device_uses_fp32_and_no_autocast():
    device = resolve_device("cpu")
    with autocast_context(device):
        assert torch.ones(2, 2).matmul(torch.ones(2, 2)).dtype == torch.float32


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_trains_under_bf16_autocast_with_fused_adamw():
    X, y = toy_problem()
    seen = {}

    def loss_fn(model, batch):
        x, t = batch
        logits = model(x)
        seen["dtype"], seen["device"] = logits.dtype, x.device.type
        return F.cross_entropy(logits.float(), t)

    model = toy_model()
    result = fit(
        model, IndexBatches(len(y), 16, lambda i: (X[i], y[i])), loss_fn, spec(device="cuda", epochs=3)
    )
    assert result.device.startswith("cuda") and seen == {"dtype": torch.bfloat16, "device": "cuda"}
    assert next(model.parameters()).device.type == "cuda"
    assert [h["train_loss"] for h in result.history if "train_loss" in h][-1] < 1.0


def test_inference_on_cuda_leaves_cudnn_attention_out_and_restores_it():
    # Only flips PyTorch's backend switches, so it is checked without a GPU.
    from components.training.device import attention_for_varied_shapes

    before = torch.backends.cuda.cudnn_sdp_enabled()
    with attention_for_varied_shapes(torch.device("cuda")):
        assert not torch.backends.cuda.cudnn_sdp_enabled()
        assert torch.backends.cuda.flash_sdp_enabled() and torch.backends.cuda.mem_efficient_sdp_enabled()
    assert torch.backends.cuda.cudnn_sdp_enabled() == before
    with attention_for_varied_shapes(torch.device("cpu")):
        assert torch.backends.cuda.cudnn_sdp_enabled() == before
