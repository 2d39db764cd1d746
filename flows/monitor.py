"""The `monitor` flow: is served traffic still like the champion's data, and what to do if not.

`monitor` is what the `monitor` deployment (prefect.yaml, `maas schedule`) runs every hour and
what `maas monitor` runs by hand:

1. read the newest `window` records of the inference log that the classification champion
   (registry alias `champion`) answered; too few is a note and action `none`, not an error;
2. the reference: the champion's own predictions on its data version's validation split
   (held out, so its confidences are honest);
3. drift tests, signal by signal (components/monitoring/drift.py), one decision at `alpha`;
4. on drift, whether retraining has labelled data the champion has not seen: the dataset
   version that ingesting the configured source gives now (into a temporary folder, with the
   ingestion code retrain runs, cached on the source fingerprint retrain's ingest step uses)
   against the champion's data version. New data: action `retrain`, and the `retrain`
   deployment is triggered when a Prefect server serves it; none: action `needs-labels`;
5. a Markdown Prefect artifact and an MLflow run (experiment `maas-monitoring`, tagged with
   the champion version) with the numbers.

Only records of the current champion version count: the reference is that model's behaviour,
and a window logged by the version a retrain replaced must not trigger the next retrain.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import flow, task

from components.config import DatasetSpec, PipelineConfig, TaskSpec, load_named_config
from components.data.dataset import load_classification_data
from components.data.fingerprint import dataset_version, ingest_code_version
from components.data.ingest import ingest_dataset
from components.monitoring.drift import SentenceEmbedder, detect_drift, reference_records
from components.monitoring.inference_log import INFERENCE_LOG_ENV, log_folder, read_log
from flows import tracking
from flows.ingest import ensure_data, source_fingerprint
from flows.logs import run_logger
from flows.settings import Settings

EXPERIMENT = "maas-monitoring"
ARTIFACT_KEY = "maas-drift-report"
RETRAIN_FLOW = "retrain"
ACTIONS = ("none", "retrain", "needs-labels")


# --------------------------------------------------------------------------- what is watched


def classification_task(config: PipelineConfig, config_name: str) -> TaskSpec:
    if config.classification is None:
        raise ValueError(f"config {config_name} has no classification task: there is no classifier to monitor")
    return config.classification


def find_champion(settings: Settings, task_spec: TaskSpec, config_name: str) -> tracking.RegisteredVersion:
    champion = tracking.get_alias_version(settings, task_spec.registered_model)
    if champion is None:
        raise ValueError(f"{task_spec.registered_model} has no champion yet: run `maas pipeline -c {config_name}` first")
    return champion


def inference_log_folder() -> Path:
    """The folder the service logs to (MAAS_INFERENCE_LOG, else MAAS_HOME/inference)."""
    folder = log_folder(os.environ)
    if folder is None:
        raise ValueError(f"{INFERENCE_LOG_ENV}=off: the service keeps no inference log, so there is nothing to monitor")
    return folder


def check_ready(settings: Settings, config: PipelineConfig, config_name: str) -> None:
    """Raise, with one line the user can act on, when there is no champion or no inference log."""
    find_champion(settings, classification_task(config, config_name), config_name)
    folder = inference_log_folder()
    if not folder.is_dir():
        raise FileNotFoundError(f"no inference log at {folder}: serve the champion (`maas serve`) and send it "
                                f"traffic, or point {INFERENCE_LOG_ENV} at the service's log folder")


def champion_records(folder: Path, model: str, version: str, window: int) -> pd.DataFrame:
    """The newest `window` records answered by `model` version `version`, oldest first.

    The log is read from its newest files backwards, more of it each time, until enough
    records of that version are found or the whole log was read.
    """
    last = window
    while True:
        frame = read_log(folder, last=last)
        mine = frame[(frame["model"] == model) & (frame["model_version"] == version)]
        if len(mine) >= window or len(frame) < last:
            return mine.tail(window).reset_index(drop=True)
        last *= 4


# --------------------------------------------------------------------------- the reference


def validation_texts(settings: Settings, config: PipelineConfig, task_spec: TaskSpec, champion_data: str | None
                     ) -> tuple[list[str], str | None]:
    """The validation texts of the task's dataset (pulled when missing), and a note when data/
    holds another version than the champion was trained on."""
    folder = settings.data_root / task_spec.dataset
    if not (folder / "manifest.json").is_file():
        ensure_data(settings, config)
    on_disk = dataset_version(folder)
    note = None
    if champion_data and on_disk != champion_data:
        note = (f"data/{task_spec.dataset} holds version {on_disk[:12]}, not the champion's {champion_data[:12]}: "
                "the reference uses its validation split")
    return load_classification_data(folder).val_texts, note


# --------------------------------------------------------------------------- new labelled data?


def _source_cache_key(context, parameters: dict[str, Any]) -> str:
    # What retrain's ingest step keys on: the source fingerprint, the dataset spec and the ingestion code.
    settings, spec = parameters["settings"], parameters["spec"]
    payload = {"source": source_fingerprint(settings, spec), "spec": spec.model_dump(mode="json"),
               "code": ingest_code_version(), "project": str(settings.project_dir)}
    return "monitor-source-" + hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:32]


@task(name="source-data-version", cache_key_fn=_source_cache_key, persist_result=True)
def source_data_version(settings: Settings, spec: DatasetSpec) -> str:
    """The dataset version that ingesting `spec`'s source now gives (into a temporary folder:
    data/ and data.dvc stay as they are; ingestion is deterministic, so the version is exact)."""
    settings.work_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=settings.work_dir, prefix="monitor-ingest-") as tmp:
        ingest_dataset(spec, Path(tmp), cache_dir=settings.download_cache, base_dir=settings.project_dir)
        return dataset_version(Path(tmp) / spec.name)


def new_labelled_data(settings: Settings, config: PipelineConfig, task_spec: TaskSpec,
                      champion: tracking.RegisteredVersion) -> dict[str, Any]:
    """Whether the configured source now holds labelled data the champion was not trained on."""
    trained_on = champion.tags.get("data_version")
    now = source_data_version(settings, config.dataset(task_spec.dataset))
    # A retrain on this data that did not beat the champion would only repeat itself each hour.
    tried = [] if now == trained_on else tracking.versions_trained_on(settings, task_spec.registered_model, now)
    changed = now != trained_on and not tried
    if changed:
        why = (f"the source of {task_spec.dataset} now gives data version {now[:12]}, the champion was trained on "
               f"{(trained_on or 'an unknown version')[:12]}")
    elif tried:
        why = (f"version(s) {', '.join(tried)} of {task_spec.registered_model} were already trained on the source's "
               f"data version {now[:12]} and did not replace the champion")
    else:
        why = f"the source of {task_spec.dataset} is unchanged since the champion's data version {now[:12]}"
    return {"changed": changed, "source_version": now, "champion_data_version": trained_on,
            "already_tried": tried, "why": why}


# --------------------------------------------------------------------------- the retrain trigger


def retrain_deployment_name() -> str:
    from flows.schedule import deployment_settings

    return f"{RETRAIN_FLOW}/{deployment_settings(RETRAIN_FLOW)['name']}"


def trigger_retrain(config_name: str) -> dict[str, Any]:
    """Start a run of the retrain deployment without waiting for it, when a server serves one."""
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import PREFECT_API_URL

    name = retrain_deployment_name()
    api = PREFECT_API_URL.value() or "(no PREFECT_API_URL: a temporary local server)"
    try:
        with get_client(sync_client=True) as client:
            client.read_deployment_by_name(name)
    except ObjectNotFound:
        return {"triggered": False, "deployment": name,
                "why": f"no {name} deployment on the Prefect server at {api}: `maas schedule` serves it "
                       "(set PREFECT_API_URL to that server for `maas monitor`)"}
    except Exception as error:  # a server that does not answer: report it, the monitor's verdict stands
        return {"triggered": False, "deployment": name,
                "why": f"no Prefect server answers at {api}: {type(error).__name__}: {error}"}
    flow_run = run_deployment(name, parameters={"config": config_name}, timeout=0, as_subflow=False)
    return {"triggered": True, "deployment": name, "flow_run": flow_run.name, "flow_run_id": str(flow_run.id),
            "why": f"started flow run {flow_run.name} of {name}"}


# --------------------------------------------------------------------------- the flow


@flow(name="monitor")
def monitor(config: str = "default", window: int | None = None) -> dict[str, Any]:
    """Compare the newest `window` logged records of the classification champion with its validation
    data; on drift, trigger `retrain` when there is new labelled data, else ask for labels.

    `config` is a preset in configs/ or a YAML path; `window` defaults to the config's
    `monitoring.window`. Returns what `maas monitor --json` prints.
    """
    logger = run_logger()
    settings = Settings.from_env()
    settings.apply()
    cfg = load_named_config(config, settings.configs_dir)
    spec = cfg.monitoring
    window = window or spec.window
    task_spec = classification_task(cfg, config)
    model = task_spec.registered_model
    champion = find_champion(settings, task_spec, config)
    outcome: dict[str, Any] = {
        "drift": False, "window": 0, "action": "none", "triggered": False, "model": model,
        "champion_version": champion.version, "data_version": champion.tags.get("data_version"),
        "alpha": spec.alpha, "p_values": {}, "signals": [], "reasons": [], "notes": [],
    }

    logger.info("[1/5] read the newest %d records of %s v%s from the inference log", window, model, champion.version)
    folder = inference_log_folder()
    records = champion_records(folder, model, champion.version, window)
    outcome["window"] = len(records)
    if len(records) < window:
        outcome["notes"].append(f"only {len(records)} records of {model} v{champion.version} in {folder}, fewer than "
                                f"the window of {window}: no test run")
        return publish(settings, outcome, config)

    logger.info("[2/5] the reference: the champion's predictions on its validation split")
    texts, note = validation_texts(settings, cfg, task_spec, outcome["data_version"])
    outcome["notes"] += [note] if note else []
    predictor = tracking.load_registered(settings, model, champion.version)
    reference = reference_records(predictor, texts, spec)

    logger.info("[3/5] drift tests on %d records against %d", len(records), len(reference))
    report = detect_drift(reference, records, spec, SentenceEmbedder(spec.embedding_max_tokens))
    outcome |= {key: value for key, value in report.as_dict().items() if key != "window"}

    logger.info("[4/5] decide: %s", "drift" if report.drift else "no drift")
    if report.drift:
        data = new_labelled_data(settings, cfg, task_spec, champion)
        outcome["new_data"] = data
        outcome["action"] = "retrain" if data["changed"] else "needs-labels"
        outcome["notes"].append(data["why"] + ("" if data["changed"] else
                                               ": label new examples like the drifted traffic, then retrain"))
        if data["changed"]:
            outcome["trigger"] = trigger_retrain(config)
            outcome["triggered"] = outcome["trigger"]["triggered"]
            outcome["notes"].append(outcome["trigger"]["why"])

    logger.info("[5/5] report: Prefect artifact %s and MLflow experiment %s", ARTIFACT_KEY, EXPERIMENT)
    outcome["mlflow_run_id"] = log_to_mlflow(settings, outcome, config)
    publish(settings, outcome, config)
    logger.info("monitor: drift=%s, action=%s%s", outcome["drift"], outcome["action"],
                "".join(f"\n  {line}" for line in outcome["reasons"] + outcome["notes"]))
    return outcome


# --------------------------------------------------------------------------- the report


def render(outcome: dict[str, Any]) -> str:
    """The report as Markdown: verdict, one table row per signal, the action and the notes."""
    verdict = "**drift**" if outcome["drift"] else "no drift"
    lines = [f"# Drift of {outcome['model']} v{outcome['champion_version']}", "",
             f"{verdict} in the newest {outcome['window']} logged records (alpha {outcome['alpha']}, Holm); "
             f"action: **{outcome['action']}**" + (" (retrain triggered)" if outcome["triggered"] else ""), ""]
    if outcome["signals"]:
        lines += ["| signal | test | statistic | p-value | Holm | drifted | note |", "|---|---|---|---|---|---|---|"]
        for s in outcome["signals"]:
            numbers = [f"{s[k]:.3g}" if s[k] is not None else "-" for k in ("statistic", "p_value", "adjusted_p")]
            lines.append(f"| {s['signal']} | {s['test']} | {' | '.join(numbers)} | "
                         f"{'yes' if s['drifted'] else 'no'} | {s['note']} |")
        lines.append("")
    lines += [f"- {line}" for line in outcome["notes"]]
    return "\n".join(lines).rstrip() + "\n"


def publish(settings: Settings, outcome: dict[str, Any], config_name: str) -> dict[str, Any]:
    from prefect.artifacts import create_markdown_artifact

    create_markdown_artifact(key=ARTIFACT_KEY, markdown=render(outcome),
                             description=f"drift of the served {outcome['model']} (config {config_name})")
    return outcome


def log_to_mlflow(settings: Settings, outcome: dict[str, Any], config_name: str) -> str:
    """A run in the monitoring experiment: p-values and statistics as metrics, the outcome as JSON."""
    experiment_id = tracking.ensure_experiment(settings, EXPERIMENT)
    tags = {"maas.kind": "monitoring", "maas.registered_model": outcome["model"],
            "maas.champion_version": outcome["champion_version"], "maas.action": outcome["action"],
            "maas.data_version": outcome["data_version"] or "unknown"}
    run_id = tracking.start_run(settings, experiment_id, f"monitor-{outcome['model']}-v{outcome['champion_version']}",
                                tags, {"window": outcome["window"], "alpha": outcome["alpha"], "config": config_name})
    metrics = {"drift": float(outcome["drift"]), "window": float(outcome["window"]),
               "reference": float(outcome.get("reference", 0)), "triggered": float(outcome["triggered"])}
    for s in outcome["signals"]:
        metrics |= {f"{k}_{s['signal']}": s[k] for k in ("p_value", "adjusted_p", "statistic") if s[k] is not None}
    metrics_logger = tracking.RunLogger(tracking.client(settings), run_id)
    metrics_logger(metrics, None)
    metrics_logger.flush()
    tracking.log_artifacts(settings, run_id, {"drift_report.json": outcome})
    tracking.end_run(settings, run_id)
    return run_id
