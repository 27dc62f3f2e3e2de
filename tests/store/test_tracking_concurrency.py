"""Concurrent writers lose nothing: 8 processes x 1,000 metrics each, straight into one metadata store.

The same 8 spawned processes write to an SQLite file and (when it is reachable) to PostgreSQL at the same time,
so the expensive process start-up is paid once for both backends.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import traceback
from typing import Any

import pytest

from capstan.settings import Settings
from capstan.store.engine import create_store_engine
from capstan.store.tracking_sql import SqlTrackingStore
from capstan.tracking.records import Metric, Param

WORKERS = 8
POINTS = 1000
KEYS = 10  # every worker writes the same keys, so key interning and latest_metrics race too
# Per backend: how many points go one per call (the most transactions, the most contention) before the rest go
# in batches. PostgreSQL gets fewer, larger transactions: each of its commits waits for an fsync.
SINGLES = {"sqlite": 200, "postgresql": 50}
BATCH = {"sqlite": 20, "postgresql": 50}


def _points(worker: int) -> list[Metric]:
    return [Metric(f"k{i % KEYS}-{'abc'[i % 3]}", float(worker * POINTS + i), 1000 + i, worker * POINTS + i)
            for i in range(POINTS)]


def _writer(targets: list[tuple[str, Settings, str]], worker: int, barrier: Any, errors: Any) -> None:
    try:
        stores = [(kind, SqlTrackingStore(create_store_engine(s, migrate=False)), run) for kind, s, run in targets]
        points = _points(worker)
        calls: list[tuple[SqlTrackingStore, str, list[Metric]]] = []
        for kind, store, run in stores:
            singles, batch = SINGLES[kind], BATCH[kind]
            calls += [(store, run, [p]) for p in points[:singles]]
            calls += [(store, run, points[i:i + batch]) for i in range(singles, POINTS, batch)]
        calls.sort(key=lambda c: c[2][0].step)  # interleave the backends
        barrier.wait(timeout=180)
        for store, run, metrics in calls:
            store.log_batch(run, metrics=metrics)
        for _kind, store, run in stores:
            # Every writer logs the same param value: identical re-logging is accepted under contention.
            store.log_batch(run, params=[Param("shared", "same")])
    except BaseException:  # report anything to the parent process, then fail the child
        errors.put(f"worker {worker}: {traceback.format_exc()}")
        raise


def _verify(store: SqlTrackingStore, run_id: str) -> None:
    run = store.get_run(run_id)
    assert run.data.params == {"shared": "same"}
    assert len(run.data.metrics) == KEYS * 3  # i % 10 and i % 3 give 30 combinations
    total = 0
    for metric in run.data.metrics:
        history = store.get_metric_history(run_id, metric.key).items
        total += len(history)
        assert len({m.step for m in history}) == len(history)  # no point lost, none duplicated
        top = max(history, key=lambda m: (m.step, m.timestamp, m.value))
        assert (metric.step, metric.value) == (top.step, top.value)  # latest_metrics kept the max
    assert total == WORKERS * POINTS


@pytest.mark.slow
def test_eight_writers_lose_nothing(settings: Settings, request: pytest.FixtureRequest) -> None:
    backends: list[tuple[str, Settings]] = [("sqlite", settings)]
    with contextlib.suppress(pytest.skip.Exception):  # PostgreSQL unreachable: the SQLite half still runs
        backends.append(("postgresql", request.getfixturevalue("pg_settings")))
    opened = []
    for kind, backend in backends:
        engine = create_store_engine(backend)
        store = SqlTrackingStore(engine)
        run_id = store.create_run(store.create_experiment("contended", project="p")).run_id
        opened.append((kind, backend, engine, store, run_id))
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(WORKERS)
    errors = ctx.Queue()
    targets = [(kind, backend, run_id) for kind, backend, _e, _s, run_id in opened]
    procs = [ctx.Process(target=_writer, args=(targets, w, barrier, errors)) for w in range(WORKERS)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=300)
    problems = []
    while not errors.empty():
        problems.append(errors.get())
    assert not problems, "\n".join(problems)
    assert [p.exitcode for p in procs] == [0] * WORKERS
    for _kind, _backend, engine, store, run_id in opened:
        _verify(store, run_id)
        engine.dispose()
