"""How a maas command talks to a person: one line and an exit code for a mistake they can fix
(2) or for ours (1), tracebacks and library noise to the command's log file under
MAAS_HOME/logs (or to the terminal with --debug), and the summary at the end of a run.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import time
import traceback
from pathlib import Path

import typer

DEBUG_ENV = "MAAS_DEBUG"
USAGE_ERROR = 2
NOTHING_LOST = ("Nothing half-done was kept: data.dvc moves only after every dataset validated, the champion alias "
                "only after a better model was registered, the Bento only after a successful build.")


class UsageError(Exception):
    """A problem the user can fix (a taken port, a file that would be overwritten): exit 2, one line."""


class CommandRun:
    """What the current command knows about itself: its name and its log file."""

    command = "maas"
    log_path: Path | None = None
    started_work = False  # past set-up: a failure may have left work to undo (and did not)


def debug() -> bool:
    return os.environ.get(DEBUG_ENV) == "1"


def is_usage_error(error: BaseException) -> bool:
    from components.config import ConfigError
    from components.data.validation import DataValidationError

    return isinstance(error, UsageError | ConfigError | DataValidationError | FileNotFoundError | KeyError
                      | ValueError | ImportError)


def message(error: BaseException) -> str:
    # KeyError's str() is the repr of its argument: show the sentence itself.
    text = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
    return " ".join(str(text).split()) or type(error).__name__


def handled(command):
    """Run a command; turn its exceptions into one line and an exit code (2: the user's to fix, 1: ours)."""

    @functools.wraps(command)
    def run(*args, **kwargs):
        CommandRun.command = command.__name__
        try:
            return command(*args, **kwargs)
        except (typer.Exit, typer.Abort, typer.BadParameter, KeyboardInterrupt):
            raise
        except Exception as error:
            log_traceback(error)
            usage = is_usage_error(error)
            if usage:
                typer.secho(f"error: {message(error)}", fg="red", err=True)
            else:
                typer.secho(f"maas {CommandRun.command} failed: {type(error).__name__}: {message(error)}",
                            fg="red", err=True)
            if CommandRun.log_path and not debug():
                typer.echo(f"The log, traceback included: {CommandRun.log_path} (or run with --debug).", err=True)
            if CommandRun.started_work:
                typer.echo(NOTHING_LOST, err=True)
            raise typer.Exit(USAGE_ERROR if usage else 1) from None

    return run


def log_traceback(error: BaseException) -> None:
    text = "".join(traceback.format_exception(error))
    if debug():
        typer.echo(text, err=True)
    if CommandRun.log_path is not None:
        with CommandRun.log_path.open("a") as log:
            log.write(text)


class WithoutTraceback(logging.Formatter):
    """A console formatter that leaves tracebacks to the log file (--debug shows them)."""

    def __init__(self, inner: logging.Formatter | None):
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        saved = record.exc_info, record.exc_text, record.stack_info
        record.exc_info = record.exc_text = record.stack_info = None
        try:
            return self.inner.format(record)
        finally:
            record.exc_info, record.exc_text, record.stack_info = saved


def route_logs(settings) -> None:
    """Every log line of this command to MAAS_HOME/logs/<time>-<command>-<pid>.log; none of the tracebacks
    to the terminal unless --debug. Call after Prefect configured logging (importing it does)."""
    folder = settings.home / "logs"
    folder.mkdir(parents=True, exist_ok=True)
    CommandRun.log_path = folder / f"{time.strftime('%Y%m%d-%H%M%S')}-{CommandRun.command}-{os.getpid()}.log"
    handler = logging.FileHandler(CommandRun.log_path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for console in root.handlers:
        if isinstance(console, logging.StreamHandler) and not isinstance(console, logging.FileHandler):
            # Training steps a terminal already shows as a live progress bar go to the log file only.
            console.addFilter(lambda record: not getattr(record, "shown_as_bar", False))
            if not debug():
                console.setFormatter(WithoutTraceback(console.formatter))
    root.addHandler(handler)
    # Library warnings (MLflow's signature notes, deprecations) are for the log, not for the user.
    logging.captureWarnings(True)
    if not debug():
        warnings_log = logging.getLogger("py.warnings")
        warnings_log.propagate = False
        warnings_log.addHandler(handler)


def quiet_libraries() -> None:
    """MLflow's own INFO lines ("Creating initial MLflow database tables", "Created version '3'") repeat
    what the flow's log says; Prefect's client logs CancelledError tracebacks when the process exits."""
    levels = {"mlflow": logging.WARNING, "alembic": logging.WARNING, "uvicorn.error": logging.CRITICAL,
              "prefect._internal.concurrency": logging.CRITICAL, "prefect.events.clients": logging.CRITICAL}
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


def print_summary(summary: dict) -> None:
    from rich.console import Console

    from flows.leaderboard import describe_decision, render, summary_rows

    console = Console(width=None if sys.stdout.isatty() else 160)
    console.print(f"\n[bold]Data version[/bold] (data.dvc): {summary['data'].repo}")
    console.print(render(summary_rows(summary["tasks"]), "table"))
    for outcome in summary["tasks"].values():
        console.print(describe_decision(outcome["decision"]))
    console.print(f"[bold]Bento:[/bold] {summary.get('bento')}")
    console.print("Next: [bold]maas serve[/bold] (the API on http://127.0.0.1:3000), [bold]maas ui[/bold] "
                  "(runs and charts in MLflow), [bold]maas compare[/bold] (the leaderboard).")
    if CommandRun.log_path is not None:
        console.print(f"Log: {CommandRun.log_path}")
