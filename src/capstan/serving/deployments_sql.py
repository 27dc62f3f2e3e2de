"""SQL adapter of `capstan.serving.ports.DeploymentStore` (SQLite and PostgreSQL).

It lives beside the port rather than in `capstan.store` (as `capstan.queue.sql` does) because the store package may
not import `capstan.resources`, which the spec's quantities come from; its tables are in `capstan.store.schema`
(migration 0400).

Specs are stored as their normalised ``to_dict()`` JSON and read back with `parse_spec`, so a stored deployment is
always a valid one. The revision check of `put` runs inside the write transaction (SQLite takes its write lock at
``BEGIN IMMEDIATE``; PostgreSQL updates with ``WHERE revision = expected`` and a primary key refuses a second
create), so two writers never lose each other's change.
"""

from __future__ import annotations

from typing import Any

import orjson
from sqlalchemy import Engine, and_, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from capstan.errors import InvalidState
from capstan.serving.ports import DeploymentRecord, LoadReport, ReplicaRecord, Role
from capstan.serving.spec import DeploymentSpec, parse_spec
from capstan.store.schema import deployment_load, deployment_replicas, deployments
from capstan.store.sql_helpers import upsert

_REPLICA_UPDATE = ("project", "deployment", "role", "model_version", "state", "url", "pid", "restarts",
                   "started_ms", "updated_ms", "message", "peak_memory")
_LOAD_UPDATE = ("in_flight", "completed", "waiting", "time_ms")


def _spec_json(spec: DeploymentSpec | None) -> str | None:
    return None if spec is None else orjson.dumps(spec.to_dict()).decode()


def _spec(text: str | None) -> DeploymentSpec | None:
    return None if text is None else parse_spec(orjson.loads(text))


def _deployment_row(record: DeploymentRecord) -> dict[str, Any]:
    return {"project": record.project, "name": record.name, "spec": _spec_json(record.spec),
            "previous": _spec_json(record.previous), "revision": record.revision,
            "versions": _versions_json(record.versions),
            "previous_versions": _versions_json(record.previous_versions),
            "desired_replicas": record.desired_replicas, "created_ms": record.created_ms,
            "updated_ms": record.updated_ms}


def _versions_json(versions: tuple[tuple[Role, str], ...]) -> str:
    return orjson.dumps([list(v) for v in versions]).decode()


def _versions(text: str) -> tuple[tuple[Role, str], ...]:
    return tuple((role, uri) for role, uri in orjson.loads(text))


def _deployment(row: Any) -> DeploymentRecord:  # row: a RowMapping
    spec = _spec(row["spec"])
    assert spec is not None
    return DeploymentRecord(row["name"], row["project"], spec, row["revision"], _versions(row["versions"]),
                            row["desired_replicas"], row["created_ms"], row["updated_ms"], _spec(row["previous"]),
                            _versions(row["previous_versions"]))


def _replica_row(replica: ReplicaRecord) -> dict[str, Any]:
    return {"id": replica.id, "project": replica.project, "deployment": replica.deployment, "role": replica.role,
            "model_version": replica.model_version, "state": replica.state, "url": replica.url, "pid": replica.pid,
            "restarts": replica.restarts, "started_ms": replica.started_ms, "updated_ms": replica.updated_ms,
            "message": replica.message, "peak_memory": replica.peak_memory}


def _replica(row: Any) -> ReplicaRecord:
    return ReplicaRecord(row["id"], row["deployment"], row["project"], row["role"], row["model_version"],
                         row["state"], row["url"], row["pid"], row["restarts"], row["started_ms"], row["updated_ms"],
                         row["message"], row["peak_memory"])


