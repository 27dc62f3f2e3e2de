"""Adapter details of SqlTrackingStore that the contract does not cover: retries and observability."""

from __future__ import annotations

import sqlite3
import threading
from typing import Any

import pytest
from sqlalchemy import event

from capstan.errors import StoreUnavailable
from capstan.settings import Settings
from capstan.store import tracking_tx
from capstan.store.engine import create_store_engine
from capstan.store.tracking_sql import SqlTrackingStore
from capstan.tracking.records import Metric


def test_locked_database_is_retried_then_reported(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = create_store_engine(settings)
    store = SqlTrackingStore(engine)
    run = store.create_run("0").run_id
    real_once = tracking_tx.Transactor.once
    failures = {"left": 2}

    def flaky_once(self: tracking_tx.Transactor, work: Any, *, write: bool) -> Any:
        if failures["left"] > 0:
            failures["left"] -= 1
            raise sqlite3.OperationalError("database is locked")
        return real_once(self, work, write=write)

    monkeypatch.setattr(tracking_tx.Transactor, "once", flaky_once)
    store.log_batch(run, metrics=[Metric("m", 1.0, 1)])
    assert failures["left"] == 0
    assert len(store.get_metric_history(run, "m").items) == 1

    monkeypatch.setattr(tracking_tx, "RETRIES", 2)
    failures["left"] = 10
    with pytest.raises(StoreUnavailable, match="stayed busy"):
        store.log_batch(run, metrics=[Metric("m", 2.0, 2)])
    engine.dispose()


def test_writer_waits_for_a_held_write_lock(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """A write that meets another connection's write lock queues behind it (SQLite's busy timeout): it neither
    fails nor retries, and it lands once the lock is released. No wall-clock window decides the outcome: the test
    releases the lock only after the writer's ``BEGIN IMMEDIATE`` has started."""
    engine = create_store_engine(settings)
    store = SqlTrackingStore(engine)
    run = store.create_run("0").run_id
    with engine.connect() as conn:  # the wait relies on the busy timeout every store connection sets
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar_one() >= 10_000

    failed_attempts: list[BaseException] = []
    real_once = tracking_tx.Transactor.once

    def counted_once(self: tracking_tx.Transactor, work: Any, *, write: bool) -> Any:
        try:
            return real_once(self, work, write=write)
        except BaseException as exc:
            failed_attempts.append(exc)
            raise

    monkeypatch.setattr(tracking_tx.Transactor, "once", counted_once)
    begun = threading.Event()

    def trace(statement: str) -> None:
        if threading.current_thread() is writer and statement.startswith("BEGIN IMMEDIATE"):
            begun.set()

    def on_checkout(dbapi_conn: Any, _record: Any, _proxy: Any) -> None:
        dbapi_conn.set_trace_callback(trace)

    event.listen(engine, "checkout", on_checkout)
    holder = sqlite3.connect(settings.db_url.split("///", 1)[1], isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    outcome: list[BaseException | None] = []
    done = threading.Event()

    def write() -> None:
        try:
            store.log_batch(run, metrics=[Metric("m", 1.0, 1)])
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001  # handed to the test thread
            outcome.append(exc)
        finally:
            done.set()

    writer = threading.Thread(target=write, name="tracking-writer", daemon=True)
    try:
        writer.start()
        assert begun.wait(10), "the writer never started its write transaction"
        # The other connection still holds the lock, so the write cannot finish whatever the timing. The grace
        # period only gives a writer that does *not* wait (no busy timeout) the time to fail and be caught.
        assert not done.wait(0.2)
        assert failed_attempts == []
        assert len(store.get_metric_history(run, "m").items) == 0  # readers are not blocked (WAL) and see nothing yet
    finally:
        holder.execute("COMMIT")
        holder.close()
    assert done.wait(30), "the writer did not finish after the lock was released"
    writer.join()
    event.remove(engine, "checkout", on_checkout)
    assert outcome == [None]
    assert failed_attempts == []  # it waited for the lock instead of failing ("database is locked") and retrying
    assert [m.value for m in store.get_metric_history(run, "m").items] == [1.0]
    engine.dispose()


def test_statements_reach_engine_listeners(backend_settings: Settings) -> None:
    engine = create_store_engine(backend_settings)
    seen: list[str] = []
    errors: list[BaseException] = []

    def before(conn: Any, _cursor: Any, statement: str, *_rest: Any) -> None:
        conn.info.setdefault("depth", []).append(statement)

    def after(conn: Any, _cursor: Any, statement: str, *_rest: Any) -> None:
        assert conn.info["depth"].pop() == statement
        seen.append(statement.split(None, 1)[0].upper())

    def failed(context: Any) -> None:
        context.connection.info["depth"].pop()
        errors.append(context.original_exception)

    event.listen(engine, "before_cursor_execute", before)
    event.listen(engine, "after_cursor_execute", after)
    event.listen(engine, "handle_error", failed)
    store = SqlTrackingStore(engine)
    run = store.create_run("0").run_id
    store.log_batch(run, metrics=[Metric("m", 1.0, 1), Metric("m", 2.0, 2)])
    store.search_runs(["0"], filter_string="metrics.m > 0")
    assert {"SELECT", "INSERT"} <= set(seen)
    assert not errors
    engine.dispose()


def test_unreachable_database_is_store_unavailable() -> None:
    from sqlalchemy import create_engine

    engine = create_engine("postgresql+psycopg://postgres@127.0.0.1:9/none", connect_args={"connect_timeout": 2})
    with pytest.raises(StoreUnavailable, match="cannot reach the metadata store"):
        SqlTrackingStore(engine).get_experiment("0")
    engine.dispose()
