"""What a flow command sets up before any work: MAAS_HOME's stores under one lock, a Prefect
server that lives and dies with this process, and the runs that killed processes left RUNNING.

Two `maas` processes started at once on a fresh MAAS_HOME would both create the MLflow and
Prefect databases and break them; here the first one to take the lock creates every store,
and the other waits, says so, and then finds them ready.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import psutil
from filelock import FileLock, Timeout

from flows.prefect_server import LocalServer, free_port, start_server
from flows.settings import Settings

log = logging.getLogger("maas")

SETUP_LOCK = ".setup.lock"
SETUP_WAIT_S = 600
PROCESS_TAG_PREFIX = "maas-process:"


@contextlib.contextmanager
def setup_lock(settings: Settings, say=print) -> Iterator[None]:
    """Hold MAAS_HOME's setup lock; tell the user when another process holds it."""
    settings.home.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(settings.home / SETUP_LOCK))
    try:
        lock.acquire(timeout=1)
    except Timeout:
        say(f"Another maas process is setting up {settings.home}: waiting for it...")
        lock.acquire(timeout=SETUP_WAIT_S)
    try:
        yield
    finally:
        lock.release()


def prepare(settings: Settings, say=print) -> LocalServer | None:
    """Create or upgrade every store under the lock, start a Prefect server if none is configured,
    then close what killed runs left open. Call before `prefect` is imported: it sets PREFECT_API_URL.
    """
    from flows import tracking

    server = None
    with setup_lock(settings, say):
        tracking.init_store(settings)
        for folder in (settings.dvc_remote, settings.bentoml_home, settings.work_dir):
            folder.mkdir(parents=True, exist_ok=True)
        if not os.environ.get("PREFECT_API_URL"):
            server = start_prefect_server(settings)
    for run_id in tracking.close_orphaned_runs(settings):
        say(f"Closed MLflow run {run_id} as KILLED: the process that ran it is gone.")
    for name in close_orphaned_flow_runs():
        say(f"Marked Prefect flow run {name} as crashed: the process that ran it is gone.")
    return server


def start_prefect_server(settings: Settings) -> LocalServer:
    """A Prefect server for this process alone: stopped at exit, and by the kernel if we are killed."""
    home = Path(os.environ.get("PREFECT_HOME") or settings.prefect_home)
    server = start_server(home, free_port(), ui=False, die_with_parent=True, log_name=f"server-{os.getpid()}.log")
    os.environ["PREFECT_API_URL"] = server.api_url
    atexit.register(_stop_and_forget_log, server)
    return server


def _stop_and_forget_log(server: LocalServer) -> None:
    server.stop()
    if server.process.returncode in (0, -15):  # a clean stop: its log holds nothing to keep
        server.log_path.unlink(missing_ok=True)


def process_id(pid: int | None = None) -> str:
    """`host:pid:start time`: names one process, even after its pid is reused."""
    process = psutil.Process(pid)
    return f"{socket.gethostname()}:{process.pid}:{process.create_time():.2f}"


def process_alive(process: str) -> bool:
    """Whether a `process_id()` of this host still runs (a process of another host counts as alive)."""
    host, _, rest = process.partition(":")
    pid, _, started = rest.partition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return True
    try:
        return f"{psutil.Process(int(pid)).create_time():.2f}" == started
    except psutil.Error:
        return False


def process_tag() -> str:
    """The Prefect tag that names this process on the flow runs it starts."""
    return PROCESS_TAG_PREFIX + process_id()


def close_orphaned_flow_runs() -> list[str]:
    """Mark Crashed the running flow runs whose `maas-process:` tag names a dead process."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType
    from prefect.states import Crashed

    running = FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.RUNNING])))
    closed = []
    with get_client(sync_client=True) as client:
        for flow_run in client.read_flow_runs(flow_run_filter=running):
            owners = [t.removeprefix(PROCESS_TAG_PREFIX) for t in flow_run.tags if t.startswith(PROCESS_TAG_PREFIX)]
            if owners and not process_alive(owners[0]):
                client.set_flow_run_state(
                    flow_run.id, Crashed(message="the maas process running it was killed"), force=True
                )
                closed.append(flow_run.name)
    return closed
