"""Training checkpoints: everything needed to continue a run exactly where it stopped.

A checkpoint folder holds ``checkpoint.pt`` (written by the main process) and one
``rng-rank<r>.pt`` per process. ``checkpoint.pt`` is a plain dict of tensors, numbers and
strings, so it loads with ``torch.load(weights_only=True)`` (no pickled code runs):

    format        CHECKPOINT_FORMAT
    model         the unwrapped model's state_dict (no DDP / torch.compile prefixes)
    optimizer     optimizer.state_dict()
    step          optimizer steps done; the learning-rate schedule is a pure function of it,
                  so the step *is* the scheduler state
    data          {"epoch", "batch", "micro_batches"}: where the next micro-batch comes from
    samples       samples seen so far (all processes)
    best          {"metric", "step", "bad_evals", "state"}: early stopping and the best weights
    history       the metrics records so far
    finished      True once the run reached its last step or stopped early
    config        the TrainingSpec as a dict, plus whatever `extra` the caller passed

The RNG files hold the torch (CPU and CUDA), numpy and python generator states of each
process, so dropout masks continue the same stream after a resume. Files are written to a
temporary name and renamed, so a kill mid-write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

CHECKPOINT_FORMAT = 1
CHECKPOINT_FILE = "checkpoint.pt"


def checkpoint_path(folder: str | Path) -> Path:
    return Path(folder) / CHECKPOINT_FILE


def rng_path(folder: str | Path, rank: int) -> Path:
    return Path(folder) / f"rng-rank{rank}.pt"


def has_checkpoint(folder: str | Path | None) -> bool:
    return folder is not None and checkpoint_path(folder).is_file()


def _atomic_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def save_checkpoint(folder: str | Path, state: dict[str, Any]) -> Path:
    """Write the main checkpoint atomically; `state` is the dict described in the module doc."""
    path = checkpoint_path(folder)
    _atomic_save({"format": CHECKPOINT_FORMAT, **state}, path)
    return path


def load_checkpoint(folder: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = checkpoint_path(folder)
    state = torch.load(path, map_location=map_location, weights_only=True)
    if state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: checkpoint format {state.get('format')!r}, expected {CHECKPOINT_FORMAT}")
    return state


# -- random number generators ------------------------------------------------------------
def capture_rng_state() -> dict[str, Any]:
    """This process's generator states, as tensors and plain numbers (weights_only-safe)."""
    np_state = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "key": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    n = state["numpy"]
    np.random.set_state(
        ("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))


def save_rng_state(folder: str | Path, rank: int) -> Path:
    path = rng_path(folder, rank)
    _atomic_save(capture_rng_state(), path)
    return path


def load_rng_state(folder: str | Path, rank: int) -> bool:
    """Restore this process's generators from the checkpoint folder; False if it has no file."""
    path = rng_path(folder, rank)
    if not path.is_file():
        return False
    restore_rng_state(torch.load(path, map_location="cpu", weights_only=True))
    return True
