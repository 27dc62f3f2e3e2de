"""SQL adapter of `capstan.tuning.ports.StudyStore` over the ``studies`` and ``study_trials`` tables.

The tables are declared in `capstan.store.schema` and shipped by the Alembic branch ``studies`` (revision
``0800``). The adapter lives here rather than in `capstan.store` because it reads study specs, which name queue
quantities (`capstan.resources`), and the store layer imports nothing above it (decision 0411).
"""

from __future__ import annotations

import builtins
import math
import os
import socket
from typing import Any

import orjson
from sqlalchemy import Engine, RowMapping, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from capstan.errors import ResourceAlreadyExists, ResourceDoesNotExist
from capstan.store.schema import studies, study_trials
from capstan.tuning.ports import StudyRecord, TrialRecord
from capstan.tuning.spec import parse_study_spec

__all__ = ["SqlStudyStore", "owner_alive", "owner_id"]

_S = studies.c
_T = study_trials.c


def owner_id(pid: int | None = None) -> str:
    """The owner string of a controller in this process (or of ``pid`` on this host): ``host:pid``."""
    return f"{socket.gethostname()}:{os.getpid() if pid is None else pid}"


def owner_alive(owner: str) -> bool:
    """Whether the controller ``owner`` (``host:pid``) may still run: its process exists on this host and is not a
    zombie, or it is on another host (which cannot be probed from here)."""
    host, _, pid_text = owner.rpartition(":")
    if host != socket.gethostname():
        return True
    try:
        pid = int(pid_text)
    except ValueError:
        return False
    if pid <= 0:
        return False
    try:
        import psutil

        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except Exception:  # noqa: BLE001  # NoSuchProcess / AccessDenied / ZombieProcess: gone, or not ours to judge
        return False


def _json(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS).decode()


def _finite(value: float | None) -> float | None:
    """NaN and infinities are stored as NULL (PostgreSQL and JSON would differ on them)."""
    return value if value is not None and math.isfinite(value) else None


class SqlStudyStore:
    """`StudyStore` over the metadata store (the tables' one owner)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    # -- studies ----------------------------------------------------------------------------------------------------
    @staticmethod
    def _study_row(record: StudyRecord) -> dict[str, Any]:
        return {"project": record.project, "name": record.name, "spec": _json(record.spec.to_dict()),
                "state": record.state, "reason": record.reason[:64], "message": record.message,
                "parent_run_id": record.parent_run_id, "owner": record.owner, "user": record.user,
                "created_ms": record.created_ms, "updated_ms": record.updated_ms, "ended_ms": record.ended_ms}

    @staticmethod
    def _study(row: RowMapping) -> StudyRecord:
        return StudyRecord(project=row["project"], name=row["name"], spec=parse_study_spec(orjson.loads(row["spec"])),
                           state=row["state"], created_ms=row["created_ms"], updated_ms=row["updated_ms"],
                           reason=row["reason"], message=row["message"], parent_run_id=row["parent_run_id"],
                           owner=row["owner"], user=row["user"], ended_ms=row["ended_ms"])

    def create(self, record: StudyRecord) -> StudyRecord:
        """See `StudyStore.create`."""
        try:
            with self._engine.begin() as conn:
                conn.execute(insert(studies).values(**self._study_row(record)))
        except IntegrityError:
            raise ResourceAlreadyExists(f"study {record.name!r} already exists in project {record.project!r}") \
                from None
        return record

    def get(self, project: str, name: str) -> StudyRecord | None:
        """See `StudyStore.get`."""
        with self._engine.connect() as conn:
            row = conn.execute(select(studies).where(_S.project == project, _S.name == name)).mappings().first()
        return None if row is None else self._study(row)

    def list(self, *, project: str | None = None, limit: int = 100) -> builtins.list[StudyRecord]:
        """See `StudyStore.list`."""
        query = select(studies).order_by(_S.created_ms.desc(), _S.name).limit(max(limit, 0))
        if project is not None:
            query = query.where(_S.project == project)
        with self._engine.connect() as conn:
            rows = conn.execute(query).mappings().all()
        return [self._study(row) for row in rows]

    def update(self, record: StudyRecord) -> None:
        """See `StudyStore.update`."""
        row = self._study_row(record)
        with self._engine.begin() as conn:
            changed = conn.execute(update(studies).where(_S.project == record.project, _S.name == record.name)
                                   .values(**row)).rowcount
        if changed != 1:
            raise ResourceDoesNotExist(f"study {record.name!r} does not exist in project {record.project!r}")

    def claim(self, project: str, name: str, owner: str) -> bool:
        """See `StudyStore.claim`: compare-and-set on the stored owner, after checking that it is not alive."""
        mine = (_S.project == project, _S.name == name)
        with self._engine.begin() as conn:
            row = conn.execute(select(_S.owner).where(*mine)).first()
            if row is None:
                return False
            current = row[0]
            if current == owner:
                return True
            if current is not None and owner_alive(current):
                return False
            held = _S.owner.is_(None) if current is None else _S.owner == current
            changed = conn.execute(update(studies).where(*mine, held).values(owner=owner)).rowcount
        return bool(changed == 1)

    # -- trials -----------------------------------------------------------------------------------------------------
    @staticmethod
    def _trial_row(trial: TrialRecord) -> dict[str, Any]:
        return {"project": trial.project, "study": trial.study, "number": trial.number, "state": trial.state,
                "params": _json(dict(trial.params)), "value": _finite(trial.value),
                "metrics": _json({k: v for k, v in trial.metrics.items() if math.isfinite(v)}),
                "intermediate": _json([[s, v] for s, v in trial.intermediate if math.isfinite(v)]),
                "system_attrs": _json(dict(trial.system_attrs)), "run_id": trial.run_id,
                "workload": trial.workload, "attempts": trial.attempts, "pid": trial.pid,
                "started_ms": trial.started_ms, "ended_ms": trial.ended_ms, "message": trial.message}

    @staticmethod
    def _trial(row: RowMapping) -> TrialRecord:
        return TrialRecord(project=row["project"], study=row["study"], number=row["number"], state=row["state"],
                           started_ms=row["started_ms"], params=orjson.loads(row["params"]), value=row["value"],
                           metrics=orjson.loads(row["metrics"]),
                           intermediate=tuple((int(s), float(v)) for s, v in orjson.loads(row["intermediate"])),
                           system_attrs=orjson.loads(row["system_attrs"]), run_id=row["run_id"],
                           workload=row["workload"], attempts=row["attempts"], pid=row["pid"],
                           ended_ms=row["ended_ms"], message=row["message"])

    def put_trial(self, trial: TrialRecord) -> None:
        """See `StudyStore.put_trial`: an update, or an insert when the trial is new."""
        row = self._trial_row(trial)
        key = (_T.project == trial.project, _T.study == trial.study, _T.number == trial.number)
        with self._engine.begin() as conn:
            if conn.execute(update(study_trials).where(*key).values(**row)).rowcount == 0:
                conn.execute(insert(study_trials).values(**row))

    def delete_trial(self, project: str, study: str, number: int) -> None:
        """See `StudyStore.delete_trial`."""
        with self._engine.begin() as conn:
            conn.execute(delete(study_trials).where(_T.project == project, _T.study == study, _T.number == number))

    def trials(self, project: str, study: str) -> builtins.list[TrialRecord]:
        """See `StudyStore.trials`."""
        query = select(study_trials).where(_T.project == project, _T.study == study).order_by(_T.number)
        with self._engine.connect() as conn:
            rows = conn.execute(query).mappings().all()
        return [self._trial(row) for row in rows]
