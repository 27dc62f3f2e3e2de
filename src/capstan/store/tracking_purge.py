"""Permanent removal of soft-deleted tracking objects (the store side of ``capstan gc``)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import and_, delete, or_, select

from capstan.artifacts.paths import path_from_uri
from capstan.errors import InvalidParameterValue
from capstan.store.schema import (
    experiment_tags,
    experiments,
    latest_metrics,
    logged_model_metrics,
    logged_models,
    metric_blocks,
    metrics,
    params,
    run_inputs,
    run_outputs,
    run_tags,
    runs,
)
from capstan.store.tracking_query import chunks
from capstan.store.tracking_tx import RawTx
from capstan.tracking.records import DELETED, PurgeReport

_RUN_CHILDREN = (metrics, metric_blocks, latest_metrics, params, run_tags, run_inputs, run_outputs)


def _prefix(uri: str) -> str | None:
    try:
        return path_from_uri(uri) or None
    except InvalidParameterValue:
        return None  # an external location (s3://, a local folder): not the ArtifactStore's to clean


def _deleted_before(column: Any, cutoff: int) -> Any:
    return and_(column.is_not(None), column <= cutoff)


def _delete_in(tx: RawTx, column: Any, ids: Sequence[Any]) -> None:
    for part in chunks(list(ids)):
        tx.run(delete(column.table).where(column.in_(part)))


def _outside(prefixes: Iterable[str], roots: set[str]) -> list[str]:
    return [p for p in prefixes if not any(p == r or p.startswith(r + "/") for r in roots)]


def purge_deleted(tx: RawTx, cutoff: int | None, *, dry_run: bool = False) -> PurgeReport:
    """Delete soft-deleted experiments (with all their runs and logged models), soft-deleted runs and logged models
    — only those deleted at or before ``cutoff`` when it is given — and return the artifact prefixes they owned.
    With ``dry_run`` the same selection is made and reported, and nothing is deleted."""
    exp_where = [experiments.c.lifecycle_stage == DELETED]
    run_where = [runs.c.lifecycle_stage == DELETED]
    model_where = [logged_models.c.lifecycle_stage == DELETED]
    if cutoff is not None:
        exp_where.append(_deleted_before(experiments.c.deleted_at, cutoff))
        run_where.append(_deleted_before(runs.c.deleted_at, cutoff))
        model_where.append(logged_models.c.updated_at <= cutoff)
    exp_rows = tx.all(select(experiments.c.id, experiments.c.artifact_location).where(*exp_where))
    exp_ids = [r[0] for r in exp_rows]
    run_cond: Any = and_(*run_where)
    model_cond: Any = and_(*model_where)
    if exp_ids:
        run_cond = or_(run_cond, runs.c.experiment_id.in_(exp_ids))
        model_cond = or_(model_cond, logged_models.c.experiment_id.in_(exp_ids))
    run_rows = tx.all(select(runs.c.id, runs.c.artifact_uri).where(run_cond))
    model_rows = tx.all(select(logged_models.c.id, logged_models.c.artifact_location).where(model_cond))

    run_ids = [r[0] for r in run_rows]
    if not dry_run:
        for child in _RUN_CHILDREN:
            _delete_in(tx, child.c.run_id, run_ids)
        _delete_in(tx, runs.c.id, run_ids)
        _delete_in(tx, logged_model_metrics.c.model_id, [r[0] for r in model_rows])
        _delete_in(tx, logged_models.c.id, [r[0] for r in model_rows])
        _delete_in(tx, experiment_tags.c.experiment_id, exp_ids)
        _delete_in(tx, experiments.c.id, exp_ids)

    exp_prefixes = {p for p in (_prefix(r[1]) for r in exp_rows) if p}
    others = {p for p in (_prefix(r[1]) for r in [*run_rows, *model_rows]) if p}
    prefixes = sorted(exp_prefixes) + sorted(_outside(others, exp_prefixes))
    return PurgeReport(experiments=len(exp_ids), runs=len(run_ids), artifact_prefixes=tuple(prefixes))
