"""The MLflow search-filter / order_by parser, tested directly (no database)."""

from __future__ import annotations

import math

import pytest

from capstan.errors import InvalidParameterValue
from capstan.tracking.search_filter import (
    EXPERIMENTS,
    LOGGED_MODELS,
    Comparison,
    OrderKey,
    decode_page_token,
    encode_page_token,
    like,
    matches,
    parse_filter,
    parse_order_by,
)


def test_empty_filter_is_no_filter() -> None:
    assert parse_filter("") == ()
    assert parse_filter("   ") == ()
    assert parse_filter(None) == ()


@pytest.mark.parametrize(("text", "expected"), [
    ("metrics.acc > 0.5", Comparison("metric", "acc", ">", 0.5)),
    ("metric.acc>=1", Comparison("metric", "acc", ">=", 1.0)),
    ("metrics.loss < -1.5e-3", Comparison("metric", "loss", "<", -1.5e-3)),
    ("metrics.`val loss` <= 2", Comparison("metric", "val loss", "<=", 2.0)),
    ('metrics."a/b:c" != 3', Comparison("metric", "a/b:c", "!=", 3.0)),
    ("metrics.a.b = .5", Comparison("metric", "a.b", "=", 0.5)),
    ("params.lr = '0.1'", Comparison("param", "lr", "=", "0.1")),
    ('param.lr = "0.1"', Comparison("param", "lr", "=", "0.1")),
    ("parameters.opt LIKE 'ad%'", Comparison("param", "opt", "LIKE", "ad%")),
    ("tags.team ilike '%ML%'", Comparison("tag", "team", "ILIKE", "%ML%")),
    ('tags."mlflow.runName" = \'x\'', Comparison("tag", "mlflow.runName", "=", "x")),
    ("tags.t = 'it''s'", Comparison("tag", "t", "=", "it's")),
    ("tags.t IS NULL", Comparison("tag", "t", "IS NULL", None)),
    ("params.p is not null", Comparison("param", "p", "IS NOT NULL", None)),
    ("status = 'FINISHED'", Comparison("attribute", "status", "=", "FINISHED")),
    ("attributes.status != 'FAILED'", Comparison("attribute", "status", "!=", "FAILED")),
    ("attribute.run_name LIKE 'a%'", Comparison("attribute", "run_name", "LIKE", "a%")),
    ("run.user_id = 'bob'", Comparison("attribute", "user_id", "=", "bob")),
    ("`Run name` = 'x'", Comparison("attribute", "run_name", "=", "x")),
    ("attributes.start_time >= 1700000000000", Comparison("attribute", "start_time", ">=", 1700000000000)),
    ("created < 5", Comparison("attribute", "start_time", "<", 5)),
    ("end_time > 0", Comparison("attribute", "end_time", ">", 0)),
    ("lifecycle_stage = 'deleted'", Comparison("attribute", "lifecycle_stage", "=", "deleted")),
    ("artifact_uri LIKE 'mlflow-artifacts:%'", Comparison("attribute", "artifact_uri", "LIKE", "mlflow-artifacts:%")),
    ("attributes.run_id IN ('a', \"b\")", Comparison("attribute", "run_id", "IN", ("a", "b"))),
    ("run_id not in ('a')", Comparison("attribute", "run_id", "NOT IN", ("a",))),
])
def test_single_comparisons(text: str, expected: Comparison) -> None:
    assert parse_filter(text) == (expected,)


def test_conjunction_is_case_insensitive_and_keeps_order() -> None:
    parsed = parse_filter("metrics.a > 1 AND params.p = 'x' and tags.t LIKE '%y' AnD status = 'RUNNING'")
    assert [c.kind for c in parsed] == ["metric", "param", "tag", "attribute"]


def test_metric_values_are_floats_and_time_attributes_ints() -> None:
    (metric,) = parse_filter("metrics.m = 3")
    assert isinstance(metric.value, float)
    (start,) = parse_filter("start_time = 3")
    assert start.value == 3 and isinstance(start.value, int)


@pytest.mark.parametrize(("text", "named"), [
    ("metrics.a > 1 OR metrics.b > 2", "'OR'"),
    ("metrics.a > 1 metrics.b > 2", "'metrics'"),
    ("metrics.a > 'x'", "needs a number"),
    ("params.p = 1", "quoted string"),
    ("params.p > '1'", "'>'"),
    ("tags.t < 'x'", "'<'"),
    ("metrics.a LIKE '1'", "'LIKE'"),
    ("status > 'x'", "'>'"),
    ("start_time = 'x'", "needs a number"),
    ("start_time = 1.5", "needs an integer"),
    ("status IN ('a')", "'IN'"),
    ("foo = 'x'", "invalid attribute 'foo'"),
    ("bogus.x = 'y'", "invalid entity 'bogus'"),
    ("metrics.a == 1", "'=='"),
    ("metrics.a <> 1", "'<>'"),
    ("metrics.a", "comparison operator"),
    ("metrics.a >", "found the end of the string"),
    ("params.p = 'open", "unterminated quote"),
    ("metrics.a > 1 AND", "identifier"),
    ("run_id IN 'a'", "parenthesised list"),
    ("run_id IN ('a', 3)", "quoted string in the list"),
    ("> 1", "identifier"),
    ("metrics.a IS NULL", "'IS NULL'"),
    ("datasets.name = 'x'", "invalid entity 'datasets'"),
])
def test_bad_filters_name_the_token(text: str, named: str) -> None:
    with pytest.raises(InvalidParameterValue) as info:
        parse_filter(text)
    assert info.value.message.startswith("filter_string: ")
    assert named in info.value.message


