"""Small SQL helpers shared by the store adapters (dialect-neutral upserts)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, Table
from sqlalchemy.dialects import postgresql, sqlite


def _insert_for(conn: Connection, table: Table) -> Any:
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


def upsert(conn: Connection, table: Table, rows: Sequence[dict[str, Any]], *, keys: Sequence[str],
           update: Sequence[str]) -> None:
    """Insert ``rows``; on a conflict over ``keys`` overwrite the ``update`` columns."""
    if not rows:
        return
    stmt = _insert_for(conn, table)
    stmt = stmt.on_conflict_do_update(index_elements=list(keys),
                                      set_={col: getattr(stmt.excluded, col) for col in update})
    conn.execute(stmt, list(rows))


def insert_ignore(conn: Connection, table: Table, rows: Sequence[dict[str, Any]]) -> None:
    """Insert ``rows``, silently skipping those that collide with an existing primary key."""
    if not rows:
        return
    conn.execute(_insert_for(conn, table).on_conflict_do_nothing(), list(rows))
