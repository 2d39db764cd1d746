"""`maas`: the command line of the pipeline (Typer).

Each command points the libraries at MAAS_HOME first (see flows.settings), then imports
the flows, so Prefect and BentoML never start with the wrong home folder. A problem the
user can fix (a config, a column, the data, a port) ends the command with one line naming
it and exit code 2; the traceback goes to the command's log file under MAAS_HOME/logs (or
to the terminal with --debug). Anything else exits 1, with the same log file.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from flows.own_config import write_own_config
from flows.terminal import (
    DEBUG_ENV,
    CommandRun,
    UsageError,
    handled,
    print_summary,
    quiet_libraries,
    route_logs,
)

app = typer.Typer(
    add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, help="maas: models as a service."
)

ConfigOption = Annotated[str, typer.Option("--config", "-c", help="A preset in configs/ (default, smoke, gpu) or a YAML path.")]
# MLflow 3's UI opens in its GenAI view (traces) unless the link asks for the model-training one.
MODEL_TRAINING_VIEW = "workflowType=machine_learning"


def _setup(config: str | None = None, *, flows: bool = False):
    """Settings applied; with `flows`, the stores set up and a Prefect server for this process."""
    from flows.settings import Settings

    settings = Settings.from_env()
    settings.apply()
    cfg = None
    if config is not None:
        from components.config import load_named_config

        cfg = load_named_config(config, settings.configs_dir)
    if flows:
        from flows import runtime, tracking  # noqa: F401  (imports mlflow, which sets its loggers up)

        quiet_libraries()
        runtime.prepare(settings, say=lambda line: typer.echo(line, err=True))
        from prefect import flow  # noqa: F401  (importing it configures Prefect's logging: route it next)

        quiet_libraries()  # again: Prefect's logging config has just reset its own loggers' levels

        route_logs(settings)
        CommandRun.started_work = True
    return settings, cfg


def _run_flow(config: str, target: str, *args, **kwargs):
    """Set up for flows, then run the flow `module:function` (imported only now, once MAAS_HOME is
    applied) on the settings and this config, its runs tagged with this process."""
    settings, cfg = _setup(config, flows=True)
    module, name = target.split(":")
    flow_function = getattr(importlib.import_module(module), name)
    with _process_tags():
        return flow_function(settings, cfg, *args, **kwargs)


def _process_tags():
    """Tags every flow run of this command with this process, so a later start can spot it killed."""
    from prefect import tags

    from flows.runtime import process_tag

    return tags(process_tag())


TextColumns = Annotated[list[str] | None, typer.Option(
    "--text-column", help="A text column of --data (repeat it: several are joined with a newline, in the order given).")]


@app.callback()
def main_options(
    debug: Annotated[bool, typer.Option("--debug", help="Print tracebacks on the terminal (also: MAAS_DEBUG=1).")] = False,
) -> None:
    """maas: models as a service."""
    if debug:
        os.environ[DEBUG_ENV] = "1"


@app.command()
@handled
def pipeline(
    config: ConfigOption = "default",
    force: Annotated[bool, typer.Option(help="Retrain even when a cached result exists.")] = False,
    skip_ingest: Annotated[bool, typer.Option(help="Train on the data pinned by data.dvc (dvc pull if missing).")] = False,
    data: Annotated[Path | None, typer.Option(help="Your own labelled CSV, JSONL or Parquet file.")] = None,
    text_column: TextColumns = None,
    label_column: Annotated[str | None, typer.Option(help="The label column of --data.")] = None,
    test_file: Annotated[Path | None, typer.Option(help="A held-out test file with the same columns (else 10% of --data).")] = None,
    name: Annotated[str | None, typer.Option(help="The dataset and config name (default: the file's name).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace configs/NAME.yaml if it differs.")] = False,
) -> None:
    """Run everything: ingest → train → evaluate → promote → build the Bento.

    With --data, first write configs/NAME.yaml for your file (the --config preset's candidates
    and settings, your dataset), then run the pipeline on it.
    """
    if data is not None:
        config = write_own_config(config, data, text_column, label_column, test_file, name, overwrite)
    elif text_column or label_column or test_file or name:
        raise UsageError("--text-column, --label-column, --test-file and --name go with --data FILE")
    summary = _run_flow(config, "flows.pipeline:pipeline", config_name=config, force=force, skip_ingest=skip_ingest)
    print_summary(summary)


@app.command()
@handled
def ingest(config: ConfigOption = "default") -> None:
    """Read the configured sources, validate, write data/ and version it with DVC."""
    versions = _run_flow(config, "flows.ingest:ingest")
    typer.echo(json.dumps(dataclasses.asdict(versions), indent=2))


@app.command()
@handled
def train(
    config: ConfigOption = "default",
    candidate: Annotated[list[str] | None, typer.Option("--candidate", help="Train only these (repeatable).")] = None,
    nproc: Annotated[int, typer.Option(help="Processes for DDP via torchrun (torch models).")] = 1,
    force: Annotated[bool, typer.Option(help="Retrain even when a cached result exists.")] = False,
) -> None:
    """Train and register candidates on the data pinned by data.dvc (no promotion)."""
    results = _run_flow(config, "flows.pipeline:train", config_name=config, only=candidate, nproc=nproc, force=force)
    for task_name, rows in results.items():
        for r in rows:
            typer.echo(f"{task_name}: {r['candidate']} v{r['version']} val {json.dumps(r['val'])}")


@app.command()
@handled
def promote(config: ConfigOption = "default") -> None:
    """Let the best run of the current data version challenge the champion."""
    decisions = _run_flow(config, "flows.pipeline:promote_current")
    from flows.leaderboard import describe_decision

    for decision in decisions:
        typer.echo(describe_decision(decision))


@app.command()
@handled
def rollback(
    config: ConfigOption = "default",
    task: Annotated[str, typer.Option(help="classification or generation")] = "classification",
) -> None:
    """Give the champion alias back to the previous version, then rebuild the Bento."""
    settings, cfg = _setup(config, flows=True)
    if task not in dict(cfg.named_tasks()):
        raise UsageError(f"--task {task}: config {config} has the tasks {[name for name, _ in cfg.named_tasks()]}")
    from flows.pipeline import rollback as rollback_flow

    with _process_tags():
        outcome, bento_tag = rollback_flow(settings, cfg, task)
    typer.echo(f"{outcome['registered_model']}: champion is v{outcome['champion_version']} again "
               f"(v{outcome['replaced']} is now `previous`); Bento {bento_tag}")


@app.command()
@handled
def sweep(
    candidate: Annotated[str, typer.Argument(help="The candidate whose hyperparameters to search.")],
    config: ConfigOption = "default",
    method: Annotated[str | None, typer.Option(help="grid, random or optuna (default: the config's).")] = None,
    trials: Annotated[int | None, typer.Option(help="Number of trials (default: the config's).")] = None,
    runner: Annotated[str, typer.Option(help="Task runner: threads, processes or dask.")] = "threads",
) -> None:
    """Search one candidate's hyperparameters; the best trial challenges the champion."""
    settings, cfg = _setup(config, flows=True)
    from flows.sweep import find_task, task_runner
    from flows.sweep import sweep as sweep_flow

    _, task_spec = find_task(cfg, candidate)
    spec = task_spec.sweeps.get(candidate)
    if spec is None:
        raise UsageError(f"no `sweeps: {candidate}` search space in config {config}")
    spec = spec.model_copy(update={k: v for k, v in {"method": method, "trials": trials}.items() if v is not None})
    with _process_tags():
        outcome = sweep_flow.with_options(task_runner=task_runner(runner, spec.parallel))(
            settings, cfg, candidate, config_name=config, sweep_spec=spec)
    metric = task_spec.metric
    for r in sorted(outcome["trials"], key=lambda r: r["val"][metric], reverse=task_spec.greater_is_better):
        typer.echo(f"{r['candidate']}: val {metric} {r['val'][metric]:.4f}  run {r['run_id']}")
    best, decision = outcome["best"], outcome["decision"]
    typer.echo(f"best: {best['candidate']} -> {task_spec.registered_model} v{best['version']}; "
               f"{'promoted' if decision['promoted'] else 'kept the champion'} ({decision['reason']})")


