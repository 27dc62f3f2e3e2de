"""MLflow's tracking search syntax, as the tracking stores use it: the public face of the one search parser.

The grammar itself (tokenizer, parser, `Comparison`, `OrderKey`) is `capstan.tracking.search_parser`'s and what
each search accepts is its `~capstan.tracking.search_grammar.Grammar` profile (`RUNS`, `EXPERIMENTS`,
`LOGGED_MODELS`, and the registry's `REGISTERED_MODELS` and `MODEL_VERSIONS`); both are re-exported here. This
module adds what only the tracking searches need: the structured ``order_by`` and ``datasets`` of a logged-model
search and the in-memory evaluation of a comparison (`matches`). LIKE patterns and page tokens are
`capstan.tracking.search_syntax`'s (re-exported here). No I/O.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

from capstan.errors import InvalidParameterValue
from capstan.tracking.search_grammar import ATTRIBUTE as ATTRIBUTE
from capstan.tracking.search_grammar import EXPERIMENTS as EXPERIMENTS
from capstan.tracking.search_grammar import LIST_OPS as LIST_OPS
from capstan.tracking.search_grammar import LOGGED_MODELS as LOGGED_MODELS
from capstan.tracking.search_grammar import METRIC as METRIC
from capstan.tracking.search_grammar import MODEL_VERSIONS as MODEL_VERSIONS
from capstan.tracking.search_grammar import NULL_OPS as NULL_OPS
from capstan.tracking.search_grammar import NUMERIC_OPS as NUMERIC_OPS
from capstan.tracking.search_grammar import PARAM as PARAM
from capstan.tracking.search_grammar import REGISTERED_MODELS as REGISTERED_MODELS
from capstan.tracking.search_grammar import RUNS as RUNS
from capstan.tracking.search_grammar import STRING_OPS as STRING_OPS
from capstan.tracking.search_grammar import TAG as TAG
from capstan.tracking.search_grammar import Field as Field
from capstan.tracking.search_grammar import Grammar as Grammar
from capstan.tracking.search_limits import (
    MAX_ORDER_BY_LENGTH,
    check_datasets_count,
    check_order_by_count,
    check_search_text,
)
from capstan.tracking.search_parser import Comparison as Comparison
from capstan.tracking.search_parser import OrderKey as OrderKey
from capstan.tracking.search_parser import Value as Value
from capstan.tracking.search_parser import parse_filter as parse_filter
from capstan.tracking.search_parser import parse_order_by as parse_order_by
from capstan.tracking.search_parser import parse_order_clause as parse_order_clause
from capstan.tracking.search_syntax import decode_page_token as decode_page_token
from capstan.tracking.search_syntax import encode_page_token as encode_page_token
from capstan.tracking.search_syntax import like

T = TypeVar("T", str, float)


@dataclass(frozen=True, slots=True)
class LoggedModelOrder:
    """One ``order_by`` entry of a logged-model search, as MLflow 3 sends it: a ``field_name`` (an attribute such
    as ``creation_timestamp`` or ``metrics.<key>``) and, for a metric, the dataset whose values count."""

    field_name: str
    ascending: bool = True
    dataset_name: str = ""
    dataset_digest: str = ""


@dataclass(frozen=True, slots=True)
class DatasetFilter:
    """One ``datasets`` entry of a logged-model search: metric filters then only look at points logged for a
    dataset of this name (and digest, when given)."""

    dataset_name: str
    dataset_digest: str = ""


@dataclass(frozen=True, slots=True)
class ModelOrderKey:
    """A checked `LoggedModelOrder`: ``kind`` is `ATTRIBUTE` or `METRIC`; ``key`` a canonical attribute name or
    a metric key."""

    kind: str
    key: str
    ascending: bool = True
    dataset_name: str = ""
    dataset_digest: str = ""


LOGGED_MODEL_ORDER_ATTRIBUTES = frozenset({
    "model_id", "experiment_id", "name", "artifact_location", "creation_timestamp", "last_updated_timestamp",
    "status", "status_message", "model_type", "source_run_id"})
"""Attributes a logged-model search can order by."""
_LOGGED_MODEL_ORDER_ALIASES = {"creation_time": "creation_timestamp", "creation_timestamp_ms": "creation_timestamp",
                               "last_updated_time": "last_updated_timestamp",
                               "last_updated_timestamp_ms": "last_updated_timestamp"}


def parse_logged_model_order(entries: Sequence[LoggedModelOrder], *,
                             field_name: str = "order_by") -> tuple[ModelOrderKey, ...]:
    """Check a logged-model search's ``order_by``: attributes or ``metrics.<key>`` (a dataset only for a metric,
    a digest only with a dataset name), no duplicates, at most
    `~capstan.tracking.search_limits.MAX_ORDER_BY_TERMS` entries."""
    entries = list(entries)
    check_order_by_count(len(entries), field_name)
    out: list[ModelOrderKey] = []
    seen: set[tuple[str, str, str, str]] = set()
    for index, entry in enumerate(entries):
        name = f"{field_name}[{index}]"
        text = entry.field_name
        if not isinstance(text, str) or not text.strip():
            raise InvalidParameterValue(f"{name}.field_name: must be a non-empty string such as 'metrics.acc'")
        check_search_text(text, f"{name}.field_name", max_length=MAX_ORDER_BY_LENGTH)
        for part, value in (("dataset_name", entry.dataset_name), ("dataset_digest", entry.dataset_digest)):
            check_search_text(value, f"{name}.{part}", max_length=MAX_ORDER_BY_LENGTH)
        entity, dot, rest = text.strip().partition(".")
        if not dot:
            key = _LOGGED_MODEL_ORDER_ALIASES.get(entity, entity)
            if key not in LOGGED_MODEL_ORDER_ATTRIBUTES:
                valid = ", ".join(sorted(LOGGED_MODEL_ORDER_ATTRIBUTES))
                raise InvalidParameterValue(
                    f"{name}.field_name: cannot order logged models by {text!r}; use metrics.<key> or one of "
                    f"{valid}")
            if entry.dataset_name or entry.dataset_digest:
                raise InvalidParameterValue(
                    f"{name}: dataset_name and dataset_digest apply only to a metric, not to {text!r}")
            kind = ATTRIBUTE
        else:
            if LOGGED_MODELS.entities.get(entity.lower()) != METRIC or not rest:
                raise InvalidParameterValue(
                    f"{name}.field_name: cannot order logged models by {text!r}; only attributes and "
                    "metrics.<key> are supported")
            if entry.dataset_digest and not entry.dataset_name:
                raise InvalidParameterValue(f"{name}: dataset_digest needs dataset_name as well")
            kind, key = METRIC, rest
        marker = (kind, key, entry.dataset_name, entry.dataset_digest)
        if marker in seen:
            raise InvalidParameterValue(f"{name}: {text!r} appears more than once in {field_name}")
        seen.add(marker)
        out.append(ModelOrderKey(kind, key, bool(entry.ascending), entry.dataset_name, entry.dataset_digest))
    return tuple(out)


def check_dataset_filters(datasets: Sequence[DatasetFilter], *,
                          field_name: str = "datasets") -> tuple[DatasetFilter, ...]:
    """Check a logged-model search's ``datasets``: each names a dataset, at most
    `~capstan.tracking.search_limits.MAX_SEARCH_DATASETS` of them."""
    items = tuple(datasets)
    check_datasets_count(len(items), field_name)
    for index, item in enumerate(items):
        name = f"{field_name}[{index}]"
        if not isinstance(item.dataset_name, str) or not item.dataset_name:
            raise InvalidParameterValue(f"{name}.dataset_name: must be specified")
        check_search_text(item.dataset_name, f"{name}.dataset_name", max_length=MAX_ORDER_BY_LENGTH)
        check_search_text(item.dataset_digest, f"{name}.dataset_digest", max_length=MAX_ORDER_BY_LENGTH)
    return items


def matches(comparison: Comparison, actual: str | float | int | None) -> bool:
    """Evaluate one comparison against a value in memory (None means the field is absent).

    Follows the SQL semantics the stores use: an absent field matches nothing but ``IS NULL``; a NaN metric
    satisfies only ``!=``.
    """
    op, expected = comparison.op, comparison.value
    if op == "IS NULL":
        return actual is None
    if op == "IS NOT NULL":
        return actual is not None
    if actual is None:
        return False
    if op in LIST_OPS:
        assert isinstance(expected, tuple)
        return (str(actual) in expected) == (op == "IN")
    if op in ("LIKE", "ILIKE"):
        return like(str(actual), str(expected), ignore_case=op == "ILIKE")
    if isinstance(actual, float) and math.isnan(actual):
        return op == "!="
    if isinstance(expected, (int, float)) and isinstance(actual, (int, float)):
        return _ordered(float(actual), float(expected), op)
    return _ordered(str(actual), str(expected), op)


def _ordered(lhs: T, rhs: T, op: str) -> bool:
    if op == "=":
        return lhs == rhs
    if op == "!=":
        return lhs != rhs
    if op == ">":
        return lhs > rhs
    if op == ">=":
        return lhs >= rhs
    if op == "<":
        return lhs < rhs
    return lhs <= rhs
