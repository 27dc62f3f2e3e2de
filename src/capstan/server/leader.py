"""Which server process is the leader: the one that resumes pipeline runs, runs schedules, reconciles deployments,
runs training jobs and requeues preempted workloads.

Every process of every ``capstan server`` on one metadata store serves the API and orchestrates the runs submitted
to it; exactly one of them at a time also does the leader's work, or a run would be adopted twice and a schedule
fire twice. `Leadership` is the port a process competes through; `leadership_for` picks the adapter from the store:

- SQLite (one machine): `FileLeadership`, an exclusive ``flock`` on ``$CAPSTAN_HOME/server-leader.lock``. The
  operating system drops it when the process exits.
- PostgreSQL (one or many machines): `PgLeadership`, a session-level ``pg_advisory_lock`` held on one dedicated
  connection. PostgreSQL drops it when that session ends: at once when the leader process dies (its socket is
  closed), within about `SERVER_KEEPALIVE_S` when its machine or network goes away (the session asks the server
  for TCP keepalives).

`LeaderElection` runs the competition on a thread: a follower tries to take the lock every `ELECTION_INTERVAL_S`,
so a dead leader is replaced within seconds; the leader checks every interval that its lock is still held (for
PostgreSQL, a query on its connection that must answer within `CHECK_TIMEOUT_S`) and steps down at once when it is
not, before PostgreSQL can hand the lock to someone else.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from sqlalchemy import Connection, Engine

    from capstan.settings import Settings

log = logging.getLogger("capstan.server.leader")

LOCK_FILE = "server-leader.lock"
"""The file `FileLeadership` locks in ``CAPSTAN_HOME``."""
APPLICATION_NAME = "capstan-leadership"
"""How the lock's PostgreSQL session names itself (followed by ``host:pid``), so that ``pg_stat_activity`` joined
with ``pg_locks`` shows which process leads (see ``docs/control-plane.md``)."""
LEADER_LOCK = "server-leader"
"""What the leader's advisory lock is named after (`capstan.queue.locking.advisory_key`)."""
ELECTION_INTERVAL_S = 1.0
"""How often a follower tries to become the leader, and how often the leader checks that it still is."""
CHECK_TIMEOUT_S = 3
"""How long the leader's connection may take to answer a check (and to send data) before the leader steps down."""
SERVER_KEEPALIVE_S = (3, 1, 3)
"""TCP keepalive of the leader's session on the PostgreSQL side (idle seconds, interval, probes): the server ends
the session of an unreachable leader, and frees its lock, about 6 s after it last heard from it. The leader itself
gives up sooner (`CHECK_TIMEOUT_S`), so the two never overlap."""


class Leadership(Protocol):
    """A lock at most one process holds at a time; the process holding it is the leader."""

    @property
    def description(self) -> str:
        """What is locked, for log lines."""
        ...

    def try_acquire(self) -> bool:
        """Take the lock unless another process holds it (never waits); True when this process holds it now."""
        ...

    def still_held(self) -> bool:
        """Whether this process still holds the lock (False, and the lock given up, when that cannot be known)."""
        ...

    def release(self) -> None:
        """Give the lock up (a no-op when not held)."""
        ...


