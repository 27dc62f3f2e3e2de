"""Every search is parsed by one tokenizer and parser (`capstan.tracking.search_parser`); what each accepts is its
`Grammar` profile. These tests pin the registry's language (its extras over the tracking searches and what it still
refuses) and check that every field a registry profile admits is one the SQL builder can compare and order by."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Engine

from capstan.errors import InvalidParameterValue
from capstan.settings import Settings
from capstan.store import registry_filter
from capstan.store.engine import create_store_engine
from capstan.store.registry_sql import SqlRegistryStore
from capstan.tracking import search_filter, search_parser
from capstan.tracking.search_grammar import (
    EXPERIMENTS,
    LIST_OPS,
    LOGGED_MODELS,
    MILLIS,
    MODEL_VERSIONS,
    NULL_OPS,
    REAL,
    REGISTERED_MODELS,
    RUNS,
    Grammar,
)

ALL = (RUNS, EXPERIMENTS, LOGGED_MODELS, REGISTERED_MODELS, MODEL_VERSIONS)


def test_one_parser_and_one_result_type_for_every_search() -> None:
    assert registry_filter.Comparison is search_parser.Comparison is search_filter.Comparison
    assert search_filter.parse_filter is search_parser.parse_filter
    assert registry_filter.MODEL_VERSIONS is search_filter.MODEL_VERSIONS is MODEL_VERSIONS
    for grammar in ALL:
        assert isinstance(grammar, Grammar)
        assert set(grammar.entities.values()) <= {"attribute", *grammar.keyed}, grammar.name
        assert set(grammar.attribute_aliases.values()) <= set(grammar.attributes) | grammar.orderable, grammar.name


@pytest.mark.parametrize(("text", "grammar", "expected"), [
    ("name <> 'x'", REGISTERED_MODELS, [("attribute", "name", "!=", "x")]),
    ("tags.x <> 'a'", MODEL_VERSIONS, [("tag", "x", "!=", "a")]),
    ("attribute.version <> 3", MODEL_VERSIONS, [("attribute", "version_number", "!=", 3)]),
    ("version = ' -5 '", MODEL_VERSIONS, [("attribute", "version_number", "=", -5)]),
    ("version_number >= -0", MODEL_VERSIONS, [("attribute", "version_number", ">=", 0)]),
    ("TAGS.x = 'y' and `name` ILIKE 'a%'", REGISTERED_MODELS, [("tag", "x", "=", "y"),
                                                               ("attribute", "name", "ILIKE", "a%")]),
    ("run_id NOT IN ('a', \"b\")", MODEL_VERSIONS, [("attribute", "run_id", "NOT IN", ("a", "b"))]),
    ("tags.`k k` LIKE '%' AND source_path = 's3://b'", MODEL_VERSIONS, [("tag", "k k", "LIKE", "%"),
                                                                        ("attribute", "source_path", "=", "s3://b")]),
])
def test_registry_language(text: str, grammar: Grammar, expected: list[tuple[str, str, str, Any]]) -> None:
    assert [(c.kind, c.key, c.op, c.value) for c in registry_filter.parse_filter(text, grammar)] == expected


@pytest.mark.parametrize("text", [
    "tags.`` = 'x'",  # an empty key
    '"name" = \'x\'',  # only back-ticks quote a whole name
    "`tags`.x = 'a'",
    "`a``b` = 'x'",  # no doubled back-tick inside a name
    'tags."a""b" = \'x\'',
    "version = '+5'", "version = +5", "version = 1e3", "version = '1e3'", "version = 1.5",
    "name NOT LIKE 'x'", "name NOT ILIKE 'x'", "tags.x IS NULL", "name IS NOT NULL",
    "version_number IN ('1')", "source_path IN ('a')", "tags.x IN ('a')", "name = 5", "name > 'a'",
    "stage = 'None'", "metrics.acc > 1",
])
def test_registry_refusals(text: str) -> None:
    for grammar in (REGISTERED_MODELS, MODEL_VERSIONS):
        with pytest.raises(InvalidParameterValue, match=r"^filter_string: "):
            registry_filter.parse_filter(text, grammar)


def test_profiles_differ_only_where_described() -> None:
    with pytest.raises(InvalidParameterValue, match="'<>'"):
        search_filter.parse_filter("tags.x <> 'a'", EXPERIMENTS)
    assert search_filter.parse_filter('"name" = \'x\'', EXPERIMENTS)[0].key == "name"
    assert search_filter.parse_filter("tags.x IS NULL", EXPERIMENTS)[0].op == "IS NULL"
    with pytest.raises(InvalidParameterValue, match="version_number"):
        registry_filter.parse_filter("version_number = 1", REGISTERED_MODELS)
    assert registry_filter.parse_order_by_list(["timestamp DESC"], REGISTERED_MODELS) == \
        [registry_filter.OrderBy("last_updated_timestamp", False)]
    with pytest.raises(InvalidParameterValue, match=r"^order_by: .*more than once"):
        registry_filter.parse_order_by_list(["version", "version_number DESC"], MODEL_VERSIONS)
    with pytest.raises(InvalidParameterValue, match=r"^order_by\[1\]: .*more than once"):
        search_filter.parse_order_by(["name", "name DESC"], EXPERIMENTS)


def _sample(grammar: Grammar, ident: str, op: str) -> str:
    kind = "tag" if ident.startswith("tags.") else "attribute"
    field = grammar.field_of(kind, ident.removeprefix("tags."))
    if op in NULL_OPS:
        return f"{ident} {op}"
    if op in LIST_OPS:
        return f"{ident} {op} ('1', '2')"
    literal = "1" if field.value in (MILLIS, REAL) else "'1'"
    return f"{ident} {op} {literal}"


@pytest.fixture
def engine(backend_settings: Settings) -> Engine:
    return create_store_engine(backend_settings)


def test_every_registry_field_and_operator_runs(engine: Engine) -> None:
    """Whatever a registry profile admits, the SQL builder compares and orders by, on SQLite and PostgreSQL."""
    store = SqlRegistryStore(engine)
    store.create_registered_model("m", project="default", tags={"t": "1"})
    store.create_model_version("m", source="s3://bucket/model", tags={"t": "1"})
    searches = ((REGISTERED_MODELS, store.search_registered_models), (MODEL_VERSIONS, store.search_model_versions))
    for grammar, search in searches:
        fields = list(grammar.attributes.items()) + [("tags.t", spec) for spec in grammar.keyed.values()]
        for ident, spec in fields:
            for op in sorted(spec.ops):
                search(filter_string=_sample(grammar, ident, op))
        for key in sorted(grammar.orderable | set(grammar.attribute_aliases)):
            assert search(order_by=[f"{key} DESC"]).items
