"""Hostile input for every search query builder, on SQLite and PostgreSQL: complexity limits, out-of-range and
non-finite numbers, awkward string literals, odd shapes. Each case either answers correctly or raises the typed
`InvalidParameterValue` (a 400 on the wire); nothing may crash the database driver or leak another exception."""

from __future__ import annotations

import base64
import contextlib
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from sqlalchemy import Engine, insert, select

from capstan.errors import InvalidParameterValue
from capstan.settings import Settings
from capstan.store import registry_filter as rf
from capstan.store import schema
from capstan.store.engine import create_store_engine
from capstan.store.registry_sql import SqlRegistryStore
from capstan.store.tracking_query import run_search_query
from capstan.store.tracking_sql import SqlTrackingStore
from capstan.tracking import search_filter as sf
from capstan.tracking.records import ACTIVE, Metric, Param, RunTag
from capstan.tracking.search_filter import DatasetFilter, LoggedModelOrder
from capstan.tracking.search_limits import (
    MAX_FILTER_LENGTH,
    MAX_FILTER_LIST_VALUES,
    MAX_FILTER_TERMS,
    MAX_ORDER_BY_TERMS,
    MAX_SEARCH_DATASETS,
)
from helpers.clock import FakeClock

PG_URL = os.environ.get("CAPSTAN_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
"""The same server as ``tests/conftest.py`` uses (a module-scoped fixture cannot use its function-scoped one)."""

SPECIAL = ("it's", "back\\slash", "50%_off")
"""The value of param ``special`` on runs 0, 1 and 2."""


@dataclass
class World:
    engine: Engine
    tracking: SqlTrackingStore
    registry: SqlRegistryStore
    experiment: str
    runs: list[str]
    models: list[str]

    def search(self, filter_string: str = "", order_by: list[str] | None = None) -> list[str]:
        page = self.tracking.search_runs([self.experiment], filter_string=filter_string, order_by=order_by or [])
        return [run.info.run_id for run in page.items]


def _settings(kind: str, home: Path) -> Iterator[Settings]:
    if kind == "sqlite":
        yield Settings.for_home(home)
        return
    raw = PG_URL.replace("postgresql+psycopg", "postgresql")
    try:
        psycopg.connect(raw, connect_timeout=3).close()
    except psycopg.Error as exc:
        pytest.skip(f"PostgreSQL not reachable at {PG_URL}: {exc}")
    schema_name = f"capstan_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(raw, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema_name}"')
    yield Settings.for_home(home, db_url=f"{PG_URL}?options=-csearch_path%3D{schema_name}")
    with psycopg.connect(raw, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA "{schema_name}" CASCADE')


def _populate(engine: Engine) -> World:
    clock = FakeClock(1_700_000_000_000, step=1)  # strictly increasing: orderings stay deterministic
    tracking = SqlTrackingStore(engine, clock=clock)
    registry = SqlRegistryStore(engine, clock=clock)
    exp = tracking.create_experiment("hostile", project="default", tags={"note": "it's ✓"})
    runs = []
    for i in range(3):
        run = tracking.create_run(exp, start_time=1000 * (i + 1), run_name=f"run-{i}",
                                  tags=[RunTag("ключ", "значение ✓" if i == 0 else "other")]).run_id
        metrics = [Metric(f"m{k}", 1.0, 1, 0) for k in range(15)] + [Metric(f"m{k}", float(i), 1, 0)
                                                                    for k in range(15, 20)]
        metrics.append(Metric("nanm", float("nan") if i == 1 else float(i), 1, 0))
        tracking.log_batch(run, metrics=metrics, params=[Param(f"p{k}", "v") for k in range(99)]
                           + [Param("special", SPECIAL[i])])
        runs.append(run)
    registry.create_registered_model("hostile-model", project="default", tags={"note": "50%_off"})
    for _ in range(3):
        registry.create_model_version("hostile-model", source="s3://bucket/model")
    models = [tracking.create_logged_model(exp, name=f"lm-{i}").model_id for i in range(3)]
    # Metric points linked to logged models: acc on dataset "eval" (two digests) and "train".
    points = [
        (models[0], "acc", 0.5, 10, "eval", "d1"), (models[0], "acc", 0.9, 20, "train", "t1"),
        (models[1], "acc", 0.7, 10, "eval", "d1"), (models[1], "acc", 0.1, 30, "eval", "d2"),
        (models[2], "loss", 0.3, 10, "eval", "d1"),
    ]
    with engine.begin() as conn:
        conn.execute(insert(schema.logged_model_metrics), [
            {"model_id": m, "run_uuid": runs[0], "key": key, "step": 0, "timestamp": ts, "value": value,
             "is_nan": False, "dataset_name": name, "dataset_digest": digest}
            for m, key, value, ts, name, digest in points])
    return World(engine, tracking, registry, exp, runs, models)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    gen = _settings(request.param, tmp_path_factory.mktemp("hostile") / "home")
    engine = create_store_engine(next(gen))
    try:
        yield _populate(engine)
    finally:
        engine.dispose()
        next(gen, None)


def _refused(call: Callable[[], Any], *fragments: str) -> str:
    with pytest.raises(InvalidParameterValue) as info:
        call()
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, message
    return message


# ---------------------------------------------------------------------------------------------- complexity limits


def test_order_by_at_the_limit_uses_every_key(world: World) -> None:
    keys = [f"metrics.m{k}" for k in range(MAX_ORDER_BY_TERMS - 1)] + ["metrics.m15 DESC"]
    assert len(keys) == MAX_ORDER_BY_TERMS
    # m0..m14 tie on every run, so only the last key decides.
    assert world.search(order_by=keys) == world.runs[::-1]
    params_and_tags = [f"params.p{k}" for k in range(MAX_ORDER_BY_TERMS - 2)] + ["tags.`ключ`", "params.special"]
    # 'other' sorts before 'значение' (code point order); the two 'other' runs then by '50%_off' < 'back\\slash'.
    assert world.search(order_by=params_and_tags) == [world.runs[2], world.runs[1], world.runs[0]]
    # NaN sorts after numbers, in both directions.
    assert world.search(order_by=["metrics.nanm DESC"]) == [world.runs[2], world.runs[0], world.runs[1]]
    assert world.search(order_by=["metrics.nanm ASC"]) == [world.runs[0], world.runs[2], world.runs[1]]


@pytest.mark.parametrize("count", [MAX_ORDER_BY_TERMS + 1, 31, 63, 64, 199, 500, 1000])
def test_order_by_over_the_limit_is_refused(world: World, count: int) -> None:
    keys = [f"metrics.m{k}" for k in range(count)]
    _refused(lambda: world.search(order_by=keys), f"order_by has {count} terms",
             f"at most {MAX_ORDER_BY_TERMS} are allowed")
    _refused(lambda: world.tracking.search_experiments(order_by=["name"] * count), f"at most {MAX_ORDER_BY_TERMS}")
    _refused(lambda: world.registry.search_registered_models(order_by=["name"] * count),
             f"order_by has {count} terms")
    _refused(lambda: world.registry.search_model_versions(order_by=["name"] * count), f"order_by has {count} terms")
    orders = [LoggedModelOrder(f"metrics.k{k}") for k in range(count)]
    _refused(lambda: world.tracking.search_logged_models([world.experiment], order_by=orders),
             f"order_by has {count} terms")


def test_filter_terms_at_the_limit(world: World) -> None:
    params_only = " AND ".join([*(f"params.p{k} = 'v'" for k in range(MAX_FILTER_TERMS - 1)),
                                "params.special = 'it''s'"])
    assert world.search(params_only) == [world.runs[0]]
    metrics_only = " AND ".join(f"metrics.m{k % 20} >= -{k}" for k in range(MAX_FILTER_TERMS))
    assert world.search(metrics_only) == world.runs[::-1]
    tags_only = " AND ".join(["tags.`ключ` LIKE '%'"] * MAX_FILTER_TERMS)
    assert len(world.search(tags_only)) == 3
    names = " AND ".join(["name LIKE 'hostile%'"] * MAX_FILTER_TERMS)
    assert [m.name for m in world.registry.search_registered_models(filter_string=names).items] == ["hostile-model"]
    assert len(world.registry.search_model_versions(filter_string=names).items) == 3
    exps = " AND ".join(["name = 'hostile'"] * MAX_FILTER_TERMS)
    assert [e.name for e in world.tracking.search_experiments(filter_string=exps).items] == ["hostile"]


@pytest.mark.parametrize("count", [MAX_FILTER_TERMS + 1, 990, 1000, 3000])
def test_filter_terms_over_the_limit_are_refused(world: World, count: int) -> None:
    limit = f"at most {MAX_FILTER_TERMS} are allowed"
    _refused(lambda: world.search(" AND ".join(f"params.p{k % 99} = 'v'" for k in range(count))), limit)
    _refused(lambda: world.search(" AND ".join(f"metrics.m{k % 20} > 0" for k in range(count))), limit)
    _refused(lambda: world.tracking.search_experiments(filter_string=" AND ".join(["name = 'x'"] * count)), limit)
    _refused(lambda: world.tracking.search_logged_models(
        [world.experiment], filter_string=" AND ".join(["metrics.acc > 0"] * count)), limit)
    _refused(lambda: world.registry.search_registered_models(
        filter_string=" AND ".join(["tags.note = 'x'"] * count)), limit)
    _refused(lambda: world.registry.search_model_versions(filter_string=" AND ".join(["version = 1"] * count)),
             limit)


def test_in_lists_and_length_are_bounded(world: World) -> None:
    many = ", ".join(f"'{uuid.uuid4().hex}'" for _ in range(MAX_FILTER_LIST_VALUES - 1))
    assert world.search(f"attributes.run_id IN ({many}, '{world.runs[1]}')") == [world.runs[1]]
    assert world.registry.search_model_versions(filter_string=f"name IN ({many}, 'hostile-model')").items
    too_many = f"attributes.run_id IN ({many}, 'a', 'b')"
    _refused(lambda: world.search(too_many), f"at most {MAX_FILTER_LIST_VALUES}")
    _refused(lambda: world.registry.search_model_versions(filter_string=f"name IN ({many}, 'a', 'b')"),
             f"at most {MAX_FILTER_LIST_VALUES}")
    split = f"attributes.run_id IN ({many}) AND attributes.run_id NOT IN ('a', 'b')"
    _refused(lambda: world.search(split), "IN lists")
    long_text = "params.special = '" + "x" * MAX_FILTER_LENGTH + "'"
    _refused(lambda: world.search(long_text), f"at most {MAX_FILTER_LENGTH}")
    _refused(lambda: world.registry.search_registered_models(filter_string=long_text.replace("params.", "tags.")),
             f"at most {MAX_FILTER_LENGTH}")


def test_the_sql_shape_is_safe_beyond_the_limits(world: World) -> None:
    """Below the parser: the SELECT itself stays valid with far more sort keys and conditions than allowed (the
    old shape, one LEFT JOIN per key, crashed SQLite at 31 keys)."""
    with world.engine.connect() as conn:
        key_ids = {key: key_id for key, key_id in conn.execute(
            select(schema.metric_keys.c.key, schema.metric_keys.c.id)).tuples()}
        order = [sf.OrderKey(sf.METRIC, f"m{k % 20}", k % 2 == 0) for k in range(64)]
        order += [sf.OrderKey(sf.PARAM, f"p{k}") for k in range(64)] + [sf.OrderKey(sf.TAG, "ключ")]
        filters = [sf.Comparison(sf.METRIC, f"m{k % 20}", ">=", 0.0) for k in range(200)]
        filters += [sf.Comparison(sf.PARAM, f"p{k % 99}", "=", "v") for k in range(200)]
        query = run_search_query(experiment_ids=[int(world.experiment)], stages=[ACTIVE], filters=filters,
                                 order=order, key_ids=key_ids, dialect=world.engine.dialect.name, limit=10, offset=0)
        assert query is not None
        assert len(conn.execute(query).all()) == 3


# ---------------------------------------------------------------------------------------------- numbers


@pytest.mark.parametrize(("filter_string", "fragment"), [
    ("attributes.start_time > 9223372036854775808", "start_time"),
    ("attributes.start_time > -9223372036854775809", "start_time"),
    ("attributes.end_time = 99999999999999999999999999", "end_time"),
    ("attributes.start_time > 1e26", "start_time"),
    ("attributes.start_time > 1.5", "start_time"),
    ("metrics.m0 > 1e400", "metrics.m0"),
    ("metrics.m0 < -1e999", "metrics.m0"),
    ("metrics.m0 > NaN", "metrics.m0"),
    ("metrics.m0 > nan", "metrics.m0"),
    ("metrics.m0 > inf", "metrics.m0"),
    ("metrics.m0 > Infinity", "metrics.m0"),
    ("metrics.m0 > -Infinity", "metrics.m0"),
    ("metrics.m0 > 'NaN'", "metrics.m0"),
    ("metrics.m0 > \u0661", "metrics.m0"),
])
def test_run_numbers_out_of_range_are_refused(world: World, filter_string: str, fragment: str) -> None:
    _refused(lambda: world.search(filter_string), "filter_string", fragment)


def test_run_numbers_in_range_work(world: World) -> None:
    assert world.search("attributes.start_time < 9223372036854775807") == world.runs[::-1]
    assert world.search("attributes.start_time > -9223372036854775808 AND attributes.start_time >= 2000") == \
        world.runs[:0:-1]
    assert world.search("metrics.m15 > 1e26") == []
    assert world.search("metrics.m15 < 1.7976931348623157e308 AND metrics.m15 > -1e300") == world.runs[::-1]
    assert world.search("metrics.m15 >= 1E0") == world.runs[:0:-1]


@pytest.mark.parametrize(("call", "fragment"), [
    (lambda w: w.tracking.search_experiments(filter_string="creation_time > 9223372036854775808"), "creation_time"),
    (lambda w: w.tracking.search_experiments(filter_string="last_update_time < 1e26"), "last_update_time"),
    (lambda w: w.tracking.search_experiments(filter_string="experiment_id = '99999999999999999999'"),
     "experiment_id"),
    (lambda w: w.tracking.search_experiments(filter_string="experiment_id = 99999999999999999999"), "experiment_id"),
    (lambda w: w.tracking.search_experiments(filter_string="experiment_id IN ('1', '9223372036854775808')"),
     "experiment_id"),
    (lambda w: w.tracking.search_logged_models([w.experiment], filter_string="creation_timestamp > 1e26"),
     "creation_timestamp"),
    (lambda w: w.tracking.search_logged_models([w.experiment],
                                               filter_string="last_updated_timestamp = 9223372036854775808"),
     "last_updated_timestamp"),
    (lambda w: w.tracking.search_logged_models([w.experiment], filter_string="metrics.acc > 1e309"), "metrics.acc"),
    (lambda w: w.registry.search_model_versions(filter_string="version_number = 9223372036854775808"),
     "9223372036854775808"),
    (lambda w: w.registry.search_model_versions(filter_string="version_number > -9223372036854775809"),
     "out of range"),
    (lambda w: w.registry.search_model_versions(filter_string="version = '9223372036854775808'"), "version"),
    (lambda w: w.registry.search_model_versions(filter_string="version = 1e26"), "filter_string"),
    (lambda w: w.registry.search_model_versions(filter_string="version = 1.5"), "filter_string"),
    (lambda w: w.registry.search_model_versions(filter_string="version = 'NaN'"), "version"),
    (lambda w: w.registry.search_model_versions(filter_string="version = \u0661"), "filter_string"),
])
def test_other_grammars_refuse_numbers_out_of_range(world: World, call: Callable[[World], Any],
                                                    fragment: str) -> None:
    _refused(lambda: call(world), fragment)


def test_other_grammars_accept_the_int64_edges(world: World) -> None:
    assert world.tracking.search_experiments(filter_string="creation_time < 9223372036854775807").items
    assert not world.tracking.search_experiments(filter_string="experiment_id = '9223372036854775807'").items
    assert len(world.registry.search_model_versions(filter_string="version_number < 9223372036854775807").items) == 3
    assert not world.registry.search_model_versions(filter_string="version = '-9223372036854775808'").items


def _token(offset: str) -> str:
    return base64.b64encode(f'{{"offset":{offset}}}'.encode()).decode()


@pytest.mark.parametrize("token", [
    _token("18446744073709551615"), _token("9223372036854775808"), _token("9" * 30), _token("-1"),
    _token("1e3"), _token('"1"'), "\ud800", "%%%", "",
])
def test_page_tokens_out_of_range_are_refused(world: World, token: str) -> None:
    if not token:
        assert len(world.tracking.search_runs([world.experiment], page_token=token).items) == 3
        return
    _refused(lambda: world.tracking.search_runs([world.experiment], page_token=token), "page_token")
    _refused(lambda: world.registry.search_model_versions(page_token=token), "page_token")


# ---------------------------------------------------------------------------------------------- strings


def test_string_literals_match_exactly(world: World) -> None:
    assert world.search("params.special = 'it''s'") == [world.runs[0]]
    assert world.search('params.special = "it\'s"') == [world.runs[0]]
    assert world.search("params.special = 'back\\slash'") == [world.runs[1]]
    assert world.search("params.special LIKE 'back\\\\%'") == [world.runs[1]]  # \\ is one literal backslash
    assert world.search("params.special LIKE '50\\%\\_off'") == [world.runs[2]]  # escaped wildcards
    assert world.search("params.special LIKE '50%'") == [world.runs[2]]
    assert world.search("params.special LIKE '__\\%%'") == [world.runs[2]]
    assert world.search("params.special LIKE '%*%'") == []  # GLOB metacharacters are plain on SQLite too
    assert world.search("params.special LIKE '[ib]%'") == []
    assert world.search("params.special ILIKE 'IT''S'") == [world.runs[0]]
    assert world.search("tags.`ключ` = 'значение ✓'") == [world.runs[0]]
    assert world.search("tags.\"ключ\" ILIKE 'знач%'") == [world.runs[0]]
    assert world.search("tags.`no such tag` = 'x'") == []
    assert world.search("metrics.`no such metric` > 0") == []
    assert world.search("params.special IS NULL") == []
    assert world.search("params.unknown IS NULL") == world.runs[::-1]
    assert world.search(f"attributes.run_id IN ('{world.runs[0]}', 'it''s')") == [world.runs[0]]
    assert [e.name for e in world.tracking.search_experiments(filter_string="tags.note = 'it''s ✓'").items] == \
        ["hostile"]
    assert [m.name for m in world.registry.search_registered_models(
        filter_string="tags.note LIKE '50\\%\\_%'").items] == ["hostile-model"]
    assert not world.registry.search_registered_models(filter_string="tags.note LIKE '50\\%\\_x'").items
    assert not world.registry.search_registered_models(filter_string="name = 'it''s \\ %'").items


@pytest.mark.parametrize("text", [
    "params.special = 'a\x00b'",
    "params.special = '\ud800'",
    "tags.`a\x00` = 'x'",
    "params.special LIKE 'ends with a backslash\\'",
    "params.special ILIKE '\\'",
    "params.special = 'unterminated",
    "params.special = \"unterminated",
    "tags.`unterminated = 'x'",
])
def test_hostile_string_literals_are_refused(world: World, text: str) -> None:
    _refused(lambda: world.search(text), "filter_string")
    registry_text = text.replace("params.special", "name").replace("params.", "tags.")
    _refused(lambda: world.registry.search_registered_models(filter_string=registry_text), "filter_string")
    _refused(lambda: world.tracking.search_experiments(filter_string=text.replace("params.special", "name")),
             "filter_string")


@pytest.mark.parametrize("text", ["", "   ", "\n\t"])
def test_empty_filters_match_everything(world: World, text: str) -> None:
    assert len(world.search(text)) == 3
    assert len(world.registry.search_model_versions(filter_string=text).items) == 3
    assert len(world.tracking.search_logged_models([world.experiment], filter_string=text).items) == 3


@pytest.mark.parametrize("text", [
    "((((metrics.m0 > 0))))",
    "(" * 5000 + "metrics.m0 > 0" + ")" * 5000,
    "metrics.m0 > 0 AND (params.p0 = 'v' OR params.p1 = 'v')",
    "metrics.m0 > 0 OR metrics.m1 > 0",
    "NOT metrics.m0 > 0",
    "metrics.m0 > 0 AND" * 3000,
    "metrics.m0 >",
    "nosuch.key = 'x'",
    "attributes.nosuch = 'x'",
    "metrics. = 1",
    "metrics.m0 >>> 1",
    "metrics.m0 = = 1",
    "params.p0 = ('a', 'b')",
    "attributes.run_id IN ()",
    "attributes.run_id IN ('a',)",
    "attributes.run_id IN ('a' 'b')",
    "; DROP TABLE runs; --",
    "params.p0 = 'v'; DELETE FROM runs",
    "\x00",
])
def test_malformed_filters_are_refused(world: World, text: str) -> None:
    _refused(lambda: world.search(text), "filter_string")
    _refused(lambda: world.registry.search_model_versions(filter_string=text.replace("metrics.m0", "version")),
             "filter_string")
    assert len(world.search()) == 3  # and nothing was lost


@pytest.mark.parametrize("order_by", [
    "metrics.m0",  # a string where a list belongs
    ["metrics.m0", "metrics.m0 DESC"],
    ["metrics.m0 SIDEWAYS"],
    ["nosuch.key"],
    ["metrics.m0\x00"],
    [""],
    ["metrics." + "x" * 5000],
])
def test_bad_order_by_is_refused(world: World, order_by: Any) -> None:
    _refused(lambda: world.tracking.search_runs([world.experiment], order_by=order_by), "order_by")
    registry_order = order_by if isinstance(order_by, str) else [o.replace("metrics.m0", "name") for o in order_by]
    _refused(lambda: world.registry.search_registered_models(order_by=registry_order), "order_by")


# ---------------------------------------------------------------------------------------------- logged models


def _model_names(world: World, **kwargs: Any) -> list[str]:
    page = world.tracking.search_logged_models([world.experiment], **kwargs)
    return [m.name for m in page.items]


def test_logged_models_order_by_metrics_per_dataset(world: World) -> None:
    # Default: newest first.
    assert _model_names(world) == ["lm-2", "lm-1", "lm-0"]
    # The latest acc point of any dataset: lm-0 0.9 (ts 20), lm-1 0.1 (ts 30); lm-2 has none and sorts last.
    assert _model_names(world, order_by=[LoggedModelOrder("metrics.acc", True)]) == ["lm-1", "lm-0", "lm-2"]
    assert _model_names(world, order_by=[LoggedModelOrder("metrics.acc", False)]) == ["lm-0", "lm-1", "lm-2"]
    # On "eval" only: lm-0 0.5, lm-1 0.1; on eval/d1 only: lm-0 0.5, lm-1 0.7.
    assert _model_names(world, order_by=[LoggedModelOrder("metrics.acc", False, "eval")]) == ["lm-0", "lm-1", "lm-2"]
    assert _model_names(world, order_by=[LoggedModelOrder("metrics.acc", False, "eval", "d1")]) == \
        ["lm-1", "lm-0", "lm-2"]
    assert _model_names(world, order_by=[LoggedModelOrder("name", True)]) == ["lm-0", "lm-1", "lm-2"]
    assert _model_names(world, order_by=[LoggedModelOrder("creation_time", True)]) == ["lm-0", "lm-1", "lm-2"]
    assert len(_model_names(world, order_by=[LoggedModelOrder("source_run_id", False)])) == 3


def test_logged_models_datasets_restrict_metric_filters(world: World) -> None:
    assert _model_names(world, filter_string="metrics.acc > 0.8") == ["lm-0"]  # any point counts
    assert _model_names(world, filter_string="metrics.acc > 0.6") == ["lm-1", "lm-0"]
    assert _model_names(world, filter_string="metrics.acc > 0.6", datasets=[DatasetFilter("eval")]) == ["lm-1"]
    assert _model_names(world, filter_string="metrics.acc > 0.6", datasets=[DatasetFilter("eval", "d2")]) == []
    assert _model_names(world, filter_string="metrics.acc > 0.6",
                        datasets=[DatasetFilter("eval", "d2"), DatasetFilter("train")]) == ["lm-0"]
    # Datasets alone: the models with any metric on them.
    assert _model_names(world, datasets=[DatasetFilter("train")]) == ["lm-0"]
    assert _model_names(world, datasets=[DatasetFilter("eval", "d1")]) == ["lm-2", "lm-1", "lm-0"]
    assert _model_names(world, datasets=[DatasetFilter("nope")]) == []


@pytest.mark.parametrize(("kwargs", "fragment"), [
    ({"order_by": [LoggedModelOrder("params.p")]}, "order_by[0].field_name"),
    ({"order_by": [LoggedModelOrder("nosuch")]}, "order_by[0].field_name"),
    ({"order_by": [LoggedModelOrder("")]}, "order_by[0].field_name"),
    ({"order_by": [LoggedModelOrder("name", dataset_name="eval")]}, "order_by[0]"),
    ({"order_by": [LoggedModelOrder("metrics.acc", dataset_digest="d1")]}, "dataset_name"),
    ({"order_by": [LoggedModelOrder("metrics.acc"), LoggedModelOrder("metrics.acc", False)]}, "more than once"),
    ({"order_by": [LoggedModelOrder("metrics.a\x00")]}, "NUL"),
    ({"datasets": [DatasetFilter("")]}, "datasets[0].dataset_name"),
    ({"datasets": [DatasetFilter("eval", "\ud800")]}, "datasets[0].dataset_digest"),
    ({"datasets": [DatasetFilter(f"d{k}") for k in range(MAX_SEARCH_DATASETS + 1)]},
     f"at most {MAX_SEARCH_DATASETS}"),
])
def test_logged_models_bad_order_and_datasets_are_refused(world: World, kwargs: dict[str, Any],
                                                          fragment: str) -> None:
    _refused(lambda: world.tracking.search_logged_models([world.experiment], **kwargs), fragment)


# ---------------------------------------------------------------------------------------------- fuzz

_PIECES = st.sampled_from([
    "metrics.m0", "params.p0", "tags.t", "attributes.start_time", "start_time", "run_id", "name", "version",
    "experiment_id", "creation_time", "tags.`k k`", 'tags."q"', "metrics.", "=", "!=", "<", "<=", ">", ">=", "<>",
    "LIKE", "ILIKE", "IN", "NOT", "IS", "NULL", "AND", "OR", "(", ")", ",", "'a'", "'it''s'", '"x"', "'%_\\'",
    "0", "-1", "1.5", "1e26", "1e400", "9223372036854775808", "-9223372036854775809", "NaN", "inf", "`", "'",
    '"', "\\", "\x00", "\ud800", "ß", "\u0661", " ", "  ",
])
_FILTERS = st.one_of(st.lists(_PIECES, max_size=12).map(" ".join), st.text(max_size=40))
_FUZZ = hsettings(max_examples=300, derandomize=True, deadline=None, database=None,
                  suppress_health_check=[HealthCheck.too_slow])


@_FUZZ
@given(text=_FILTERS)
def test_fuzz_the_filter_parsers_raise_only_the_typed_error(text: str) -> None:
    for grammar in (sf.RUNS, sf.EXPERIMENTS, sf.LOGGED_MODELS):
        with contextlib.suppress(InvalidParameterValue):
            sf.parse_filter(text, grammar)
    with contextlib.suppress(InvalidParameterValue):
        rf.parse_filter(text)
    with contextlib.suppress(InvalidParameterValue):
        sf.parse_order_by([text])
    with contextlib.suppress(InvalidParameterValue):
        rf.parse_order_by(text)


@pytest.fixture(scope="module")
def sqlite_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    engine = create_store_engine(Settings.for_home(tmp_path_factory.mktemp("fuzz") / "home"))
    try:
        yield _populate(engine)
    finally:
        engine.dispose()


@hsettings(max_examples=120, derandomize=True, deadline=None, database=None,
           suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(text=_FILTERS)
def test_fuzz_searches_raise_only_the_typed_error(sqlite_world: World, text: str) -> None:
    """Whatever parses also runs: each store search answers or raises `InvalidParameterValue`."""
    w = sqlite_world
    searches: list[Callable[[], object]] = [
        lambda: w.search(text), lambda: w.tracking.search_experiments(filter_string=text),
        lambda: w.tracking.search_logged_models([w.experiment], filter_string=text),
        lambda: w.registry.search_registered_models(filter_string=text),
        lambda: w.registry.search_model_versions(filter_string=text),
    ]
    for search in searches:
        with contextlib.suppress(InvalidParameterValue):
            search()
    assert len(w.search()) == 3