def test_error_reports_position() -> None:
    with pytest.raises(InvalidParameterValue, match="position 14"):
        parse_filter("metrics.a > 1 XOR metrics.b > 2")


def test_order_by() -> None:
    assert parse_order_by(["metrics.acc DESC", "params.lr", "attributes.end_time ASC", "tags.`a b` desc",
                           "run_name", "created"]) == (
        OrderKey("metric", "acc", False), OrderKey("param", "lr", True), OrderKey("attribute", "end_time", True),
        OrderKey("tag", "a b", False), OrderKey("attribute", "run_name", True),
        OrderKey("attribute", "start_time", True))
    assert parse_order_by(None) == ()


@pytest.mark.parametrize(("clause", "named"), [
    ("metrics.acc DOWN", "'DOWN'"),
    ("metrics.acc DESC extra", "'extra'"),
    ("nope", "invalid attribute 'nope'"),
    ("", "non-empty"),
    ("metrics.", "a key after"),
])
def test_bad_order_by(clause: str, named: str) -> None:
    with pytest.raises(InvalidParameterValue) as info:
        parse_order_by([clause])
    assert info.value.message.startswith("order_by[0]: ")
    assert named in info.value.message


def test_order_by_rejects_duplicates() -> None:
    with pytest.raises(InvalidParameterValue, match="more than once"):
        parse_order_by(["metrics.a", "metrics.a DESC"])


def test_experiment_grammar() -> None:
    assert parse_filter("name LIKE 'exp%' AND tags.team = 'ml' AND creation_time > 5", EXPERIMENTS) == (
        Comparison("attribute", "name", "LIKE", "exp%"), Comparison("tag", "team", "=", "ml"),
        Comparison("attribute", "creation_time", ">", 5))
    assert parse_filter("attributes.name ILIKE 'E%'", EXPERIMENTS)[0].op == "ILIKE"
    assert parse_filter("experiment_id IN ('1', '02')", EXPERIMENTS)[0].value == ("1", "2")
    assert parse_filter("experiment_id = 7", EXPERIMENTS)[0].value == "7"
    assert parse_order_by(["name DESC", "last_update_time"], EXPERIMENTS) == (
        OrderKey("attribute", "name", False), OrderKey("attribute", "last_update_time", True))
    for bad in ("metrics.a > 1", "experiment_id LIKE '1%'", "experiment_id = 'x'", "status = 'x'"):
        with pytest.raises(InvalidParameterValue):
            parse_filter(bad, EXPERIMENTS)
    with pytest.raises(InvalidParameterValue, match="cannot order"):
        parse_order_by(["tags.x"], EXPERIMENTS)


def test_logged_model_grammar() -> None:
    parsed = parse_filter("name = 'm' AND params.alpha = '1' AND creation_time > 3 AND status IN ('READY')",
                          LOGGED_MODELS)
    assert parsed[2] == Comparison("attribute", "creation_timestamp", ">", 3)
    with pytest.raises(InvalidParameterValue):
        parse_filter("params.alpha IS NULL", LOGGED_MODELS)


def test_page_tokens_round_trip_and_reject_garbage() -> None:
    assert decode_page_token(None) == 0
    assert decode_page_token(encode_page_token(1234)) == 1234
    for bad in ("nope!", "e30=", encode_page_token(-1), "W10="):  # "{}" and "[]" decode but hold no offset
        with pytest.raises(InvalidParameterValue, match="page_token"):
            decode_page_token(bad)


def test_like_semantics() -> None:
    assert like("abc", "a%")
    assert not like("Abc", "a%")
    assert like("Abc", "a%", ignore_case=True)
    assert like("a_c", "a\\_c")
    assert not like("abc", "a\\_c")
    assert like("a.c", "a_c")
    assert like("50%", "50\\%")
    assert not like("abc", "b%")


def test_matches_in_memory() -> None:
    gt = Comparison("metric", "m", ">", 1.0)
    assert matches(gt, 2.0) and not matches(gt, 0.5) and not matches(gt, None)
    assert not matches(gt, math.nan)
    assert matches(Comparison("metric", "m", "!=", 1.0), math.nan)
    assert matches(Comparison("tag", "t", "IS NULL", None), None)
    assert matches(Comparison("attribute", "status", "IN", ("READY",)), "READY")
    assert matches(Comparison("attribute", "status", "NOT IN", ("READY",)), "FAILED")
    assert matches(Comparison("param", "p", "ILIKE", "A%"), "abc")
    assert matches(Comparison("attribute", "creation_timestamp", "<=", 5), 5)
