"""The leader lock and the queue lock, each with its two adapters: files on one machine (SQLite), advisory locks in
PostgreSQL (several machines), chosen from the store's URL; and the election that turns the lock into callbacks."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text

from capstan.errors import InvalidState
from capstan.queue.locking import FileLock, PgAdvisoryLock, ProcessLocalLock, queue_lock_for
from capstan.server.leader import FileLeadership, LeaderElection, PgLeadership, leadership_for
from capstan.settings import Settings
from capstan.store.engine import create_store_engine

PG_APP = "capstan-leadership"


@pytest.fixture
def pg_engines(pg_settings: Settings) -> Iterator[tuple[Engine, Engine]]:
    """Two engines on one fresh schema, as two server processes would have."""
    engines = (create_store_engine(pg_settings), create_store_engine(pg_settings))
    yield engines
    for engine in engines:
        engine.dispose()


def _terminate_leader_session(engine: Engine) -> int:
    """Kill the PostgreSQL session of whoever holds an advisory lock of this schema's leader (a dropped network)."""
    with engine.connect() as conn:
        killed = conn.execute(text(
            "SELECT count(pg_terminate_backend(a.pid)) FROM pg_stat_activity a JOIN pg_locks l ON l.pid = a.pid "
            "WHERE l.locktype = 'advisory' AND l.granted AND a.application_name LIKE :app"),
            {"app": f"{PG_APP}%"}).scalar_one()
        conn.commit()
    return int(killed)


# -- adapters picked from the store --------------------------------------------------------------------------------
def test_sqlite_gets_files_in_the_home(settings: Settings) -> None:
    engine = create_store_engine(settings)
    try:
        lock = queue_lock_for(settings, engine)
        assert isinstance(lock, FileLock) and lock.path == settings.home / "queue.lock"
        leadership = leadership_for(settings, engine)
        assert isinstance(leadership, FileLeadership)
        assert leadership.description == str(settings.home / "server-leader.lock")
    finally:
        engine.dispose()


def test_postgresql_gets_advisory_locks(pg_settings: Settings) -> None:
    engine = create_store_engine(pg_settings)
    try:
        assert isinstance(queue_lock_for(pg_settings, engine), PgAdvisoryLock)
        leadership = leadership_for(pg_settings, engine)
        assert isinstance(leadership, PgLeadership)
        assert not (pg_settings.home / "queue.lock").exists()
    finally:
        engine.dispose()


# -- the leader lock -----------------------------------------------------------------------------------------------
def test_file_leadership_is_exclusive_until_released(tmp_path: Path) -> None:
    one, two = FileLeadership(tmp_path / "l.lock"), FileLeadership(tmp_path / "l.lock")
    assert one.try_acquire() and one.still_held()
    assert not two.try_acquire() and not two.still_held()
    one.release()
    assert not one.still_held()
    assert two.try_acquire()
    two.release()


def test_pg_leadership_is_exclusive_and_moves_when_the_leader_session_dies(
        pg_engines: tuple[Engine, Engine]) -> None:
    one, two = (PgLeadership(engine) for engine in pg_engines)
    try:
        assert one.try_acquire() and one.still_held()
        assert not two.try_acquire(), "a second process never holds the lock beside the first"
        assert "advisory lock" in one.description and "@" in one.description
        assert _terminate_leader_session(pg_engines[0]) == 1  # the leader's connection drops
        assert not one.still_held(), "a leader whose connection dropped knows it is no longer the leader"
        assert two.try_acquire() and two.still_held()
        assert not one.try_acquire(), "the old leader reconnects as a follower"
        two.release()
        assert one.try_acquire(), "a released lock is free at once"
    finally:
        one.release()
        two.release()


