"""Write-time metric summaries (``metric_blocks``, decision 0526): every write keeps them equal to a summary of the
points themselves, on every backend; re-logged identical points are not counted twice; purge removes them; and the
migration's fill statement computes the same rows."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, text

from capstan.settings import Settings
from capstan.store.engine import create_store_engine
from capstan.store.tracking_sql import SqlTrackingStore
from capstan.tracking.records import Metric
from helpers.clock import T0, FakeClock

_SUMMARY = ("SELECT run_id, key_id, step >> 6, count(*), sum(CAST(step AS DOUBLE PRECISION)), sum(value), min(value), "
            "max(value), sum(CASE WHEN is_nan THEN 1 ELSE 0 END) FROM metrics "
            "GROUP BY run_id, key_id, step >> 6 ORDER BY 1, 2, 3")
_BLOCKS = ("SELECT run_id, key_id, block, points, step_sum, value_sum, value_min, value_max, nans FROM metric_blocks "
           "ORDER BY 1, 2, 3")


@pytest.fixture
def engine(backend_settings: Settings) -> Iterator[Engine]:
    engine = create_store_engine(backend_settings)
    yield engine
    engine.dispose()


def _rows(engine: Engine, sql: str) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:  # a NaN sum (SQLite: NULL) compares as a string
        return [tuple("nan" if v is None or v != v else float(v) for v in row) for row in conn.execute(text(sql))]


def _same(got: list[tuple[Any, ...]], want: list[tuple[Any, ...]]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert [type(v) for v in g] == [type(v) for v in w], (g, w)
        assert [v for v in g if isinstance(v, float)] == pytest.approx([v for v in w if isinstance(v, float)],
                                                                        rel=1e-12, abs=1e-9), (g, w)


def test_blocks_summarise_the_points_after_every_kind_of_write(engine: Engine) -> None:
    store = SqlTrackingStore(engine, clock=FakeClock())
    run_id = store.create_run(store.create_experiment("blocks", project="p")).run_id
    points = [Metric("loss", float(s % 7) - 3.0, T0 + s, s) for s in range(-130, 400, 3)]
    store.log_metrics_for_runs({run_id: points})
    store.log_metrics_for_runs({run_id: points[:50]})  # identical points again: absorbed, not counted twice
    store.log_batch(run_id, metrics=[Metric("loss", math.nan, T0, 5), Metric("loss", 2.5, T0 + 1, 5),
                                     Metric("acc", 0.5, T0, 1_000_000)])
    # both infinities in one block: its sum is undefined (SQLite stores NULL), the write still succeeds
    store.log_batch(run_id, metrics=[Metric("loss", math.inf, T0, 640), Metric("loss", -math.inf, T0, 641)])
    want = _rows(engine, _SUMMARY)
    _same(_rows(engine, _BLOCKS), want)
    assert sum(row[3] for row in want) == len(points) + 5
    assert any(row[8] == 1 for row in want)  # the NaN is counted in its block


def test_the_migration_fill_computes_the_same_rows(engine: Engine) -> None:
    from importlib import import_module

    fill = import_module("capstan.store.migrations.versions.0960_metric_blocks")._FILL
    store = SqlTrackingStore(engine, clock=FakeClock())
    run_id = store.create_run(store.create_experiment("fill", project="p")).run_id
    store.log_metrics_for_runs({run_id: [Metric("m", s * 0.5, T0, s) for s in range(-70, 300)]})
    written = _rows(engine, _BLOCKS)
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM metric_blocks"))
        conn.execute(text(fill))
    _same(_rows(engine, _BLOCKS), written)


def test_purge_removes_a_runs_blocks(engine: Engine) -> None:
    clock = FakeClock()
    store = SqlTrackingStore(engine, clock=clock)
    experiment = store.create_experiment("purge", project="p")
    kept, dropped = store.create_run(experiment).run_id, store.create_run(experiment).run_id
    for run_id in (kept, dropped):
        store.log_metrics_for_runs({run_id: [Metric("m", 1.0, T0, s) for s in range(200)]})
    store.delete_run(dropped)
    clock.advance(10)
    store.purge_deleted()
    assert {row[0] for row in _rows(engine, _BLOCKS)} == {row[0] for row in _rows(engine, _SUMMARY)}
    assert len({row[0] for row in _rows(engine, _BLOCKS)}) == 1
