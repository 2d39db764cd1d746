"""Pipeline overhead: what Prefect, MLflow, DVC and BentoML add around the training itself.

In a throwaway project and MAAS_HOME (a temp folder; the repo's .maas is never touched),
runs the `retrain` flow twice on unchanged data and prints:

- first_s, second_s: wall time of each run (the second should skip everything: bar < 20 %),
- second_new_runs: MLflow runs the second run created (should be 0),
- overhead_s: first_s minus the training tasks' own `train_s` (fit time), i.e. what
  ingestion, DVC, evaluation, MLflow logging/registration, promotion, BentoML import and
  build and Prefect orchestration add, broken down per step from the task run durations.

    python benchmarks/pipeline_overhead.py                 # smoke config (about a minute)
    python benchmarks/pipeline_overhead.py --config default
    python benchmarks/pipeline_overhead.py --json          # one JSON object

Prefect's ephemeral API server and the MLflow store are started (and timed) before the
first run: a scheduled retrain that finds new data meets both already running.
"""

from __future__ import annotations

import argparse
import atexit
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from anywhere

from tests.sandbox import make_project  # noqa: E402

BAR = 0.20
# Task run name prefix -> the step it belongs to.
STEPS = [
    ("ingest-", "ingest (fingerprint, read, clean, split, write)"),
    ("dvc-add-push", "DVC add + push"),
    ("train-", "train tasks"),
    ("promote", "promote (MLflow)"),
    ("import-champion", "BentoML store import"),
    ("build-bento", "BentoML build"),
]


def isolate(root: Path, verbose: bool) -> Path:
    """Point every store at `root` (before prefect, mlflow or bentoml are imported)."""
    project = make_project(root / "project")
    for name in ("MLFLOW_TRACKING_URI", "PREFECT_HOME", "PREFECT_API_URL", "BENTOML_HOME"):
        os.environ.pop(name, None)
    os.environ["MAAS_HOME"] = str(root / "maas-home")
    os.environ["MAAS_PROJECT_DIR"] = str(project)
    if not verbose:
        os.environ["PREFECT_LOGGING_LEVEL"] = "WARNING"
        logging.getLogger("mlflow").setLevel(logging.WARNING)
        warnings.filterwarnings("ignore", category=UserWarning)
    from flows.settings import Settings

    Settings.from_env().apply()
    for name in ("uvicorn.error", "prefect._internal.concurrency", "prefect.events.clients"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    return project


def mlflow_run_count(settings, config) -> int:
    from flows import tracking
    from flows.train import experiment_name

    return sum(len(tracking.search_runs(settings, experiment_name(t))) for t in config.tasks())


def task_durations(flow_run_id) -> list[tuple[str, float]]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    durations = []
    for run in runs:
        if run.start_time and run.end_time:
            seconds = (run.end_time - run.start_time).total_seconds()
        else:  # a cached task run never enters Running
            seconds = run.total_run_time.total_seconds()
        durations.append((run.name, seconds))
    return durations


def breakdown(wall_s: float, durations: list[tuple[str, float]], train_s: float) -> dict[str, float]:
    steps: dict[str, float] = {}
    for name, seconds in durations:
        step = next((label for prefix, label in STEPS if name.startswith(prefix)), name)
        steps[step] = steps.get(step, 0.0) + seconds
    tasks_total = sum(steps.values())
    if "train tasks" in steps:
        steps["train tasks"] -= train_s
        steps["evaluate + MLflow log/register (train tasks minus fit)"] = steps.pop("train tasks")
    steps["flow body + Prefect orchestration (outside tasks)"] = wall_s - tasks_total
    return {k: round(v, 2) for k, v in steps.items()}


def timed_retrain(config_name: str) -> tuple[float, dict[str, Any], Any]:
    from flows.retrain import retrain

    started = time.perf_counter()
    state = retrain(config=config_name, return_state=True)
    wall = time.perf_counter() - started
    return wall, state.result(), state.state_details.flow_run_id


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="smoke", help="a preset in configs/ (default: smoke)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--keep", action="store_true", help="keep the temp project and MAAS_HOME")
    parser.add_argument("--verbose", action="store_true", help="show the flows' INFO logs")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="maas-overhead-"))
    if not args.keep:
        # Registered before prefect is imported, so it runs after Prefect's own exit handlers
        # (the ephemeral server keeps its database under root until then).
        atexit.register(shutil.rmtree, root, ignore_errors=True)
    try:
        project = isolate(root, args.verbose)
        from prefect import flow

        from components.config import load_config, resolve_config_path
        from flows.settings import Settings

        if not args.verbose:  # mlflow sets its logger's level when imported
            logging.getLogger("mlflow").setLevel(logging.WARNING)

        settings = Settings.from_env()
        config = load_config(resolve_config_path(args.config, project / "configs"))

        @flow(name="warm-up")
        def warm_up() -> None:
            return None

        started = time.perf_counter()
        warm_up()
        prefect_startup_s = time.perf_counter() - started
        started = time.perf_counter()
        mlflow_run_count(settings, config)  # creates the MLflow SQLite store
        mlflow_startup_s = time.perf_counter() - started

        first_s, first, first_id = timed_retrain(args.config)
        runs_after_first = mlflow_run_count(settings, config)
        second_s, second, second_id = timed_retrain(args.config)
        second_new_runs = mlflow_run_count(settings, config) - runs_after_first

        train_s = sum(r["train_s"] for t in first["tasks"].values() for r in t["results"] if not r.get("cached"))
        report = {
            "config": args.config,
            "first_s": round(first_s, 2),
            "second_s": round(second_s, 2),
            "second_over_first": round(second_s / first_s, 3),
            "bar_met": second_s < BAR * first_s and second_new_runs == 0,
            "second_new_runs": second_new_runs,
            "train_s": round(train_s, 2),
            "overhead_s": round(first_s - train_s, 2),
            "prefect_startup_s": round(prefect_startup_s, 2),
            "mlflow_startup_s": round(mlflow_startup_s, 2),
            "first_steps": breakdown(first_s, task_durations(first_id), train_s),
            "second_steps": breakdown(second_s, task_durations(second_id), 0.0),
            "second_changed": second["changed"],
        }
    finally:
        if args.keep:
            print(f"kept {root}", file=sys.stderr)

    if args.json:
        print(json.dumps(report))
    else:
        print(f"retrain twice on unchanged data, config {args.config} (before the first run: Prefect API start "
              f"{prefect_startup_s:.1f} s, MLflow store creation {mlflow_startup_s:.1f} s)\n")
        print(f"{'step':<58} {'first s':>8} {'second s':>9}")
        for step in dict.fromkeys([*report["first_steps"], *report["second_steps"]]):
            first_v, second_v = report["first_steps"].get(step, 0.0), report["second_steps"].get(step, 0.0)
            print(f"{step:<58} {first_v:>8.2f} {second_v:>9.2f}")
        print(f"{'fit (train_s)':<58} {train_s:>8.2f} {0.0:>9.2f}")
        print(f"{'wall':<58} {first_s:>8.2f} {second_s:>9.2f}\n")
        print(f"overhead_s (first wall - fit): {report['overhead_s']:.2f} s")
        print(f"second_new_runs: {second_new_runs}")
        print(f"second / first: {report['second_over_first']:.1%} (bar < {BAR:.0%}): "
              f"{'met' if report['bar_met'] else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
