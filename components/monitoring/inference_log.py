"""The inference log: one record per classified text, written to rolling Parquet files off the request path.

The service calls ``InferenceLog.add_batch`` with a batch's labels, confidences and OOV shares:
that only appends to an in-memory queue. A background thread writes the queue out as Parquet
files of at most ``max_rows_per_file`` rows, every ``flush_every_s`` seconds or as soon as a
file's worth is waiting. Each file is written under a temporary name and renamed into place, so a
reader (``read_log``, ``maas monitor``) never sees half a file. File names start with the UTC
time of their first record, so they sort by time across restarts and processes.

The queue is bounded: when the writer falls behind (a slow or full disk), the oldest records
are dropped and counted (``dropped``, and the ``on_drop`` callback, which the service turns
into a Prometheus counter). Nothing here raises into the caller's request: a failed write is a
logged warning and its records count as dropped.

Columns (``SCHEMA``): ``time`` (UTC), ``endpoint`` ("classify" or "explain"), ``model``,
``model_version``, ``data_version``, ``label``, ``confidence`` (the predicted label's
probability), ``text_chars``, ``oov_share`` (the share of the text's words the model's
vocabulary does not know; null for a model that cannot tell) and ``text`` (null unless the log
was opened with ``log_texts=True``).
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

log = logging.getLogger(__name__)

SCHEMA = pa.schema(
    [
        pa.field("time", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("endpoint", pa.string(), nullable=False),
        pa.field("model", pa.string(), nullable=False),
        pa.field("model_version", pa.string(), nullable=False),
        pa.field("data_version", pa.string(), nullable=False),
        pa.field("label", pa.string(), nullable=False),
        pa.field("confidence", pa.float64(), nullable=False),
        pa.field("text_chars", pa.int64(), nullable=False),
        pa.field("oov_share", pa.float64()),
        pa.field("text", pa.string()),
    ]
)
ENDPOINTS = ("classify", "explain")
SUFFIX = ".parquet"
# A file's name: the UTC time of its first record (to the microsecond), the writer's pid and a
# per-writer sequence number, so names sort by time and two processes never collide.
NAME_TIME_FORMAT = "%Y%m%dT%H%M%S%fZ"
DEFAULT_MAX_ROWS_PER_FILE = 50_000
DEFAULT_FLUSH_EVERY_S = 30.0
DEFAULT_MAX_BUFFERED_ROWS = 200_000
# The environment that places the log: a folder, or "off"; and whether texts are kept ("1").
INFERENCE_LOG_ENV = "MAAS_INFERENCE_LOG"
LOG_TEXTS_ENV = "MAAS_LOG_TEXTS"
OFF = "off"
FOLDER_UNDER_HOME = "inference"


def log_folder(environ: Mapping[str, str]) -> Path | None:
    """The log's folder: MAAS_INFERENCE_LOG (None when "off"), else MAAS_HOME/inference, with
    MAAS_HOME resolved as flows/settings.py does (`.maas` under MAAS_PROJECT_DIR or the current folder)."""
    setting = environ.get(INFERENCE_LOG_ENV, "").strip()
    if setting.lower() == OFF:
        return None
    if setting:
        return Path(setting).expanduser().resolve()
    project = Path(environ.get("MAAS_PROJECT_DIR") or Path.cwd())
    return (Path(environ.get("MAAS_HOME") or project / ".maas") / FOLDER_UNDER_HOME).resolve()


def texts_logged(environ: Mapping[str, str]) -> bool:
    """Whether the log keeps the texts themselves (MAAS_LOG_TEXTS=1); off by default: texts can be personal data."""
    return environ.get(LOG_TEXTS_ENV, "").strip() == "1"


@dataclass(frozen=True)
class LoggedModel:
    """The model a record comes from: registered name, registry version and data version."""

    name: str
    version: str
    data_version: str


@dataclass
class _Batch:
    """The records of one model call, as columns (the request path builds nothing more)."""

    time_us: int
    endpoint: str
    model: LoggedModel
    labels: list[str]
    confidences: list[float]
    text_chars: list[int]
    oov_shares: list[float | None]
    texts: list[str] | None

    def __len__(self) -> int:
        return len(self.labels)

    def tail(self, rows: int) -> _Batch:
        """The batch's last `rows` records."""
        cut = len(self) - rows
        return _Batch(
            self.time_us,
            self.endpoint,
            self.model,
            self.labels[cut:],
            self.confidences[cut:],
            self.text_chars[cut:],
            self.oov_shares[cut:],
            None if self.texts is None else self.texts[cut:],
        )


