"""Resume only the very same run: a fingerprint of what determines a run, kept beside its checkpoint."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from components.data.dataset import ClassificationData
from components.training import checkpoint as ckpt
from components.training import distributed

log = logging.getLogger(__name__)

RUN_FILE = "run.json"


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


def mark_run(ckpt_dir: Path, fingerprint: str) -> None:
    """Record (on the main process) which run the checkpoints in `ckpt_dir` belong to."""
    if distributed.is_main_process():
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        (ckpt_dir / RUN_FILE).write_text(json.dumps({"fingerprint": fingerprint}))
