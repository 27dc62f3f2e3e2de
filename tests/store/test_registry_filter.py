"""The registry's pure filter/order-by parser and input checks."""

from __future__ import annotations

import re
import sqlite3

import pytest
from hypothesis import given
from hypothesis import strategies as st

from capstan.errors import InvalidParameterValue
from capstan.store import registry_checks as checks
from capstan.store.registry_filter import (
    Comparison,
    OrderBy,
    decode_page_token,
    encode_page_token,
    like_to_glob,
    parse_filter,
    parse_order_by,
)


def test_parse_filter_terms() -> None:
    assert parse_filter("") == () and parse_filter("   ") == () and parse_filter(None) == ()
    assert parse_filter("name = 'my model'") == (Comparison("attribute", "name", "=", "my model"),)
    assert parse_filter("name='it''s'") == (Comparison("attribute", "name", "=", "it's"),)
    assert parse_filter('name != "x"') == (Comparison("attribute", "name", "!=", "x"),)
    assert parse_filter("name <> 'x'")[0].op == "!="
    assert parse_filter("version_number >= 3 and run_id IN ('a', \"b\")") == (
        Comparison("attribute", "version_number", ">=", 3),
        Comparison("attribute", "run_id", "IN", ("a", "b")),
    )
    assert parse_filter("name not in ('a')") == (Comparison("attribute", "name", "NOT IN", ("a",)),)
    assert parse_filter("name ilike '%A%' AND name Like 'b%'") == (
        Comparison("attribute", "name", "ILIKE", "%A%"), Comparison("attribute", "name", "LIKE", "b%"))
    assert parse_filter("tags.mlflow.source.name = 'x'") == (Comparison("tag", "mlflow.source.name", "=", "x"),)
    assert parse_filter("tags.`key with space` = 'x'") == (Comparison("tag", "key with space", "=", "x"),)
    assert parse_filter('tag."quoted" = \'x\'') == (Comparison("tag", "quoted", "=", "x"),)
    assert parse_filter("attribute.name = 'x'") == (Comparison("attribute", "name", "=", "x"),)
    assert parse_filter("`name` = 'x'") == (Comparison("attribute", "name", "=", "x"),)
    assert parse_filter("version = -1")[0].value == -1
    assert parse_filter("name LIKE 'a\\_b'")[0].value == "a\\_b"  # backslashes are kept for LIKE


@pytest.mark.parametrize("bad", [
    "name", "name =", "= 'x'", "name = 'x' AND", "name = 'x' OR name = 'y'", "name = 'x' name = 'y'",
    "name = 'unterminated", "name ~ 'x'", "name IN 'x'", "name IN ('a' 'b')", "name IN (1)", "name = 1.5",
    "metrics.acc > 1", "tags. = 'x'", "name = x", "name NOT = 'x'", "name IN ('a',", "3abc = 'x'",
])
def test_parse_filter_rejects_bad_input(bad: str) -> None:
    with pytest.raises(InvalidParameterValue, match=r"^filter_string: "):
        parse_filter(bad)


def test_parse_order_by() -> None:
    assert parse_order_by("name") == OrderBy("name", True)
    assert parse_order_by("version_number DESC") == OrderBy("version_number", False)
    assert parse_order_by("  `creation_timestamp`   asc ") == OrderBy("creation_timestamp", True)
    assert parse_order_by("attribute.name desc") == OrderBy("name", False)
    for bad in ("", "name UP", "name ASC extra", "tags.x ASC", "'name'"):
        with pytest.raises(InvalidParameterValue, match=r"^order_by: "):
            parse_order_by(bad)


def test_page_tokens_round_trip_and_reject_garbage() -> None:
    assert decode_page_token(None) == 0 and decode_page_token("") == 0
    assert decode_page_token(encode_page_token(300)) == 300
    for bad in ("###", "bm90IGpzb24=", "W10=", "eyJvZmZzZXQiOiAtMX0=", "eyJvZmZzZXQiOiAiMyJ9"):
        with pytest.raises(InvalidParameterValue, match=r"^page_token: "):
            decode_page_token(bad)


def _like_regex(pattern: str) -> re.Pattern[str]:
    out, chars = [], iter(pattern)
    for ch in chars:
        if ch == "\\":
            out.append(re.escape(next(chars)))
        else:
            out.append({"%": ".*", "_": "."}.get(ch) or re.escape(ch))
    return re.compile("".join(out), re.DOTALL)


_ALPHABET = "aA_%*?[]\\x"


@given(st.text(_ALPHABET, max_size=6), st.text(_ALPHABET, max_size=6))
def test_like_to_glob_matches_like_semantics(value: str, pattern: str) -> None:
    if re.search(r"(?<!\\)(\\\\)*\\$", pattern):
        with pytest.raises(InvalidParameterValue):
            like_to_glob(pattern)
        return
    with sqlite3.connect(":memory:") as conn:
        got = conn.execute("SELECT ? GLOB ?", (value, like_to_glob(pattern))).fetchone()[0]
    assert bool(got) == bool(_like_regex(pattern).fullmatch(value)), (value, pattern, like_to_glob(pattern))


def test_checks() -> None:
    assert checks.model_name("My Model-1.0") == "My Model-1.0"
    for bad in ("", "  ", "a/b", "a:b", ".", "..", "x" * 257, None):
        with pytest.raises(InvalidParameterValue, match=r"^name: "):
            checks.model_name(bad)
    assert checks.tag_key("mlflow.source/name: x") == "mlflow.source/name: x"
    for bad_key in ("", "bad!", "a//b", "../x", "k" * 251):
        with pytest.raises(InvalidParameterValue, match=r"^key: "):
            checks.tag_key(bad_key)
    with pytest.raises(InvalidParameterValue, match=r"^value: "):
        checks.tag("k", None)
    assert checks.version(3) == 3 and checks.version(" 7 ") == 7
    for bad_version in (0, -1, True, "x", 1.5, None):
        with pytest.raises(InvalidParameterValue, match=r"^version: "):
            checks.version(bad_version)
    assert checks.alias("champion-2_b", reserved_check=True) == "champion-2_b"
    assert checks.alias("latest") == "latest"  # reading through 'latest' is allowed
    assert checks.alias("v1x", reserved_check=True) == "v1x"
    for bad_alias in ("latest", "LaTeSt", "v1", "V12", "a.b", "", "a" * 256):
        with pytest.raises(InvalidParameterValue, match=r"^alias: "):
            checks.alias(bad_alias, reserved_check=True)
    assert checks.stage("PRODUCTION") == "Production" and checks.stage("none") == "None"
    with pytest.raises(InvalidParameterValue, match=r"^stage: "):
        checks.stage("Deleted_Internal")
