"""Short transactions on the pooled DB-API connection, for the tracking store's hot paths.

SQLAlchemy's per-statement bookkeeping costs several times more than SQLite itself on small statements, so the
tracking store runs its transactions on the pool's raw DB-API connection: static SQL is written once with ``?``
placeholders (rewritten to ``%s`` for psycopg) and dynamic queries are built with SQLAlchemy Core and compiled for
the engine's dialect. SQLite write transactions start with ``BEGIN IMMEDIATE`` (as the engine does for its own
connections), reads with a deferred ``BEGIN`` so they never wait for the write lock. Transient conflicts —
SQLite's ``database is locked``, PostgreSQL serialization failures and deadlocks, a dropped connection — re-run
the whole transaction with jittered backoff.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import sqlalchemy.exc
from sqlalchemy import Engine
from sqlalchemy.sql import ClauseElement

from capstan.errors import StoreUnavailable

T = TypeVar("T")
Query = str | ClauseElement
RETRIES = 12
RETRY_WINDOW_S = 30.0
_TRANSIENT_STATES = ("40001", "40P01")  # serialization failure, deadlock detected


@dataclass(frozen=True, slots=True)
class _ConnectionView:
    """What SQLAlchemy's cursor-execute listeners read from the ``conn`` argument (``info``, ``engine``,
    ``dialect``), for statements run on the raw connection."""

    info: dict[Any, Any]
    engine: Engine
    dialect: Any


@dataclass(frozen=True, slots=True)
class _ErrorContext:
    """The subset of `sqlalchemy.engine.ExceptionContext` a ``handle_error`` listener can rely on here."""

    connection: _ConnectionView
    engine: Engine
    dialect: Any
    cursor: Any
    statement: str
    parameters: Any
    original_exception: BaseException
    sqlalchemy_exception: None = None
    chained_exception: None = None
    execution_context: None = None
    is_disconnect: bool = False
    invalidate_pool_on_disconnect: bool = True
    is_pre_ping: bool = False


class RawTx:
    """One open transaction: run SQL strings (``?`` placeholders) or SQLAlchemy Core statements.

    Statements still reach the engine's ``before_cursor_execute``/``after_cursor_execute``/``handle_error``
    listeners (the server times store operations with them), with a connection view whose ``info`` is the pooled
    connection's.
    """

    __slots__ = ("_cursor", "_dialect", "_engine", "_pg", "_sql_cache", "_view")

    def __init__(self, cursor: Any, engine: Engine, sql_cache: dict[str, str], info: dict[Any, Any]) -> None:
        self._cursor = cursor
        self._engine = engine
        self._dialect = engine.dialect
        self._pg: bool = engine.dialect.name == "postgresql"
        self._sql_cache = sql_cache
        # ``handle_error`` is a dialect-level event; the cursor-execute ones are engine-level.
        observed = bool(engine.dispatch.before_cursor_execute or engine.dispatch.after_cursor_execute
                        or engine.dialect.dispatch.handle_error)
        self._view = _ConnectionView(info, engine, engine.dialect) if observed else None

    @property
    def postgres(self) -> bool:
        """Whether the transaction runs on PostgreSQL (else SQLite)."""
        return self._pg

    def _sql(self, sql: str) -> str:
        if not self._pg:
            return sql
        converted = self._sql_cache.get(sql)
        if converted is None:
            converted = self._sql_cache[sql] = sql.replace("?", "%s")
        return converted

    def _prepare(self, query: Query, params: Sequence[Any] | None) -> tuple[str, Any]:
        if isinstance(query, str):
            return self._sql(query), tuple(params or ())
        compiled = query.compile(dialect=self._dialect, compile_kwargs={"render_postcompile": True})
        values = compiled.params
        order: list[str] | None = getattr(compiled, "positiontup", None)  # set by positional (qmark) dialects
        if order is not None:
            return str(compiled), tuple(values[name] for name in order)
        return str(compiled), values

    def _call(self, sql: str, params: Any, many: bool) -> None:
        view = self._view
        if view is None:
            if many:
                self._cursor.executemany(sql, params)
            else:
                self._cursor.execute(sql, params)
            return
        dispatch = self._engine.dispatch
        dispatch.before_cursor_execute(view, self._cursor, sql, params, None, many)
        try:
            if many:
                self._cursor.executemany(sql, params)
            else:
                self._cursor.execute(sql, params)
        except Exception as exc:
            self._dialect.dispatch.handle_error(
                _ErrorContext(view, self._engine, self._dialect, self._cursor, sql, params, exc))
            raise
        dispatch.after_cursor_execute(view, self._cursor, sql, params, None, many)

    def execute(self, query: Query, params: Sequence[Any] | None = None) -> Any:
        """Execute and return the DB-API cursor."""
        sql, values = self._prepare(query, params)
        self._call(sql, values, False)
        return self._cursor

    def all(self, query: Query, params: Sequence[Any] | None = None) -> list[tuple[Any, ...]]:
        """Every row."""
        return list(self.execute(query, params).fetchall())

    def one(self, query: Query, params: Sequence[Any] | None = None) -> tuple[Any, ...] | None:
        """The first row or None."""
        row = self.execute(query, params).fetchone()
        return None if row is None else tuple(row)

    def each(self, sql: str, rows: Sequence[Sequence[Any]]) -> list[tuple[Any, ...] | None]:
        """The first row of one SQL string run once per parameter row (a loop of small reads, such as one
        aggregate per range of an index); the engine's listeners see the loop as one ``executemany``."""
        statement = self._sql(sql)
        view = self._view
        if view is not None:
            self._engine.dispatch.before_cursor_execute(view, self._cursor, statement, rows, None, True)
        try:
            out = []
            for params in rows:
                row = self._cursor.execute(statement, tuple(params)).fetchone()
                out.append(None if row is None else tuple(row))
        except Exception as exc:
            if view is not None:
                self._dialect.dispatch.handle_error(
                    _ErrorContext(view, self._engine, self._dialect, self._cursor, statement, rows, exc))
            raise
        if view is not None:
            self._engine.dispatch.after_cursor_execute(view, self._cursor, statement, rows, None, True)
        return out

    def run(self, query: Query, params: Sequence[Any] | None = None) -> int:
        """Execute a write; return the number of rows it touched."""
        return int(self.execute(query, params).rowcount)

    def many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """``executemany`` of one SQL string (a single row is a plain execute: one round trip fewer)."""
        if len(rows) == 1:
            self._call(self._sql(sql), tuple(rows[0]), False)
        elif rows:
            self._call(self._sql(sql), rows, True)

    def insert_id(self, sql: str, params: Sequence[Any]) -> int:
        """Run an ``INSERT`` into a table with an integer ``id`` and return the new id."""
        if self._pg:
            row = self.one(sql + " RETURNING id", params)
            assert row is not None
            return int(row[0])
        self._call(sql, tuple(params), False)
        return int(self._cursor.lastrowid)

    @staticmethod
    def marks(count: int) -> str:
        """``?, ?, ?`` with ``count`` placeholders."""
        return ", ".join("?" * count)


