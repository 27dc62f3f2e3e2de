"""The lock every writer of the queue takes (server threads, server processes, pipeline runners, the CLI).

A queue session rebuilds the `QueueManager` from the store, decides, and writes its decisions; two sessions that
overlapped could both admit against the same free quota. `QueueLock` is the port that makes sessions exclusive
across every process sharing the queue's store. The composition root (`capstan.services`) picks the adapter from
the metadata store's URL with `queue_lock_for`:

- SQLite (one machine): `FileLock`, an ``flock`` on ``$CAPSTAN_HOME/queue.lock`` held around the session.
- PostgreSQL (one or many machines): `PgAdvisoryLock`, ``pg_advisory_xact_lock`` taken as the first statement of
  the session's transaction. The lock lives exactly as long as the transaction that writes the decisions, on the
  same connection: when that connection dies the transaction is rolled back with it, so no decision is ever
  committed by a session that had lost the lock.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from capstan.errors import InvalidState

if TYPE_CHECKING:
    from sqlalchemy import Connection, Engine

    from capstan.settings import Settings

Begin = Callable[[], AbstractContextManager["Connection"]]
"""Opens the queue store's transaction (`capstan.queue.sql.SqlQueueStore.transaction`); nested calls join it."""

LOCK_FILE = "queue.lock"
"""The file `queue_lock_for` locks in ``CAPSTAN_HOME`` when the metadata store is SQLite."""
QUEUE_LOCK = "queue"
"""What the queue's advisory lock is named after (see `advisory_key`)."""


class QueueLock(Protocol):
    """Makes queue sessions exclusive across every process that shares the queue's store."""

    def hold(self, begin: Begin | None) -> AbstractContextManager[None]:
        """Hold the lock for the block. ``begin`` opens the store's transaction (None for a store without one); an
        adapter whose lock is bound to a transaction opens it here, and the caller's own ``begin()`` joins it."""
        ...


class FileLock:
    """A blocking exclusive ``flock`` on a file, held for the duration of a ``with`` block (or of `hold`)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._fd: int | None = None

    @property
    def path(self) -> Path:
        """The locked file."""
        return self._path

    def __enter__(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def __exit__(self, *_exc: object) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    @contextmanager
    def hold(self, begin: Begin | None) -> Iterator[None]:
        """`QueueLock.hold`: the file is locked around the block (``begin`` is left to the caller). Each block opens
        its own descriptor, so blocks of several threads of one process exclude each other too."""
        with FileLock(self._path):
            yield


class ProcessLocalLock:
    """`QueueLock` for a store only this process uses (the in-memory store of tests): callers already serialise
    their own threads, so there is nothing more to hold."""

    def hold(self, begin: Begin | None) -> AbstractContextManager[None]:
        """`QueueLock.hold`: nothing to take."""
        return nullcontext()


class PgAdvisoryLock:
    """`QueueLock` for PostgreSQL: ``pg_advisory_xact_lock`` on a key of the current schema, taken as the first
    statement of the session's transaction and released by its commit or rollback."""

    def __init__(self, name: str = QUEUE_LOCK) -> None:
        self._name = name
        self._key: int | None = None  # the schema's key, read on first use (one engine, one search path)

    @contextmanager
    def hold(self, begin: Begin | None) -> Iterator[None]:
        """`QueueLock.hold`: open the transaction, wait for the lock in it, run the block, commit."""
        if begin is None:
            raise InvalidState("the PostgreSQL queue lock needs a queue store with transactions")
        from sqlalchemy import text

        with begin() as conn:
            if self._key is None:
                self._key = advisory_key(conn, self._name)
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": self._key})
            yield


def advisory_key(conn: Connection, name: str) -> int:
    """The advisory-lock key of ``name`` in the schema ``conn`` works in: advisory locks are per database, so two
    Capstan installations in two schemas of one database must not share keys. A non-negative 63-bit integer (the
    lock's halves then read back unsigned from ``pg_locks``)."""
    from sqlalchemy import text

    schema = conn.execute(text("SELECT current_schema()")).scalar_one()
    digest = hashlib.blake2b(f"capstan:{name}:{schema}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") & 0x7FFF_FFFF_FFFF_FFFF


def queue_lock_for(settings: Settings, engine: Engine) -> QueueLock:
    """The queue lock for the metadata store behind ``engine``: a file in ``CAPSTAN_HOME`` for SQLite, an advisory
    lock in the database for PostgreSQL (whose servers need not share a disk)."""
    if engine.dialect.name == "postgresql":
        return PgAdvisoryLock()
    return FileLock(Path(settings.home) / LOCK_FILE)
