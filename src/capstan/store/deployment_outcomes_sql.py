"""SQL adapter of `capstan.serving.outcomes.OutcomeStore`, and its table ``deployment_outcomes``.

The table is defined here on the shared `capstan.store.schema.metadata` and shipped by the Alembic branch
``deployment_outcomes`` (revision ``0500``). One row per answered request, plus one per shadow copy; rows are
trimmed to the newest N per deployment by the router's flushes (`SqlOutcomeStore.trim`).
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Engine,
    Float,
    Index,
    Integer,
    String,
    Table,
    Text,
    and_,
    delete,
    insert,
    select,
    update,
)

from capstan.serving.outcomes import Outcome, Truth
from capstan.store.schema import metadata

__all__ = ["SqlOutcomeStore", "deployment_outcomes"]

_ROW_ID = BigInteger().with_variant(Integer, "sqlite")  # SQLite autoincrements only an INTEGER PRIMARY KEY

deployment_outcomes = Table(
    "deployment_outcomes", metadata,
    Column("id", _ROW_ID, primary_key=True, autoincrement=True),
    Column("project", String(256), nullable=False),
    Column("deployment", String(256), nullable=False),
    Column("request_id", String(128), nullable=False),
    Column("version", String(64), nullable=False),
    Column("role", String(16), nullable=False),
    Column("status", Integer, nullable=False),
    Column("latency_ms", Float, nullable=False),
    Column("time_ms", BigInteger, nullable=False),
    Column("predictions", Text, nullable=True),
    Column("disagrees", Boolean, nullable=True),
    Column("truth", Text, nullable=True),
    Column("truth_ms", BigInteger, nullable=True),
    Column("cold_start_ms", Float, nullable=True),
    Index("ix_deployment_outcomes_request", "project", "deployment", "request_id"),
    Index("ix_deployment_outcomes_deployment_id", "project", "deployment", "id"),
    sqlite_autoincrement=True,  # ids order rows by insertion; trimming relies on it
)

_T = deployment_outcomes.c
_TRUTH_CHUNK = 500


class SqlOutcomeStore:
    """`OutcomeStore` over the metadata store's ``deployment_outcomes`` table (its one owner)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def add(self, outcomes: Sequence[Outcome]) -> None:
        """See `OutcomeStore.add`: one multi-row insert in one transaction."""
        if not outcomes:
            return
        rows = [{"project": o.project, "deployment": o.deployment, "request_id": o.request_id[:128],
                 "version": o.version[:64], "role": o.role[:16], "status": o.status, "latency_ms": o.latency_ms,
                 "time_ms": o.time_ms, "predictions": o.predictions, "disagrees": o.disagrees, "truth": o.truth,
                 "truth_ms": o.truth_ms, "cold_start_ms": o.cold_start_ms} for o in outcomes]
        with self._engine.begin() as conn:
            conn.execute(insert(deployment_outcomes), rows)

    def record_truth(self, project: str, deployment: str, truths: Sequence[Truth], *, time_ms: int) -> list[str]:
        """See `OutcomeStore.record_truth`: the known ids are found first, then updated, in one transaction."""
        if not truths:
            return []
        mine = and_(_T.project == project, _T.deployment == deployment)
        wanted = list(dict.fromkeys(t.request_id for t in truths))
        with self._engine.begin() as conn:
            known: set[str] = set()
            for start in range(0, len(wanted), _TRUTH_CHUNK):
                chunk = wanted[start:start + _TRUTH_CHUNK]
                known.update(conn.execute(select(_T.request_id).where(mine, _T.request_id.in_(chunk))).scalars())
            for truth in truths:
                if truth.request_id in known:
                    conn.execute(update(deployment_outcomes).where(mine, _T.request_id == truth.request_id)
                                 .values(truth=truth.value, truth_ms=time_ms))
        return [rid for rid in wanted if rid not in known]

    def outcomes(self, project: str, deployment: str, *, limit: int = 100_000) -> tuple[Outcome, ...]:
        """See `OutcomeStore.outcomes`."""
        if limit <= 0:
            return ()
        query = (select(deployment_outcomes).where(_T.project == project, _T.deployment == deployment)
                 .order_by(_T.id.desc()).limit(limit))
        with self._engine.connect() as conn:
            rows = conn.execute(query).all()
        return tuple(Outcome(request_id=r.request_id, project=r.project, deployment=r.deployment, version=r.version,
                             role=r.role, status=r.status, latency_ms=r.latency_ms, time_ms=r.time_ms,
                             predictions=r.predictions, disagrees=r.disagrees, truth=r.truth, truth_ms=r.truth_ms,
                             cold_start_ms=r.cold_start_ms,
                             id=r.id) for r in reversed(rows))

    def trim(self, project: str, deployment: str, *, keep: int) -> int:
        """See `OutcomeStore.trim`: deletes every row older than the ``keep``-th newest."""
        mine = and_(_T.project == project, _T.deployment == deployment)
        with self._engine.begin() as conn:
            if keep <= 0:
                return int(conn.execute(delete(deployment_outcomes).where(mine)).rowcount)
            boundary = conn.execute(select(_T.id).where(mine).order_by(_T.id.desc())
                                    .offset(keep - 1).limit(1)).scalar()
            if boundary is None:
                return 0
            return int(conn.execute(delete(deployment_outcomes).where(mine, _T.id < boundary)).rowcount)

    def delete_deployment(self, project: str, deployment: str) -> int:
        """See `OutcomeStore.delete_deployment`."""
        with self._engine.begin() as conn:
            result = conn.execute(delete(deployment_outcomes).where(_T.project == project,
                                                                    _T.deployment == deployment))
            return int(result.rowcount)
