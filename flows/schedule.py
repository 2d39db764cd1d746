"""`maas schedule`: a local Prefect server and the scheduled `retrain` deployment, served.

One command, and a newcomer sees a scheduled retrain happen (in the log, and in the UI):

1. a Prefect server on 127.0.0.1: `prefect server start` as a child process in its own
   session, its database under PREFECT_HOME (MAAS_HOME/prefect), its log in
   `server.log` there; skipped when PREFECT_API_URL already names a server;
2. the `retrain` deployment of prefect.yaml (name, cron schedule, timezone, parameters)
   served by a Prefect runner in this process: each run executes in a subprocess, one
   at a time;
3. with `run_now`, one flow run right away;
4. the `monitor` deployment of prefect.yaml (hourly drift checks, flows/monitor.py) beside it,
   on its own cron; a monitor run that finds drift and new labelled data triggers `retrain`.

Ctrl-C (or SIGTERM) stops the runner, which pauses the schedule, then stops the server.
For workers, work pools (process, Docker, Kubernetes) and remote servers see
docs/orchestration.md.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import yaml

from flows.prefect_server import is_healthy, start_server
from flows.settings import Settings

PREFECT_YAML = Path(__file__).resolve().parents[1] / "prefect.yaml"
DEPLOYMENT = "retrain"
MONITOR_DEPLOYMENT = "monitor"


def deployment_settings(name: str = DEPLOYMENT, path: Path = PREFECT_YAML) -> dict[str, Any]:
    """Name, entrypoint, cron, timezone, parameters and work pool of a deployment in prefect.yaml."""
    document = yaml.safe_load(Path(path).read_text()) or {}
    for entry in document.get("deployments") or []:
        if entry.get("name") != name:
            continue
        crons = [s for s in entry.get("schedules") or [] if "cron" in s]
        return {
            "name": name,
            "entrypoint": entry["entrypoint"],
            "cron": crons[0]["cron"] if crons else None,
            "timezone": crons[0].get("timezone") if crons else None,
            "parameters": dict(entry.get("parameters") or {}),
            "work_pool": (entry.get("work_pool") or {}).get("name"),
            "tags": list(entry.get("tags") or []),
            "description": entry.get("description"),
        }
    raise KeyError(f"no deployment named {name!r} in {path}")


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def serve_retrain(
    settings: Settings, config: str, *, port: int = 4200, cron: str | None = None, run_now: bool = False,
    ui: bool = True,
) -> None:
    """Start (or reuse) a Prefect server and serve the retrain deployment until interrupted."""
    spec = deployment_settings()
    # A process started in the background by a script (or by a test runner that ignores
    # SIGINT) inherits "ignore SIGINT", and Ctrl-C would never stop the runner: restore it.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _raise_interrupt)  # clean up the server on SIGTERM too
    server = None
    api_url = os.environ.get("PREFECT_API_URL")
    try:
        if api_url:
            if not is_healthy(api_url):
                raise RuntimeError(f"PREFECT_API_URL={api_url} does not answer /health")
            print(f"Using the Prefect server at {api_url}")
        else:
            print(f"Starting a Prefect server on 127.0.0.1:{port} (log: {settings.prefect_home / 'server.log'})...")
            server = start_server(Path(os.environ.get("PREFECT_HOME") or settings.prefect_home), port, ui=ui)
            api_url = server.api_url
            os.environ["PREFECT_API_URL"] = api_url
            print(f"Prefect server ready: UI http://127.0.0.1:{port}, API {api_url}")
        _serve(spec, api_url, config, cron, run_now)
    except KeyboardInterrupt:
        pass
    finally:
        if server is not None:
            print("Stopping the Prefect server...")
            server.stop()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _serve(spec: dict[str, Any], api_url: str, config: str, cron: str | None, run_now: bool) -> None:
    from prefect import serve
    from prefect.deployments import run_deployment
    from prefect.schedules import Cron
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.monitor import monitor
    from flows.retrain import retrain

    watch = deployment_settings(MONITOR_DEPLOYMENT)
    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        deployment = retrain.to_deployment(
            name=spec["name"],
            schedule=Cron(cron or spec["cron"], timezone=spec["timezone"]),
            parameters={**spec["parameters"], "config": config},
            description=spec["description"],
            tags=spec["tags"],
        )
        watcher = monitor.to_deployment(
            name=watch["name"],
            schedule=Cron(watch["cron"], timezone=watch["timezone"]),
            parameters={**watch["parameters"], "config": config},
            description=watch["description"],
            tags=watch["tags"],
        )
        full_name = f"{retrain.name}/{spec['name']}"
        if run_now:
            deployment.apply()
            flow_run = run_deployment(full_name, timeout=0, as_subflow=False)
            print(f"Triggered flow run {flow_run.name} of {full_name}: it starts within the runner's poll interval")
        print(f"Serving {full_name} on cron '{cron or spec['cron']}' ({spec['timezone'] or 'UTC'}), config={config}. "
              "Ctrl-C stops it.")
        print(f"Serving {monitor.name}/{watch['name']} on cron '{watch['cron']}' ({watch['timezone'] or 'UTC'}).")
        # One run at a time: two retrains would race on data/, data.dvc and the champion alias, and
        # a monitor run must not read the champion while a retrain moves it.
        serve(deployment, watcher, limit=1)
