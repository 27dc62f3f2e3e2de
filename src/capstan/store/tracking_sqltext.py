"""Static SQL of the tracking store's hot paths (``?`` placeholders, valid on SQLite and PostgreSQL) and the
metric/param writers that use it inside the caller's transaction."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from capstan.errors import InvalidParameterValue
from capstan.store.tracking_query import EXPERIMENT_SQL_COLUMNS, RUN_SQL_COLUMNS
from capstan.store.tracking_tx import RawTx
from capstan.store.tracking_validation import MetricRow

SQL_INSERT_PROJECT = "INSERT INTO projects (name, description, created_at) VALUES (?, '', ?) ON CONFLICT DO NOTHING"
SQL_PROJECT_ID = "SELECT id FROM projects WHERE name = ?"
SQL_INSERT_DEFAULT_EXPERIMENT = (
    "INSERT INTO experiments (id, project_id, name, artifact_location, lifecycle_stage, created_at, updated_at) "
    "VALUES (?, ?, ?, ?, 'active', ?, ?) ON CONFLICT DO NOTHING")
SQL_EXPERIMENT = (f"SELECT {EXPERIMENT_SQL_COLUMNS} FROM experiments e JOIN projects p ON p.id = e.project_id "
                  "WHERE e.id = ?")
SQL_EXPERIMENT_BY_NAME = (f"SELECT {EXPERIMENT_SQL_COLUMNS} FROM experiments e JOIN projects p "
                          "ON p.id = e.project_id WHERE p.name = ? AND e.name = ?")
SQL_RUN = (f"SELECT {RUN_SQL_COLUMNS}, p.name FROM runs r JOIN experiments e ON e.id = r.experiment_id "
           "JOIN projects p ON p.id = e.project_id WHERE r.uuid = ?")
SQL_ACTIVE_RUN = "SELECT id, lifecycle_stage FROM runs WHERE uuid = ?"
SQL_INSERT_RUN = (
    "INSERT INTO runs (uuid, experiment_id, name, user_id, status, start_time, end_time, lifecycle_stage, "
    "deleted_at, artifact_uri, source, git_commit) VALUES (?, ?, ?, ?, 'RUNNING', ?, NULL, 'active', NULL, ?, ?, ?)")
SQL_INSERT_METRIC = ("INSERT INTO metrics (run_id, key_id, step, timestamp, value, is_nan) "
                     "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING")
# Keep the point with the largest (step, timestamp, value), as MLflow does; NaN compares as its stored 0.
SQL_UPSERT_LATEST = (
    "INSERT INTO latest_metrics (run_id, key_id, step, timestamp, value, is_nan) VALUES (?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (run_id, key_id) DO UPDATE SET step = excluded.step, timestamp = excluded.timestamp, "
    "value = excluded.value, is_nan = excluded.is_nan "
    "WHERE excluded.step > latest_metrics.step OR (excluded.step = latest_metrics.step AND "
    "(excluded.timestamp > latest_metrics.timestamp OR (excluded.timestamp = latest_metrics.timestamp AND "
    "excluded.value > latest_metrics.value)))")
SQL_UPSERT_TAG = ("INSERT INTO run_tags (run_id, key, value) VALUES (?, ?, ?) "
                  "ON CONFLICT (run_id, key) DO UPDATE SET value = excluded.value")
METRIC_BLOCK_SHIFT = 6
"""A metric block is 64 consecutive steps: ``block = step >> 6`` (a floor division, negative steps included)."""
# A touched block is summarised again from its points (so an absorbed identical point is not counted twice).
SQL_UPSERT_BLOCK = (
    "INSERT INTO metric_blocks (run_id, key_id, block, points, step_sum, value_sum, value_min, value_max, nans) "
    "SELECT ?, ?, ?, count(*), sum(CAST(step AS DOUBLE PRECISION)), sum(value), min(value), max(value), "
    "sum(CASE WHEN is_nan THEN 1 ELSE 0 END) FROM metrics WHERE run_id = ? AND key_id = ? AND step >= ? AND step <= ? "
    "ON CONFLICT (run_id, key_id, block) DO UPDATE SET points = excluded.points, step_sum = excluded.step_sum, "
    "value_sum = excluded.value_sum, value_min = excluded.value_min, value_max = excluded.value_max, "
    "nans = excluded.nans")
_SQL_LOCK_SERIES = "SELECT pg_advisory_xact_lock(CAST(? AS INTEGER), CAST(? AS INTEGER))"
SQL_INSERT_PARAM = "INSERT INTO params (run_id, key, value) VALUES (?, ?, ?)"
SQL_INSERT_KEY = "INSERT INTO metric_keys (key) VALUES (?) ON CONFLICT DO NOTHING"


def write_metrics(tx: RawTx, rid: int, rows: Sequence[MetricRow], key_ids: Mapping[str, int]) -> None:
    """Insert checked metric points of run ``rid`` (identical points absorbed) and advance ``latest_metrics``."""
    points: set[tuple[int, int, int, float, bool]] = set()
    latest: dict[int, tuple[int, int, float, bool]] = {}
    for key, value, is_nan, timestamp, step in rows:
        key_id = key_ids[key]
        points.add((key_id, step, timestamp, value, is_nan))
        best = latest.get(key_id)
        if best is None or (step, timestamp, value) > best[:3]:
            latest[key_id] = (step, timestamp, value, is_nan)
    blocks = sorted({(k, s >> METRIC_BLOCK_SHIFT) for k, s, _t, _v, _n in points})
    if tx.postgres:
        # A block is summarised from the points this transaction sees; writers of the same run and key take turns,
        # so none summarises without the points of another one that has not committed yet. (SQLite has one writer.)
        tx.many(_SQL_LOCK_SERIES, [(rid, k) for k in sorted({k for k, _b in blocks})])
    # Sorted so that concurrent PostgreSQL writers take row locks in the same order (no deadlocks).
    tx.many(SQL_INSERT_METRIC, [(rid, k, s, t, v, n) for k, s, t, v, n in sorted(points)])
    tx.many(SQL_UPSERT_LATEST, [(rid, k, s, t, v, n) for k, (s, t, v, n) in sorted(latest.items())])
    size = 1 << METRIC_BLOCK_SHIFT
    tx.many(SQL_UPSERT_BLOCK, [(rid, k, b, rid, k, b * size, b * size + size - 1) for k, b in blocks])


def write_params(tx: RawTx, rid: int, run_id: str, rows: Mapping[str, tuple[int, str]]) -> None:
    """Insert params ``{key: (batch index, value)}``; an existing key with another value is refused, an identical
    one is skipped. A concurrent insert of the same key surfaces as an integrity error (the caller retries)."""
    keys = list(rows)
    existing = dict(tx.all(f"SELECT key, value FROM params WHERE run_id = ? AND key IN ({tx.marks(len(keys))})",
                           [rid, *keys]))
    for key, (index, value) in rows.items():
        old = existing.get(key)
        if old is not None and old != value:
            raise InvalidParameterValue(
                f"params[{index}].value: param {key!r} of run '{run_id}' was already logged with value "
                f"{old[:200]!r}; changing it to {value[:200]!r} is not allowed")
    tx.many(SQL_INSERT_PARAM, [(rid, k, v) for k, (_i, v) in sorted(rows.items()) if k not in existing])
