"""The service's ASGI middleware (bearer-token auth, body limits, one JSON access-log line) and its log filter.

Pure ASGI on starlette responses, no BentoML import: the service adds it with
``MaasService.add_asgi_middleware(RequestGuard, max_body_bytes=...)``.
"""

from __future__ import annotations

import contextvars
import hmac
import json
import logging
import os
import sys
import time
from typing import Any

from pydantic import ValidationError
from starlette.responses import JSONResponse

TOKEN_ENV = "MAAS_API_TOKEN"
UNGUARDED_PATHS = frozenset({"/healthz", "/readyz", "/livez", "/metrics"})
ACCESS_LOGGER = "maas.access"
# BentoML's logger for errors raised while handling a request (a name, not an import).
FRAMEWORK_REQUEST_LOGGER = "bentoml._internal.server.http_app"

# Filled per request by the guard and the input validators, read back for the access log.
_REQUEST_STATS: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "maas_request", default=None
)


def count_texts(texts: list[str]) -> list[str]:
    """A pydantic after-validator: records how many texts the request holds for its log line."""
    stats = _REQUEST_STATS.get()
    if stats is not None:
        stats["n_texts"] = len(texts)
    return texts


def error_response(status: int, message: str) -> JSONResponse:
    """The service's own error body, ``{"error": message}``."""
    return JSONResponse({"error": message}, status_code=status)


class RequestGuard:
    """Pure ASGI middleware in front of every API: auth, body limits, JSON only, one log line.

    * ``MAAS_API_TOKEN`` set: every path except the probes and /metrics needs
      ``Authorization: Bearer <token>`` (401 otherwise; compared in constant time; the scheme
      is case-insensitive, RFC 7235).
    * POST bodies: only JSON (415 otherwise); more than `max_body_bytes` gives 413 before
      anything is parsed.
    * One JSON line per request on the ``maas.access`` logger: endpoint, method, n_texts,
      latency_ms, status. Never the texts or the token; the probes are not logged.
    """

    def __init__(self, app, max_body_bytes: int):
        self.app = app
        self.max_body_bytes = max_body_bytes
        token = os.environ.get(TOKEN_ENV, "")
        self._token = token.encode() if token else None
        self._log = access_logger()
        quiet_client_errors()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        path = scope["path"]
        stats: dict[str, Any] = {"status": 500, "n_texts": None}
        reset = _REQUEST_STATS.set(stats)

        async def send_recording(message):
            if message["type"] == "http.response.start":
                stats["status"] = message["status"]
            await send(message)

        try:
            rejection = self._check_headers(scope)
            if rejection is None and scope["method"] == "POST":
                receive, rejection = await self._read_body(receive)
            if rejection is not None:
                await rejection(scope, receive, send_recording)
            else:
                await self.app(scope, receive, send_recording)
        finally:
            _REQUEST_STATS.reset(reset)
            if path not in UNGUARDED_PATHS:
                self._log.info(
                    json.dumps(
                        {
                            "endpoint": path,
                            "method": scope["method"],
                            "n_texts": stats["n_texts"],
                            "latency_ms": round((time.perf_counter() - started) * 1000, 2),
                            "status": stats["status"],
                        }
                    )
                )

    def _check_headers(self, scope) -> JSONResponse | None:
        headers = dict(scope["headers"])
        if self._token is not None and scope["path"] not in UNGUARDED_PATHS:
            scheme, _, given = headers.get(b"authorization", b"").partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(given.strip(), self._token):
                response = error_response(401, "missing or invalid bearer token")
                response.headers["WWW-Authenticate"] = "Bearer"
                return response
        if scope["method"] == "POST":
            media_type = headers.get(b"content-type", b"application/json").split(b";")[0].strip().lower()
            if media_type != b"application/json":
                return error_response(
                    415,
                    f"send JSON with Content-Type: application/json (got {media_type.decode('latin-1')!r})",
                )
            length = headers.get(b"content-length", b"0")
            if not length.isdigit():
                return error_response(400, "invalid Content-Length header")
            if int(length) > self.max_body_bytes:
                return error_response(413, f"request body over {self.max_body_bytes} bytes")
        return None

    async def _read_body(self, receive):
        """Read the whole body (also when chunked) up to the limit, then replay it to the app."""
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return receive, None  # client went away: let the app see the disconnect
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return receive, error_response(413, f"request body over {self.max_body_bytes} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return replay, None


class ClientErrorFilter(logging.Filter):
    """Drop the framework's ERROR traceback for a rejected input (a 4xx is the client's mistake, already
    in the access log); real server errors keep theirs.

    BentoML's exceptions carry their HTTP status as ``error_code``; reading that attribute instead of
    importing the class keeps this module free of BentoML.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, ValidationError):
            return False
        status = getattr(error, "error_code", None)
        return not (isinstance(status, int) and 400 <= status < 500)


def quiet_client_errors() -> None:
    framework_log = logging.getLogger(FRAMEWORK_REQUEST_LOGGER)
    if not any(isinstance(f, ClientErrorFilter) for f in framework_log.filters):
        framework_log.addFilter(ClientErrorFilter())


def access_logger() -> logging.Logger:
    log = logging.getLogger(ACCESS_LOGGER)
    log.setLevel(logging.INFO)
    if not log.handlers:  # bare JSON lines on stdout; BentoML's log format would wrap them
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.propagate = False
    return log
