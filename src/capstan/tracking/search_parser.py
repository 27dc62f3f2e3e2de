"""The one tokenizer and parser for MLflow's search syntax: ``filter_string`` and ``order_by``, for every search.

Filter grammar (keywords case-insensitive)::

    filter     := comparison ("AND" comparison)*
    comparison := ident op value | ident "IS" ["NOT"] "NULL"
    op         := "=" | "!=" | "<" | "<=" | ">" | ">=" | ["NOT"] "LIKE" | ["NOT"] "ILIKE" | ["NOT"] "IN"
    ident      := [entity "."] key           entity: metrics, params, tags, attributes (and MLflow's aliases)
    key        := bare-word | `back ticked` | "double quoted"
    value      := 'string' | "string" | number | "(" string ("," string)* ")"

An identifier without an entity is an attribute (``status``, ``start_time``...). What one search accepts (its
entities, attributes, operators per field, literal types, ``<>`` and identifier quoting) is its
`~capstan.tracking.search_grammar.Grammar` profile; every error is an `InvalidParameterValue` that starts with
the field name (``filter_string: ...``, ``order_by[0]: ...``) and names the offending token. No I/O.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from capstan.errors import InvalidParameterValue
from capstan.tracking.search_grammar import (
    ATTRIBUTE,
    ID_TEXT,
    INTEGER,
    LIST_OPS,
    MILLIS,
    NULL_OPS,
    REAL,
    RUNS,
    Field,
    Grammar,
)
from capstan.tracking.search_limits import (
    MAX_FILTER_LENGTH,
    MAX_ORDER_BY_LENGTH,
    check_filter_list_values,
    check_filter_term_count,
    check_finite,
    check_int64,
    check_order_by_count,
    check_search_text,
)
from capstan.tracking.search_syntax import check_like_pattern

Value = str | float | int | tuple[str, ...] | None


@dataclass(frozen=True, slots=True)
class Comparison:
    """One parsed clause: ``kind`` is metric/param/tag/attribute, ``key`` canonical (aliases resolved), ``op``
    canonical upper case (``<>`` becomes ``!=``).

    ``value`` is a float for metrics, an int for integer fields (timestamps, version numbers), a str for strings
    and ids, a tuple of str for ``IN``/``NOT IN`` and None for ``IS [NOT] NULL``.
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


_BARE_KEY = re.compile(r"[\w./:\-]+")
_WORD = re.compile(r"[A-Za-z_]\w*")
_NUMBER = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?(?![\w.])")
_SPACE = re.compile(r"\s*")
_TOKEN_HINT = re.compile(r"\w+|'[^']*'?|\"[^\"]*\"?|`[^`]*`?|[=!<>]+|\S")
_SYMBOLS = ("!=", ">=", "<=", "=", ">", "<")
_OPERATORS_HINT = "a comparison operator (=, !=, <, <=, >, >=, LIKE, ILIKE, IN, NOT IN)"
_SIGNED_INTEGER = re.compile(r"[+-]?[0-9]+")
_INTEGER = re.compile(r"-?[0-9]+")
_INTEGER_TEXT = re.compile(r"\s*-?[0-9]+\s*")
_ID_TEXT = re.compile(r"\s*[+-]?[0-9]+\s*")


def _shown(text: str) -> str:
    """``text`` quoted for an error message, cut short when long."""
    return repr(text) if len(text) <= 200 else f"{text[:200]!r}... ({len(text)} characters)"