class InferenceLog:
    """Buffered writer of the inference log under `folder` (created on the first write)."""

    def __init__(
        self,
        folder: str | Path,
        *,
        log_texts: bool,
        max_rows_per_file: int = DEFAULT_MAX_ROWS_PER_FILE,
        flush_every_s: float = DEFAULT_FLUSH_EVERY_S,
        max_buffered_rows: int = DEFAULT_MAX_BUFFERED_ROWS,
        on_drop: Callable[[int], None] | None = None,
    ):
        if max_rows_per_file < 1 or max_buffered_rows < 1 or flush_every_s <= 0:
            raise ValueError(
                "InferenceLog: max_rows_per_file and max_buffered_rows must be at least 1 and "
                f"flush_every_s above 0, got {max_rows_per_file}, {max_buffered_rows}, {flush_every_s}"
            )
        self.folder = Path(folder)
        self.log_texts = log_texts
        self.max_rows_per_file = max_rows_per_file
        self.flush_every_s = flush_every_s
        self.max_buffered_rows = max_buffered_rows
        self.on_drop = on_drop
        self.dropped = 0  # records lost: pushed out of a full queue, or in a write that failed
        self.written = 0
        self._queue: deque[_Batch] = deque()
        self._queued_rows = 0
        self._lock = threading.Lock()  # guards the queue and the counters
        self._write_lock = threading.Lock()  # one writer at a time: the thread or an explicit flush
        self._wake = threading.Event()
        self._closed = False
        self._sequence = itertools.count()
        self._thread = threading.Thread(target=self._run, name="maas-inference-log", daemon=True)
        self._thread.start()

    # -- the request path ------------------------------------------------------------------------
    def add_batch(
        self,
        endpoint: str,
        model: LoggedModel,
        texts: Sequence[str],
        labels: Sequence[str],
        confidences: Sequence[float],
        oov_shares: Sequence[float | None] | None = None,
    ) -> None:
        """Queue one record per text; never raises (a bad call is a logged warning). The lists
        given are kept until written: the caller must not change them afterwards."""
        try:
            n = len(texts)
            if not (len(labels) == len(confidences) == n and (oov_shares is None or len(oov_shares) == n)):
                raise ValueError(
                    f"{n} texts but {len(labels)} labels, {len(confidences)} confidences"
                    + ("" if oov_shares is None else f", {len(oov_shares)} OOV shares")
                )
            if endpoint not in ENDPOINTS:
                raise ValueError(f"endpoint must be one of {ENDPOINTS}, got {endpoint!r}")
            # Lists are kept as given (the caller hands them over), not copied: this runs per request batch.
            batch = _Batch(
                time.time_ns() // 1000,
                endpoint,
                model,
                labels if isinstance(labels, list) else list(labels),
                confidences if isinstance(confidences, list) else list(confidences),
                [len(t) for t in texts],
                (oov_shares if isinstance(oov_shares, list) else list(oov_shares))
                if oov_shares is not None
                else [None] * n,
                list(texts) if self.log_texts else None,
            )
            self._enqueue(batch)
        except Exception as exc:  # the log must never fail a prediction
            log.warning("inference log: record not added: %s", exc)

    def record(
        self,
        endpoint: str,
        model: LoggedModel,
        text: str,
        label: str,
        confidence: float,
        oov_share: float | None = None,
    ) -> None:
        """Queue the record of a single text (`add_batch` of one)."""
        self.add_batch(endpoint, model, [text], [label], [confidence], [oov_share])

    def _enqueue(self, batch: _Batch) -> None:
        dropped = 0
        with self._lock:
            if self._closed:
                dropped = len(batch)
            else:
                self._queue.append(batch)
                self._queued_rows += len(batch)
                # The writer is behind: the oldest records go first, the newest are the ones monitoring wants.
                while self._queued_rows > self.max_buffered_rows:
                    oldest = self._queue[0]
                    excess = self._queued_rows - self.max_buffered_rows
                    if excess >= len(oldest):
                        self._queue.popleft()
                        dropped += len(oldest)
                        self._queued_rows -= len(oldest)
                    else:
                        self._queue[0] = oldest.tail(len(oldest) - excess)
                        dropped += excess
                        self._queued_rows -= excess
            full = self._queued_rows >= self.max_rows_per_file
        if dropped:
            self._count_dropped(dropped)
        if full:
            self._wake.set()

    # -- the writer ------------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            self._wake.wait(self.flush_every_s)
            self._wake.clear()
            closed = self._closed
            self.flush()
            if closed:
                return

    def flush(self) -> None:
        """Write every queued record now (the caller waits); failures are logged, not raised."""
        with self._write_lock:
            with self._lock:
                batches, self._queue = list(self._queue), deque()
                self._queued_rows = 0
            if not batches:
                return
            try:
                table = _to_table(batches)
            except Exception as exc:  # noqa: BLE001  (a record that does not fit the schema)
                log.warning("inference log: %d records not written: %s", sum(map(len, batches)), exc)
                self._count_dropped(sum(map(len, batches)))
                return
            for start in range(0, table.num_rows, self.max_rows_per_file):
                part = table.slice(start, self.max_rows_per_file)
                try:
                    self._write_file(part)
                except Exception as exc:  # noqa: BLE001  (a full or read-only disk must not stop serving)
                    log.warning(
                        "inference log: %d records not written to %s: %s", part.num_rows, self.folder, exc
                    )
                    self._count_dropped(part.num_rows)
                else:
                    with self._lock:
                        self.written += part.num_rows

    def _write_file(self, table: pa.Table) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        first = datetime.fromtimestamp(table.column("time")[0].value / 1e6, tz=UTC)
        name = f"{first.strftime(NAME_TIME_FORMAT)}-{os.getpid()}-{next(self._sequence):06d}{SUFFIX}"
        final = self.folder / name
        temporary = self.folder / f".{name}.tmp"  # not *.parquet: readers skip it
        try:
            pq.write_table(table, temporary)
            os.replace(temporary, final)  # atomic on one filesystem: a reader sees all of it or nothing
        finally:
            temporary.unlink(missing_ok=True)
        return final

    def _count_dropped(self, rows: int) -> None:
        with self._lock:
            self.dropped += rows
        if self.on_drop is not None:
            try:
                self.on_drop(rows)
            except Exception as exc:  # noqa: BLE001
                log.warning("inference log: on_drop callback failed: %s", exc)

    def close(self) -> None:
        """Write what is queued and stop the writer thread; later records are dropped and counted."""
        with self._lock:
            self._closed = True
        self._wake.set()
        self._thread.join()
        self.flush()  # anything queued between the thread's last flush and the close