@app.command()
@handled
def explain(
    texts: Annotated[list[str], typer.Argument(help="One or more texts to explain.")],
    config: ConfigOption = "default",
    top_k: Annotated[int, typer.Option(help="Words to show for and against the label.")] = 10,
    as_json: Annotated[bool, typer.Option("--json", help="Print the explanations as JSON.")] = False,
) -> None:
    """Why the champion classifier labels each text as it does: the words for and against."""
    settings, cfg = _setup(config)
    if cfg.classification is None:
        raise UsageError(f"config {config} has no classification task")
    from flows import tracking

    model = cfg.classification.registered_model
    champion = tracking.get_alias_version(settings, model)
    if champion is None:
        raise UsageError(f"{model} has no champion yet: run `maas pipeline -c {config}` first")
    explanations = tracking.load_registered(settings, model, champion.version).explain(texts, top_k)
    if as_json:
        typer.echo(json.dumps(explanations, indent=2))
        return
    for text, item in zip(texts, explanations, strict=True):
        towards, against = (", ".join(f"{w['word']} {w['score']:+.3f}" for w in item[side]) or "-"
                            for side in ("towards", "against"))
        typer.echo(f"{text[:70]!r}: {item['label']} ({item['probability']:.2f}, {item['method']})\n"
                   f"  towards: {towards}\n  against: {against}")