class _Scanner:
    """Cursor over one filter or order_by string; errors quote the token at the cursor."""

    def __init__(self, text: str, field_name: str, grammar: Grammar) -> None:
        self.text = text
        self.pos = 0
        self.field_name = field_name
        self.grammar = grammar

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

    def read_quoted(self, *, doubled: bool = True) -> str:
        """Read a '...', "..." or `...` token and return its content; with ``doubled`` a doubled quote stands for
        itself, without it the first closing quote ends the token."""
        quote = self.text[self.pos]
        start = self.pos
        out: list[str] = []
        i = self.pos + 1
        while i < len(self.text):
            ch = self.text[i]
            if ch == quote:
                if doubled and i + 1 < len(self.text) and self.text[i + 1] == quote:
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
        strict = self.grammar.strict_identifiers
        if strict and self.peek_char() == "`":  # a back-ticked name is a whole attribute name
            name = self.read_quoted(doubled=False)
            return None, name, self.text[start:self.pos]
        first = self._read_segment(bare=_WORD, quotes="" if strict else "`\"")
        if first is None:
            raise self.fail("an identifier such as metrics.accuracy or params.lr")
        if self.peek_char() != ".":
            return None, first, self.text[start:self.pos]
        self.pos += 1
        key = self._read_segment(bare=_BARE_KEY, quotes="`\"", doubled=not strict)
        if key is None or (strict and not key):
            raise self.fail(f"a key after {self.text[start:self.pos]!r}")
        return first, key, self.text[start:self.pos]

    def _read_segment(self, *, bare: re.Pattern[str], quotes: str, doubled: bool = True) -> str | None:
        ch = self.peek_char()
        if ch and ch in quotes:
            return self.read_quoted(doubled=doubled)
        match = bare.match(self.text, self.pos)
        if not match:
            return None
        self.pos = match.end()
        return match.group(0)

    def read_operator(self) -> str:
        self.skip_space()
        aliases = self.grammar.operator_aliases
        for symbol in (*aliases, *_SYMBOLS):
            if self.text.startswith(symbol, self.pos):
                nxt = self.text[self.pos + len(symbol):self.pos + len(symbol) + 1]
                if nxt in ("=", ">", "<"):  # '==', '<>' (unless an alias), '=>' and friends are not operators
                    raise self.fail(_OPERATORS_HINT)
                self.pos += len(symbol)
                return aliases.get(symbol, symbol)
        save = self.pos
        word = self.read_word()
        upper = word.upper() if word else ""
        if upper in ("LIKE", "ILIKE", "IN"):
            return upper
        if upper == "NOT":
            second = (self.read_word() or "").upper()
            if second in ("LIKE", "ILIKE", "IN"):
                return f"NOT {second}"
        if upper == "IS":
            second = (self.read_word() or "").upper()
            if second == "NULL":
                return "IS NULL"
            if second == "NOT" and (self.read_word() or "").upper() == "NULL":
                return "IS NOT NULL"
        self.pos = save
        raise self.fail(_OPERATORS_HINT)

    def read_scalar(self) -> str | float:
        """A quoted string (returned as str) or a number (returned as float; `last_number_text` has its text)."""
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
        known = grammar.orderable if for_order else frozenset(grammar.attributes)
        if key not in known:
            valid = ", ".join(sorted(known))
            raise InvalidParameterValue(
                f"{field_name}: invalid attribute {raw!r}; valid attributes for {grammar.name} are {valid}")
    return kind, key


def _integer_text(text: str, raw: str, field_name: str) -> str:
    if not _ID_TEXT.fullmatch(text):
        raise InvalidParameterValue(f"{field_name}: {raw!r} must be an integer id, got {text!r}")
    return str(check_int64(int(text), f"{field_name}: {raw!r}"))


def _literal(spec: Field, op: str, value: str | float, text: str, raw: str, field_name: str) -> str | float | int:
    """The value of a scalar comparison, checked against the literal type of its field."""
    what = f"{field_name}: {raw!r}"
    if spec.value in (REAL, MILLIS):
        if isinstance(value, str):
            raise InvalidParameterValue(f"{what} needs a number, got the string {value!r}")
        if spec.value == REAL:
            return check_finite(value, what, text)
        if not _SIGNED_INTEGER.fullmatch(text):
            raise InvalidParameterValue(f"{what} needs an integer (milliseconds), got {text!r}")
        return check_int64(int(text), what)
    if spec.value == ID_TEXT:
        return _integer_text(value if isinstance(value, str) else text, raw, field_name)
    if spec.value == INTEGER:
        if isinstance(value, str):
            if not _INTEGER_TEXT.fullmatch(value):
                raise InvalidParameterValue(f"{what} needs an integer, got {value!r}")
            return check_int64(int(value), what)
        if not _INTEGER.fullmatch(text):
            raise InvalidParameterValue(f"{what} needs an integer or a quoted string, got {text!r}")
        return check_int64(int(text), what)
    if not isinstance(value, str):
        raise InvalidParameterValue(f"{what} needs a quoted string value such as '{text}', got {text}")
    if op.endswith("LIKE"):
        check_like_pattern(value, field_name=field_name, subject=repr(raw))
    return value


