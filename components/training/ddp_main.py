"""torchrun entry point: train one candidate on every process; rank 0 saves the bundle.

Started by :func:`components.training.distributed.launch` as::

    python -m torch.distributed.run --standalone --nproc_per_node N -m components.training.ddp_main \\
        --spec spec.json --data data/<dataset> --workdir <dir> --out <bundle dir> [--metrics metrics.jsonl]

`spec.json` is a ModelSpec (``ModelSpec.model_dump_json()``); the dataset folder is an
ingested one (its manifest says classification or generation). Rank 0 appends every
metrics record to ``--metrics`` as a JSON line ``{"step": s, "metrics": {...}}`` so the
calling flow can forward them to its tracker, and saves the trained Predictor to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Mapping
from pathlib import Path

from components.config import ModelSpec
from components.data.dataset import load_classification_data, load_corpus, read_dataset_manifest
from components.training import distributed
from components.training.callbacks import MetricsCallback, no_metrics
from components.training.candidates import train_candidate


class JsonlMetrics:
    """A metrics callback that appends one JSON line per record (flushed at once)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def __call__(self, metrics: Mapping[str, float], step: int | None) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, "metrics": {k: float(v) for k, v in metrics.items()}}) + "\n")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", required=True, help="ModelSpec as JSON")
    parser.add_argument("--data", required=True, help="an ingested dataset folder")
    parser.add_argument("--workdir", required=True, help="checkpoints and scratch files")
    parser.add_argument("--out", required=True, help="where rank 0 saves the bundle")
    parser.add_argument("--metrics", default=None, help="JSON-lines file for the metrics records")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    spec = ModelSpec.model_validate_json(Path(args.spec).read_text())
    ctx = distributed.init_distributed(spec.training.device)
    logging.basicConfig(
        level=logging.INFO if ctx.is_main else logging.WARNING,
        format=f"[rank {ctx.rank}] %(levelname)s %(name)s: %(message)s",
    )
    try:
        task = read_dataset_manifest(args.data).get("task")
        data = load_classification_data(args.data) if task == "classification" else load_corpus(args.data)
        on_metrics: MetricsCallback = (
            JsonlMetrics(args.metrics) if args.metrics and ctx.is_main else no_metrics
        )
        predictor = train_candidate(spec, data, Path(args.workdir), on_metrics)
        if ctx.is_main:
            predictor.save(args.out)
        distributed.barrier()
    finally:
        distributed.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
