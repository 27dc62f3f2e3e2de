"""Pure parser for MLflow's tracking search syntax: ``filter_string`` and ``order_by``.

Filter grammar (keywords case-insensitive)::

    filter     := comparison ("AND" comparison)*
    comparison := ident op value | ident "IS" ["NOT"] "NULL"
    op         := "=" | "!=" | "<" | "<=" | ">" | ">=" | "LIKE" | "ILIKE" | "IN" | "NOT IN"
    ident      := [entity "."] key           entity: metrics, params, tags, attributes (and MLflow's aliases)
    key        := bare-word | `back ticked` | "double quoted"
    value      := 'string' | "string" | number | "(" string ("," string)* ")"

An identifier without an entity is an attribute (``status``, ``start_time``...). Which entities, attributes and
operators are accepted depends on the `Grammar` (runs, experiments or logged models); every error is an
`InvalidParameterValue` that names the offending token. LIKE patterns and page tokens are
`capstan.tracking.search_syntax`'s (re-exported here). This module does no I/O.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from capstan.errors import InvalidParameterValue
from capstan.tracking.search_limits import (
    MAX_FILTER_LENGTH,
    MAX_ORDER_BY_LENGTH,
    check_datasets_count,
    check_filter_list_values,
    check_filter_term_count,
    check_finite,
    check_int64,
    check_order_by_count,
    check_search_text,
)
from capstan.tracking.search_syntax import check_like_pattern, like
from capstan.tracking.search_syntax import decode_page_token as decode_page_token
from capstan.tracking.search_syntax import encode_page_token as encode_page_token

METRIC = "metric"
PARAM = "param"
TAG = "tag"
ATTRIBUTE = "attribute"

NUMERIC_OPS = frozenset({"=", "!=", ">", ">=", "<", "<="})
STRING_OPS = frozenset({"=", "!=", "LIKE", "ILIKE"})
LIST_OPS = frozenset({"IN", "NOT IN"})
NULL_OPS = frozenset({"IS NULL", "IS NOT NULL"})

Value = str | float | int | tuple[str, ...] | None
T = TypeVar("T", str, float)


@dataclass(frozen=True, slots=True)
class Comparison:
    """One parsed clause: ``kind`` is metric/param/tag/attribute, ``op`` is canonical upper case.

    ``value`` is a float for metrics, an int for numeric attributes, a str for strings, a tuple of str for
    ``IN``/``NOT IN`` and None for ``IS [NOT] NULL``.
    """

    kind: str
    key: str
    op: str
    value: Value


@dataclass(frozen=True, slots=True)
class OrderKey:
    """One parsed ``order_by`` clause."""

    kind: str
    key: str
    ascending: bool = True


@dataclass(frozen=True, slots=True)
class Grammar:
    """What one search endpoint accepts."""

    name: str
    entities: Mapping[str, str]
    string_attributes: frozenset[str]
    numeric_attributes: frozenset[str]
    list_attributes: frozenset[str] = frozenset()
    attribute_aliases: Mapping[str, str] = field(default_factory=dict)
    param_ops: frozenset[str] = STRING_OPS | NULL_OPS
    tag_ops: frozenset[str] = STRING_OPS | NULL_OPS
    order_kinds: frozenset[str] = frozenset({ATTRIBUTE})
    integer_string_attributes: frozenset[str] = frozenset()

    @property
    def attributes(self) -> frozenset[str]:
        """Every attribute name the grammar knows (aliases excluded)."""
        return self.string_attributes | self.numeric_attributes


_RUN_ENTITIES = {
    "metric": METRIC, "metrics": METRIC,
    "param": PARAM, "params": PARAM, "parameter": PARAM, "parameters": PARAM,
    "tag": TAG, "tags": TAG,
    "attribute": ATTRIBUTE, "attributes": ATTRIBUTE, "attr": ATTRIBUTE, "run": ATTRIBUTE,
}

RUNS = Grammar(
    name="runs",
    entities=_RUN_ENTITIES,
    string_attributes=frozenset({"run_id", "run_name", "status", "user_id", "artifact_uri", "lifecycle_stage"}),
    numeric_attributes=frozenset({"start_time", "end_time"}),
    list_attributes=frozenset({"run_id"}),
    attribute_aliases={"created": "start_time", "Created": "start_time", "run name": "run_name",
                       "Run name": "run_name", "Run Name": "run_name"},
    order_kinds=frozenset({METRIC, PARAM, TAG, ATTRIBUTE}),
)
"""`search_runs`: metrics, params, tags and run attributes."""

EXPERIMENTS = Grammar(
    name="experiments",
    entities={"tag": TAG, "tags": TAG, "attribute": ATTRIBUTE, "attributes": ATTRIBUTE},
    string_attributes=frozenset({"name", "experiment_id"}),
    numeric_attributes=frozenset({"creation_time", "last_update_time"}),
    list_attributes=frozenset({"experiment_id"}),
    integer_string_attributes=frozenset({"experiment_id"}),
)
"""`search_experiments`: name, experiment_id, creation/last update time and tags."""

LOGGED_MODELS = Grammar(
    name="logged models",
    entities=_RUN_ENTITIES,
    string_attributes=frozenset({"name", "model_id", "model_type", "status", "source_run_id"}),
    numeric_attributes=frozenset({"creation_timestamp", "last_updated_timestamp"}),
    list_attributes=frozenset({"model_id", "name", "status"}),
    attribute_aliases={"creation_time": "creation_timestamp", "last_updated_time": "last_updated_timestamp"},
    param_ops=STRING_OPS,
    tag_ops=STRING_OPS,
)
"""`search_logged_models`: model attributes, params, tags and metrics."""

_BARE_KEY = re.compile(r"[\w./:\-]+")
_WORD = re.compile(r"[A-Za-z_]\w*")
_NUMBER = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?(?![\w.])")
_SPACE = re.compile(r"\s*")
_TOKEN_HINT = re.compile(r"\w+|'[^']*'?|\"[^\"]*\"?|`[^`]*`?|[=!<>]+|\S")


def _shown(text: str) -> str:
    """``text`` quoted for an error message, cut short when long."""
    return repr(text) if len(text) <= 200 else f"{text[:200]!r}... ({len(text)} characters)"


class _Scanner:
    """Cursor over one filter or order_by string; errors quote the token at the cursor."""

    def __init__(self, text: str, field_name: str) -> None:
        self.text = text
        self.pos = 0
        self.field_name = field_name

    def skip_space(self) -> None:
        match = _SPACE.match(self.text, self.pos)
        self.pos = match.end() if match else self.pos

    def at_end(self) -> bool:
        self.skip_space()
        return self.pos >= len(self.text)

    def peek_char(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def token_here(self) -> str:
        match = _TOKEN_HINT.match(self.text, self.pos)
        return match.group(0)[:60] if match else ""

    def fail(self, expected: str, token: str | None = None) -> InvalidParameterValue:
        if token is None:
            token = self.token_here()
        found = f"found {token!r}" if token else "found the end of the string"
        return InvalidParameterValue(
            f"{self.field_name}: expected {expected} at position {self.pos}, {found} in {_shown(self.text)}")

    def read_quoted(self) -> str:
        """Read a '...', "..." or `...` token (a doubled quote stands for itself) and return its content."""
        quote = self.text[self.pos]
        start = self.pos
        out: list[str] = []
        i = self.pos + 1
        while i < len(self.text):
            ch = self.text[i]
            if ch == quote:
                if i + 1 < len(self.text) and self.text[i + 1] == quote:
                    out.append(quote)
                    i += 2
                    continue
                self.pos = i + 1
                return "".join(out)
            out.append(ch)
            i += 1
        self.pos = start
        raise InvalidParameterValue(
            f"{self.field_name}: unterminated quote {quote} starting at position {start} in {_shown(self.text)}")

    def read_word(self) -> str | None:
        self.skip_space()
        match = _WORD.match(self.text, self.pos)
        if not match:
            return None
        self.pos = match.end()
        return match.group(0)

    def read_identifier(self) -> tuple[str | None, str, str]:
        """Return (entity or None, key, raw text) of the identifier at the cursor."""
        self.skip_space()
        start = self.pos
        first = self._read_segment(bare=_WORD)
        if first is None:
            raise self.fail("an identifier such as metrics.accuracy or params.lr")
        if self.peek_char() != ".":
            return None, first, self.text[start:self.pos]
        self.pos += 1
        key = self._read_segment(bare=_BARE_KEY)
        if key is None:
            raise self.fail(f"a key after {self.text[start:self.pos]!r}")
        return first, key, self.text[start:self.pos]

    def _read_segment(self, *, bare: re.Pattern[str]) -> str | None:
        ch = self.peek_char()
        if ch in ("`", '"'):
            return self.read_quoted()
        match = bare.match(self.text, self.pos)
        if not match:
            return None
        self.pos = match.end()
        return match.group(0)

    def read_operator(self) -> str:
        self.skip_space()
        for symbol in ("!=", ">=", "<=", "=", ">", "<"):
            if self.text.startswith(symbol, self.pos):
                nxt = self.text[self.pos + len(symbol):self.pos + len(symbol) + 1]
                if nxt in ("=", ">", "<"):  # '==', '<>', '=>' and friends are not MLflow operators
                    raise self.fail("a comparison operator (=, !=, <, <=, >, >=, LIKE, ILIKE, IN, NOT IN)")
                self.pos += len(symbol)
                return symbol
        save = self.pos
        word = self.read_word()
        upper = word.upper() if word else ""
        if upper in ("LIKE", "ILIKE", "IN"):
            return upper
        if upper == "NOT":
            second = (self.read_word() or "").upper()
            if second == "IN":
                return "NOT IN"
        if upper == "IS":
            second = (self.read_word() or "").upper()
            if second == "NULL":
                return "IS NULL"
            if second == "NOT" and (self.read_word() or "").upper() == "NULL":
                return "IS NOT NULL"
        self.pos = save
        raise self.fail("a comparison operator (=, !=, <, <=, >, >=, LIKE, ILIKE, IN, NOT IN)")

    def read_scalar(self) -> str | float:
        """A quoted string (returned as str) or a number (returned as float, keeping int-ness in the text)."""
        self.skip_space()
        ch = self.peek_char()
        if ch in ("'", '"'):
            return self.read_quoted()
        match = _NUMBER.match(self.text, self.pos)
        if match:
            self.pos = match.end()
            return float(match.group(0))
        raise self.fail("a value (a quoted string or a number)")

    def last_number_text(self, start: int) -> str:
        return self.text[start:self.pos].strip()

    def read_list(self) -> tuple[str, ...]:
        self.skip_space()
        if self.peek_char() != "(":
            raise self.fail("a parenthesised list such as ('a', 'b')")
        self.pos += 1
        items: list[str] = []
        while True:
            self.skip_space()
            if self.peek_char() not in ("'", '"'):
                raise self.fail("a quoted string in the list")
            items.append(self.read_quoted())
            self.skip_space()
            ch = self.peek_char()
            if ch == ",":
                self.pos += 1
                continue
            if ch == ")":
                self.pos += 1
                return tuple(items)
            raise self.fail("',' or ')' in the list")


def _resolve(entity: str | None, key: str, raw: str, grammar: Grammar, field_name: str, *,
             for_order: bool = False) -> tuple[str, str]:
    if entity is None:
        kind = ATTRIBUTE
    else:
        kind_or_none = grammar.entities.get(entity) or grammar.entities.get(entity.lower())
        if kind_or_none is None:
            valid = ", ".join(sorted(set(grammar.entities)))
            raise InvalidParameterValue(
                f"{field_name}: invalid entity {entity!r} in {raw!r}; valid entities for {grammar.name} are {valid}")
        kind = kind_or_none
    if for_order and kind not in grammar.order_kinds:
        raise InvalidParameterValue(f"{field_name}: cannot order {grammar.name} by {raw!r}")
    if kind == ATTRIBUTE:
        key = grammar.attribute_aliases.get(key, key)
        if key not in grammar.attributes:
            valid = ", ".join(sorted(grammar.attributes))
            raise InvalidParameterValue(
                f"{field_name}: invalid attribute {raw!r}; valid attributes for {grammar.name} are {valid}")
    return kind, key


def _comparison(scanner: _Scanner, grammar: Grammar) -> Comparison:
    field_name = scanner.field_name
    entity, key, raw = scanner.read_identifier()
    kind, key = _resolve(entity, key, raw, grammar, field_name)
    op_pos = scanner.pos
    op = scanner.read_operator()
    if kind == METRIC:
        allowed = NUMERIC_OPS
    elif kind == PARAM:
        allowed = grammar.param_ops
    elif kind == TAG:
        allowed = grammar.tag_ops
    elif key in grammar.numeric_attributes:
        allowed = NUMERIC_OPS
    elif key in grammar.list_attributes:
        allowed = (STRING_OPS | LIST_OPS) - ({"LIKE", "ILIKE"} if key in grammar.integer_string_attributes
                                             else set())
    else:
        allowed = STRING_OPS
    if op not in allowed:
        scanner.pos = op_pos
        raise InvalidParameterValue(
            f"{field_name}: operator {op!r} is not supported for {raw!r}; use one of {', '.join(sorted(allowed))}")
    if op in NULL_OPS:
        return Comparison(kind, key, op, None)
    if op in LIST_OPS:
        items = scanner.read_list()
        if key in grammar.integer_string_attributes:
            items = tuple(_integer_text(item, raw, field_name) for item in items)
        return Comparison(kind, key, op, items)
    value_start = scanner.pos
    value = scanner.read_scalar()
    numeric_expected = kind == METRIC or (kind == ATTRIBUTE and key in grammar.numeric_attributes)
    if numeric_expected:
        if isinstance(value, str):
            raise InvalidParameterValue(
                f"{field_name}: {raw!r} needs a number, got the string {value!r}")
        text = scanner.last_number_text(value_start)
        if kind == METRIC:
            return Comparison(kind, key, op, check_finite(value, f"{field_name}: {raw!r}", text))
        if not re.fullmatch(r"[+-]?[0-9]+", text):
            raise InvalidParameterValue(f"{field_name}: {raw!r} needs an integer (milliseconds), got {text!r}")
        return Comparison(kind, key, op, check_int64(int(text), f"{field_name}: {raw!r}"))
    if not isinstance(value, str):
        text = scanner.last_number_text(value_start)
        if key in grammar.integer_string_attributes:
            return Comparison(kind, key, op, _integer_text(text, raw, field_name))
        raise InvalidParameterValue(
            f"{field_name}: {raw!r} needs a quoted string value such as '{text}', got {text}")
    if key in grammar.integer_string_attributes and kind == ATTRIBUTE:
        value = _integer_text(value, raw, field_name)
    if op in ("LIKE", "ILIKE"):
        check_like_pattern(value, field_name=field_name, subject=repr(raw))
    return Comparison(kind, key, op, value)


def _integer_text(text: str, raw: str, field_name: str) -> str:
    if not re.fullmatch(r"\s*[+-]?[0-9]+\s*", text):
        raise InvalidParameterValue(f"{field_name}: {raw!r} must be an integer id, got {text!r}")
    return str(check_int64(int(text), f"{field_name}: {raw!r}"))


def parse_filter(text: str | None, grammar: Grammar = RUNS, *,
                 field_name: str = "filter_string") -> tuple[Comparison, ...]:
    """Parse an AND-ed MLflow filter string; an empty or blank string means no filter."""
    if not text or not text.strip():
        return ()
    check_search_text(text, field_name, max_length=MAX_FILTER_LENGTH)
    scanner = _Scanner(text, field_name)
    out: list[Comparison] = []
    list_values = 0
    while True:
        check_filter_term_count(len(out) + 1, field_name)
        comparison = _comparison(scanner, grammar)
        if isinstance(comparison.value, tuple):
            list_values += len(comparison.value)
            check_filter_list_values(list_values, field_name)
        out.append(comparison)
        if scanner.at_end():
            return tuple(out)
        save = scanner.pos
        word = scanner.read_word()
        if word is None or word.upper() != "AND":
            scanner.pos = save
            if word is not None and word.upper() == "OR":
                raise InvalidParameterValue(
                    f"{field_name}: 'OR' is not supported at position {save}; only AND-ed comparisons are "
                    f"allowed in {_shown(text)}")
            raise scanner.fail("AND")


def parse_order_by(clauses: Sequence[str] | None, grammar: Grammar = RUNS, *,
                   field_name: str = "order_by") -> tuple[OrderKey, ...]:
    """Parse ``["metrics.acc DESC", "start_time"]``-style clauses; duplicates are rejected, and so are more than
    `~capstan.tracking.search_limits.MAX_ORDER_BY_TERMS` clauses."""
    if isinstance(clauses, str):
        raise InvalidParameterValue(f"{field_name}: must be a list of strings such as ['metrics.acc DESC'], "
                                    f"got the string {clauses[:60]!r}")
    clauses = list(clauses or ())
    check_order_by_count(len(clauses), field_name)
    out: list[OrderKey] = []
    seen: set[tuple[str, str]] = set()
    for index, clause in enumerate(clauses):
        name = f"{field_name}[{index}]"
        if not isinstance(clause, str) or not clause.strip():
            raise InvalidParameterValue(f"{name}: must be a non-empty string such as 'metrics.acc DESC'")
        check_search_text(clause, name, max_length=MAX_ORDER_BY_LENGTH)
        scanner = _Scanner(clause, name)
        entity, key, raw = scanner.read_identifier()
        kind, key = _resolve(entity, key, raw, grammar, name, for_order=True)
        ascending = True
        if not scanner.at_end():
            word = scanner.read_word()
            if word is None or word.upper() not in ("ASC", "DESC"):
                raise scanner.fail("ASC or DESC", None if word is None else word)
            ascending = word.upper() == "ASC"
            if not scanner.at_end():
                raise scanner.fail("the end of the clause")
        if (kind, key) in seen:
            raise InvalidParameterValue(f"{name}: {raw!r} appears more than once in order_by")
        seen.add((kind, key))
        out.append(OrderKey(kind, key, ascending))
    return tuple(out)


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
            if _RUN_ENTITIES.get(entity.lower()) != METRIC or not rest:
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
