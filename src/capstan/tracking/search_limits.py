"""Complexity limits shared by every search query builder (runs, experiments, logged models, registered models,
model versions) and the checks that enforce them.

The one search parser (`capstan.tracking.search_parser`, for every search's grammar) calls these checks, so
every search path, whether it arrives through the MLflow REST API, ``/api/v1`` or the local SDK, is bounded the
same way before any SQL is built. The numbers keep the generated SQL well inside what SQLite and PostgreSQL accept
(SQLite's expression depth of 1000, its 64-table join limit and its bound-parameter limit). Pure: no I/O.
"""

from __future__ import annotations

import math

from capstan.errors import InvalidParameterValue

MAX_FILTER_LENGTH = 100_000
"""Characters in one ``filter_string``."""
MAX_FILTER_TERMS = 100
"""AND-ed comparisons in one ``filter_string``."""
MAX_FILTER_LIST_VALUES = 1_000
"""Values in all ``IN (...)`` / ``NOT IN (...)`` lists of one ``filter_string`` together."""
MAX_ORDER_BY_TERMS = 16
"""Clauses in one ``order_by`` list."""
MAX_ORDER_BY_LENGTH = 1_000
"""Characters in one ``order_by`` clause (or one structured ``field_name``)."""
MAX_SEARCH_DATASETS = 100
"""Entries in the ``datasets`` list of a logged-model search."""

INT64_MIN = -(2 ** 63)
INT64_MAX = 2 ** 63 - 1


def check_search_text(text: str, field_name: str, *, max_length: int) -> None:
    """Reject text that no database can take as a query literal: longer than ``max_length`` characters, holding a
    NUL character (PostgreSQL text cannot store one) or a lone UTF-16 surrogate (not encodable as UTF-8)."""
    if len(text) > max_length:
        raise InvalidParameterValue(
            f"{field_name} has {len(text)} characters; at most {max_length} are allowed")
    nul = text.find("\x00")
    if nul >= 0:
        raise InvalidParameterValue(f"{field_name}: a NUL character (position {nul}) is not allowed")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidParameterValue(
            f"{field_name}: a lone surrogate character (position {exc.start}) is not valid text") from None


def check_filter_term_count(count: int, field_name: str = "filter_string") -> None:
    """Raise when a filter has reached more than `MAX_FILTER_TERMS` comparisons (called while parsing, so an
    enormous filter is refused without being parsed to the end)."""
    if count > MAX_FILTER_TERMS:
        raise InvalidParameterValue(
            f"{field_name} has more than {MAX_FILTER_TERMS} AND-ed comparisons; at most {MAX_FILTER_TERMS} "
            "are allowed")


def check_filter_list_values(count: int, field_name: str = "filter_string") -> None:
    """Raise when the IN lists of one filter hold more than `MAX_FILTER_LIST_VALUES` values in all."""
    if count > MAX_FILTER_LIST_VALUES:
        raise InvalidParameterValue(
            f"{field_name} has more than {MAX_FILTER_LIST_VALUES} values in its IN lists; at most "
            f"{MAX_FILTER_LIST_VALUES} are allowed")


def check_order_by_count(count: int, field_name: str = "order_by") -> None:
    """Raise when ``order_by`` has more than `MAX_ORDER_BY_TERMS` clauses."""
    if count > MAX_ORDER_BY_TERMS:
        raise InvalidParameterValue(
            f"{field_name} has {count} terms; at most {MAX_ORDER_BY_TERMS} are allowed")


def check_datasets_count(count: int, field_name: str = "datasets") -> None:
    """Raise when a logged-model search names more than `MAX_SEARCH_DATASETS` datasets."""
    if count > MAX_SEARCH_DATASETS:
        raise InvalidParameterValue(
            f"{field_name} has {count} entries; at most {MAX_SEARCH_DATASETS} are allowed")


def check_int64(value: int, what: str) -> int:
    """``value`` when it fits a 64-bit signed integer column; otherwise a 400 naming ``what``."""
    if not INT64_MIN <= value <= INT64_MAX:
        raise InvalidParameterValue(
            f"{what}: {value} is out of range; integers must lie between {INT64_MIN} and {INT64_MAX}")
    return value


def check_finite(value: float, what: str, text: str) -> float:
    """``value`` when it is a finite float; otherwise a 400 naming ``what`` (``text`` is the literal as written)."""
    if not math.isfinite(value):
        raise InvalidParameterValue(f"{what}: {text!r} is out of range; numbers must be finite doubles")
    return value