class FileLeadership:
    """`Leadership` through a non-blocking, process-wide exclusive ``flock`` on ``path`` (one machine)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._fd: int | None = None

    @property
    def description(self) -> str:
        """The locked file."""
        return str(self._path)

    def try_acquire(self) -> bool:
        """Take the lock if no other process holds it; True when this process is now the leader."""
        if self._fd is not None:
            return True
        self._path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def still_held(self) -> bool:
        """A held ``flock`` is only lost with the process that holds it."""
        return self._fd is not None

    def release(self) -> None:
        """Give the lock up (a no-op when not held)."""
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


class PgLeadership:
    """`Leadership` through a session-level ``pg_advisory_lock`` on one connection kept for it (see the module
    docstring). The connection is opened with short client-side timeouts, so a check on a dead network fails within
    `CHECK_TIMEOUT_S` instead of the operating system's minutes."""

    def __init__(self, engine: Engine, *, name: str = LEADER_LOCK) -> None:
        from sqlalchemy import create_engine
        from sqlalchemy.pool import NullPool

        idle, interval, count = SERVER_KEEPALIVE_S
        # Its own engine without a pool: the lock stays on one connection, outside the pool the requests share, and
        # a connection given up is closed rather than kept.
        self._engine = create_engine(engine.url, poolclass=NullPool, connect_args={
            "connect_timeout": CHECK_TIMEOUT_S, "tcp_user_timeout": CHECK_TIMEOUT_S * 1000,
            "keepalives": 1, "keepalives_idle": idle, "keepalives_interval": interval, "keepalives_count": count,
            "application_name": f"{APPLICATION_NAME} {socket.gethostname()}:{os.getpid()}"[:63],
            "options": _merged_options(engine, f"-c tcp_keepalives_idle={idle} -c tcp_keepalives_interval="
                                               f"{interval} -c tcp_keepalives_count={count}")})
        self._name = name
        self._conn: Connection | None = None
        self._key: int | None = None
        self._held = False
        self._unreachable = False

    @property
    def description(self) -> str:
        """The lock and the database it is in."""
        return f"advisory lock {self._key if self._key is not None else self._name!r} on " \
               f"{self._engine.url.render_as_string(hide_password=True)}"

    def try_acquire(self) -> bool:
        """``pg_try_advisory_lock`` on the kept connection (opened, or opened again after a failure, first)."""
        if self._held:
            return self.still_held()
        from sqlalchemy import text

        try:
            conn = self._connection()
            got = bool(conn.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": self._key}).scalar_one())
        except Exception as exc:  # noqa: BLE001  # an unreachable database: not the leader; retried next time
            if not self._unreachable:  # once per outage, not every second
                log.warning("cannot compete for leadership (%s): %s", self.description, _one_line(exc))
            self._unreachable = True
            self._drop()
            return False
        self._unreachable = False
        self._held = got
        return got

    def still_held(self) -> bool:
        """Ask PostgreSQL, on the lock's own connection, whether this session holds the lock."""
        if not self._held or self._conn is None:
            return False
        from sqlalchemy import text

        try:
            held = bool(self._conn.execute(text(
                "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid() "
                "AND granted AND objsubid = 1 AND classid::bigint = :high AND objid::bigint = :low)"),
                {"high": self._key_part(32), "low": self._key_part(0)}).scalar_one())
        except Exception as exc:  # noqa: BLE001  # the connection is gone: so is the lock (or it soon will be)
            log.warning("lost the leader's connection (%s): %s", self.description, _one_line(exc))
            self._drop()
            return False
        if not held:
            self._drop()
        return held

    def release(self) -> None:
        """``pg_advisory_unlock`` and close the connection (closing alone would free the lock too)."""
        if self._conn is not None and self._held:
            from sqlalchemy import text

            with contextlib.suppress(Exception):
                self._conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": self._key})
        self._drop()

    def _connection(self) -> Connection:
        if self._conn is None:
            from capstan.queue.locking import advisory_key

            conn = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            try:
                conn.exec_driver_sql(f"SET statement_timeout = {CHECK_TIMEOUT_S * 1000}")
                self._key = advisory_key(conn, self._name)
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def _key_part(self, shift: int) -> int:
        assert self._key is not None
        return (self._key >> shift) & 0xFFFF_FFFF

    def _drop(self) -> None:
        self._held = False
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.invalidate()  # never back into a pool: the session (and any lock on it) ends here
            with contextlib.suppress(Exception):
                conn.close()


def leadership_for(settings: Settings, engine: Engine) -> Leadership:
    """The leadership of the metadata store behind ``engine``: a file in ``CAPSTAN_HOME`` for SQLite, an advisory
    lock in the database for PostgreSQL (whose servers need not share a disk)."""
    if engine.dialect.name == "postgresql":
        return PgLeadership(engine)
    return FileLeadership(Path(settings.home) / LOCK_FILE)


class LeaderElection:
    """Competes for ``leadership`` on a thread and calls ``on_elected`` / ``on_deposed`` as the role changes.

    `start` makes the first attempt before it returns (a lone server is the leader as soon as it starts); the thread
    then tries again (a follower) or checks the lock (the leader) every ``interval_s``. The callbacks run on the
    election's thread, one at a time, and may take a while (stopping controllers): nobody else can be elected in
    the meantime, because whoever is deposed has lost the lock already.
    """

    def __init__(self, leadership: Leadership, *, on_elected: Callable[[], None], on_deposed: Callable[[], None],
                 interval_s: float = ELECTION_INTERVAL_S) -> None:
        self._leadership = leadership
        self._on_elected = on_elected
        self._on_deposed = on_deposed
        self._interval_s = interval_s
        self._leader = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def is_leader(self) -> bool:
        """Whether this process is the leader now."""
        return self._leader

    def start(self) -> None:
        """Make the first attempt, then keep competing on a thread until `stop`."""
        self._round()
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="capstan-leader-election", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop competing; a leader keeps the lock until `release`, so that nobody else leads while this process
        stops the leader's work (the server's shutdown does that between the two; `on_deposed` is not called)."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout=60)

    def release(self) -> None:
        """Give the lock up (after `stop`); another process may be elected from now on."""
        self._leader = False
        self._leadership.release()

    def _loop(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                self._round()
            except Exception:  # the election must outlive any failure of the leader's work; logged, retried
                log.exception("leader election round failed")

    def _round(self) -> None:
        if self._leader:
            if self._leadership.still_held():
                return
            self._leader = False
            log.warning("this server process lost the leader lock (%s); it stops the leader's work",
                        self._leadership.description)
            self._on_deposed()
            return
        if self._stop.is_set() or not self._leadership.try_acquire():
            return
        self._leader = True
        log.info("this server process (pid %d) is the leader (%s)", os.getpid(), self._leadership.description)
        self._on_elected()


def _merged_options(engine: Engine, extra: str) -> str:
    """The ``options`` startup parameter of ``engine``'s URL (a ``search_path``, say) with ``extra`` appended."""
    current = engine.url.query.get("options")
    text = current if isinstance(current, str) else " ".join(current or ())
    return f"{text} {extra}".strip()


def _one_line(exc: BaseException) -> str:
    """The driver's message (without SQLAlchemy's statement and parameters), on one line."""
    cause = getattr(exc, "orig", None) or exc
    return " ".join(str(cause).split())[:300] or type(cause).__name__
