"""Pure parser for the model registry's MLflow-style ``filter_string`` and ``order_by`` clauses.

Grammar (keywords are case-insensitive)::

    filter     := comparison ("AND" comparison)*
    comparison := ident op value
    op         := "=" | "!=" | "<>" | "<" | "<=" | ">" | ">=" | ["NOT"] "LIKE" | ["NOT"] "ILIKE" | ["NOT"] "IN"
    ident      := word | entity "." key | `quoted`            entity: attribute | tag | tags
    value      := 'string' | "string" | integer | "(" 'string' ("," 'string')* ")"

Only the shape is checked here; which fields and operators an entity accepts is the store's business. LIKE
patterns and page tokens are `capstan.tracking.search_syntax`'s, shared with the tracking searches (re-exported
here). No I/O.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from capstan.errors import InvalidParameterValue
from capstan.tracking.search_limits import (
    MAX_FILTER_LENGTH,
    MAX_ORDER_BY_LENGTH,
    check_filter_list_values,
    check_filter_term_count,
    check_int64,
    check_order_by_count,
    check_search_text,
)
from capstan.tracking.search_syntax import check_like_pattern as check_like_pattern
from capstan.tracking.search_syntax import decode_page_token as decode_page_token
from capstan.tracking.search_syntax import encode_page_token as encode_page_token
from capstan.tracking.search_syntax import like_to_glob as like_to_glob

Kind = Literal["attribute", "tag"]
ATTRIBUTE: Kind = "attribute"
TAG: Kind = "tag"
Value = str | int | tuple[str, ...]

_TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<str>'(?:''|[^'])*')
  | (?P<dq>"(?:""|[^"])*")
  | (?P<bt>`[^`]*`)
  | (?P<num>-?[0-9]+(?:\.[0-9]+)?(?![\w.]))
  | (?P<op>!=|<>|<=|>=|=|<|>)
  | (?P<lpar>\()
  | (?P<rpar>\))
  | (?P<comma>,)
  | (?P<ident>[A-Za-z_][\w]*(?:\.(?:`[^`]*`|"[^"]*"|[\w.:/-]+))?)
    """,
    re.VERBOSE,
)
_ENTITIES: dict[str, Kind] = {"attribute": ATTRIBUTE, "attributes": ATTRIBUTE, "tag": TAG, "tags": TAG}
_WORD_OPS = ("LIKE", "ILIKE", "IN")


@dataclass(frozen=True, slots=True)
class Comparison:
    """One ``<entity>.<key> <op> <value>`` term of a filter (terms are AND-ed)."""

    kind: Kind
    key: str
    op: str
    value: Value


@dataclass(frozen=True, slots=True)
class OrderBy:
    """One ``order_by`` clause: an attribute key and its direction."""

    key: str
    ascending: bool


@dataclass(frozen=True, slots=True)
class _Tok:
    kind: str
    text: str
    pos: int


def _bad(message: str, field_name: str = "filter_string") -> InvalidParameterValue:
    return InvalidParameterValue(f"{field_name}: {message}")


def _shown(text: str) -> str:
    return repr(text) if len(text) <= 200 else f"{text[:200]!r}... ({len(text)} characters)"


def _tokenize(text: str, field_name: str) -> list[_Tok]:
    tokens: list[_Tok] = []
    pos = 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            raise _bad(f"unexpected character {text[pos]!r} at position {pos} in {_shown(text)}", field_name)
        kind = match.lastgroup
        assert kind is not None
        if kind != "ws":
            tokens.append(_Tok(kind, match.group(), pos))
        pos = match.end()
    return tokens


def _unquote(token: str) -> str:
    quote, body = token[0], token[1:-1]
    if quote == "'":
        return body.replace("''", "'")
    if quote == '"':
        return body.replace('""', '"')
    return body


