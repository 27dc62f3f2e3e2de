"""Downsampled metric series read from the ``metrics`` table (`SqlTrackingStore.metric_series`).

The buckets follow `capstan.tracking.series` exactly; what this module decides is where the work happens
(decision 0520). A window of at most `RAW_LIMIT` points is read point by point and bucketed in memory by
`capstan.tracking.series.downsample`. A larger window is aggregated inside the database, so a million points cost
one pass of the database engine and only the buckets cross into Python:

- on the ``step`` axis each bucket is read as the write-time summaries of the 64-step blocks wholly inside it
  (``metric_blocks``, kept by `capstan.store.tracking_sqltext.write_metrics`, decision 0526) plus the points of its
  two edges, so a cold read of a million points touches about a tenth of them: a statement per bucket on SQLite
  (in-process, no round trip) and one ``LATERAL`` join over the bucket bounds on PostgreSQL. The per-bucket
  aggregates assume finite values; a bucket that holds a NaN or an infinity is read again with the exact (filtered)
  aggregates;
- the step-axis buckets are kept in a `BucketCache` between reads: a series only ever gains points (a point is its
  whole row, identical re-logs are absorbed, and only purging a run deletes points, under an id never reused), so
  a kept bucket is still right while the number of points in its range is unchanged, and counting a range costs
  about a quarter of aggregating it. Reading a chart again (another viewer, a reload, zooming back out, a run
  that is still logging) aggregates only the buckets that gained points;
- on the ``time`` and ``relative`` axes there is no timestamp index (one would slow every metric write, see the
  decision), so the window is one ``GROUP BY`` of the integer bucket number over the run's points of the key.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from capstan.errors import ResourceDoesNotExist
from capstan.store.tracking_sqltext import METRIC_BLOCK_SHIFT
from capstan.store.tracking_tx import RawTx
from capstan.tracking.series import Bucket, Grid, MetricSeries, SeriesQuery, downsample

_BLOCK = 1 << METRIC_BLOCK_SHIFT
RAW_LIMIT = 20_000
"""Windows with at most this many points are bucketed in memory (reading them is cheaper than many aggregates)."""

_INF = float("inf")
_FINITE = "NOT is_nan AND value > ? AND value < ?"
_EXACT = (f"count(*), avg({{x}}), avg(value) FILTER (WHERE {_FINITE}), min(value) FILTER (WHERE {_FINITE}), "
          f"max(value) FILTER (WHERE {_FINITE}), count(*) FILTER (WHERE {_FINITE})")
_EXACT_PARAMS = (-_INF, _INF) * 4
_RANGE = "run_id = ? AND key_id = ? AND {x} >= ? AND {x} <= ?"
# A step range is read as its whole blocks' write-time summaries (``metric_blocks``) plus the points of its two
# edges (`_parts`); the per-bucket aggregates assume finite values (the last column counts NaNs, stored as 0.0 with
# is_nan set), and a bucket holding a NaN or an infinity is read again point by point with the exact aggregates.
_RAW_PART = ("SELECT count(*) AS c, sum(CAST(step AS DOUBLE PRECISION)) AS s, sum(value) AS v, min(value) AS lo, "
             "max(value) AS hi, sum(CASE WHEN is_nan THEN 1 ELSE 0 END) AS n FROM metrics "
             "WHERE run_id = {rid} AND key_id = {key} AND step >= {a} AND step <= {b}")
_BLOCK_PART = ("SELECT sum(points), sum(step_sum), sum(value_sum), min(value_min), max(value_max), sum(nans) "
               "FROM metric_blocks WHERE run_id = {rid} AND key_id = {key} AND block >= {a} AND block <= {b}")
_PARTS = "SELECT sum(c), sum(s), sum(v), min(lo), max(hi), sum(n) FROM ({left} UNION ALL {blocks} UNION ALL {right}) p"
_COUNT_PARTS = "SELECT sum(c) FROM ({left} UNION ALL {blocks} UNION ALL {right}) p"


def _parts_sql(template: str, marks: tuple[str, ...]) -> str:
    """``template`` over the three parts of a range; ``marks`` name its 6 bounds (left edge, blocks, right edge)."""
    args = {"rid": "?", "key": "?"}
    return template.format(left=_RAW_PART.format(**args, a=marks[0], b=marks[1]),
                           blocks=_BLOCK_PART.format(**args, a=marks[2], b=marks[3]),
                           right=_RAW_PART.format(**args, a=marks[4], b=marks[5]))


_SQLITE_PARTS = _parts_sql(_PARTS, ("?",) * 6)
_SQLITE_COUNT = _parts_sql(_COUNT_PARTS, ("?",) * 6)
_UNNEST = ("FROM unnest(CAST(? AS BIGINT[]), CAST(? AS BIGINT[]), CAST(? AS BIGINT[]), CAST(? AS BIGINT[]), "
           "CAST(? AS BIGINT[]), CAST(? AS BIGINT[])) WITH ORDINALITY AS b(l1, h1, bl, bh, l2, h2, i)")
_PG_MARKS = ("b.l1", "b.h1", "b.bl", "b.bh", "b.l2", "b.h2")
_PG_PARTS = f"SELECT a.* {_UNNEST} CROSS JOIN LATERAL ({_parts_sql(_PARTS, _PG_MARKS)}) a ORDER BY b.i"
_PG_COUNT = f"SELECT a.* {_UNNEST} CROSS JOIN LATERAL ({_parts_sql(_COUNT_PARTS, _PG_MARKS)}) a ORDER BY b.i"


BucketKey = tuple[int, int, int, int]
"""(run row id, key id, first step, last step) of a step-axis bucket."""


class BucketCache:
    """Step-axis buckets of recent reads, least recently used first out (see the module docstring)."""

    def __init__(self, max_entries: int = 200_000) -> None:
        self._entries: OrderedDict[BucketKey, Bucket] = OrderedDict()
        self._max = max_entries
        self._lock = threading.Lock()
        self.hits = 0

    def get(self, key: BucketKey) -> Bucket | None:
        with self._lock:
            bucket = self._entries.get(key)
            if bucket is not None:
                self._entries.move_to_end(key)
            return bucket

    def keep(self, key: BucketKey, bucket: Bucket) -> None:
        with self._lock:
            self._entries[key] = bucket
            self._entries.move_to_end(key)
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)

    def count_hits(self, hits: int) -> None:
        with self._lock:
            self.hits += hits


def read_series(tx: RawTx, dialect: str, rid: int, key_id: int, run_id: str, key: str,
                query: SeriesQuery, cache: BucketCache) -> MetricSeries:
    """The buckets of metric ``key_id`` of run ``rid`` inside ``query``'s window (see the module docstring)."""
    if tx.one("SELECT 1 FROM latest_metrics WHERE run_id = ? AND key_id = ?", (rid, key_id)) is None:
        raise ResourceDoesNotExist(f"Metric {key!r} not found in run '{run_id}'")
    column = "step" if query.x == "step" else "timestamp"
    origin = None
    if query.x == "relative":
        row = tx.one("SELECT min(timestamp) FROM metrics WHERE run_id = ? AND key_id = ?", (rid, key_id))
        origin = int(row[0]) if row is not None and row[0] is not None else 0
    low, high = query.bounds(origin or 0)
    where, params = _window(column, rid, key_id, low, high)
    counted = tx.one(f"SELECT count(*) FROM (SELECT 1 FROM metrics WHERE {where} LIMIT ?) w",
                     [*params, RAW_LIMIT + 1])
    if counted is not None and int(counted[0]) <= RAW_LIMIT:
        buckets = _in_memory(tx, column, where, params, query.max_points, origin or 0)
    else:
        lo, hi = _extent(tx, column, where, params)
        grid = Grid.over(lo, hi, query.max_points)
        if column == "step":
            buckets = _per_bucket(tx, dialect, rid, key_id, grid, hi, cache)
        else:
            buckets = _grouped(tx, rid, key_id, grid, hi, origin or 0)
    return MetricSeries(run_id, key, query.x, sum(b.points for b in buckets), buckets, origin)


