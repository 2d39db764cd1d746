"""A local Prefect server as a child process: for `maas schedule`, and for every flow command.

Prefect's own temporary server (used when PREFECT_API_URL is unset) is a uvicorn child that
outlives a killed parent, keeping its port and about 200 MB. The server started here is
told by the kernel to stop when the thread that started it dies (Linux `PR_SET_DEATHSIG`),
so even a SIGKILLed `maas pipeline` leaves no server behind.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

SERVER_READY_TIMEOUT_S = 180
SERVER_STOP_TIMEOUT_S = 30
_PR_SET_DEATHSIG = 1  # from <linux/prctl.h>


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        return sock.connect_ex((host, port)) == 0


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def is_healthy(api_url: str) -> bool:
    import httpx

    try:
        return httpx.get(f"{api_url.rstrip('/')}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@dataclass
class LocalServer:
    """A `prefect server start` child process."""

    process: subprocess.Popen
    api_url: str
    log_path: Path

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def wait_until_healthy(self, timeout_s: float = SERVER_READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the Prefect server exited with {self.process.returncode}:\n{self.log_tail()}")
            if is_healthy(self.api_url):
                return
            time.sleep(0.25)
        self.stop()
        raise TimeoutError(f"the Prefect server was not healthy after {timeout_s:.0f} s:\n{self.log_tail()}")

    def stop(self, timeout_s: float = SERVER_STOP_TIMEOUT_S) -> int | None:
        """SIGTERM (a graceful uvicorn shutdown), then SIGKILL to its process group."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        return self.process.returncode


def _die_with_parent(parent_pid: int):
    """A preexec_fn: SIGTERM this child when its parent dies (Linux); elsewhere a no-op."""

    def arm() -> None:
        if not sys.platform.startswith("linux"):
            return
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_DEATHSIG, signal.SIGTERM)
        if os.getppid() != parent_pid:  # the parent died before the signal was armed
            os._exit(1)

    return arm


def start_server(home: Path, port: int, *, ui: bool = True, die_with_parent: bool = False,
                 log_name: str = "server.log") -> LocalServer:
    """`prefect server start --host 127.0.0.1 --port <port>` with its database in `home`; waits until healthy.

    `die_with_parent` ties the server's life to this process (see the module docstring); without
    it the server runs in its own session, so that Ctrl-C reaches only this process, which then
    stops the server in order.
    """
    if port_in_use(port):
        raise RuntimeError(
            f"port {port} on 127.0.0.1 is taken: pass another --port, or set PREFECT_API_URL to the server there"
        )
    home.mkdir(parents=True, exist_ok=True)
    env = {key: value for key, value in os.environ.items() if key != "PREFECT_API_URL"}
    env |= {"PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}
    command = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    if not ui:
        command.append("--no-ui")
    log_path = home / log_name
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=_die_with_parent(os.getpid()) if die_with_parent else None,
        )
    server = LocalServer(process, f"http://127.0.0.1:{port}/api", log_path)
    server.wait_until_healthy()
    return server
