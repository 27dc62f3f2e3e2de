"""Runs, experiments, logged models, registered models and versions share one LIKE converter and one page-token
codec (`capstan.tracking.search_syntax`): a pattern ending in a lone backslash is refused by every search, with
the same message, on SQLite and PostgreSQL; an escaped one matches a literal backslash everywhere."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import Engine

from capstan.errors import InvalidParameterValue
from capstan.settings import Settings
from capstan.store import registry_filter, tracking_query
from capstan.store.engine import create_store_engine
from capstan.store.registry_sql import SqlRegistryStore
from capstan.store.tracking_sql import SqlTrackingStore
from capstan.tracking import search_filter, search_syntax
from capstan.tracking.records import Param

TRAILING = "ab\\"  # 'ab\' : the escape character escapes nothing
ESCAPED = "ab\\\\"  # 'ab\\' : a literal backslash
LONE_ESCAPE = "ends with a lone escape character"


@pytest.fixture
def engine(backend_settings: Settings) -> Engine:
    return create_store_engine(backend_settings)


def _message(call: Callable[[], Any]) -> str:
    with pytest.raises(InvalidParameterValue) as info:
        call()
    return str(info.value)


def _quoted(pattern: str) -> str:
    return pattern.replace("'", "''")


@pytest.mark.parametrize("op", ["LIKE", "ILIKE"])
def test_trailing_backslash_is_refused_alike_by_runs_and_registered_models(engine: Engine, op: str) -> None:
    tracking = SqlTrackingStore(engine)
    registry = SqlRegistryStore(engine)
    exp = tracking.create_experiment("syntax", project="default")
    run = tracking.create_run(exp, run_name="r").run_id
    tracking.log_batch(run, params=[Param("p", "ab\\")])
    registry.create_registered_model("ab\\", project="default")
    tracking.create_logged_model(exp, name="ab\\")

    messages = [
        _message(lambda: tracking.search_runs([exp], filter_string=f"params.p {op} '{_quoted(TRAILING)}'")),
        _message(lambda: tracking.search_runs([exp], filter_string=f"attributes.run_name {op} '{TRAILING}'")),
        _message(lambda: tracking.search_experiments(filter_string=f"name {op} '{TRAILING}'")),
        _message(lambda: tracking.search_logged_models([exp], filter_string=f"name {op} '{TRAILING}'")),
        _message(lambda: registry.search_registered_models(filter_string=f"name {op} '{TRAILING}'")),
        _message(lambda: registry.search_model_versions(filter_string=f"name {op} '{TRAILING}'")),
    ]
    for message in messages:
        assert message.startswith("filter_string: ") and LONE_ESCAPE in message, message
        assert repr(TRAILING) in message, message

    # The escaped backslash is a literal one in both kinds of search.
    assert [r.info.run_id for r in tracking.search_runs([exp], filter_string=f"params.p {op} '{ESCAPED}'").items] \
        == [run]
    assert [m.name for m in registry.search_registered_models(filter_string=f"name {op} '{ESCAPED}'").items] \
        == ["ab\\"]


@pytest.mark.parametrize("pattern", [TRAILING, "\\", "a\\\\\\", "%\\"])
def test_every_converter_refuses_a_lone_trailing_escape(pattern: str) -> None:
    for call in (lambda: search_syntax.like_to_glob(pattern), lambda: search_syntax.like("x", pattern),
                 lambda: search_syntax.check_like_pattern(pattern),
                 lambda: registry_filter.like_to_glob(pattern)):
        assert LONE_ESCAPE in _message(call)
    column = tracking_query.runs.c.name
    for dialect in ("sqlite", "postgresql"):
        for op in ("LIKE", "ILIKE"):
            assert LONE_ESCAPE in _message(lambda: tracking_query.compare(column, op, pattern, dialect))  # noqa: B023


@pytest.mark.parametrize(("pattern", "glob"), [("a%b_", "a*b?"), ("a\\%\\_", "a%_"), ("[*?", "[[][*][?]"),
                                               ("a\\\\", "a\\"), ("\\[", "[[]")])
def test_like_to_glob(pattern: str, glob: str) -> None:
    assert search_syntax.like_to_glob(pattern) == glob


def test_one_page_token_codec_for_every_search() -> None:
    assert registry_filter.encode_page_token is search_syntax.encode_page_token
    assert registry_filter.decode_page_token is search_syntax.decode_page_token
    assert search_filter.encode_page_token is search_syntax.encode_page_token
    assert search_filter.decode_page_token is search_syntax.decode_page_token
    token = search_syntax.PageToken(42).encode()
    assert search_syntax.PageToken.decode(token) == search_syntax.PageToken(42)
    assert search_syntax.decode_page_token(token) == 42 and search_syntax.PageToken.decode(None).offset == 0
    # Strict base64: characters outside the alphabet are refused, not skipped.
    garbled = token[:4] + "!" + token[4:]
    assert base64.b64decode(garbled) == base64.b64decode(token)  # the lenient decoder would have accepted it
    assert _message(lambda: search_syntax.decode_page_token(garbled)).startswith("page_token: ")
