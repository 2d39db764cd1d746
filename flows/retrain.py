"""Scheduled retraining: the pipeline's steps, each skipped when its inputs did not change.

`retrain` is what the `retrain` deployment (prefect.yaml, `maas schedule`) runs, and what
`maas retrain` runs by hand. It runs the pipeline's steps (`flows.pipeline.run_steps`) with
`flows.ingest.ingest_changed` as its data step:

1. ingest: only the datasets whose source or ingestion code changed, or whose `data/<name>/`
   no longer matches data.dvc; `dvc add` + `dvc push` only when data.dvc or the remote lacks
   the data.
2. train: cached on data version + model spec + code + tracking store.
3. promote: the challenger must beat the champion on the same validation split.
4. log the comparison, when something was trained.
5. package: the champions into the BentoML store and a Bento, both skipped when the store
   already holds them.

With nothing new (same source, a champion trained on it) a run creates no MLflow run, no
registry version and no Bento, and takes seconds. `force=True` retrains anyway. Steps that
talk to the outside retry transient errors (flows/retries.py). Every run publishes the
leaderboard and the promotion decision as artifacts; a failed run writes what failed and
what it left unchanged to its log and to `MAAS_HOME/last_failure.md` (flows/run_report.py).
"""

from __future__ import annotations

import json
import time
from functools import partial
from typing import Any

from prefect import flow
from prefect.runtime import flow_run as current_flow_run
from prefect.task_runners import ThreadPoolTaskRunner

from components.config import load_named_config
from flows.ingest import ingest_changed
from flows.leaderboard import publish_artifacts
from flows.logs import run_logger
from flows.pipeline import run_steps
from flows.run_report import current_state, describe_changes, snapshot_path, write_failure_summary
from flows.settings import Settings


@flow(
    name="retrain",
    task_runner=ThreadPoolTaskRunner(max_workers=1),
    log_prints=True,
    on_failure=[write_failure_summary],
    on_crashed=[write_failure_summary],
)
def retrain(config: str = "default", force: bool = False) -> dict[str, Any]:
    """Retrain when the data changed (or with `force`): ingest → train → promote → compare → package.

    `config` is a preset in configs/ or a YAML path; the project and MAAS_HOME come from the
    environment (MAAS_PROJECT_DIR, MAAS_HOME), as for every `maas` command.
    """
    logger = run_logger()
    started = time.perf_counter()
    settings = Settings.from_env()
    settings.apply()
    cfg = load_named_config(config, settings.configs_dir)
    before = current_state(settings, cfg)
    snapshot = snapshot_path(settings, str(current_flow_run.id))
    snapshot.parent.mkdir(parents=True, exist_ok=True)
    snapshot.write_text(json.dumps(before))

    summary = run_steps(settings, cfg, partial(ingest_changed, settings, cfg, force), force=force, config_name=config)

    after = current_state(settings, cfg)
    summary |= {"config": config, "reingested": bool(summary["data"].ingested),
                "changes": describe_changes(before, after), "changed": before != after,
                "seconds": round(time.perf_counter() - started, 2)}
    publish_artifacts(summary["tasks"], summary["changes"])
    snapshot.unlink(missing_ok=True)
    trained = [name for outcome in summary["tasks"].values() for name in outcome["trained"]]
    logger.info("retrain done in %.1f s; trained: %s\n%s", summary["seconds"], ", ".join(trained) or "nothing (cached)",
                "\n".join(summary["changes"]))
    return summary
