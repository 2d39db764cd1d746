"""Where data-parallel steps run: in this process by default, on Dask (prefect-dask) when asked.

Dask rather than Ray (prefect-ray): it was already in the lock's resolution, installs as
pure Python, passes pandas and pyarrow data natively, and a ``LocalCluster`` of worker
processes runs on a 2-core laptop as well as on a real cluster. Chosen by environment,
so one config runs on a laptop and on a cluster unchanged:

- ``MAAS_DASK_ADDRESS=tcp://host:8786``: use that running scheduler (its workers must
  see the project folder at the same path: chunk files are written next to ``data/``);
- else ``MAAS_TASK_RUNNER=dask``: a ``LocalCluster`` of ``MAAS_DASK_WORKERS`` worker
  processes (default: one per CPU), started for the step and closed after it;
- else (``threads``, the default): everything runs in this process.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

from prefect import task
from prefect.cache_policies import NO_CACHE

ADDRESS_ENV = "MAAS_DASK_ADDRESS"
RUNNER_ENV = "MAAS_TASK_RUNNER"
WORKERS_ENV = "MAAS_DASK_WORKERS"


@dataclass(frozen=True)
class Execution:
    """The runner for data-parallel steps: ``threads`` (in process) or ``dask`` (a cluster)."""

    runner: Literal["threads", "dask"] = "threads"
    workers: int | None = None
    address: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Execution:
        env = os.environ if environ is None else environ
        address = env.get(ADDRESS_ENV) or None
        runner = env.get(RUNNER_ENV, "dask" if address else "threads")
        if runner not in ("threads", "dask"):
            raise ValueError(f"{RUNNER_ENV}={runner!r}: expected 'threads' or 'dask'")
        workers = env.get(WORKERS_ENV)
        if workers is not None and (not workers.isdigit() or int(workers) < 1):
            raise ValueError(f"{WORKERS_ENV}={workers!r}: expected a positive whole number")
        return cls(runner=runner, workers=int(workers) if workers else None, address=address)  # type: ignore[arg-type]

    @property
    def on_dask(self) -> bool:
        return self.runner == "dask"


def dask_task_runner(workers: int | None = None, address: str | None = None):
    """A ``DaskTaskRunner`` on ``address`` (or ``MAAS_DASK_ADDRESS``), else on a local cluster of processes.

    One thread per worker process: the steps it runs (text cleaning, model fits) hold the
    GIL, so processes, not threads, are what runs them in parallel.
    """
    from prefect_dask import DaskTaskRunner

    address = address or os.environ.get(ADDRESS_ENV) or None
    if address:
        return DaskTaskRunner(address=address)
    return DaskTaskRunner(
        cluster_class="distributed.LocalCluster",
        cluster_kwargs={
            "n_workers": workers or os.cpu_count() or 1,
            "threads_per_worker": 1,
            "processes": True,
            "dashboard_address": None,  # no web server on a port nobody asked for
        },
    )


@task(name="ingest-chunk", cache_policy=NO_CACHE)
def run_chunk(work: Callable[[Any], Any], item: Any) -> Any:
    return work(item)


def window_size(execution: Execution) -> int:
    """Chunks in flight at once: enough to keep every worker busy, few enough to bound memory."""
    return 2 * (execution.workers or os.cpu_count() or 1)


@contextmanager
def chunk_mapper(execution: Execution) -> Iterator[Callable[[Callable, Iterable], Iterator] | None]:
    """A ``map`` for :func:`components.data.ingest.ingest_dataset`'s chunk work, or None (in process).

    On Dask each chunk is a Prefect task on the cluster; at most :func:`window_size`
    chunks are in flight, and results come back in input order.
    """
    window = window_size(execution)
    if flow_on_dask():  # the flow's own cluster: no second one
        yield partial(_bounded_map, lambda work, item: run_chunk.submit(work, item), window)
    elif execution.on_dask:
        with dask_task_runner(execution.workers, execution.address) as runner:
            submit = lambda work, item: runner.submit(run_chunk, parameters={"work": work, "item": item})  # noqa: E731
            yield partial(_bounded_map, submit, window)
    else:
        yield None


def flow_on_dask() -> bool:
    """Whether the running flow's task runner is a Dask one (e.g. a sweep started with runner dask)."""
    from prefect.context import FlowRunContext
    from prefect_dask import DaskTaskRunner

    context = FlowRunContext.get()
    return context is not None and isinstance(context.task_runner, DaskTaskRunner)


def _bounded_map(submit: Callable, window: int, work: Callable, items: Iterable) -> Iterator:
    pending: deque = deque()
    for item in items:
        pending.append(submit(work, item))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()
