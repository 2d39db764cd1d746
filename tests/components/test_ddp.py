"""DDP on CPU (gloo): two processes train like one process on the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from components.training import distributed

ROOT = Path(__file__).resolve().parents[2]

# Shared by the two ranks and the single-process reference: data, model, loss and spec.
COMMON = textwrap.dedent(
    """
    import torch, torch.nn as nn, torch.nn.functional as F
    from components.config import TrainingSpec
    from components.training.device import seed_everything
    from components.training.batches import IndexBatches
    from components.training.engine import fit

    g = torch.Generator().manual_seed(0)
    X = torch.randn(64, 6, generator=g)
    Y = (X[:, 0] - X[:, 2] > 0).long()
    SPEC = TrainingSpec(device="cpu", epochs=2, batch_size=16, lr=1e-2, warmup_steps=2, grad_clip=0.5,
                        eval_every=4, num_threads=1)

    def build():
        seed_everything(0)
        return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 2))

    def loss_fn(model, batch):
        x, y = batch
        return F.cross_entropy(model(x), y)

    def train():
        model = build()
        result = fit(model, IndexBatches(64, SPEC.batch_size, lambda i: (X[i], Y[i]), seed=3), loss_fn, SPEC,
                     evaluate=lambda m: {"val_loss": F.cross_entropy(m(X), Y).item()})
        return model, result
    """
)

WORKER = COMMON + textwrap.dedent(
    """
    import json, sys
    from components.training import distributed
    ctx = distributed.init_distributed("cpu")
    model, result = train()
    if ctx.is_main:
        torch.save(model.state_dict(), sys.argv[1] + "/ddp.pt")
        json.dump({"world_size": result.world_size, "steps": result.steps, "samples": result.samples,
                   "history": result.history}, open(sys.argv[1] + "/result.json", "w"))
    distributed.cleanup()
    """
)


def torchrun(args: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_two_gloo_processes_match_one_process_on_the_same_global_batch(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    torchrun([str(script), str(tmp_path)])
    ddp_state = torch.load(tmp_path / "ddp.pt", weights_only=True)
    ddp_result = json.loads((tmp_path / "result.json").read_text())
    assert ddp_result["world_size"] == 2 and ddp_result["steps"] == 8 and ddp_result["samples"] == 128

    namespace: dict = {}
    threads = torch.get_num_threads()
    try:
        exec(compile(COMMON, "common", "exec"), namespace)  # the very same definitions, one process
        model, result = namespace["train"]()
    finally:
        torch.set_num_threads(threads)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(ddp_state[key], value, rtol=1e-5, atol=1e-6)
    for key in ("val_loss", "train_loss"):  # the logged train loss is the global batch's, not rank 0's
        single = [h[key] for h in result.history if key in h]
        ddp = [h[key] for h in ddp_result["history"] if key in h]
        assert len(ddp) == len(single) > 1 and ddp == pytest.approx(single, rel=1e-5)


@pytest.mark.slow
def test_launch_trains_a_candidate_and_rank_zero_saves_the_bundle(tmp_path):
    pd = pytest.importorskip("pandas")
    from components.config import ModelSpec, TrainingSpec
    from components.predictor import load_predictor

    data_dir = tmp_path / "data"
    data_dir.mkdir()
    texts = {"sport": "goal match team win", "tech": "chip phone code data"}
    for split, n in (("train", 32), ("val", 8), ("test", 8)):
        rows = [
            {"text": f"{texts[label]} {i}", "label": label} for i in range(n // 2) for label in sorted(texts)
        ]
        pd.DataFrame(rows).to_parquet(data_dir / f"{split}.parquet", index=False)
    (data_dir / "manifest.json").write_text(json.dumps({"task": "classification"}))
    spec = ModelSpec(
        name="tiny-lstm",
        kind="lstm",
        params={"embed_dim": 16, "hidden_size": 16, "min_freq": 1},
        training=TrainingSpec(device="cpu", epochs=2, batch_size=8, lr=1e-2, max_length=8),
    )
    (tmp_path / "spec.json").write_text(spec.model_dump_json())

    distributed.launch(
        2,
        [
            "--spec",
            str(tmp_path / "spec.json"),
            "--data",
            str(data_dir),
            "--workdir",
            str(tmp_path / "work"),
            "--out",
            str(tmp_path / "bundle"),
            "--metrics",
            str(tmp_path / "metrics.jsonl"),
        ],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )

    predictor = load_predictor(tmp_path / "bundle")
    assert predictor.metadata["world_size"] == 2
    assert predictor.predict_proba(["goal match"]).shape == (1, 2)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert any("train_loss" in r["metrics"] for r in records)
    assert any("val_macro_f1" in r["metrics"] for r in records)


def test_launch_command_runs_the_ddp_entry_module_under_torchrun():
    cmd = distributed.launch_command(4, ["--spec", "s.json"])
    assert cmd[1:3] == ["-m", "torch.distributed.run"]
    assert cmd[3:8] == ["--standalone", "--nproc_per_node", "4", "-m", "components.training.ddp_main"]
    assert cmd[-2:] == ["--spec", "s.json"]


def test_single_process_context_is_rank_zero_of_one():
    ctx = distributed.context()
    assert (ctx.rank, ctx.world_size, ctx.enabled, ctx.is_main) == (0, 1, False, True)
    assert distributed.broadcast_object({"a": 1}) == {"a": 1}
