"""Checkpointing SQLite's write-ahead log off the orchestrators' path (decision 0752).

The round writer's connection never checkpoints on its own (``wal_autocheckpoint=0``): a checkpoint copies the
WAL into the database file and syncs it, milliseconds that would land inside some round. Orchestrators ask
`request_checkpoint` instead, after a run and about once a second while one goes on, and a daemon thread runs a
PASSIVE checkpoint (it never waits for readers or writers) on a connection of its own, at most once a second per
database. A checkpoint that never happens (the process exits first) costs nothing but a longer WAL, which the
next connection to the database checkpoints.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time

MIN_INTERVAL_S = 1.0
"""The shortest time between two checkpoints of one database."""

_lock = threading.Condition()
_pending: set[str] = set()
_busy: set[str] = set()  # being checkpointed now (a request made meanwhile stays pending)
_last: dict[str, float] = {}
_thread: threading.Thread | None = None


def request_checkpoint(path: str) -> None:
    """Have the SQLite database at ``path`` checkpointed soon, on the checkpoint thread (started on first use)."""
    global _thread
    with _lock:
        _pending.add(path)
        if _thread is None or not _thread.is_alive():
            _thread = threading.Thread(target=_serve, name="capstan-wal-checkpoint", daemon=True)
            _thread.start()
        _lock.notify()


def wait_idle(timeout: float = 10.0) -> bool:
    """Wait until no checkpoint is pending (tests); returns whether that happened within ``timeout``."""
    deadline = time.monotonic() + timeout
    with _lock:
        while _pending or _busy:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            _lock.wait(left)
    return True


def _serve() -> None:
    while True:
        with _lock:
            while not _pending:
                _lock.wait()
            now = time.monotonic()
            due = [p for p in _pending if now - _last.get(p, -MIN_INTERVAL_S) >= MIN_INTERVAL_S]
            if not due:
                wake = min(_last[p] + MIN_INTERVAL_S for p in _pending)
                _lock.wait(max(0.0, wake - now))
                continue
            _pending.difference_update(due)
            _busy.update(due)
        for path in due:
            _checkpoint(path)
        with _lock:
            for path in due:
                _busy.discard(path)
                _last[path] = time.monotonic()
            _lock.notify_all()


def _checkpoint(path: str) -> None:
    with contextlib.suppress(sqlite3.Error):  # a database that is gone or busy is checkpointed another time
        conn = sqlite3.connect(path, timeout=1.0, isolation_level=None)
        try:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        finally:
            conn.close()