class Transactor:
    """Opens `RawTx` transactions on ``engine`` and retries them on transient conflicts."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._sqlite = engine.dialect.name == "sqlite"
        dbapi = engine.dialect.loaded_dbapi
        self._integrity_error: type[Exception] = dbapi.IntegrityError
        self._operational_error: type[Exception] = dbapi.OperationalError
        self._sql_cache: dict[str, str] = {}

    def is_integrity_error(self, exc: BaseException) -> bool:
        """True for a unique/foreign-key violation raised by the driver."""
        return isinstance(exc, self._integrity_error)

    def _transient(self, exc: BaseException) -> bool:
        if getattr(exc, "sqlstate", None) in _TRANSIENT_STATES:
            return True
        if not isinstance(exc, self._operational_error):
            return False
        text = str(exc).lower()
        if self._sqlite:
            return "database is locked" in text or "database table is locked" in text or "busy" in text
        return "server closed the connection" in text or ("connection" in text and "closed" in text)

    def once(self, work: Callable[[RawTx], T], *, write: bool) -> T:
        """Run ``work`` in one transaction: commit on return, roll back on any exception."""
        try:
            raw = self._engine.raw_connection()
        except (sqlalchemy.exc.OperationalError, self._operational_error) as exc:
            if self._transient(getattr(exc, "orig", exc)):
                raise  # e.g. SQLite locked while a new connection sets WAL mode: `run` retries
            raise StoreUnavailable(f"cannot reach the metadata store: {exc}") from exc
        try:
            cursor = raw.cursor()
            try:
                if self._sqlite:
                    cursor.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                result = work(RawTx(cursor, self._engine, self._sql_cache, raw.info))
                raw.commit()
                return result
            except BaseException as exc:
                try:
                    raw.rollback()
                except Exception:  # noqa: BLE001  # the connection may be gone; the original error matters
                    raw.invalidate()
                if self._transient(exc) and getattr(raw.dbapi_connection, "closed", False):
                    raw.invalidate()
                raise
            finally:
                cursor.close()
        finally:
            raw.close()

    def run(self, work: Callable[[RawTx], T], *, write: bool = True) -> T:
        """`once` with retries: transient conflicts re-run the transaction from the start, up to `RETRIES` times
        and never past `RETRY_WINDOW_S` (SQLite's busy timeout has usually waited long already)."""
        delay = 0.002
        deadline = time.monotonic() + RETRY_WINDOW_S
        for attempt in range(RETRIES + 1):
            try:
                return self.once(work, write=write)
            except Exception as exc:
                if not self._transient(getattr(exc, "orig", None) or exc):
                    raise
                if attempt == RETRIES or time.monotonic() >= deadline:
                    raise StoreUnavailable(f"the metadata store stayed busy: {exc}") from exc
            time.sleep(delay * (1 + random.random()))
            delay = min(delay * 2, 0.5)
        raise AssertionError("unreachable")  # pragma: no cover
