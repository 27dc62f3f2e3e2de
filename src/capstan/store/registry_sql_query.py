"""SQL building blocks for registry searches that behave the same on SQLite and PostgreSQL.

* ``LIKE`` is case-sensitive and ``ILIKE`` case-insensitive on both; ``%`` and ``_`` are wildcards and a backslash
  escapes them (PostgreSQL's default). SQLite's own ``LIKE`` ignores case, so there the pattern becomes a ``GLOB``.
* Names sort by code point on both (``COLLATE "C"`` on PostgreSQL, SQLite's default binary collation).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from sqlalchemy import BigInteger, ColumnElement, String, type_coerce
from sqlalchemy.sql.elements import ColumnClause

from capstan.errors import InvalidParameterValue
from capstan.store.registry_filter import Comparison, OrderBy
from capstan.tracking.search_limits import check_int64
from capstan.tracking.search_syntax import check_like_pattern, like_to_glob

DELETED_STAGE = "Deleted_Internal"
"""Stage of a deleted version's tombstone (the row stays so that its number is never reused)."""


def _field(term: Comparison) -> str:
    return f"tags.{term.key}" if term.kind == "tag" else term.key


def comparison_clause(column: Any, term: Comparison, dialect: str, allowed: Collection[str], *,
                      numeric: bool = False) -> ColumnElement[bool]:
    """``column <op> value`` for one parsed filter term, after checking its operator and value type."""
    op, value = term.op, term.value
    if numeric:  # compared as BIGINT: PostgreSQL would cast a literal to an INTEGER column's type and overflow
        column = type_coerce(column, BigInteger)
    if op not in allowed:
        raise InvalidParameterValue(f"filter_string: invalid comparator {op!r} for {_field(term)}; valid "
                                    f"comparators are {', '.join(sorted(allowed))}")
    if op in ("IN", "NOT IN"):
        if not isinstance(value, tuple):
            raise InvalidParameterValue(f"filter_string: {op} needs a list of values for {_field(term)}")
        return column.in_(value) if op == "IN" else column.not_in(value)  # type: ignore[no-any-return]
    if isinstance(value, tuple):
        raise InvalidParameterValue(f"filter_string: a list is only valid with IN or NOT IN ({_field(term)})")
    if numeric:
        if isinstance(value, str):
            if not re.fullmatch(r"\s*-?[0-9]+\s*", value):
                raise InvalidParameterValue(f"filter_string: {_field(term)} needs an integer, got {value!r}")
            value = check_int64(int(value), f"filter_string: {_field(term)}")
    elif not isinstance(value, str):
        raise InvalidParameterValue(f"filter_string: {_field(term)} needs a quoted string value, got {value!r}")
    if op in ("LIKE", "ILIKE"):
        pattern = check_like_pattern(str(value), subject=repr(_field(term)))
        if dialect == "postgresql":
            return column.like(pattern) if op == "LIKE" else column.ilike(pattern)  # type: ignore[no-any-return]
        if op == "LIKE":
            return column.op("GLOB")(like_to_glob(pattern))  # type: ignore[no-any-return]
        return column.ilike(pattern, escape="\\")  # type: ignore[no-any-return]
    operators = {"=": column.__eq__, "!=": column.__ne__, "<": column.__lt__, "<=": column.__le__,
                 ">": column.__gt__, ">=": column.__ge__}
    return operators[op](value)  # type: ignore[no-any-return]


def order_clauses(orders: Sequence[OrderBy], columns: Mapping[str, Any], dialect: str, *,
                 tiebreak: Sequence[OrderBy], entity: str) -> list[ColumnElement[Any]]:
    """ORDER BY expressions for parsed clauses, with ``tiebreak`` keys appended when not already used."""
    used: set[int] = set()
    picked: list[tuple[Any, bool]] = []
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