def _to_table(batches: list[_Batch]) -> pa.Table:
    columns: dict[str, list] = {name: [] for name in SCHEMA.names}
    for batch in batches:
        n = len(batch)
        columns["time"] += [batch.time_us] * n
        columns["endpoint"] += [batch.endpoint] * n
        columns["model"] += [batch.model.name] * n
        columns["model_version"] += [batch.model.version] * n
        columns["data_version"] += [batch.model.data_version] * n
        columns["label"] += batch.labels
        columns["confidence"] += batch.confidences
        columns["text_chars"] += batch.text_chars
        columns["oov_share"] += batch.oov_shares
        columns["text"] += batch.texts if batch.texts is not None else [None] * n
    return pa.Table.from_pydict(columns, schema=SCHEMA)


def log_files(folder: str | Path) -> list[Path]:
    """The log's complete files under `folder`, oldest first (empty when there is no folder)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(path for path in folder.glob(f"*{SUFFIX}") if not path.name.startswith("."))


def read_log(folder: str | Path, last: int | None = None) -> pd.DataFrame:
    """The log's records under `folder`, ordered by time: all of them, or the newest `last`.

    An empty DataFrame with the schema's columns when there is none. A file that does not hold
    the log's columns is a ValueError naming it.
    """
    if last is not None and last < 0:
        raise ValueError(f"read_log: last must be at least 0, got {last}")
    tables: list[pa.Table] = []
    rows = 0
    # Newest files first, stopping once they hold enough rows: a long log is not read whole.
    for path in reversed(log_files(folder)):
        if last is not None and rows >= last:
            break
        tables.append(_read_file(path))
        rows += tables[-1].num_rows
    if not tables:
        return SCHEMA.empty_table().to_pandas()
    table = pa.concat_tables(tables[::-1]).sort_by("time")  # a stable sort: same-time records keep file order
    if last is not None:
        table = table.slice(max(0, table.num_rows - last))
    return table.to_pandas()


def _read_file(path: Path) -> pa.Table:
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as exc:
        raise ValueError(f"{path}: not a readable inference log file: {exc}") from exc
    missing = [name for name in SCHEMA.names if name not in table.column_names]
    if missing:
        raise ValueError(f"{path}: an inference log file needs the columns {SCHEMA.names}; missing {missing}")
    try:
        return table.select(SCHEMA.names).cast(SCHEMA)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise ValueError(f"{path}: a column does not have the inference log's type: {exc}") from exc
