"""The model registry's view of the one MLflow search grammar (`capstan.tracking.search_parser`).

Registered-model and model-version searches are parsed by the same tokenizer and parser as the tracking searches,
under their `~capstan.tracking.search_grammar.Grammar` profiles `REGISTERED_MODELS` and `MODEL_VERSIONS` (which
also carry the registry's extras: ``<>``, integer version literals, strict identifier quoting). What is left here
is registry-specific: its ``order_by`` terms are attributes only (`OrderBy`), and the default orders and tie-breaks
of its two searches. LIKE patterns and page tokens are `capstan.tracking.search_syntax`'s (re-exported here). No
I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from capstan.tracking.search_grammar import MODEL_VERSIONS as MODEL_VERSIONS
from capstan.tracking.search_grammar import REGISTERED_MODELS as REGISTERED_MODELS
from capstan.tracking.search_grammar import Grammar
from capstan.tracking.search_parser import Comparison as Comparison
from capstan.tracking.search_parser import parse_filter as _parse_filter
from capstan.tracking.search_parser import parse_order_by as _parse_order_by
from capstan.tracking.search_parser import parse_order_clause
from capstan.tracking.search_syntax import check_like_pattern as check_like_pattern
from capstan.tracking.search_syntax import decode_page_token as decode_page_token
from capstan.tracking.search_syntax import encode_page_token as encode_page_token
from capstan.tracking.search_syntax import like_to_glob as like_to_glob


@dataclass(frozen=True, slots=True)
class OrderBy:
    """One registry ``order_by`` term: a canonical attribute name and its direction (the registry orders by
    attributes only)."""

    key: str
    ascending: bool


MODEL_TIEBREAK = (OrderBy("name", True),)
"""Appended to every registered-model order (unless already used): names are unique."""
VERSION_DEFAULT_ORDER = (OrderBy("last_updated_timestamp", False), OrderBy("name", True),
                         OrderBy("version_number", False))
"""The order of a model-version search without ``order_by`` (MLflow's)."""
VERSION_TIEBREAK = (OrderBy("name", True), OrderBy("version_number", False))
"""Appended to every model-version order (unless already used): (name, version) is unique."""


def parse_filter(text: str | None, grammar: Grammar = MODEL_VERSIONS) -> tuple[Comparison, ...]:
    """Parse a registry ``filter_string`` under ``grammar`` (`MODEL_VERSIONS` by default, `REGISTERED_MODELS`
    for model searches); an empty string matches everything."""
    return _parse_filter(text, grammar)


def parse_order_by(clause: str, grammar: Grammar = MODEL_VERSIONS) -> OrderBy:
    """Parse one ``order_by`` clause such as ``"name ASC"`` or ``"version_number DESC"``."""
    order = parse_order_clause(clause, grammar, field_name="order_by")
    return OrderBy(order.key, order.ascending)


def parse_order_by_list(clauses: Sequence[str] | None, grammar: Grammar = MODEL_VERSIONS) -> list[OrderBy]:
    """Parse a whole ``order_by`` list under ``grammar``: at most
    `~capstan.tracking.search_limits.MAX_ORDER_BY_TERMS` clauses, no field twice (aliases included)."""
    return [OrderBy(order.key, order.ascending) for order in _parse_order_by(clauses, grammar)]
