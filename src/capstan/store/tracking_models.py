"""MLflow 3 logged models in the metadata store (the ``logged_models`` table; params and tags as JSON objects).

Helpers of `capstan.store.tracking_sql.SqlTrackingStore`; each runs inside the caller's transaction.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import orjson
from sqlalchemy import select, update

from capstan.errors import InvalidParameterValue, ResourceDoesNotExist
from capstan.store.schema import logged_model_metrics, logged_models
from capstan.store.tracking_tx import RawTx
from capstan.store.tracking_validation import (
    check_logged_model_name,
    check_logged_model_status,
    check_param,
    check_tag_mapping,
    generate_run_name,
)
from capstan.tracking.records import ACTIVE, DELETED, LoggedModel, Metric, Param
from capstan.tracking.search_filter import ATTRIBUTE, METRIC, PARAM, TAG, Comparison, matches

_COLUMNS = (logged_models.c.id, logged_models.c.experiment_id, logged_models.c.name,
            logged_models.c.artifact_location, logged_models.c.created_at, logged_models.c.updated_at,
            logged_models.c.status, logged_models.c.status_message, logged_models.c.model_type,
            logged_models.c.source_run_uuid, logged_models.c.params, logged_models.c.tags)


@dataclass(frozen=True, slots=True)
class NewModel:
    """Checked input of `insert_model`."""

    name: str
    model_type: str
    params: Mapping[str, str]
    tags: Mapping[str, str]


def check_new_model(name: str | None, model_type: str, params: Mapping[str, str] | None,
                    tags: Mapping[str, str] | None) -> NewModel:
    """Validate a logged model's name, params and tags (a missing name is generated)."""
    checked_params: dict[str, str] = {}
    for key, value in (params or {}).items():
        k, v = check_param(Param(key, value), f"params[{key!r}]")
        checked_params[k] = v
    if len(model_type or "") > 256:
        raise InvalidParameterValue(f"model_type: {len(model_type)} characters is longer than the limit of 256")
    return NewModel(check_logged_model_name(name) if name is not None else generate_run_name(), model_type or "",
                    checked_params, check_tag_mapping(tags))


def _record(row: Sequence[Any]) -> LoggedModel:
    return LoggedModel(row[0], str(row[1]), row[2], row[3], row[4], row[5], row[6], row[7], row[8], row[9],
                       orjson.loads(row[10]), orjson.loads(row[11]))


def insert_model(tx: RawTx, experiment_id: int, experiment_location: str, new: NewModel,
                 source_run_id: str | None, now: int) -> LoggedModel:
    """Insert a PENDING model and return it."""
    model_id = f"m-{uuid.uuid4().hex}"
    location = f"{experiment_location.rstrip('/')}/models/{model_id}/artifacts"
    tx.run(logged_models.insert().values(
        id=model_id, experiment_id=experiment_id, name=new.name, artifact_location=location, status="PENDING",
        status_message="", model_type=new.model_type, source_run_uuid=source_run_id, created_at=now,
        updated_at=now, lifecycle_stage=ACTIVE, params=orjson.dumps(dict(new.params)).decode(),
        tags=orjson.dumps(dict(new.tags)).decode()))
    return LoggedModel(model_id, str(experiment_id), new.name, location, now, now, "PENDING", "", new.model_type,
                       source_run_id, dict(new.params), dict(new.tags))


def _row(tx: RawTx, model_id: str) -> Sequence[Any]:
    row = None
    if isinstance(model_id, str) and model_id:
        row = tx.one(select(*_COLUMNS).where(logged_models.c.id == model_id,
                                             logged_models.c.lifecycle_stage == ACTIVE))
    if row is None:
        raise ResourceDoesNotExist(f"Logged model '{model_id}' not found")
    return row


def get_model(tx: RawTx, model_id: str) -> LoggedModel:
    """An active logged model with the metric points logged for it."""
    record = _record(_row(tx, model_id))
    return replace(record, metrics=metrics_for(tx, [model_id]).get(model_id, ()))


_LINKED_METRIC_SQL = (
    "INSERT INTO logged_model_metrics (model_id, run_uuid, key, step, timestamp, value, is_nan, dataset_name, "
    "dataset_digest) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (model_id, run_uuid, key, step, timestamp) "
    "DO UPDATE SET value = excluded.value, is_nan = excluded.is_nan, dataset_name = excluded.dataset_name, "
    "dataset_digest = excluded.dataset_digest")

LinkedMetricRow = tuple[str, str, str, int, int, float, bool, str, str]
"""(model_id, run uuid, key, step, timestamp, stored value, is_nan, dataset_name, dataset_digest)."""


def add_metrics(tx: RawTx, rows: Sequence[LinkedMetricRow]) -> None:
    """Record metric points for logged models (a point re-logged at the same run, key, step and time replaces
    the earlier value)."""
    require_models(tx, sorted({row[0] for row in rows}))
    tx.many(_LINKED_METRIC_SQL, list(rows))


