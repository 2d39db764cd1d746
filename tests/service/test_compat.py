"""compat.py's reasons still hold for the installed BentoML: each test fails when its patch can go."""

from __future__ import annotations

import asyncio
import gc

import bentoml
from starlette.responses import PlainTextResponse

import compat


def _armed_timers() -> int:
    gc.collect()
    return sum(1 for obj in gc.get_objects() if isinstance(obj, asyncio.TimerHandle) and not obj.cancelled())


async def _quick_app(scope, receive, send):
    await PlainTextResponse("ok")(scope, receive, send)


def _requests_through(call, n: int) -> int:
    """Armed timers left on the loop after `n` quick requests through TimeoutMiddleware's `call`."""
    middleware = compat.timeout_middleware(_quick_app, timeout=60)

    async def one_request():
        sent = []

        async def receive():
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "method": "GET", "path": "/", "headers": [], "query_string": b""}
        await call(middleware, scope, receive, send)
        assert sent[0]["status"] == 200

    async def many():
        before = _armed_timers()
        for _ in range(n):
            await one_request()
        return _armed_timers() - before

    return asyncio.run(many())


# Timers are counted over the whole process (other loops' timers may come and go meanwhile), so
# the bars leave room: the upstream call leaves about one timer a request, the patched one none.
REQUESTS = 50


def test_upstream_timeout_middleware_still_leaves_its_timer_armed():
    left = _requests_through(compat.upstream_timeout_call(), REQUESTS)
    assert left >= 0.8 * REQUESTS, (
        f"BentoML {bentoml.__version__}'s TimeoutMiddleware now cancels its timer: "
        "delete compat.patch_timeout_middleware and its call in service.py"
    )


def test_the_patched_timeout_middleware_leaves_none():
    compat.patch_timeout_middleware()
    compat.patch_timeout_middleware()  # idempotent: the upstream call is still the one kept
    assert compat.upstream_timeout_call() is not compat._timeout_call_cancelling_its_timer
    assert _requests_through(compat.timeout_middleware(_quick_app, 60).__class__.__call__, REQUESTS) <= 0.2 * REQUESTS


def test_bentoml_is_the_version_compat_was_checked_against():
    assert bentoml.__version__ == compat.BENTOML_VERSION, (
        f"BentoML {bentoml.__version__} is installed; compat.py was checked against {compat.BENTOML_VERSION}: "
        "re-check each of its items (private imports, the timer leak), then update BENTOML_VERSION"
    )