def test_pg_leadership_is_per_schema(pg_settings: Settings, pg_engines: tuple[Engine, Engine]) -> None:
    """Advisory locks belong to the database; two installations in two schemas each have their own leader."""
    import psycopg

    base = pg_settings.db_url.split("?", 1)[0]
    other = f"capstan_{uuid.uuid4().hex[:12]}"
    raw = base.replace("postgresql+psycopg", "postgresql")
    with psycopg.connect(raw, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{other}"')
    elsewhere = create_engine(f"{base}?options=-csearch_path%3D{other}")
    here, there = PgLeadership(pg_engines[0]), PgLeadership(elsewhere)
    try:
        assert here.try_acquire() and there.try_acquire()
    finally:
        here.release()
        there.release()
        elsewhere.dispose()
        with psycopg.connect(raw, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{other}" CASCADE')


def test_pg_leadership_without_a_database_is_a_follower(tmp_path: Path) -> None:
    engine = create_engine("postgresql+psycopg://postgres@127.0.0.1:9/none")
    leadership = PgLeadership(engine)
    assert not leadership.try_acquire() and not leadership.still_held()
    leadership.release()


# -- the election --------------------------------------------------------------------------------------------------
class _Switch:
    """A leader lock the test hands out and takes back."""

    def __init__(self) -> None:
        self.free = False
        self.held = False

    @property
    def description(self) -> str:
        return "switch"

    def try_acquire(self) -> bool:
        if self.free:
            self.held = True
        return self.held

    def still_held(self) -> bool:
        return self.held

    def release(self) -> None:
        self.held = False


def _wait(condition: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]  # a callable
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_election_calls_back_as_the_role_changes() -> None:
    switch, calls = _Switch(), []
    election = LeaderElection(switch, on_elected=lambda: calls.append("elected"),
                              on_deposed=lambda: calls.append("deposed"), interval_s=0.02)
    election.start()
    try:
        assert not election.is_leader and calls == [], "the lock was taken: a follower"
        switch.free = True
        _wait(lambda: election.is_leader)
        assert calls == ["elected"]
        switch.free = False
        switch.held = False  # the lock is lost (a dropped connection)
        _wait(lambda: not election.is_leader)
        assert calls == ["elected", "deposed"]
        switch.free = True
        _wait(lambda: calls == ["elected", "deposed", "elected"])
    finally:
        election.stop()
        election.release()
    assert not switch.held and calls == ["elected", "deposed", "elected"], "stopping is not a deposition"


def test_a_lone_process_leads_from_its_start(tmp_path: Path) -> None:
    calls: list[str] = []
    election = LeaderElection(FileLeadership(tmp_path / "l.lock"), on_elected=lambda: calls.append("elected"),
                              on_deposed=lambda: calls.append("deposed"))
    election.start()
    try:
        assert election.is_leader and calls == ["elected"]
    finally:
        election.stop()
        election.release()


def test_a_failing_callback_does_not_end_the_election() -> None:
    switch, calls = _Switch(), []

    def elected() -> None:
        calls.append("elected")
        raise RuntimeError("boom")

    election = LeaderElection(switch, on_elected=elected, on_deposed=lambda: calls.append("deposed"),
                              interval_s=0.02)
    election.start()
    try:
        switch.free = True
        _wait(lambda: calls == ["elected"])
        switch.free = switch.held = False
        _wait(lambda: calls == ["elected", "deposed"])
    finally:
        election.stop()
        election.release()


# -- the queue lock ------------------------------------------------------------------------------------------------
def _exclusive(lock_of: list[object], begin_of: list[object]) -> None:
    """The second holder waits until the first leaves its block."""
    entered = threading.Event()
    leave = threading.Event()
    order: list[str] = []

    def first() -> None:
        with lock_of[0].hold(begin_of[0]):  # type: ignore[attr-defined]  # a QueueLock
            order.append("first in")
            entered.set()
            leave.wait(10)
            order.append("first out")

    def second() -> None:
        entered.wait(10)
        with lock_of[1].hold(begin_of[1]):  # type: ignore[attr-defined]  # a QueueLock
            order.append("second in")

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    entered.wait(10)
    time.sleep(0.3)
    assert order == ["first in"], "the second holder is kept out while the first holds the lock"
    leave.set()
    for thread in threads:
        thread.join(10)
    assert order == ["first in", "first out", "second in"]


def test_file_queue_lock_excludes_other_holders(tmp_path: Path) -> None:
    lock = FileLock(tmp_path / "queue.lock")
    _exclusive([lock, FileLock(tmp_path / "queue.lock")], [None, None])


def test_pg_queue_lock_excludes_other_transactions_and_ends_with_them(pg_engines: tuple[Engine, Engine]) -> None:
    from capstan.queue.sql import SqlQueueStore

    stores = [SqlQueueStore(engine) for engine in pg_engines]
    _exclusive([PgAdvisoryLock(), PgAdvisoryLock()], [store.transaction for store in stores])
    # The lock is the transaction's: a block that raises rolls back and frees it.
    lock = PgAdvisoryLock()
    with pytest.raises(RuntimeError), lock.hold(stores[0].transaction):
        raise RuntimeError("the session failed")
    done = threading.Event()

    def other() -> None:
        with PgAdvisoryLock().hold(stores[1].transaction):
            done.set()

    thread = threading.Thread(target=other)
    thread.start()
    assert done.wait(5), "a rolled-back session holds nothing"
    thread.join(5)


def test_pg_queue_lock_needs_a_store_with_transactions() -> None:
    with pytest.raises(InvalidState, match="transactions"), PgAdvisoryLock().hold(None):
        pass
    with ProcessLocalLock().hold(None):
        pass
