"""Adapter details of SqlTrackingStore that the contract does not cover: retries and observability."""

from __future__ import annotations

import sqlite3
import threading
import time
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


def test_writer_waits_for_a_held_write_lock(settings: Settings) -> None:
    engine = create_store_engine(settings)
    store = SqlTrackingStore(engine)
    run = store.create_run("0").run_id
    holder = sqlite3.connect(settings.db_url.split("///", 1)[1], isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    released = threading.Timer(0.5, lambda: holder.execute("COMMIT"))
    released.start()
    started = time.monotonic()
    store.log_batch(run, metrics=[Metric("m", 1.0, 1)])  # blocks until the other writer commits
    assert time.monotonic() - started >= 0.4
    released.join()
    holder.close()
    assert len(store.get_metric_history(run, "m").items) == 1
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