@app.command()
@handled
def compare(
    config: ConfigOption = "default",
    as_json: Annotated[bool, typer.Option("--json", help="Print the leaderboard as JSON.")] = False,
    markdown: Annotated[bool, typer.Option("--markdown", help="Print the leaderboard as a Markdown table.")] = False,
) -> None:
    """The leaderboard of the current data version, from MLflow."""
    settings, cfg = _setup(config)
    from components.data.fingerprint import dataset_version
    from flows.leaderboard import leaderboard, render

    versions = {d.name: dataset_version(settings.data_root / d.name) for d in cfg.datasets
                if (settings.data_root / d.name).is_dir()}
    rows = leaderboard(settings, cfg, versions)
    if as_json or markdown:
        typer.echo(render(rows, "json" if as_json else "markdown"))
        return
    from rich.console import Console

    Console().print(render(rows, "table"))


@app.command()
@handled
def build(config: ConfigOption = "default") -> None:
    """Import the champions into the BentoML store and build the Bento."""
    typer.echo(_run_flow(config, "flows.pipeline:build_bento"))


def _check_port_free(port: int, host: str, what: str) -> None:
    from flows.prefect_server import port_in_use

    if port_in_use(port, "127.0.0.1" if host in ("0.0.0.0", "::") else host):
        raise UsageError(f"port {port} on {host} is taken (another {what}?): pass --port with a free one")


@app.command()
@handled
def serve(
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 3000,
    host: Annotated[str, typer.Option(help="Bind address (0.0.0.0 exposes it to the network).")] = "127.0.0.1",
) -> None:
    """Serve the latest built Bento."""
    settings, _ = _setup()
    from flows import bento

    current = bento.latest_bento("maas")
    if current is None:
        raise UsageError("no Bento built yet: run `maas pipeline` or `maas build` first")
    _check_port_free(port, host, "server")
    typer.echo(f"Serving {current.tag} on http://{host}:{port} (try: curl -X POST http://{host}:{port}/classify "
               "-H 'Content-Type: application/json' -d '{\"texts\": [\"Shares rose after the results.\"]}')")
    sys.stdout.flush()
    # BentoML through this interpreter: a venv that was never activated is not on PATH.
    os.execv(sys.executable, [sys.executable, "-m", "bentoml", "serve", str(current.tag),
                              "--host", host, "--port", str(port)])