def _comparison(scanner: _Scanner, grammar: Grammar) -> Comparison:
    field_name = scanner.field_name
    entity, key, raw = scanner.read_identifier()
    kind, key = _resolve(entity, key, raw, grammar, field_name)
    spec = grammar.field_of(kind, key)
    op_pos = scanner.pos
    op = scanner.read_operator()
    if op not in spec.ops:
        scanner.pos = op_pos
        raise InvalidParameterValue(
            f"{field_name}: operator {op!r} is not supported for {raw!r}; use one of {', '.join(sorted(spec.ops))}")
    if op in NULL_OPS:
        return Comparison(kind, key, op, None)
    if op in LIST_OPS:
        items = scanner.read_list()
        if spec.value == ID_TEXT:
            items = tuple(_integer_text(item, raw, field_name) for item in items)
        return Comparison(kind, key, op, items)
    value_start = scanner.pos
    value = scanner.read_scalar()
    text = scanner.last_number_text(value_start)
    return Comparison(kind, key, op, _literal(spec, op, value, text, raw, field_name))


def parse_filter(text: str | None, grammar: Grammar = RUNS, *,
                 field_name: str = "filter_string") -> tuple[Comparison, ...]:
    """Parse an AND-ed MLflow filter string under ``grammar``; an empty or blank string means no filter."""
    if not text or not text.strip():
        return ()
    check_search_text(text, field_name, max_length=MAX_FILTER_LENGTH)
    scanner = _Scanner(text, field_name, grammar)
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


def parse_order_clause(clause: object, grammar: Grammar = RUNS, *, field_name: str = "order_by") -> OrderKey:
    """Parse one ``order_by`` clause such as ``"metrics.acc DESC"`` under ``grammar`` (``field_name`` prefixes
    its errors)."""
    return _order_clause(clause, grammar, field_name)[0]


def _order_clause(clause: object, grammar: Grammar, field_name: str) -> tuple[OrderKey, str]:
    if not isinstance(clause, str) or not clause.strip():
        raise InvalidParameterValue(
            f"{field_name}: must be a non-empty string such as {grammar.order_example!r}")
    check_search_text(clause, field_name, max_length=MAX_ORDER_BY_LENGTH)
    scanner = _Scanner(clause, field_name, grammar)
    entity, key, raw = scanner.read_identifier()
    kind, key = _resolve(entity, key, raw, grammar, field_name, for_order=True)
    ascending = True
    if not scanner.at_end():
        word = scanner.read_word()
        if word is None or word.upper() not in ("ASC", "DESC"):
            raise scanner.fail("ASC or DESC", None if word is None else word)
        ascending = word.upper() == "ASC"
        if not scanner.at_end():
            raise scanner.fail("the end of the clause")
    return OrderKey(kind, key, ascending), raw


def parse_order_by(clauses: Sequence[str] | None, grammar: Grammar = RUNS, *,
                   field_name: str = "order_by") -> tuple[OrderKey, ...]:
    """Parse ``["metrics.acc DESC", "start_time"]``-style clauses under ``grammar``; duplicates (after aliases)
    are rejected, and so are more than `~capstan.tracking.search_limits.MAX_ORDER_BY_TERMS` clauses."""
    if isinstance(clauses, str):
        raise InvalidParameterValue(f"{field_name}: must be a list of strings such as [{grammar.order_example!r}], "
                                    f"got the string {clauses[:60]!r}")
    clauses = list(clauses or ())
    check_order_by_count(len(clauses), field_name)
    out: list[OrderKey] = []
    seen: set[tuple[str, str]] = set()
    for index, clause in enumerate(clauses):
        name = f"{field_name}[{index}]" if grammar.indexed_order_errors else field_name
        order, raw = _order_clause(clause, grammar, name)
        if (order.kind, order.key) in seen:
            raise InvalidParameterValue(f"{name}: {raw!r} appears more than once in order_by")
        seen.add((order.kind, order.key))
        out.append(order)
    return tuple(out)
