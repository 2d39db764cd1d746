"""Data-parallel training when launched by torchrun; a no-op in a single process.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK. :func:`init_distributed` then joins the
process group (NCCL on CUDA, gloo on CPU); the fit loop asks :func:`context` whether it
runs distributed and, if so, wraps the model in DistributedDataParallel, gives each rank
its share of every global batch (see ``batches.IndexBatches.shard``) and lets rank 0 alone
log, evaluate and save. TrainingSpec.batch_size is the *global* batch: the same config
trains the same way on 1 or N processes.

:func:`launch` is what ``maas train --nproc N`` calls: it starts
``python -m torch.distributed.run --standalone --nproc_per_node N -m components.training.ddp_main ...``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

DDP_ENTRY_MODULE = "components.training.ddp_main"


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def context() -> DistContext:
    """The current process's place in the process group (rank 0 of 1 when not distributed)."""
    if dist.is_available() and dist.is_initialized():
        return DistContext(
            rank=dist.get_rank(),
            local_rank=int(os.environ.get("LOCAL_RANK", 0)),
            world_size=dist.get_world_size(),
        )
    return DistContext()


def is_main_process() -> bool:
    return context().is_main


def init_distributed(device: str = "auto") -> DistContext:
    """Join the process group torchrun prepared (NCCL on CUDA, gloo otherwise); idempotent."""
    if not launched_by_torchrun():
        return DistContext()
    if not dist.is_initialized():
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        use_cuda = device in ("auto", "cuda") and torch.cuda.is_available()
        if use_cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return context()


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def wrap_model(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """DistributedDataParallel around `model` (already on `device`)."""
    from torch.nn.parallel import DistributedDataParallel

    if device.type == "cuda":
        return DistributedDataParallel(model, device_ids=[device.index], output_device=device.index)
    return DistributedDataParallel(model)


def barrier() -> None:
    if context().enabled:
        dist.barrier()


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Average `tensor` over the ranks, in place (identity when not distributed; gloo has no AVG op)."""
    if context().enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor /= dist.get_world_size()
    return tensor


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank `src`'s object on every rank (identity when not distributed)."""
    if not context().enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def shared_artifact(
    build: Callable[[], Any],
    save: Callable[[Any, Path], Any],
    load: Callable[[Path], Any],
    path: Path,
    reuse: bool,
) -> Any:
    """Build (rank 0) or reuse an artifact saved at `path`; under DDP the other ranks load rank 0's."""
    ctx = context()
    if reuse and path.is_file():
        return load(path)
    if ctx.is_main:
        obj = build()
        path.parent.mkdir(parents=True, exist_ok=True)
        save(obj, path)
    barrier()
    return obj if ctx.is_main else load(path)


def launch_command(nproc: int, args: list[str]) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        str(int(nproc)),
        "-m",
        DDP_ENTRY_MODULE,
        *args,
    ]


def launch(
    nproc: int, args: list[str], cwd: str | Path | None = None, env: dict[str, str] | None = None
) -> None:
    """Run ``components.training.ddp_main`` on `nproc` local processes; raises if any fails.

    `args` are ddp_main's arguments (``--spec spec.json --data DIR --workdir DIR --out DIR``).
    The repository root is put on PYTHONPATH so the children import this code base.
    """
    if nproc < 1:
        raise ValueError(f"nproc must be at least 1, got {nproc}")
    root = Path(__file__).resolve().parents[2]
    child_env = dict(os.environ if env is None else env)
    child_env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), child_env.get("PYTHONPATH", "")) if p)
    # Without this torchrun sets OMP_NUM_THREADS=1 with a warning; share the cores out instead.
    child_env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    subprocess.run(launch_command(nproc, args), cwd=cwd or root, env=child_env, check=True)