class SqlDeploymentStore:
    """`DeploymentStore` over the metadata store's ``deployments``, ``deployment_replicas`` and ``deployment_load``
    tables."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def put(self, record: DeploymentRecord, *, expected_revision: int | None = None) -> DeploymentRecord:
        """Create or replace a deployment; with ``expected_revision`` only over that stored revision (0: none)."""
        row = _deployment_row(record)
        key = and_(deployments.c.project == record.project, deployments.c.name == record.name)
        try:
            with self._engine.begin() as conn:
                current = conn.execute(select(deployments.c.revision).where(key)).scalar()
                if expected_revision is not None and (current or 0) != expected_revision:
                    raise self._conflict(record, expected_revision, current)
                if current is None:
                    conn.execute(insert(deployments).values(**row))
                else:
                    guard = key if expected_revision is None else and_(key, deployments.c.revision == current)
                    changed = conn.execute(update(deployments).where(guard).values(**row)).rowcount
                    if changed != 1:
                        raise self._conflict(record, expected_revision or current, None)
        except IntegrityError:  # another writer created it between our read and our insert
            raise self._conflict(record, expected_revision or 0, None) from None
        return record

    @staticmethod
    def _conflict(record: DeploymentRecord, expected: int, current: int | None) -> InvalidState:
        found = "it does not exist" if current is None else f"it is at revision {current}"
        if expected == 0:
            return InvalidState(f"deployment {record.name!r} already exists in project {record.project!r}")
        return InvalidState(f"deployment {record.name!r} changed meanwhile (expected revision {expected}, "
                            f"{found}); read it again and retry")

    def get(self, project: str, name: str) -> DeploymentRecord | None:
        """The deployment ``name`` of ``project``, or None."""
        with self._engine.connect() as conn:
            row = conn.execute(select(deployments).where(
                deployments.c.project == project, deployments.c.name == name)).mappings().first()
        return None if row is None else _deployment(row)

    def list(self, project: str | None = None) -> tuple[DeploymentRecord, ...]:
        """Deployments (of one project, or all), by project and name."""
        query = select(deployments).order_by(deployments.c.project, deployments.c.name)
        if project is not None:
            query = query.where(deployments.c.project == project)
        with self._engine.connect() as conn:
            rows = conn.execute(query).mappings().all()
        return tuple(_deployment(r) for r in rows)

    def delete(self, project: str, name: str) -> bool:
        """Remove the deployment, its replica rows and its load reports; False when it did not exist."""
        with self._engine.begin() as conn:
            gone = conn.execute(delete(deployments).where(
                deployments.c.project == project, deployments.c.name == name)).rowcount
            conn.execute(delete(deployment_replicas).where(
                deployment_replicas.c.project == project, deployment_replicas.c.deployment == name))
            conn.execute(delete(deployment_load).where(
                deployment_load.c.project == project, deployment_load.c.deployment == name))
        return bool(gone)

    def put_replica(self, replica: ReplicaRecord) -> None:
        """Insert or update a replica row (keyed by ``id``)."""
        with self._engine.begin() as conn:
            upsert(conn, deployment_replicas, [_replica_row(replica)], keys=("id",), update=_REPLICA_UPDATE)

    def delete_replica(self, replica_id: str) -> None:
        """Forget a replica that has stopped."""
        with self._engine.begin() as conn:
            conn.execute(delete(deployment_replicas).where(deployment_replicas.c.id == replica_id))

    def replicas(self, project: str | None = None, deployment: str | None = None) -> tuple[ReplicaRecord, ...]:
        """Replica rows (of one project, of one deployment), oldest first."""
        query = select(deployment_replicas).order_by(deployment_replicas.c.started_ms, deployment_replicas.c.id)
        if project is not None:
            query = query.where(deployment_replicas.c.project == project)
        if deployment is not None:
            query = query.where(deployment_replicas.c.deployment == deployment)
        with self._engine.connect() as conn:
            rows = conn.execute(query).mappings().all()
        return tuple(_replica(r) for r in rows)

    def report_load(self, report: LoadReport) -> None:
        """Keep a router worker's latest report for a deployment (one row per worker and deployment)."""
        row = {"project": report.project, "deployment": report.deployment, "worker": report.worker,
               "in_flight": report.in_flight, "completed": report.completed, "waiting": report.waiting,
               "time_ms": report.time_ms}
        with self._engine.begin() as conn:
            upsert(conn, deployment_load, [row], keys=("project", "deployment", "worker"), update=_LOAD_UPDATE)

    def load(self, project: str, deployment: str, *, since_ms: int) -> tuple[LoadReport, ...]:
        """Every worker's report for a deployment written at or after ``since_ms``."""
        query = select(deployment_load).where(
            deployment_load.c.project == project, deployment_load.c.deployment == deployment,
            deployment_load.c.time_ms >= since_ms).order_by(deployment_load.c.worker)
        with self._engine.connect() as conn:
            rows = conn.execute(query).mappings().all()
        return tuple(LoadReport(r["worker"], r["deployment"], r["project"], r["in_flight"], r["completed"],
                                r["waiting"], r["time_ms"]) for r in rows)