def _window(column: str, rid: int, key_id: int, low: int | None, high: int | None) -> tuple[str, list[Any]]:
    where, params = ["run_id = ?", "key_id = ?"], [rid, key_id]
    if low is not None:
        where.append(f"{column} >= ?")
        params.append(low)
    if high is not None:
        where.append(f"{column} <= ?")
        params.append(high)
    return " AND ".join(where), params


def _in_memory(tx: RawTx, column: str, where: str, params: list[Any], max_points: int,
               origin: int) -> tuple[Bucket, ...]:
    other = "timestamp" if column == "step" else "step"
    rows = tx.all(f"SELECT {column}, value, is_nan FROM metrics WHERE {where} ORDER BY {column}, {other}, value",
                  params)
    nan = float("nan")
    return downsample([r[0] - origin for r in rows], [nan if r[2] else r[1] for r in rows], max_points)


def _extent(tx: RawTx, column: str, where: str, params: list[Any]) -> tuple[int, int]:
    """The first and last x inside the window (which holds points)."""
    if column == "step":  # two index probes
        first = tx.one(f"SELECT step FROM metrics WHERE {where} ORDER BY step LIMIT 1", params)
        last = tx.one(f"SELECT step FROM metrics WHERE {where} ORDER BY step DESC LIMIT 1", params)
        assert first is not None and last is not None
        return int(first[0]), int(last[0])
    row = tx.one(f"SELECT min(timestamp), max(timestamp) FROM metrics WHERE {where}", params)
    assert row is not None
    return int(row[0]), int(row[1])


def _bounds(grid: Grid, hi: int) -> tuple[list[int], list[int]]:
    starts = grid.starts()
    return starts, [min(s + grid.width - 1, hi) for s in starts]


