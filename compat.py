"""Every use of BentoML internals, in one place, for BentoML 1.4.40: re-check each item when BentoML changes.

1. ``patch_timeout_middleware()`` (the service applies it). ``TimeoutMiddleware.__call__``
   (``bentoml/_internal/server/http/traffic.py``, line 29 in 1.4.40) arms
   ``loop.call_later(self.timeout, ...)`` for every request and never cancels it, so each
   request's timer handle and future live for the whole ``traffic.timeout`` (60 s here): at about
   1,000 requests/s, tens of thousands of handles and about 0.5 KB of resident memory per request.
   The timeout cannot be switched off through the public config (``traffic.timeout`` must be a
   positive number). No upstream issue was found in BentoML's tracker for this; the fix belongs
   there. The replacement keeps upstream's behaviour (504 after the timeout) and cancels the timer
   when the request ends. ``tests/service/test_compat.py`` fails once upstream cancels it itself:
   then delete the patch.
2. ``use_bentoml_home(path)`` (tests and benchmarks): BentoML reads ``BENTOML_HOME`` once, on first
   use, and has no public way to point a running process at another store.
3. ``bento_arguments(args)`` (tests): BentoML reads Bento arguments publicly
   (``bentoml.use_arguments()``) but sets them only from its CLI and build paths.

Nothing else in the project imports ``bentoml._internal`` or ``_bentoml_sdk``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

BENTOML_VERSION = "1.4.40"  # the version every item above was checked against

_upstream_timeout_call = None


def _timeout_middleware() -> type:
    from bentoml._internal.server.http.traffic import TimeoutMiddleware

    return TimeoutMiddleware


async def _timeout_call_cancelling_its_timer(self, scope, receive, send) -> None:
    """Upstream's TimeoutMiddleware.__call__ (1.4.40), plus ``timer.cancel()`` when the request ends."""
    from starlette.responses import JSONResponse

    if scope["type"] not in ("http", "websocket"):
        await self.app(scope, receive, send)
        return
    loop = asyncio.get_running_loop()
    waiter = loop.create_future()
    timer = loop.call_later(self.timeout, self._set_timer_out, waiter)

    async def _send(message) -> None:
        if not waiter.done():
            waiter.set_result(None)
        await send(message)

    handled = asyncio.ensure_future(self.app(scope, receive, _send))
    try:
        await waiter
    except TimeoutError:
        if handled.cancel():
            response = JSONResponse(
                {"error": f"Not able to process the request in {self.timeout} seconds"}, status_code=504
            )
            await response(scope, receive, send)
    else:
        await handled
    finally:
        timer.cancel()


def patch_timeout_middleware() -> None:
    """Make BentoML's request timeout cancel its timer when the request ends (idempotent)."""
    global _upstream_timeout_call
    middleware = _timeout_middleware()
    if middleware.__call__ is not _timeout_call_cancelling_its_timer:
        _upstream_timeout_call = middleware.__call__
        middleware.__call__ = _timeout_call_cancelling_its_timer


def upstream_timeout_call():
    """BentoML's own ``TimeoutMiddleware.__call__``, patched or not (for the test that retires the patch)."""
    if _upstream_timeout_call is not None:
        return _upstream_timeout_call
    return _timeout_middleware().__call__


def timeout_middleware(app, timeout: float):
    """BentoML's request-timeout middleware around `app` (as the server adds it)."""
    return _timeout_middleware()(app, timeout=timeout)


@contextlib.contextmanager
def use_bentoml_home(path: str | Path) -> Iterator[Path]:
    """Point this process's BentoML stores, and child processes (``BENTOML_HOME``), at `path`.

    BentoML reads its home once, on first use; tests and benchmarks that need a throw-away
    store after bentoml was already used in the process switch with this instead.
    """
    from bentoml._internal.bento import BentoStore
    from bentoml._internal.configuration.containers import BentoMLContainer
    from bentoml._internal.models import ModelStore

    home = Path(path).resolve()
    for sub in ("bentos", "models", "envs", "tmp"):
        (home / sub).mkdir(parents=True, exist_ok=True)
    previous = os.environ.get("BENTOML_HOME")
    os.environ["BENTOML_HOME"] = str(home)
    try:
        with (
            BentoMLContainer.bentoml_home.patch(str(home)),
            BentoMLContainer.model_store.patch(ModelStore(str(home / "models"))),
            BentoMLContainer.bento_store.patch(BentoStore(str(home / "bentos"))),
            BentoMLContainer.tmp_bento_store.patch(BentoStore(str(home / "tmp"))),
        ):
            yield home
    finally:
        if previous is None:
            os.environ.pop("BENTOML_HOME", None)
        else:
            os.environ["BENTOML_HOME"] = previous


@contextlib.contextmanager
def bento_arguments(arguments: dict[str, Any]) -> Iterator[None]:
    """Bento arguments (``--arg``) for code run in this process, e.g. importing service.py; cleared after."""
    from bentoml._internal.utils.args import set_arguments

    set_arguments(dict(arguments))
    try:
        yield
    finally:
        set_arguments({})
