"""SQL side of tracking searches: parsed filters/order_by to SQLAlchemy Core, and batched loading of run data.

`search_runs` compiles to one SELECT over ``runs`` alone: an EXISTS per metric/param/tag condition and correlated
scalar subqueries per metric/param/tag sort key, never a join per key (SQLite caps a join at 64 tables and crashed on
wide ones). The parsers bound both counts (`capstan.tracking.search_limits`). The page's params, tags, latest
metrics, inputs and outputs are then loaded with one query each (chunked IN lists), never one query per run.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import orjson
from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Select,
    and_,
    case,
    exists,
    false,
    func,
    literal_column,
    not_,
    or_,
    select,
    true,
    type_coerce,
)

from capstan.errors import InvalidParameterValue
from capstan.store.schema import (
    experiment_tags,
    experiments,
    latest_metrics,
    logged_model_metrics,
    params,
    projects,
    run_tags,
    runs,
)
from capstan.store.tracking_tx import RawTx
from capstan.tracking.records import (
    DatasetInput,
    Experiment,
    LoggedModel,
    Metric,
    ModelOutput,
    Run,
    RunData,
    RunInfo,
)
from capstan.tracking.search_filter import (
    ATTRIBUTE,
    METRIC,
    PARAM,
    TAG,
    Comparison,
    DatasetFilter,
    ModelOrderKey,
    OrderKey,
    matches,
)
from capstan.tracking.search_syntax import check_like_pattern, like_to_glob

CHUNK = 500
NAN = float("nan")

RUN_COLUMNS = (runs.c.id, runs.c.uuid, runs.c.name, runs.c.experiment_id, runs.c.user_id, runs.c.status,
               runs.c.start_time, runs.c.end_time, runs.c.artifact_uri, runs.c.lifecycle_stage, runs.c.source,
               runs.c.git_commit)
EXPERIMENT_COLUMNS = (experiments.c.id, experiments.c.name, experiments.c.artifact_location,
                      experiments.c.lifecycle_stage, experiments.c.created_at, experiments.c.updated_at,
                      projects.c.name.label("project"))

_RUN_ATTRIBUTES: Mapping[str, ColumnElement[Any]] = {
    "run_id": runs.c.uuid, "run_name": runs.c.name, "status": runs.c.status, "user_id": runs.c.user_id,
    "artifact_uri": runs.c.artifact_uri, "lifecycle_stage": runs.c.lifecycle_stage,
    "start_time": runs.c.start_time, "end_time": runs.c.end_time,
}
_NULLABLE_RUN_ATTRIBUTES = frozenset({"start_time", "end_time"})
_EXPERIMENT_ATTRIBUTES: Mapping[str, ColumnElement[Any]] = {
    "name": experiments.c.name, "experiment_id": experiments.c.id, "creation_time": experiments.c.created_at,
    "last_update_time": experiments.c.updated_at,
}


def chunks(items: Sequence[Any], size: int = CHUNK) -> Iterable[Sequence[Any]]:
    """Consecutive slices of at most ``size`` items."""
    for start in range(0, len(items), size):
        yield items[start:start + size]


RUN_SQL_COLUMNS = ("r.id, r.uuid, r.name, r.experiment_id, r.user_id, r.status, r.start_time, r.end_time, "
                   "r.artifact_uri, r.lifecycle_stage, r.source, r.git_commit")
"""`RUN_COLUMNS` as SQL text over ``runs r``."""
EXPERIMENT_SQL_COLUMNS = "e.id, e.name, e.artifact_location, e.lifecycle_stage, e.created_at, e.updated_at, p.name"
"""`EXPERIMENT_COLUMNS` as SQL text over ``experiments e JOIN projects p``."""


class ExperimentRow(NamedTuple):
    """A row selected with `EXPERIMENT_COLUMNS` / `EXPERIMENT_SQL_COLUMNS`, by column name."""

    id: int
    name: str
    artifact_location: str
    lifecycle_stage: str
    created_at: int
    updated_at: int
    project: str


class RunRow(NamedTuple):
    """A row selected with `RUN_SQL_COLUMNS` plus the project name (``SQL_RUN``), by column name."""

    id: int
    uuid: str
    name: str
    experiment_id: int
    user_id: str
    status: str
    start_time: int | None
    end_time: int | None
    artifact_uri: str
    lifecycle_stage: str
    source: str
    git_commit: str
    project: str


def run_info(row: Sequence[Any]) -> RunInfo:
    """A `RunInfo` from a row selected with `RUN_COLUMNS`."""
    return RunInfo(row[1], row[2], str(row[3]), row[4], row[5], row[6], row[7], row[8], row[9], row[10], row[11])


def experiment_record(row: Sequence[Any], tags: Mapping[str, str]) -> Experiment:
    """An `Experiment` from a row selected with `EXPERIMENT_COLUMNS`."""
    return Experiment(str(row[0]), row[1], row[2], row[3], row[4], row[5], row[6], dict(tags))


# ---------------------------------------------------------------------------------------------- comparisons


def compare(column: ColumnElement[Any], op: str, value: object, dialect: str) -> ColumnElement[bool]:
    """``column <op> value`` with the same semantics on SQLite and PostgreSQL (LIKE is case-sensitive on both,
    ILIKE case-insensitive on both, backslash escapes in patterns); ``IN``/``NOT IN`` take a tuple or list."""
    if op == "=":
        return column == value
    if op == "!=":
        return column != value
    if op == ">":
        return column > value
    if op == ">=":
        return column >= value
    if op == "<":
        return column < value
    if op == "<=":
        return column <= value
    if op == "LIKE":
        if dialect == "sqlite":
            return column.op("GLOB")(like_to_glob(str(value)))
        return column.like(check_like_pattern(str(value)), escape="\\")
    if op == "ILIKE":
        pattern = check_like_pattern(str(value))
        if dialect == "sqlite":  # SQLite's LIKE already ignores case
            return column.like(pattern, escape="\\")
        return column.ilike(pattern, escape="\\")
    if op in ("IN", "NOT IN"):
        if not isinstance(value, (tuple, list)):
            raise InvalidParameterValue(f"filter_string: {op} needs a list of values")
        return column.in_(list(value)) if op == "IN" else column.not_in(list(value))
    raise InvalidParameterValue(f"filter_string: unsupported operator {op!r}")


def subplan_exists(*where: ColumnElement[bool]) -> ColumnElement[bool]:
    """``EXISTS (SELECT 1 ... WHERE <where> OFFSET 0)``, a correlated probe of one indexed row per candidate.

    The ``OFFSET 0`` keeps PostgreSQL from pulling each EXISTS up into a semi-join: with dozens of them its join
    search grows explosively (50 filter terms took seconds to plan, 400 took minutes), while a sub-plan per term
    costs one index lookup per candidate row. SQLite evaluates it the same way either way."""
    return select(literal_column("1")).where(*where).offset(0).exists()


def _string_order(column: ColumnElement[Any], dialect: str) -> ColumnElement[Any]:
    # Byte order on both backends: PostgreSQL would otherwise sort by the database's locale.
    return column.collate("C") if dialect == "postgresql" else column


# ---------------------------------------------------------------------------------------------- run search


def run_search_query(*, experiment_ids: Sequence[int], stages: Sequence[str], filters: Sequence[Comparison],
                     order: Sequence[OrderKey], key_ids: Mapping[str, int], dialect: str, limit: int,
                     offset: int) -> Select[Any] | None:
    """The SELECT of one `search_runs` page (``limit`` rows from ``offset``) or None when nothing can match
    (a filter on a metric key that was never logged)."""
    conditions: list[ColumnElement[bool]] = [runs.c.experiment_id.in_(list(experiment_ids)),
                                             runs.c.lifecycle_stage.in_(list(stages))]
    for cmp in filters:
        if cmp.kind == METRIC:
            key_id = key_ids.get(cmp.key)
            if key_id is None:
                return None
            conditions.append(_metric_exists(cmp, key_id))
        elif cmp.kind in (PARAM, TAG):
            table = params if cmp.kind == PARAM else run_tags
            where = [table.c.run_id == runs.c.id, table.c.key == cmp.key]
            if cmp.op == "IS NULL":
                conditions.append(not_(subplan_exists(*where)))
                continue
            if cmp.op != "IS NOT NULL":
                where.append(compare(table.c.value, cmp.op, cmp.value, dialect))
            conditions.append(subplan_exists(*where))
        else:
            conditions.append(compare(_RUN_ATTRIBUTES[cmp.key], cmp.op, cmp.value, dialect))

    query = select(*RUN_COLUMNS)
    order_by: list[Any] = []
    ordered_start = False
    for key in order:
        if key.kind == ATTRIBUTE:
            column = _RUN_ATTRIBUTES[key.key]
            ordered_start = ordered_start or key.key == "start_time"
            if key.key in _NULLABLE_RUN_ATTRIBUTES:
                order_by.append(case((column.is_(None), 1), else_=0))
            else:
                column = _string_order(column, dialect)
            order_by.append(column.asc() if key.ascending else column.desc())
        elif key.kind == METRIC:
            key_id = key_ids.get(key.key)
            if key_id is None:
                continue  # no run has this metric: the clause orders nothing
            point = and_(latest_metrics.c.run_id == runs.c.id, latest_metrics.c.key_id == key_id)
            # 0 for a number, 1 for NaN, 2 when the run lacks the metric: NaNs and gaps sort last either way.
            rank = select(case((latest_metrics.c.is_nan == true(), 1), else_=0)).where(point).scalar_subquery()
            metric_value = select(latest_metrics.c.value).where(point).scalar_subquery()
            order_by.append(func.coalesce(rank, 2))
            order_by.append(metric_value.asc() if key.ascending else metric_value.desc())
        else:
            source = params if key.kind == PARAM else run_tags
            text = select(source.c.value).where(source.c.run_id == runs.c.id, source.c.key == key.key)
            present = exists().where(source.c.run_id == runs.c.id, source.c.key == key.key)
            value = _string_order(text.scalar_subquery(), dialect)
            order_by.append(case((present, 0), else_=1))
            order_by.append(value.asc() if key.ascending else value.desc())
    if not ordered_start:
        order_by.append(case((runs.c.start_time.is_(None), 1), else_=0))
        order_by.append(runs.c.start_time.desc())
    order_by.append(runs.c.uuid.asc())
    return query.where(*conditions).order_by(*order_by).limit(limit).offset(offset)


def _metric_exists(cmp: Comparison, key_id: int) -> ColumnElement[bool]:
    lm = latest_metrics.alias("fm")
    value_cond = compare(lm.c.value, cmp.op, cmp.value, "any")
    # A NaN is stored as 0 with is_nan set: it satisfies only '!=', like every comparison with NaN.
    nan_rule = or_(value_cond, lm.c.is_nan == true()) if cmp.op == "!=" else and_(value_cond, lm.c.is_nan == false())
    return subplan_exists(lm.c.run_id == runs.c.id, lm.c.key_id == key_id, nan_rule)


def load_runs(tx: RawTx, rows: Sequence[Sequence[Any]]) -> list[Run]:
    """Full `Run` records for ``rows`` (selected with `RUN_COLUMNS`), in the same order, with five queries per
    chunk of runs."""
    if not rows:
        return []
    ids = [row[0] for row in rows]
    run_params: dict[int, dict[str, str]] = {i: {} for i in ids}
    tags: dict[int, dict[str, str]] = {i: {} for i in ids}
    metrics: dict[int, list[Metric]] = {i: [] for i in ids}
    datasets: dict[int, list[DatasetInput]] = {i: [] for i in ids}
    models_in: dict[int, list[str]] = {i: [] for i in ids}
    outputs: dict[int, list[ModelOutput]] = {i: [] for i in ids}
    for part in chunks(ids):
        marks = tx.marks(len(part))
        for run_id, key, value in tx.all(f"SELECT run_id, key, value FROM params WHERE run_id IN ({marks})", part):
            run_params[run_id][key] = value
        for run_id, key, value in tx.all(f"SELECT run_id, key, value FROM run_tags WHERE run_id IN ({marks})", part):
            tags[run_id][key] = value
        for run_id, key, value, is_nan, timestamp, step in tx.all(
                "SELECT m.run_id, k.key, m.value, m.is_nan, m.timestamp, m.step FROM latest_metrics m "
                f"JOIN metric_keys k ON k.id = m.key_id WHERE m.run_id IN ({marks})", part):
            metrics[run_id].append(Metric(key, NAN if is_nan else float(value), timestamp, step))
        for run_id, kind, ref, payload in tx.all(
                f"SELECT run_id, kind, ref, payload FROM run_inputs WHERE run_id IN ({marks})", part):
            if kind == "model":
                models_in[run_id].append(ref)
            else:
                datasets[run_id].append(dataset_from_payload(payload))
        for run_id, model_id, step in tx.all(
                f"SELECT run_id, model_id, step FROM run_outputs WHERE run_id IN ({marks})", part):
            outputs[run_id].append(ModelOutput(model_id, step))
    out = []
    for row in rows:
        rid = row[0]
        metrics[rid].sort(key=lambda m: m.key)
        datasets[rid].sort(key=lambda d: (d.name, d.digest))
        models_in[rid].sort()
        outputs[rid].sort(key=lambda o: o.model_id)
        out.append(Run(run_info(row), RunData(tuple(metrics[rid]), run_params[rid], tags[rid]), tuple(datasets[rid]),
                       tuple(models_in[rid]), tuple(outputs[rid])))
    return out


def dataset_payload(dataset: DatasetInput) -> str:
    """The JSON stored in ``run_inputs.payload`` for a dataset input."""
    return orjson.dumps({"name": dataset.name, "digest": dataset.digest, "source_type": dataset.source_type,
                         "source": dataset.source, "schema": dataset.schema, "profile": dataset.profile,
                         "tags": dict(dataset.tags)}).decode()


def dataset_from_payload(payload: str) -> DatasetInput:
    """Inverse of `dataset_payload`."""
    data = orjson.loads(payload)
    return DatasetInput(data.get("name", ""), data.get("digest", ""), data.get("source_type", ""),
                        data.get("source", ""), data.get("schema", ""), data.get("profile", ""),
                        dict(data.get("tags") or {}))


# ---------------------------------------------------------------------------------------------- experiments


def experiment_search_query(*, project: str | None, stages: Sequence[str], filters: Sequence[Comparison],
                            order: Sequence[OrderKey], dialect: str, limit: int, offset: int) -> Select[Any]:
    """The SELECT of one `search_experiments` page."""
    query = select(*EXPERIMENT_COLUMNS).join(projects, projects.c.id == experiments.c.project_id)
    conditions: list[ColumnElement[bool]] = [experiments.c.lifecycle_stage.in_(list(stages))]
    if project is not None:
        conditions.append(projects.c.name == project)
    for cmp in filters:
        if cmp.kind == TAG:
            where = [experiment_tags.c.experiment_id == experiments.c.id, experiment_tags.c.key == cmp.key]
            if cmp.op == "IS NULL":
                conditions.append(not_(subplan_exists(*where)))
                continue
            if cmp.op != "IS NOT NULL":
                where.append(compare(experiment_tags.c.value, cmp.op, cmp.value, dialect))
            conditions.append(subplan_exists(*where))
        elif cmp.key == "experiment_id":
            value = tuple(int(v) for v in cmp.value) if isinstance(cmp.value, tuple) else int(str(cmp.value))
            # Compared as BIGINT: PostgreSQL would cast an out-of-range literal to the INTEGER column's type and fail.
            conditions.append(compare(type_coerce(experiments.c.id, BigInteger), cmp.op, value, dialect))
        else:
            conditions.append(compare(_EXPERIMENT_ATTRIBUTES[cmp.key], cmp.op, cmp.value, dialect))
    keys = list(order) or [OrderKey(ATTRIBUTE, "creation_time", False), OrderKey(ATTRIBUTE, "experiment_id", True)]
    order_by: list[Any] = []
    for key in keys:
        column = _EXPERIMENT_ATTRIBUTES[key.key]
        if key.key == "name":
            column = _string_order(column, dialect)
        order_by.append(column.asc() if key.ascending else column.desc())
    if not any(key.key == "experiment_id" for key in keys):
        order_by.append(experiments.c.id.asc())
    return query.where(*conditions).order_by(*order_by).limit(limit).offset(offset)


def experiment_tags_for(tx: RawTx, ids: Sequence[int]) -> dict[int, dict[str, str]]:
    """Tags of several experiments, one query per chunk."""
    out: dict[int, dict[str, str]] = {i: {} for i in ids}
    for part in chunks(list(ids)):
        for exp_id, key, value in tx.all(
                f"SELECT experiment_id, key, value FROM experiment_tags WHERE experiment_id IN ({tx.marks(len(part))})",
                part):
            out[exp_id][key] = value
    return out


# ---------------------------------------------------------------------------------------------- logged models


@dataclass(frozen=True, slots=True)
class ModelPoint:
    """One metric point logged for a logged model, with the dataset it was measured on."""

    key: str
    value: float
    timestamp: int
    step: int
    run_id: str
    dataset_name: str
    dataset_digest: str


def logged_model_points(tx: RawTx, model_ids: Sequence[str]) -> dict[str, list[ModelPoint]]:
    """Every metric point of each model (one query per chunk of models)."""
    t = logged_model_metrics
    out: dict[str, list[ModelPoint]] = {}
    for part in chunks(list(model_ids)):
        for row in tx.all(select(t.c.model_id, t.c.key, t.c.value, t.c.is_nan, t.c.timestamp, t.c.step,
                                 t.c.run_uuid, t.c.dataset_name, t.c.dataset_digest)
                          .where(t.c.model_id.in_(list(part)))):
            out.setdefault(row[0], []).append(ModelPoint(
                row[1], NAN if row[3] else float(row[2]), int(row[4]), int(row[5]), row[6], row[7] or "",
                row[8] or ""))
    return out


def _on_datasets(point: ModelPoint, datasets: Sequence[DatasetFilter]) -> bool:
    return any(point.dataset_name == d.dataset_name and (not d.dataset_digest or point.dataset_digest ==
                                                         d.dataset_digest) for d in datasets)


def filter_models_by_metrics(models: Sequence[LoggedModel], points: Mapping[str, Sequence[ModelPoint]],
                             filters: Sequence[Comparison], datasets: Sequence[DatasetFilter]) -> list[LoggedModel]:
    """The models that satisfy every metric comparison, as MLflow 3 defines it: some point of the metric (any
    step, any run) matches, counting only points on one of ``datasets`` when any are given. With ``datasets`` and
    no metric comparison, a model needs at least one point on one of the datasets."""
    out = []
    for model in models:
        own = points.get(model.model_id, ())
        if datasets:
            own = [p for p in own if _on_datasets(p, datasets)]
            if not own:
                continue
        if all(any(p.key == cmp.key and matches(cmp, p.value) for p in own) for cmp in filters):
            out.append(model)
    return out


def _latest(points: Sequence[ModelPoint], key: ModelOrderKey) -> ModelPoint | None:
    chosen = [p for p in points if p.key == key.key
              and (not key.dataset_name or p.dataset_name == key.dataset_name)
              and (not key.dataset_digest or p.dataset_digest == key.dataset_digest)]
    if not chosen:
        return None
    # MLflow's pick: the newest timestamp, then the highest step, then the smallest run id.
    chosen.sort(key=lambda p: p.run_id)
    return max(chosen, key=lambda p: (p.timestamp, p.step))


_MODEL_ATTRIBUTE_VALUES: Mapping[str, Callable[[LoggedModel], str | int | None]] = {
    "model_id": lambda m: m.model_id, "experiment_id": lambda m: int(m.experiment_id), "name": lambda m: m.name,
    "artifact_location": lambda m: m.artifact_location, "creation_timestamp": lambda m: m.creation_timestamp,
    "last_updated_timestamp": lambda m: m.last_updated_timestamp, "status": lambda m: m.status,
    "status_message": lambda m: m.status_message, "model_type": lambda m: m.model_type,
    "source_run_id": lambda m: m.source_run_id,
}


def order_models(models: Sequence[LoggedModel], points: Mapping[str, Sequence[ModelPoint]],
                 order: Sequence[ModelOrderKey]) -> list[LoggedModel]:
    """``models`` sorted by ``order`` (then newest first, then by id, unless those keys were given). Missing
    values sort last in either direction; a NaN metric sorts after every number and before a missing one."""
    keys = list(order)
    if not any(k.kind == ATTRIBUTE and k.key == "creation_timestamp" for k in keys):
        keys.append(ModelOrderKey(ATTRIBUTE, "creation_timestamp", False))
    if not any(k.kind == ATTRIBUTE and k.key == "model_id" for k in keys):
        keys.append(ModelOrderKey(ATTRIBUTE, "model_id", True))
    items = list(models)
    # Stable sorts from the last key to the first give the lexicographic order; each key sorts by value (in its
    # direction) and then, ascending, by rank, so gaps stay last whatever the direction.
    for key in reversed(keys):
        ranked: list[tuple[int, Any, LoggedModel]] = []
        for model in items:
            if key.kind == METRIC:
                point = _latest(points.get(model.model_id, ()), key)
                if point is None:
                    ranked.append((2, 0.0, model))
                elif math.isnan(point.value):
                    ranked.append((1, 0.0, model))
                else:
                    ranked.append((0, point.value, model))
            else:
                value = _MODEL_ATTRIBUTE_VALUES[key.key](model)
                ranked.append((1, 0, model) if value is None else (0, value, model))
        ranked.sort(key=lambda item: item[1], reverse=not key.ascending)
        ranked.sort(key=lambda item: item[0])
        items = [item[2] for item in ranked]
    return items