def _per_bucket(tx: RawTx, dialect: str, rid: int, key_id: int, grid: Grid, hi: int,
                cache: BucketCache) -> tuple[Bucket, ...]:
    starts, ends = _bounds(grid, hi)
    keys = [(rid, key_id, s, e) for s, e in zip(starts, ends, strict=True)]
    kept = [cache.get(k) for k in keys]
    found: dict[int, Bucket] = {}
    wanted = list(range(len(keys)))
    if any(bucket is not None for bucket in kept):
        counts = _counts(tx, dialect, rid, key_id, starts, ends)
        found = {i: b for i, (b, n) in enumerate(zip(kept, counts, strict=True)) if b is not None and b.points == n}
        wanted = [i for i, n in enumerate(counts) if n and i not in found]
        cache.count_hits(len(found))
    fresh = _aggregate(tx, dialect, rid, key_id, [starts[i] for i in wanted], [ends[i] for i in wanted])
    for i, bucket in zip(wanted, fresh, strict=True):
        if bucket is not None:
            cache.keep(keys[i], bucket)
            found[i] = bucket
    return tuple(found[i] for i in sorted(found))


Parts = tuple[int, int, int, int, int, int]
"""A step range as its left edge's steps, its whole blocks and its right edge's steps (an empty part has lo > hi)."""


def _parts(start: int, end: int) -> Parts:
    """Split the steps ``[start, end]`` into the edges and the blocks wholly inside it."""
    first, last = (start + _BLOCK - 1) >> METRIC_BLOCK_SHIFT, ((end + 1) >> METRIC_BLOCK_SHIFT) - 1
    if first > last:
        return start, end, 1, 0, 1, 0
    return start, (first << METRIC_BLOCK_SHIFT) - 1, first, last, (last + 1) << METRIC_BLOCK_SHIFT, end


def _by_parts(tx: RawTx, dialect: str, sqlite_sql: str, pg_sql: str, rid: int, key_id: int, starts: list[int],
              ends: list[int]) -> Sequence[Sequence[Any] | None]:
    parts = [_parts(s, e) for s, e in zip(starts, ends, strict=True)]
    if dialect == "postgresql":
        return tx.all(pg_sql, (*([p[i] for p in parts] for i in range(6)), rid, key_id, rid, key_id, rid, key_id))
    return tx.each(sqlite_sql, [(rid, key_id, p[0], p[1], rid, key_id, p[2], p[3], rid, key_id, p[4], p[5])
                                for p in parts])


def _counts(tx: RawTx, dialect: str, rid: int, key_id: int, starts: list[int], ends: list[int]) -> list[int]:
    """The number of points in each step range."""
    rows = _by_parts(tx, dialect, _SQLITE_COUNT, _PG_COUNT, rid, key_id, starts, ends)
    return [int(row[0]) if row is not None and row[0] is not None else 0 for row in rows]


def _aggregate(tx: RawTx, dialect: str, rid: int, key_id: int, starts: list[int],
               ends: list[int]) -> list[Bucket | None]:
    """The bucket of each step range (None for an empty range)."""
    if not starts:
        return []
    rows = _by_parts(tx, dialect, _SQLITE_PARTS, _PG_PARTS, rid, key_id, starts, ends)
    exact = f"SELECT {_EXACT.format(x='step')} FROM metrics WHERE {_RANGE.format(x='step')}"
    buckets: list[Bucket | None] = []
    for start, end, row in zip(starts, ends, rows, strict=True):
        if row is None or not row[0]:
            buckets.append(None)
            continue
        count, step_sum, total, low, high, nans = row
        if nans or low == -_INF or high == _INF or not math.isfinite(float(total)):
            # not all finite: aggregate this bucket again, filtered
            again = tx.one(exact, (*_EXACT_PARAMS, rid, key_id, start, end))
            assert again is not None
            buckets.append(_exact_bucket(again))
        else:
            count = int(count)
            buckets.append(Bucket(float(step_sum) / count, float(total) / count, float(low), float(high), count, 0))
    return buckets


def _grouped(tx: RawTx, rid: int, key_id: int, grid: Grid, hi: int, origin: int) -> tuple[Bucket, ...]:
    """Every bucket of the time window in one ``GROUP BY``; x means are taken after subtracting ``origin`` (the
    relative axis), so they keep their precision."""
    sql = (f"SELECT {_EXACT.format(x='timestamp - CAST(? AS BIGINT)')} FROM metrics "
           f"WHERE {_RANGE.format(x='timestamp')} "
           "GROUP BY (timestamp - CAST(? AS BIGINT)) / CAST(? AS BIGINT) ORDER BY min(timestamp)")
    rows = tx.all(sql, (origin, *_EXACT_PARAMS, rid, key_id, grid.lo, hi, grid.lo, grid.width))
    return tuple(_exact_bucket(row) for row in rows)


def _exact_bucket(row: Sequence[Any]) -> Bucket:
    count, x_mean, mean, low, high, finite = row
    if not finite:
        return Bucket(float(x_mean), None, None, None, int(count), int(count))
    return Bucket(float(x_mean), float(mean), float(low), float(high), int(count), int(count) - int(finite))
