"""The classification leaderboard of a config's candidates, trained here without any tracking.

    python benchmarks/classifier_accuracy.py                          # configs/default.yaml
    python benchmarks/classifier_accuracy.py --config gpu --json      # the GPU sizes, one JSON object
    python benchmarks/classifier_accuracy.py --candidates lstm,transformer --data data/bbc-news

It trains each candidate through the pipeline's own entry point
(``components.training.candidates.train_candidate``) on the ingested, pinned splits (``maas
ingest`` writes them under ``data/``) and evaluates it as the pipeline does
(``components.evaluation.report.evaluate_classifier``): validation macro-F1 (which chooses)
beside test accuracy and macro-F1 (which only report), with p50 latency per text, train
seconds and the device. Nothing reaches MLflow, Prefect or BentoML, so it runs wherever the
components do (a GPU host without the serving stack, say).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from anywhere

from components.config import load_config, resolve_config_path  # noqa: E402
from components.data.dataset import load_classification_data  # noqa: E402
from components.evaluation.report import evaluate_classifier  # noqa: E402
from components.training.candidates import train_candidate  # noqa: E402

COLUMNS = [
    "candidate", "val_macro_f1", "val_accuracy", "test_accuracy", "test_macro_f1", "p50_ms", "train_s", "device"
]  # fmt: skip


def run(
    config_name: str, data_folder: Path | None, names: list[str] | None, save: Path | None = None
) -> dict:
    config = load_config(resolve_config_path(config_name, REPO / "configs"))
    task = config.classification
    if task is None:
        raise SystemExit(f"config {config.name!r} has no classification task")
    data = load_classification_data(data_folder or REPO / "data" / task.dataset)
    known = [c.name for c in task.candidates]
    unknown = sorted(set(names or []) - set(known))
    if unknown:
        raise SystemExit(f"unknown candidates {unknown}; config {config.name!r} has {known}")
    rows = []
    for spec in task.candidates:
        if names and spec.name not in names:
            continue
        print(f"# training {spec.name} ({spec.kind})", file=sys.stderr, flush=True)
        with tempfile.TemporaryDirectory(prefix="maas-accuracy-") as workdir:
            started = time.perf_counter()
            predictor = train_candidate(spec, data, workdir)
            train_s = time.perf_counter() - started
        if save is not None:
            predictor.save(save / spec.name)
        report = evaluate_classifier(predictor, data)  # what the pipeline's evaluation reports
        val, test = report["val"], report["test"]
        rows.append(
            {
                "candidate": spec.name,
                "val_macro_f1": round(val["macro_f1"], 4),
                "val_accuracy": round(val["accuracy"], 4),
                "test_accuracy": round(test["accuracy"], 4),
                "test_macro_f1": round(test["macro_f1"], 4),
                "p50_ms": round(report["latency"]["latency_ms_p50"], 2),
                "train_s": round(train_s, 1),
                "device": predictor.metadata.get("device", "cpu"),  # the torch trainers record it
            }
        )
        print(f"# {json.dumps(rows[-1])}", file=sys.stderr, flush=True)
    # Promotion's view: the best on validation wins; test is what it then reports.
    best = max(rows, key=lambda r: r["val_macro_f1"]) if rows else None
    return {
        "config": config.name,
        "splits": {"train": len(data.train_texts), "val": len(data.val_texts), "test": len(data.test_texts)},
        "rows": rows,
        "chosen": best["candidate"] if best else None,
    }


def print_table(report: dict) -> None:
    cells = [[str(row[c]) for c in COLUMNS] for row in report["rows"]]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(COLUMNS)]
    print(f"config {report['config']}, splits {report['splits']}")
    print("  ".join(c.ljust(w) for c, w in zip(COLUMNS, widths, strict=True)))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))
    print(f"chosen on validation: {report['chosen']}")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="default", help="a preset in configs/ or a YAML path")
    parser.add_argument("--data", type=Path, help="the ingested dataset folder (default: data/<dataset>)")
    parser.add_argument("--candidates", help="comma-separated candidate names (default: all)")
    parser.add_argument(
        "--save", type=Path, help="also save each bundle to SAVE/<candidate> (to serve or inspect)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.candidates.split(",")] if args.candidates else None
    report = run(args.config, args.data, names, args.save)
    if args.json:
        print(json.dumps(report))
    else:
        print_table(report)
    return report


if __name__ == "__main__":
    main()