def metrics_for(tx: RawTx, model_ids: Sequence[str]) -> dict[str, tuple[Metric, ...]]:
    """Metric points of each model, ordered by key, step and timestamp."""
    if not model_ids:
        return {}
    t = logged_model_metrics
    found: dict[str, list[Metric]] = {}
    ids = list(model_ids)
    for start in range(0, len(ids), 500):
        for row in tx.all(select(t.c.model_id, t.c.key, t.c.value, t.c.is_nan, t.c.timestamp, t.c.step)
                          .where(t.c.model_id.in_(ids[start:start + 500]))
                          .order_by(t.c.model_id, t.c.key, t.c.step, t.c.timestamp, t.c.run_uuid)):
            found.setdefault(row[0], []).append(Metric(row[1], float("nan") if row[3] else float(row[2]),
                                                       int(row[4]), int(row[5])))
    return {model_id: tuple(points) for model_id, points in found.items()}


def require_models(tx: RawTx, model_ids: Sequence[str]) -> None:
    """Raise `ResourceDoesNotExist` naming the first of ``model_ids`` that is not an active logged model."""
    if not model_ids:
        return
    found = {r[0] for r in tx.all(select(logged_models.c.id).where(
        logged_models.c.id.in_(list(model_ids)), logged_models.c.lifecycle_stage == ACTIVE))}
    for model_id in model_ids:
        if model_id not in found:
            raise ResourceDoesNotExist(f"Logged model '{model_id}' not found")


def set_status(tx: RawTx, model_id: str, status: str, now: int) -> LoggedModel:
    """Finalize: set the status and return the updated model."""
    short = check_logged_model_status(status)
    _row(tx, model_id)
    tx.run(update(logged_models).where(logged_models.c.id == model_id).values(status=short, updated_at=now))
    return get_model(tx, model_id)


def set_tags(tx: RawTx, model_id: str, tags: Mapping[str, str], now: int) -> None:
    """Merge ``tags`` into the model's tags."""
    row = _row(tx, model_id)
    merged = {**orjson.loads(row[11]), **tags}
    tx.run(update(logged_models).where(logged_models.c.id == model_id)
                 .values(tags=orjson.dumps(merged).decode(), updated_at=now))


def add_params(tx: RawTx, model_id: str, params: Mapping[str, str], now: int) -> None:
    """Merge ``params`` into the model's params; changing an existing param's value is rejected."""
    row = _row(tx, model_id)
    current: dict[str, str] = orjson.loads(row[10])
    for key, value in params.items():
        if key in current and current[key] != value:
            raise InvalidParameterValue(
                f"params[{key!r}]: logged model '{model_id}' already has this param with value "
                f"{current[key]!r}; params cannot be changed (new value {value!r})")
    merged = {**current, **params}
    tx.run(update(logged_models).where(logged_models.c.id == model_id)
                 .values(params=orjson.dumps(merged).decode(), updated_at=now))


def delete_tag(tx: RawTx, model_id: str, key: str, now: int) -> None:
    """Remove one tag; `ResourceDoesNotExist` when the model has no such tag."""
    row = _row(tx, model_id)
    current = orjson.loads(row[11])
    if key not in current:
        raise ResourceDoesNotExist(f"No tag '{key}' on logged model '{model_id}'")
    del current[key]
    tx.run(update(logged_models).where(logged_models.c.id == model_id)
                 .values(tags=orjson.dumps(current).decode(), updated_at=now))


def soft_delete(tx: RawTx, model_id: str, now: int) -> None:
    """Move the model to the deleted stage."""
    _row(tx, model_id)
    tx.run(update(logged_models).where(logged_models.c.id == model_id)
                 .values(lifecycle_stage=DELETED, updated_at=now))


def _field(model: LoggedModel, cmp: Comparison) -> str | float | int | None:
    if cmp.kind == ATTRIBUTE:
        value: str | int | None = {
            "name": model.name, "model_id": model.model_id, "model_type": model.model_type,
            "status": model.status, "source_run_id": model.source_run_id,
            "creation_timestamp": model.creation_timestamp, "last_updated_timestamp": model.last_updated_timestamp,
        }[cmp.key]
        return value
    if cmp.kind == PARAM:
        return model.params.get(cmp.key)
    if cmp.kind == TAG:
        return model.tags.get(cmp.key)
    if cmp.kind == METRIC:
        return next((m.value for m in model.metrics if m.key == cmp.key), None)
    return None


def search_models(tx: RawTx, experiment_ids: Sequence[int], filters: Sequence[Comparison]) -> list[LoggedModel]:
    """Every active model of the experiments matching all ``filters``, newest first (then by id)."""
    if not experiment_ids:
        return []
    rows = tx.all(select(*_COLUMNS).where(logged_models.c.experiment_id.in_(list(experiment_ids)),
                                          logged_models.c.lifecycle_stage == ACTIVE)
                  .order_by(logged_models.c.created_at.desc(), logged_models.c.id))
    linked = metrics_for(tx, [r[0] for r in rows])
    found = [replace(_record(r), metrics=linked.get(r[0], ())) for r in rows]
    return [m for m in found if all(matches(c, _field(m, c)) for c in filters)]
