"""Continuous batching of generation requests: one decode loop on the generation thread steps every running request together.

``GenerationBatcher(decoder, max_rows)`` takes requests from any thread (``submit(plan, sink)``:
a ``DecodePlan`` from ``GeneratorPredictor.plan`` and a sink that receives the text). Its loop
(``run``, on one thread of its own after ``start``) works in rounds:

1. admit waiting requests while fewer than ``max_rows`` run: each prompt is prefilled alone
   and its first token sampled, then it joins the running batch (continuous batching);
2. drop the rows whose sink was cancelled (the client has gone);
3. one batched step for all running rows (``decoder.step``: next-token logits, one row each);
4. sample each row with its own seeded sampler and parameters, turn the token into text, cut
   it at the request's stop strings and hand the piece to its sink; a row ends on
   ``max_new_tokens``, a stop string or an end-of-text token.

A failed prefill fails that request only; a failed step fails the rows of that step, and the
loop goes on with the next requests. A sink sees ``open()`` when its request starts running,
``put(piece)`` per piece and ``close(error)`` exactly once. No BentoML here.
"""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass, field
from typing import Any, Protocol

from components.predictor import BatchDecoder, DecodePlan, StopCutter

log = logging.getLogger(__name__)
_STOP = object()  # the queue item that ends the loop


class Sink(Protocol):
    """Where one request's text goes (the service's PieceFeed)."""

    @property
    def cancelled(self) -> bool: ...

    def open(self) -> None: ...

    def put(self, piece: str) -> None: ...

    def close(self, error: BaseException | None = None) -> None: ...


@dataclass(eq=False)
class _Row:
    plan: DecodePlan
    sink: Sink
    state: Any = None
    last: int = 0  # the token sampled last, fed to the next step
    count: int = 0  # tokens sampled
    done: bool = False
    stops: StopCutter = field(init=False)

    def __post_init__(self) -> None:
        self.stops = StopCutter(self.plan.stops)


class GenerationBatcher:
    """The decode loop (see the module docstring). `max_rows` bounds the rows decoded together."""

    def __init__(self, decoder: BatchDecoder, max_rows: int = 8):
        if max_rows < 1:
            raise ValueError(f"max_rows must be >= 1, got {max_rows}")
        self.decoder = decoder
        self.max_rows = max_rows
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._rows: list[_Row] = []
        self._thread: threading.Thread | None = None

    def submit(self, plan: DecodePlan, sink: Sink) -> None:
        """Queue a request (any thread); its text goes to `sink`."""
        self._queue.put((plan, sink))

    def start(self, name: str = "generate") -> GenerationBatcher:
        """Run the loop on a daemon thread of its own (it waits idle for requests; a daemon does not
        hold the process open at exit)."""
        self._thread = threading.Thread(target=self.run, name=name, daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float | None = None) -> None:
        """End the loop after its current step; requests still running are closed unfinished."""
        self._queue.put(_STOP)
        if self._thread is not None:
            self._thread.join(timeout)

    def run(self) -> None:
        """The loop; returns after `stop`."""
        while True:
            if not self._rows:
                item = self._queue.get()  # idle: wait for a request
                if item is _STOP or not self._admit(item):
                    break
            if not self._admit_waiting():
                break
            self._rows = [row for row in self._rows if not self._left(row)]
            if self._rows:
                self._step()
        for row in self._rows:
            row.sink.close()
        self._rows = []

    # -- one round ------------------------------------------------------------------------------
    def _admit_waiting(self) -> bool:
        """Admit queued requests while there is room; False once `stop` was asked."""
        while len(self._rows) < self.max_rows:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return True
            if item is _STOP or not self._admit(item):
                return False
        return True

    def _admit(self, item: Any) -> bool:
        if item is _STOP:
            return False
        plan, sink = item
        if sink.cancelled:  # the client left while the request waited
            sink.close()
            return True
        sink.open()
        row = _Row(plan, sink)
        try:
            row.state, logits = self.decoder.prefill(plan.prompt_ids)
            self._take(row, logits)
        except Exception as exc:  # this request fails; the others go on
            self._finish(row, exc)
            return True
        if not row.done:
            self._rows.append(row)
        return True

    @staticmethod
    def _left(row: _Row) -> bool:
        if row.sink.cancelled:
            row.done = True
            row.sink.close()
        return row.done

    def _step(self) -> None:
        rows = self._rows
        try:
            logits = self.decoder.step([row.state for row in rows], [row.last for row in rows])  # (B, V)
        except Exception as exc:  # the rows of this step fail; the loop and later requests go on
            log.error("a batched generation step failed for %d request(s)", len(rows), exc_info=exc)
            for row in rows:
                self._finish(row, exc)
            self._rows = []
            return
        for b, row in enumerate(rows):
            try:
                self._take(row, logits[b : b + 1])
            except Exception as exc:
                self._finish(row, exc)
        self._rows = [row for row in rows if not row.done]

    def _take(self, row: _Row, logits: Any) -> None:
        """Sample `row`'s next token from its logits (1, V) and send the text it completes."""
        plan = row.plan
        token = int(plan.sample(logits.float()))
        row.last, row.count = token, row.count + 1
        if token in plan.end_ids:
            self._send(row, plan.text.finish())
            self._finish(row)
            return
        last = row.count >= plan.max_new_tokens
        piece = plan.text.push(token, last)
        if last:
            piece += plan.text.finish()
        self._send(row, piece)
        if last and not row.done:
            self._finish(row)

    def _send(self, row: _Row, piece: str) -> None:
        """`piece` through the row's stop strings to its sink; a stop string ends the row."""
        out = row.stops.push(piece) if piece else ""
        if out:
            row.sink.put(out)
        if row.stops.stopped:
            self._finish(row)

    @staticmethod
    def _finish(row: _Row, error: BaseException | None = None) -> None:
        if row.done:
            return
        row.done = True
        if error is None:
            tail = row.stops.finish()
            if tail:
                row.sink.put(tail)
        row.sink.close(error)