def _split_ident(tok: _Tok, field_name: str) -> tuple[Kind, str]:
    if tok.kind == "bt":
        return ATTRIBUTE, _unquote(tok.text)
    if tok.kind != "ident":
        raise _bad(f"expected a field name at position {tok.pos}, got {tok.text!r}", field_name)
    head, dot, rest = tok.text.partition(".")
    if not dot:
        return ATTRIBUTE, head
    entity = _ENTITIES.get(head.lower())
    if entity is None:
        raise _bad(f"invalid entity type {head!r}; valid types are 'attribute', 'tag' and 'tags'", field_name)
    key = _unquote(rest) if rest[:1] in ("`", '"') else rest
    if not key:
        raise _bad(f"empty key after {head!r}", field_name)
    return entity, key


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.toks = _tokenize(text, "filter_string")
        self.i = 0

    def peek(self) -> _Tok | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self, what: str) -> _Tok:
        tok = self.peek()
        if tok is None:
            raise _bad(f"expected {what} at the end of {_shown(self.text)}")
        self.i += 1
        return tok

    def word(self, tok: _Tok | None) -> str:
        return tok.text.upper() if tok is not None and tok.kind == "ident" else ""

    def parse(self) -> tuple[Comparison, ...]:
        terms = [self.comparison()]
        list_values = len(terms[0].value) if isinstance(terms[0].value, tuple) else 0
        check_filter_list_values(list_values)
        while (tok := self.peek()) is not None:
            if self.word(tok) != "AND":
                hint = " (only AND is supported)" if self.word(tok) == "OR" else ""
                raise _bad(f"unexpected {tok.text!r} at position {tok.pos}{hint}")
            self.i += 1
            check_filter_term_count(len(terms) + 1)
            term = self.comparison()
            if isinstance(term.value, tuple):
                list_values += len(term.value)
                check_filter_list_values(list_values)
            terms.append(term)
        return tuple(terms)

    def comparison(self) -> Comparison:
        kind, key = _split_ident(self.take("a field name"), "filter_string")
        op = self.operator()
        return Comparison(kind, key, op, self.value(op))

    def operator(self) -> str:
        tok = self.take("a comparison operator")
        if tok.kind == "op":
            return "!=" if tok.text == "<>" else tok.text
        word = self.word(tok)
        if word == "NOT":
            nxt = self.word(self.take("LIKE, ILIKE or IN after NOT"))
            if nxt not in _WORD_OPS:
                raise _bad(f"expected LIKE, ILIKE or IN after NOT at position {tok.pos}")
            return f"NOT {nxt}"
        if word in _WORD_OPS:
            return word
        raise _bad(f"expected a comparison operator at position {tok.pos}, got {tok.text!r}")

    def value(self, op: str) -> Value:
        tok = self.take("a value")
        if op.endswith("IN"):
            if tok.kind != "lpar":
                raise _bad(f"{op} needs a parenthesised list of quoted strings, e.g. ('a', 'b')")
            items: list[str] = []
            while True:
                item = self.take("a quoted string")
                if item.kind not in ("str", "dq"):
                    raise _bad(f"{op} lists hold quoted strings only, got {item.text!r}")
                items.append(_unquote(item.text))
                sep = self.take("',' or ')'")
                if sep.kind == "rpar":
                    return tuple(items)
                if sep.kind != "comma":
                    raise _bad(f"expected ',' or ')' at position {sep.pos}, got {sep.text!r}")
        if tok.kind in ("str", "dq"):
            return _unquote(tok.text)
        if tok.kind == "num":
            if "." in tok.text:
                raise _bad(f"expected an integer or a quoted string, got {tok.text!r}")
            return check_int64(int(tok.text), f"filter_string: {tok.text!r}")
        raise _bad(f"expected a quoted string or a number at position {tok.pos}, got {tok.text!r}")


def parse_filter(text: str | None) -> tuple[Comparison, ...]:
    """Parse an MLflow-style filter string into AND-ed comparisons; an empty string matches everything."""
    if text is None or not text.strip():
        return ()
    check_search_text(text, "filter_string", max_length=MAX_FILTER_LENGTH)
    return _Parser(text).parse()


def parse_order_by(clause: str) -> OrderBy:
    """Parse one ``order_by`` clause such as ``"name ASC"`` or ``"version_number DESC"``."""
    if not isinstance(clause, str):
        raise _bad(f"each clause must be a string such as 'name ASC', got {clause!r}", "order_by")
    check_search_text(clause, "order_by", max_length=MAX_ORDER_BY_LENGTH)
    toks = _tokenize(clause, "order_by")
    if not toks or len(toks) > 2:
        raise _bad(f"expected '<field> [ASC|DESC]', got {clause!r}", "order_by")
    kind, key = _split_ident(toks[0], "order_by")
    if kind != ATTRIBUTE:
        raise _bad(f"only attributes can be ordered by, got {clause!r}", "order_by")
    ascending = True
    if len(toks) == 2:
        direction = toks[1].text.upper() if toks[1].kind == "ident" else ""
        if direction not in ("ASC", "DESC"):
            raise _bad(f"direction must be ASC or DESC, got {toks[1].text!r}", "order_by")
        ascending = direction == "ASC"
    return OrderBy(key, ascending)


def parse_order_by_list(clauses: Sequence[str] | None) -> list[OrderBy]:
    """Parse a whole ``order_by`` list, refusing more than
    `~capstan.tracking.search_limits.MAX_ORDER_BY_TERMS` clauses."""
    if isinstance(clauses, str):
        raise _bad(f"must be a list of strings such as ['name ASC'], got the string {clauses[:60]!r}", "order_by")
    items = list(clauses or ())
    check_order_by_count(len(items))
    return [parse_order_by(clause) for clause in items]
