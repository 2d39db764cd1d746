"""Streamed generation for the service: a model thread produces text pieces, the event loop sends them as server-sent events.

A ``PieceFeed`` carries one generation's pieces from the model's thread to the event loop
through an ``asyncio.Queue``. It is the sink of the batched decode loop
(``components/serving/batching.py``: ``open``, ``put``, ``close``), which checks its cancel flag
before every step; ``PieceFeed.produce(open_stream)`` runs one generator's own stream instead
(kinds without a batch decoder), checking the flag before every token. Either way a generation
whose client has gone stops within a token. ``sse_events`` turns a feed into the event stream
the client reads and cancels the feed in its ``finally`` (a disconnect closes the async generator). The number of
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
        self._open = self._closed = False

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def cancel(self) -> None:
        """Stop producing: the model thread notices before its next token."""
        self._cancelled.set()

    def open(self) -> None:
        """The generation starts running (counted on the gauge until `close`)."""
        if not self._open:
            self._open = True
            self._in_progress.inc()

    def put(self, piece: str) -> None:
        """A piece of text, from the model's thread."""
        self._put(piece)

    def close(self, error: BaseException | None = None) -> None:
        """The generation is over (with `error` when it failed): the last item, END, goes out."""
        if self._closed:
            return
        self._closed = True
        if error is not None:  # handed to the event loop, which answers or logs it
            self._put(error)
        if self._open:
            self._in_progress.dec()
        self._put(END)

    def produce(self, open_stream: Callable[[], Iterator[str]]) -> None:
        """On the model thread: run the stream until it ends or the feed is cancelled."""
        if self.cancelled:  # the client left while this generation waited for the thread
            self.close()
            return
        self.open()
        error = None
        try:
            pieces = open_stream()
            try:
                while not self.cancelled:
                    piece = next(pieces, END)
                    if piece is END or not self._put(piece):
                        break
            finally:
                pieces.close()  # stops the generator's own computation
        except Exception as exc:
            error = exc
        finally:
            self.close(error)

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
