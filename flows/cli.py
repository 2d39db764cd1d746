"""`maas`: the command line of the pipeline (Typer).

Each command points the libraries at MAAS_HOME first (see flows.settings), then imports
the flows, so Prefect and BentoML never start with the wrong home folder.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from typing import Annotated

import typer

app = typer.Typer(
    add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, help="maas: models as a service."
)

ConfigOption = Annotated[str, typer.Option("--config", "-c", help="A preset in configs/ (default, smoke, gpu) or a YAML path.")]


def _setup(config: str | None = None):
    from flows.settings import Settings

    settings = Settings.from_env()
    settings.apply()
    _quiet_shutdown_noise()
    if config is None:
        return settings, None
    from components.config import load_config, resolve_config_path

    return settings, load_config(resolve_config_path(config, settings.configs_dir))


def _quiet_shutdown_noise() -> None:
    """Prefect's ephemeral server logs CancelledError tracebacks when the process exits: hide them."""
    for name in ("uvicorn.error", "prefect._internal.concurrency", "prefect.events.clients"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


def _print_summary(summary: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 160)
    versions = summary["data_versions"]
    console.print(f"\n[bold]Data version[/bold] (data.dvc): {versions.get('_repo')}")
    for task_name, task in summary["tasks"].items():
        table = Table(title=f"{task_name}: candidates (val chooses, test reports)")
        metric_names = sorted(k for k in (task["results"][0]["val"] if task["results"] else {}) if k != "log_loss")
        test_names = sorted(k for k in (task["results"][0]["test"] if task["results"] else {}) if k != "log_loss")
        for column in ["candidate", "version", *[f"val {m}" for m in metric_names], *[f"test {m}" for m in test_names], "p50 ms", "train s"]:
            table.add_column(column)
        for r in task["results"]:
            table.add_row(
                r["candidate"], str(r["version"]), *[f"{r['val'][m]:.4f}" for m in metric_names],
                *[f"{r['test'][m]:.4f}" for m in test_names], f"{r['latency_ms_p50']:.2f}", f"{r['train_s']:.1f}",
            )
        console.print(table)
        decision = task["decision"]
        verb = "promoted" if decision["promoted"] else "kept"
        console.print(f"{task_name}: {verb} ({decision['reason']}); champion: {decision['registered_model']} v{decision['champion_version']}")
    console.print(f"[bold]Bento:[/bold] {summary.get('bento')}  (serve it: maas serve)")


def _fail(step: str, error: BaseException) -> None:
    typer.secho(f"\n{step} failed: {type(error).__name__}: {error}", fg="red", err=True)
    typer.secho(
        "Nothing half-done was kept: data.dvc moves only after every dataset validated, the champion alias "
        "only after a better model was registered, the Bento only after a successful build.",
        err=True,
    )
    raise typer.Exit(1)


@app.command()
def pipeline(
    config: ConfigOption = "default",
    force: Annotated[bool, typer.Option(help="Retrain even when a cached result exists.")] = False,
    skip_ingest: Annotated[bool, typer.Option(help="Train on the data pinned by data.dvc (dvc pull if missing).")] = False,
) -> None:
    """Run everything: ingest → train → evaluate → promote → build the Bento."""
    settings, cfg = _setup(config)
    from flows.pipeline import pipeline as pipeline_flow

    try:
        summary = pipeline_flow(settings, cfg, config_name=config, force=force, skip_ingest=skip_ingest)
    except Exception as error:  # the flow's log above holds the traceback
        _fail("pipeline", error)
    _print_summary(summary)


@app.command()
def ingest(config: ConfigOption = "default") -> None:
    """Read the configured sources, validate, write data/ and version it with DVC."""
    settings, cfg = _setup(config)
    from flows.ingest import ingest as ingest_flow

    versions = ingest_flow(settings, cfg)
    typer.echo(json.dumps(versions, indent=2))


@app.command()
def train(
    config: ConfigOption = "default",
    candidate: Annotated[list[str] | None, typer.Option("--candidate", help="Train only these (repeatable).")] = None,
    nproc: Annotated[int, typer.Option(help="Processes for DDP via torchrun (torch models).")] = 1,
    force: Annotated[bool, typer.Option(help="Retrain even when a cached result exists.")] = False,
) -> None:
    """Train and register candidates on the data pinned by data.dvc (no promotion)."""
    settings, cfg = _setup(config)
    from flows.pipeline import train as train_flow

    try:
        results = train_flow(settings, cfg, config_name=config, only=candidate, nproc=nproc, force=force)
    except Exception as error:
        _fail("train", error)
    for task_name, rows in results.items():
        for r in rows:
            typer.echo(f"{task_name}: {r['candidate']} v{r['version']} val {json.dumps(r['val'])}")


@app.command()
def promote(config: ConfigOption = "default") -> None:
    """Let the best run of the current data version challenge the champion."""
    settings, cfg = _setup(config)
    from prefect import flow

    from components.data.fingerprint import dataset_version
    from flows.leaderboard import leaderboard
    from flows.promote import promote as promote_task

    @flow(name="promote")
    def promote_flow():
        decisions = []
        for task_name in ("classification", "generation"):
            task_spec = getattr(cfg, task_name)
            if task_spec is None:
                continue
            version = dataset_version(settings.data_root / task_spec.dataset)
            rows = [r for r in leaderboard(settings, cfg, {task_spec.dataset: version})
                    if r["task"] == task_name and r["version"] and task_spec.metric in r["val"]]
            if rows:
                results = [{"candidate": r["model"], "version": r["version"], "val": r["val"]} for r in rows]
                decisions.append(promote_task(settings, task_spec, results, version))
        return decisions

    for decision in promote_flow():
        verb = "promoted" if decision["promoted"] else "kept"
        typer.echo(f"{decision['registered_model']}: {verb} ({decision['reason']}); champion v{decision['champion_version']}")


@app.command()
def rollback(
    config: ConfigOption = "default",
    task: Annotated[str, typer.Option(help="classification or generation")] = "classification",
) -> None:
    """Give the champion alias back to the previous version, then rebuild the Bento."""
    settings, cfg = _setup(config)
    from prefect import flow

    from flows.package import build as build_task
    from flows.package import import_champion
    from flows.promote import rollback as rollback_champion

    @flow(name="rollback")
    def rollback_flow():
        outcome = rollback_champion(settings, getattr(cfg, task))
        imported = {name: import_champion(settings, cfg, name) for name in ("classification", "generation")
                    if getattr(cfg, name) is not None}
        return outcome, build_task(settings, imported)

    try:
        outcome, bento_tag = rollback_flow()
    except Exception as error:
        _fail("rollback", error)
    typer.echo(f"{outcome['registered_model']}: champion is v{outcome['champion_version']} again "
               f"(v{outcome['replaced']} is now `previous`); Bento {bento_tag}")


@app.command()
def sweep(
    candidate: Annotated[str, typer.Argument(help="The candidate whose hyperparameters to search.")],
    config: ConfigOption = "default",
    method: Annotated[str | None, typer.Option(help="grid, random or optuna (default: the config's).")] = None,
    trials: Annotated[int | None, typer.Option(help="Number of trials (default: the config's).")] = None,
    runner: Annotated[str, typer.Option(help="Task runner: threads or processes.")] = "threads",
) -> None:
    """Search one candidate's hyperparameters; the best trial challenges the champion."""
    settings, cfg = _setup(config)
    from flows.sweep import find_task, task_runner
    from flows.sweep import sweep as sweep_flow

    _, task_spec = find_task(cfg, candidate)
    spec = task_spec.sweeps.get(candidate)
    if spec is None:
        raise typer.BadParameter(f"no `sweeps: {candidate}` search space in config {config}")
    spec = spec.model_copy(update={k: v for k, v in {"method": method, "trials": trials}.items() if v is not None})
    try:
        outcome = sweep_flow.with_options(task_runner=task_runner(runner, spec.parallel))(
            settings, cfg, candidate, config_name=config, sweep_spec=spec)
    except Exception as error:
        _fail("sweep", error)
    metric = task_spec.metric
    for r in sorted(outcome["trials"], key=lambda r: r["val"][metric], reverse=task_spec.greater_is_better):
        typer.echo(f"{r['candidate']}: val {metric} {r['val'][metric]:.4f}  run {r['run_id']}")
    best, decision = outcome["best"], outcome["decision"]
    typer.echo(f"best: {best['candidate']} -> {task_spec.registered_model} v{best['version']}; "
               f"{'promoted' if decision['promoted'] else 'kept the champion'} ({decision['reason']})")


@app.command()
def compare(
    config: ConfigOption = "default",
    as_json: Annotated[bool, typer.Option("--json", help="Print the leaderboard as JSON.")] = False,
    markdown: Annotated[bool, typer.Option("--markdown", help="Print the leaderboard as a Markdown table.")] = False,
) -> None:
    """The leaderboard of the current data version, from MLflow."""
    settings, cfg = _setup(config)
    from components.data.fingerprint import dataset_version
    from flows.leaderboard import leaderboard

    versions = {d.name: dataset_version(settings.data_root / d.name) for d in cfg.datasets
                if (settings.data_root / d.name).is_dir()}
    rows = leaderboard(settings, cfg, versions)
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    lines = ["| task | model | version | alias | val | test | p50 ms |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        fmt = lambda d: ", ".join(f"{k} {v:.4f}" for k, v in d.items())  # noqa: E731
        latency = f"{r['latency_ms_p50']:.2f}" if r["latency_ms_p50"] is not None else "-"
        lines.append(f"| {r['task']} | {r['model']} | {r['version']} | {r['alias'] or ''} | {fmt(r['val'])} | {fmt(r['test'])} | {latency} |")
    if markdown:
        typer.echo("\n".join(lines))
        return
    from rich.console import Console
    from rich.markdown import Markdown

    Console().print(Markdown("\n".join(lines)))


@app.command()
def build(config: ConfigOption = "default") -> None:
    """Import the champions into the BentoML store and build the Bento."""
    settings, cfg = _setup(config)
    from prefect import flow

    from flows.package import build as build_task
    from flows.package import import_champion

    @flow(name="build")
    def build_flow():
        imported = {name: import_champion(settings, cfg, name) for name in ("classification", "generation")
                    if getattr(cfg, name) is not None}
        return build_task(settings, imported)

    typer.echo(build_flow())


@app.command()
def serve(
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 3000,
    host: Annotated[str, typer.Option(help="Bind address (0.0.0.0 exposes it to the network).")] = "127.0.0.1",
) -> None:
    """Serve the latest built Bento."""
    settings, _ = _setup()
    from flows import bento

    current = bento.latest_bento("maas")
    if current is None:
        raise typer.BadParameter("no Bento built yet: run `maas pipeline` or `maas build` first")
    os.execvp("bentoml", ["bentoml", "serve", str(current.tag), "--host", host, "--port", str(port)])


@app.command()
def ui(port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 5000) -> None:
    """Open the MLflow UI on the embedded store."""
    settings, _ = _setup()
    from flows.tracking import ui_command

    typer.echo(f"MLflow UI on http://127.0.0.1:{port} (store: {settings.tracking_uri})")
    sys.exit(subprocess.call(ui_command(settings, port)))


@app.command()
def retrain(
    config: ConfigOption = "default",
    force: Annotated[bool, typer.Option(help="Retrain even when the data and the code did not change.")] = False,
) -> None:
    """Retrain only what changed: what the scheduled deployment runs (nothing new: nothing changes)."""
    settings, _ = _setup(config)
    from flows.retrain import FAILURE_FILE
    from flows.retrain import retrain as retrain_flow

    try:
        summary = retrain_flow(config=config, force=force)
    except Exception as error:
        typer.secho(f"What failed and what was left unchanged: {settings.home / FAILURE_FILE}", err=True)
        _fail("retrain", error)
    _print_summary(summary)
    typer.echo("\n".join(summary["changes"]))


@app.command()
def schedule(
    config: ConfigOption = "default",
    port: Annotated[int, typer.Option(help="Port of the local Prefect server on 127.0.0.1.")] = 4200,
    cron: Annotated[str | None, typer.Option(help="Another cron schedule than prefect.yaml's.")] = None,
    run_now: Annotated[bool, typer.Option("--run-now", help="Also trigger one run right away.")] = False,
) -> None:
    """Start a local Prefect server and serve the scheduled retrain deployment (Ctrl-C stops both).

    With PREFECT_API_URL set, serves on that server instead of starting one.
    """
    settings, _ = _setup(config)
    from flows.schedule import serve_retrain

    try:
        serve_retrain(settings, config, port=port, cron=cron, run_now=run_now)
    except (RuntimeError, TimeoutError) as error:
        _fail("schedule", error)


if __name__ == "__main__":
    app()
