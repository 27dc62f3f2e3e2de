"""What each MLflow search accepts: one frozen `Grammar` profile per searchable entity.

Every search (runs, experiments, logged models, registered models, model versions) is parsed by the one parser in
`capstan.tracking.search_parser`; the differences between them are data, described here:

* which entity prefixes exist (``metrics.``, ``params.``, ``tags.``, ``attributes.``...) and what kind each means;
* which attributes can be filtered on and which ordered by, with their aliases (``created``, ``version``...);
* per attribute and per keyed kind (metric, param, tag): the operators allowed and the literal it takes (a `Field`);
* the registry's extras: ``<>`` as a spelling of ``!=`` (`Grammar.operator_aliases`) and its stricter identifier
  quoting (`Grammar.strict_identifiers`).

Pure data, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

METRIC: Final = "metric"
PARAM: Final = "param"
TAG: Final = "tag"
ATTRIBUTE: Final = "attribute"

NUMERIC_OPS = frozenset({"=", "!=", ">", ">=", "<", "<="})
"""Ordered comparisons."""
STRING_OPS = frozenset({"=", "!=", "LIKE", "ILIKE"})
"""Equality and (case-insensitive) pattern matching."""
LIST_OPS = frozenset({"IN", "NOT IN"})
"""Membership in a parenthesised list of quoted strings."""
NULL_OPS = frozenset({"IS NULL", "IS NOT NULL"})
"""Presence tests (no value)."""
ALL_OPS = NUMERIC_OPS | STRING_OPS | LIST_OPS | NULL_OPS | frozenset({"NOT LIKE", "NOT ILIKE"})
"""Every operator spelling the parser recognises; a `Field` says which of them a field accepts."""

TEXT: Final = "text"
"""A quoted string, kept as ``str``."""
REAL: Final = "real"
"""A finite number literal, kept as ``float`` (metric values)."""
MILLIS: Final = "millis"
"""An integer literal (``[+-]digits``) within 64 bits, kept as ``int`` (timestamps in milliseconds)."""
ID_TEXT: Final = "id_text"
"""An integer id written as a literal or as a quoted string (``[+-]digits``), kept as canonical ``str``."""
INTEGER: Final = "integer"
"""An integer written as a literal (``-digits``) or as a quoted string (``' -digits '``), kept as ``int``
(the registry's version numbers)."""


@dataclass(frozen=True, slots=True)
class Field:
    """How one field is compared: the operators it allows and the kind of literal (`TEXT`, `REAL`, `MILLIS`,
    `ID_TEXT` or `INTEGER`) on the right-hand side."""

    ops: frozenset[str]
    value: str = TEXT


@dataclass(frozen=True, slots=True)
class Grammar:
    """What one search endpoint accepts (a "grammar profile").

    ``entities`` maps each prefix spelling (looked up as written, then lower-cased) to a kind; ``attributes`` and
    ``keyed`` give the `Field` of each attribute and of each keyed kind (metric, param, tag). ``order_attributes``
    are the attributes ``order_by`` accepts (None: the filterable ones); ``order_kinds`` the kinds it accepts.
    ``attribute_aliases`` apply to filters and ``order_by`` alike. ``operator_aliases`` are extra operator
    spellings (``<>``). With ``strict_identifiers`` (the registry's rule) only back-ticks quote a whole attribute
    name, a key after ``entity.`` may be back-ticked or double-quoted but not empty, and a doubled quote ends the
    name instead of standing for itself. ``order_example`` is the clause error messages suggest, and
    ``indexed_order_errors`` whether an ``order_by`` error names its clause (``order_by[2]: ...``) or the whole
    list (``order_by: ...``, the registry's messages).
    """

    name: str
    entities: Mapping[str, str]
    attributes: Mapping[str, Field]
    keyed: Mapping[str, Field] = field(default_factory=dict)
    attribute_aliases: Mapping[str, str] = field(default_factory=dict)
    order_kinds: frozenset[str] = frozenset({ATTRIBUTE})
    order_attributes: frozenset[str] | None = None
    operator_aliases: Mapping[str, str] = field(default_factory=dict)
    strict_identifiers: bool = False
    order_example: str = "metrics.acc DESC"
    indexed_order_errors: bool = True

    @property
    def orderable(self) -> frozenset[str]:
        """The attribute names ``order_by`` accepts (aliases excluded)."""
        return frozenset(self.attributes) if self.order_attributes is None else self.order_attributes

    def field_of(self, kind: str, key: str) -> Field:
        """The `Field` of a resolved ``(kind, key)``: an attribute's own, or its keyed kind's."""
        return self.attributes[key] if kind == ATTRIBUTE else self.keyed[kind]


_TEXT = Field(STRING_OPS)
_TEXT_OR_NULL = Field(STRING_OPS | NULL_OPS)
_TEXT_OR_LIST = Field(STRING_OPS | LIST_OPS)
_MILLIS = Field(NUMERIC_OPS, MILLIS)
_REAL = Field(NUMERIC_OPS, REAL)

_RUN_ENTITIES = {
    "metric": METRIC, "metrics": METRIC,
    "param": PARAM, "params": PARAM, "parameter": PARAM, "parameters": PARAM,
    "tag": TAG, "tags": TAG,
    "attribute": ATTRIBUTE, "attributes": ATTRIBUTE, "attr": ATTRIBUTE, "run": ATTRIBUTE,
}
_TAG_ENTITIES = {"tag": TAG, "tags": TAG, "attribute": ATTRIBUTE, "attributes": ATTRIBUTE}

RUNS = Grammar(
    name="runs",
    entities=_RUN_ENTITIES,
    attributes={"run_id": _TEXT_OR_LIST, "run_name": _TEXT, "status": _TEXT, "user_id": _TEXT,
                "artifact_uri": _TEXT, "lifecycle_stage": _TEXT, "start_time": _MILLIS, "end_time": _MILLIS},
    keyed={METRIC: _REAL, PARAM: _TEXT_OR_NULL, TAG: _TEXT_OR_NULL},
    attribute_aliases={"created": "start_time", "Created": "start_time", "run name": "run_name",
                       "Run name": "run_name", "Run Name": "run_name"},
    order_kinds=frozenset({METRIC, PARAM, TAG, ATTRIBUTE}),
)
"""`search_runs`: metrics, params, tags and run attributes."""

EXPERIMENTS = Grammar(
    name="experiments",
    entities=_TAG_ENTITIES,
    attributes={"name": _TEXT, "experiment_id": Field(frozenset({"=", "!="}) | LIST_OPS, ID_TEXT),
                "creation_time": _MILLIS, "last_update_time": _MILLIS},
    keyed={TAG: _TEXT_OR_NULL},
)
"""`search_experiments`: name, experiment_id, creation/last update time and tags."""

LOGGED_MODELS = Grammar(
    name="logged models",
    entities=_RUN_ENTITIES,
    attributes={"name": _TEXT_OR_LIST, "model_id": _TEXT_OR_LIST, "status": _TEXT_OR_LIST, "model_type": _TEXT,
                "source_run_id": _TEXT, "creation_timestamp": _MILLIS, "last_updated_timestamp": _MILLIS},
    keyed={METRIC: _REAL, PARAM: _TEXT, TAG: _TEXT},
    attribute_aliases={"creation_time": "creation_timestamp", "last_updated_time": "last_updated_timestamp"},
)
"""`search_logged_models`: model attributes, params, tags and metrics (its structured ``order_by`` is checked by
`capstan.tracking.search_filter.parse_logged_model_order`)."""

REGISTERED_MODELS = Grammar(
    name="registered models",
    entities=_TAG_ENTITIES,
    attributes={"name": _TEXT_OR_LIST},
    keyed={TAG: _TEXT},
    attribute_aliases={"timestamp": "last_updated_timestamp"},
    order_attributes=frozenset({"name", "creation_timestamp", "last_updated_timestamp"}),
    operator_aliases={"<>": "!="},
    strict_identifiers=True,
    order_example="name ASC",
    indexed_order_errors=False,
)
"""`search_registered_models`: ``name`` and ``tags.<key>``; ordered by name, creation or last update time
(``timestamp`` is the last update)."""

MODEL_VERSIONS = Grammar(
    name="model versions",
    entities=_TAG_ENTITIES,
    attributes={"name": _TEXT_OR_LIST, "run_id": _TEXT_OR_LIST, "source_path": _TEXT,
                "version_number": Field(NUMERIC_OPS, INTEGER)},
    keyed={TAG: _TEXT},
    attribute_aliases={"version": "version_number"},
    order_attributes=frozenset({"name", "version_number", "creation_timestamp", "last_updated_timestamp"}),
    operator_aliases={"<>": "!="},
    strict_identifiers=True,
    order_example="name ASC",
    indexed_order_errors=False,
)
"""`search_model_versions`: ``name``, ``version_number`` (alias ``version``), ``run_id``, ``source_path`` and
``tags.<key>``; ordered by name, version number, creation or last update time."""
