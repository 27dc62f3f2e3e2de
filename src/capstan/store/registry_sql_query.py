"""SQL building blocks for registry searches that behave the same on SQLite and PostgreSQL.

* Filter terms arrive parsed and checked by the one search grammar (`capstan.store.registry_filter`); each becomes
  SQL through the tracking searches' `~capstan.store.tracking_query.compare`: ``LIKE`` is case-sensitive and
  ``ILIKE`` case-insensitive on both; ``%`` and ``_`` are wildcards and a backslash escapes them (PostgreSQL's
  default). SQLite's own ``LIKE`` ignores case, so there the pattern becomes a ``GLOB``.
* Names sort by code point on both (``COLLATE "C"`` on PostgreSQL, SQLite's default binary collation).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import BigInteger, ColumnElement, String, type_coerce
from sqlalchemy.sql.elements import ColumnClause

from capstan.errors import InvalidParameterValue
from capstan.store.registry_filter import Comparison, OrderBy
from capstan.store.tracking_query import compare

DELETED_STAGE = "Deleted_Internal"
"""Stage of a deleted version's tombstone (the row stays so that its number is never reused)."""


def comparison_clause(column: ColumnElement[Any], term: Comparison, dialect: str, *,
                      numeric: bool = False) -> ColumnElement[bool]:
    """``column <op> value`` for one term the registry grammar accepted (`~capstan.tracking.search_grammar`
    checked its field, operator and value type); ``numeric`` compares as BIGINT, because PostgreSQL would cast a
    literal to an INTEGER column's type and overflow."""
    if numeric:
        column = type_coerce(column, BigInteger)
    return compare(column, term.op, term.value, dialect)


def order_clauses(orders: Sequence[OrderBy], columns: Mapping[str, ColumnElement[Any]], dialect: str, *,
                  tiebreak: Sequence[OrderBy], entity: str) -> list[ColumnElement[Any]]:
    """ORDER BY expressions for parsed clauses, with ``tiebreak`` keys appended when not already used."""
    used: set[int] = set()
    picked: list[tuple[ColumnElement[Any], bool]] = []
    for order in orders:
        column = columns.get(order.key)
        if column is None:
            raise InvalidParameterValue(f"order_by: invalid key {order.key!r} for {entity}; valid keys are "
                                        f"{', '.join(sorted(columns))}")
        if id(column) in used:
            raise InvalidParameterValue(f"order_by: duplicate field {order.key!r}")
        used.add(id(column))
        picked.append((column, order.ascending))
    for order in tiebreak:
        column = columns[order.key]
        if id(column) not in used:
            used.add(id(column))
            picked.append((column, order.ascending))
    clauses: list[ColumnElement[Any]] = []
    for column, ascending in picked:
        expr = column
        if dialect == "postgresql" and isinstance(column, ColumnClause) and isinstance(column.type, String):
            expr = column.collate("C")
        clauses.append(expr.asc() if ascending else expr.desc())
    return clauses
