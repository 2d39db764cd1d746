"""Streamed generation for the service: a model thread produces text pieces, the event loop sends them as server-sent events.

``PieceFeed.produce(open_stream)`` runs on the model's worker thread: it opens the
generator's stream and hands each piece to the event loop through an ``asyncio.Queue``,
checking a cancel flag before every token, so a generation whose client has gone stops
within a token. ``sse_events`` turns a feed into the event stream the client reads and
cancels the feed in its ``finally`` (a disconnect closes the async generator). The number of
generations running is kept on a gauge-like object (``inc()`` / ``dec()``: a Prometheus
Gauge in the service). No BentoML here: the service wires it to its API.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, Protocol

END = object()  # the feed's last item: the stream is over


class Gauge(Protocol):
    def inc(self) -> None: ...

    def dec(self) -> None: ...


class PieceFeed:
    """The pieces of one generation, from the model's thread to the event loop.

    Items are text pieces, then END; or an exception (the generator's error) then END.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, in_progress: Gauge):
        self._loop = loop
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._cancelled = threading.Event()
        self._in_progress = in_progress

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def cancel(self) -> None:
        """Stop producing: the model thread notices before its next token."""
        self._cancelled.set()

    def produce(self, open_stream: Callable[[], Iterator[str]]) -> None:
        """On the model thread: run the stream until it ends or the feed is cancelled."""
        if self.cancelled:  # the client left while this generation waited for the thread
            self._put(END)
            return
        self._in_progress.inc()
        try:
            pieces = open_stream()
            try:
                while not self.cancelled:
                    piece = next(pieces, END)
                    if piece is END or not self._put(piece):
                        break
            finally:
                pieces.close()  # stops the generator's own computation
        except Exception as exc:  # handed to the event loop, which answers or logs it
            self._put(exc)
        finally:
            self._in_progress.dec()
            self._put(END)

    def _put(self, item: Any) -> bool:
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # the event loop is closed: the server is shutting down
            self.cancel()
            return False
        return True

    async def get(self) -> Any:
        """The next item: a piece, an exception, or END."""
        return await self._queue.get()


def sse_event(data: dict[str, Any]) -> str:
    """One server-sent event; the JSON is on one line (newlines in the text are escaped)."""
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


async def sse_events(
    feed: PieceFeed, first: Any, final: dict[str, Any], log: logging.Logger
) -> AsyncIterator[str]:
    """``{"text": piece}`` per piece (starting with `first`, already taken from the feed), then
    ``{"done": true, **final}``; ``{"error": ...}`` ends a stream whose generator failed."""
    try:
        item = first
        while item is not END:
            if isinstance(item, BaseException):
                log.error("generation failed mid-stream", exc_info=item)
                yield sse_event({"error": "generation failed; see the server log"})
                return
            yield sse_event({"text": item})
            item = await feed.get()
        yield sse_event({"done": True, **final})
    finally:  # also on a client disconnect: the model thread stops at its next token
        feed.cancel()