@app.command()
@handled
def ui(port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 5000) -> None:
    """Open the MLflow UI on the embedded store."""
    import subprocess

    settings, _ = _setup()
    from components.data.locations import redact_url
    from flows.tracking import training_experiments, ui_command

    _check_port_free(port, "127.0.0.1", "MLflow UI")
    typer.echo(f"MLflow UI on http://127.0.0.1:{port}/#/?{MODEL_TRAINING_VIEW} "
               f"(store: {redact_url(settings.tracking_uri)}). Ctrl-C stops it.")
    for name, experiment_id in training_experiments(settings):
        typer.echo(f"  {name}: http://127.0.0.1:{port}/#/experiments/{experiment_id}/runs?{MODEL_TRAINING_VIEW}")
    sys.stdout.flush()
    sys.exit(subprocess.call(ui_command(settings, port)))


@app.command()
@handled
def retrain(
    config: ConfigOption = "default",
    force: Annotated[bool, typer.Option(help="Retrain even when the data and the code did not change.")] = False,
) -> None:
    """Retrain only what changed: what the scheduled deployment runs (nothing new: nothing changes)."""
    settings, _ = _setup(config, flows=True)
    from flows.retrain import retrain as retrain_flow
    from flows.run_report import FAILURE_FILE

    try:
        with _process_tags():
            summary = retrain_flow(config=config, force=force)
    except Exception:
        typer.secho(f"What failed and what was left unchanged: {settings.home / FAILURE_FILE}", err=True)
        raise
    print_summary(summary)
    typer.echo("\n".join(summary["changes"]))


@app.command()
@handled
def monitor(
    config: ConfigOption = "default",
    window: Annotated[int | None, typer.Option(min=2, help="Newest logged records to compare (default: the config's).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object: drift, window, action, p-values...")] = False,
) -> None:
    """Compare the served champion's logged traffic with its validation data; on drift, trigger a retrain
    when the source has new labelled data, else say that new labels are needed. Exits 0 either way."""
    settings, cfg = _setup(config)
    from flows.monitor import check_ready

    check_ready(settings, cfg, config)
    _setup(config, flows=True)
    from flows.monitor import monitor as monitor_flow
    from flows.monitor import render

    with _process_tags():
        outcome = monitor_flow(config=config, window=window)
    typer.echo(json.dumps(outcome, default=str) if as_json else render(outcome))


@app.command()
@handled
def schedule(
    config: ConfigOption = "default",
    port: Annotated[int, typer.Option(help="Port of the local Prefect server on 127.0.0.1.")] = 4200,
    cron: Annotated[str | None, typer.Option(help="Another cron schedule than prefect.yaml's.")] = None,
    run_now: Annotated[bool, typer.Option("--run-now", help="Also trigger one run right away.")] = False,
) -> None:
    """Start a local Prefect server and serve the scheduled retrain and monitor deployments (Ctrl-C stops both).

    With PREFECT_API_URL set, serves on that server instead of starting one.
    """
    settings, _ = _setup(config)
    from flows.schedule import serve_retrain

    try:
        serve_retrain(settings, config, port=port, cron=cron, run_now=run_now)
    except RuntimeError as error:
        raise UsageError(str(error).splitlines()[0]) from error


def main() -> None:
    """The `maas` entry point: `--debug` may stand anywhere on the line."""
    args = sys.argv[1:]
    if "--debug" in args:
        os.environ[DEBUG_ENV] = "1"
        args = [a for a in args if a != "--debug"]
    app(args=args, prog_name="maas")


if __name__ == "__main__":
    main()
