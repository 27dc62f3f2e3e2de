"""SQL adapter of the tracking store: `SqlTrackingStore`, identical on SQLite and PostgreSQL.

Performance choices (see bench/tracking.py): each call is one short transaction on the pooled DB-API connection
(`capstan.store.tracking_tx`) with few round trips; metric points go in with one executemany; metric keys are
interned in ``metric_keys`` (insert-ignore then select, so racing writers agree) and cached in-process;
``latest_metrics`` is maintained by a conditional upsert that keeps the point with the largest
(step, timestamp, value), as MLflow does; `search_runs` is one SELECT plus one query per kind of run data for the
whole page. Transactions that hit a transient conflict are retried from the start.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from sqlalchemy import Engine

from capstan.clock import Clock, system_clock
from capstan.errors import InvalidParameterValue, InvalidState, ResourceAlreadyExists, ResourceDoesNotExist
from capstan.events.ports import EventLog
from capstan.events.records import NORMAL, WARNING, Event
from capstan.pages import Page
from capstan.store import tracking_models as lm
from capstan.store import tracking_sqltext as sql
from capstan.store.events_sql import SqlEventLog
from capstan.store.tracking_purge import purge_deleted
from capstan.store.tracking_query import (
    ExperimentRow,
    RunRow,
    chunks,
    dataset_payload,
    experiment_record,
    experiment_search_query,
    experiment_tags_for,
    filter_models_by_metrics,
    load_runs,
    logged_model_points,
    order_models,
    run_info,
    run_search_query,
)
from capstan.store.tracking_series import BucketCache, read_series
from capstan.store.tracking_sqltext import write_metrics, write_params
from capstan.store.tracking_tx import RawTx, Transactor
from capstan.store.tracking_validation import (
    MAX_EXPERIMENT_TAG_VALUE_LENGTH,
    MAX_INT32,
    MAX_INT64,
    MAX_RUN_NAME_LENGTH,
    MetricRow,
    check_artifact_location,
    check_batch_limits,
    check_dataset,
    check_max_results,
    check_metric,
    check_name,
    check_param,
    check_run_tags,
    check_status,
    check_step,
    check_tag,
    check_tag_mapping,
    check_time,
    check_view_type,
    generate_run_name,
    parse_experiment_id,
)
from capstan.tracking.records import (
    ACTIVE,
    DELETED,
    TERMINAL_STATUSES,
    DatasetInput,
    Experiment,
    LoggedModel,
    Metric,
    Param,
    PurgeReport,
    Run,
    RunInfo,
    RunTag,
)
from capstan.tracking.search_filter import (
    EXPERIMENTS,
    LOGGED_MODELS,
    METRIC,
    RUNS,
    DatasetFilter,
    LoggedModelOrder,
    check_dataset_filters,
    parse_filter,
    parse_logged_model_order,
    parse_order_by,
)
from capstan.tracking.search_syntax import decode_page_token, encode_page_token
from capstan.tracking.series import MetricSeries, SeriesQuery

T = TypeVar("T")

DEFAULT_PROJECT = "default"
DEFAULT_EXPERIMENT_ID = 0
DEFAULT_EXPERIMENT_NAME = "Default"
RUN_NAME_TAG = "mlflow.runName"
SOURCE_NAME_TAG = "mlflow.source.name"
GIT_COMMIT_TAG = "mlflow.source.git.commit"
_TERMINAL_REASONS = {"FINISHED": "RunFinished", "FAILED": "RunFailed", "KILLED": "RunKilled"}

Work = Callable[[RawTx, list[Event]], T]


class SqlTrackingStore:
    """`capstan.tracking.ports.TrackingStore` over the metadata store.

    Args:
        engine: from `capstan.store.engine.create_store_engine` (schema migrated).
        clock: milliseconds clock for creation/update/deletion times.
        events: where run and experiment lifecycle events go. A `SqlEventLog` on the same engine gets them inside
            the store's own transaction (a run and its ``RunCreated`` event commit together); any other
            `EventLog` gets them through ``append_many`` right after the commit.
    """

    def __init__(self, engine: Engine, *, clock: Clock = system_clock, events: EventLog | None = None) -> None:
        self._engine = engine
        self._clock = clock
        self._events = events
        self._dialect = engine.dialect.name
        self._tr = Transactor(engine)
        # A log on the same database gets the events inside the store's own transaction.
        self._inline_log = events if isinstance(events, SqlEventLog) and events.engine is engine else None
        self._key_ids: dict[str, int] = {}
        self._series_cache = BucketCache()
        self._defaults_ready = False

    # ------------------------------------------------------------------------------------------ plumbing

    def _tx(self, work: Work[T], *, write: bool = True, retry_conflicts: bool = False) -> T:
        """Run ``work(tx, pending_events)`` in one transaction; record its events; return its result.

        ``retry_conflicts`` also re-runs the transaction after a unique-key conflict with a concurrent writer
        (the re-run then sees the other writer's rows).
        """
        if not self._defaults_ready:
            self._ensure_defaults()
        pending: list[Event] = []

        def once(tx: RawTx) -> T:
            pending.clear()
            result = work(tx, pending)
            if pending and self._inline_log is not None:
                tx.many(SqlEventLog.INSERT_SQL, self._inline_log.raw_rows(pending))
            return result

        for attempt in range(3):
            try:
                result = self._tr.run(once, write=write)
                break
            except Exception as exc:
                if not (retry_conflicts and attempt < 2 and self._tr.is_integrity_error(exc)):
                    raise
        if pending and self._events is not None and self._inline_log is None:
            self._events.append_many(list(pending))
        return result

    def _read(self, work: Callable[[RawTx], T]) -> T:
        return self._tx(lambda tx, _pending: work(tx), write=False)

    def _ensure_defaults(self) -> None:
        """Create the ``default`` project and MLflow's ``Default`` experiment (id 0), once per store."""
        now = self._clock()

        def work(tx: RawTx) -> None:
            project_id = self._project_id(tx, DEFAULT_PROJECT, now)
            tx.run(sql.SQL_INSERT_DEFAULT_EXPERIMENT, (DEFAULT_EXPERIMENT_ID, project_id, DEFAULT_EXPERIMENT_NAME,
                                                    f"mlflow-artifacts:/{DEFAULT_EXPERIMENT_ID}", now, now))

        self._tr.run(work)
        self._defaults_ready = True

    def _event(self, pending: list[Event], kind: str, object_id: str, reason: str, message: str, project: str,
               data: Mapping[str, object] | None = None, *, type: str = NORMAL) -> None:
        if self._events is not None:
            pending.append(Event(0, self._clock(), kind, object_id, type, reason, message, project,
                                 dict(data or {})))

    @staticmethod
    def _project_id(tx: RawTx, name: str, now: int) -> int:
        tx.run(sql.SQL_INSERT_PROJECT, (name, now))
        row = tx.one(sql.SQL_PROJECT_ID, (name,))
        assert row is not None
        return int(row[0])

    def _intern_keys(self, keys: Sequence[str]) -> dict[str, int]:
        """Ids of metric keys, creating missing ones in their own committed transaction (never rolled back, so
        the in-process cache only ever holds ids that exist); insert-ignore then select keeps racing writers in
        agreement."""
        missing = sorted({k for k in keys if k not in self._key_ids})
        for part in chunks(missing):
            def work(tx: RawTx, part: Sequence[str] = part) -> list[tuple[Any, ...]]:
                tx.many(sql.SQL_INSERT_KEY, [(k,) for k in part])
                return tx.all(f"SELECT key, id FROM metric_keys WHERE key IN ({tx.marks(len(part))})", part)

            for key, key_id in self._tr.run(work):
                self._key_ids[key] = key_id
        return self._key_ids

    def _known_key_ids(self, tx: RawTx, keys: Sequence[str]) -> dict[str, int]:
        """Ids of the metric keys that exist (no insert), for searches and history reads."""
        missing = sorted({k for k in keys if k not in self._key_ids})
        for part in chunks(missing):
            for key, key_id in tx.all(f"SELECT key, id FROM metric_keys WHERE key IN ({tx.marks(len(part))})", part):
                self._key_ids[key] = key_id
        return {k: self._key_ids[k] for k in keys if k in self._key_ids}

    @staticmethod
    def _experiment_row(tx: RawTx, experiment_id: str) -> ExperimentRow:
        number = parse_experiment_id(experiment_id)
        row = None if number is None else tx.one(sql.SQL_EXPERIMENT, (number,))
        if row is None:
            raise ResourceDoesNotExist(f"Experiment '{experiment_id}' not found")
        return ExperimentRow._make(row)

    def _active_experiment_row(self, tx: RawTx, experiment_id: str) -> ExperimentRow:
        row = self._experiment_row(tx, experiment_id)
        if row.lifecycle_stage != ACTIVE:
            raise InvalidState(f"Experiment '{experiment_id}' is deleted; restore it first with "
                               f"`capstan experiments restore {experiment_id}`")
        return row

    @staticmethod
    def _run_row(tx: RawTx, run_id: str) -> RunRow:
        """The run's `RUN_COLUMNS` plus its project name."""
        row = tx.one(sql.SQL_RUN, (run_id,)) if isinstance(run_id, str) and run_id else None
        if row is None:
            raise ResourceDoesNotExist(f"Run '{run_id}' not found")
        return RunRow._make(row)

    @staticmethod
    def _active_run_id(tx: RawTx, run_id: str) -> int:
        """The integer id of an active run (the hot path of every write)."""
        row = tx.one(sql.SQL_ACTIVE_RUN, (run_id,)) if isinstance(run_id, str) and run_id else None
        if row is None:
            raise ResourceDoesNotExist(f"Run '{run_id}' not found")
        rid, lifecycle_stage = row
        if lifecycle_stage != ACTIVE:
            raise InvalidState(f"Run '{run_id}' is deleted; restore it before writing to it with "
                               f"`capstan runs restore {run_id}`")
        return int(rid)

    # ------------------------------------------------------------------------------------------ experiments

    def create_experiment(self, name: str, *, project: str, artifact_location: str | None = None,
                          tags: Mapping[str, str] | None = None) -> str:
        """Create an experiment in ``project`` (created on demand); returns its id.

        ``artifact_location`` is checked by `check_artifact_location`: empty gives ``mlflow-artifacts:/<id>``, a
        relative path ``p`` gives ``mlflow-artifacts:/<id>/p``, a storage URI is kept; anything that could point
        into another experiment's tree or onto the server's disk is refused."""
        check_name(name, "name")
        check_name(project, "project")
        tag_rows = check_tag_mapping(tags, limit=MAX_EXPERIMENT_TAG_VALUE_LENGTH)
        location, sub_path = check_artifact_location(artifact_location)

        def work(tx: RawTx, pending: list[Event]) -> str:
            now = self._clock()
            project_id = self._project_id(tx, project, now)
            taken = tx.one("SELECT id, lifecycle_stage FROM experiments WHERE project_id = ? AND name = ?",
                           (project_id, name))
            if taken is not None:
                taken_id, taken_stage = taken
                state = (f" (deleted; restore it with `capstan experiments restore {taken_id}` or purge it with "
                         "`capstan gc`)" if taken_stage == DELETED else "")
                raise ResourceAlreadyExists(f"Experiment '{name}' already exists in project '{project}'{state}")
            exp_id = tx.insert_id(
                "INSERT INTO experiments (project_id, name, artifact_location, lifecycle_stage, created_at, "
                "updated_at) VALUES (?, ?, ?, 'active', ?, ?)", (project_id, name, location, now, now))
            if not location:
                assigned = f"mlflow-artifacts:/{exp_id}/{sub_path}" if sub_path else f"mlflow-artifacts:/{exp_id}"
                tx.run("UPDATE experiments SET artifact_location = ? WHERE id = ?", (assigned, exp_id))
            tx.many("INSERT INTO experiment_tags (experiment_id, key, value) VALUES (?, ?, ?)",
                    [(exp_id, k, v) for k, v in tag_rows.items()])
            self._event(pending, "experiment", str(exp_id), "ExperimentCreated",
                        f"experiment '{name}' created", project, {"name": name})
            return str(exp_id)

        try:
            return self._tx(work)
        except Exception as exc:
            if self._tr.is_integrity_error(exc):
                raise ResourceAlreadyExists(f"Experiment '{name}' already exists in project '{project}'") from None
            raise

    def get_experiment(self, experiment_id: str) -> Experiment:
        """The experiment with this id, whatever its lifecycle stage."""
        def work(tx: RawTx) -> Experiment:
            row = self._experiment_row(tx, experiment_id)
            return experiment_record(row, experiment_tags_for(tx, [row.id])[row.id])

        return self._read(work)

    def get_experiment_by_name(self, name: str, *, project: str) -> Experiment | None:
        """The experiment called ``name`` in ``project`` (active or deleted), or None."""
        def work(tx: RawTx) -> Experiment | None:
            row = tx.one(sql.SQL_EXPERIMENT_BY_NAME, (project, name))
            if row is None:
                return None
            exp = ExperimentRow._make(row)
            return experiment_record(exp, experiment_tags_for(tx, [exp.id])[exp.id])

        return self._read(work)

    def search_experiments(self, *, project: str | None = None, view_type: str = "ACTIVE_ONLY",
                           filter_string: str = "", order_by: Sequence[str] = (), max_results: int = 1000,
                           page_token: str | None = None) -> Page[Experiment]:
        """Filter on ``name``/``attributes.name`` (=, !=, LIKE, ILIKE), ``creation_time``, ``last_update_time``
        and ``tags.<key>``; ``project=None`` searches every project."""
        stages = check_view_type(view_type)
        check_max_results(max_results)
        filters = parse_filter(filter_string, EXPERIMENTS)
        order = parse_order_by(order_by, EXPERIMENTS)
        offset = decode_page_token(page_token)
        query = experiment_search_query(project=project, stages=stages, filters=filters, order=order,
                                        dialect=self._dialect, limit=max_results + 1, offset=offset)

        def work(tx: RawTx) -> Page[Experiment]:
            rows = tx.all(query)
            page = rows[:max_results]
            tags = experiment_tags_for(tx, [r[0] for r in page])
            token = encode_page_token(offset + max_results) if len(rows) > max_results else None
            return Page(tuple(experiment_record(r, tags[r[0]]) for r in page), token)

        return self._read(work)

    def rename_experiment(self, experiment_id: str, new_name: str) -> None:
        """Rename an active experiment; the new name must be free in its project."""
        check_name(new_name, "new_name")

        def work(tx: RawTx, pending: list[Event]) -> None:
            row = self._active_experiment_row(tx, experiment_id)
            exp_id, old_name, project = row.id, row.name, row.project
            if old_name == new_name:
                return
            if tx.one(sql.SQL_EXPERIMENT_BY_NAME, (project, new_name)) is not None:
                raise ResourceAlreadyExists(f"Experiment '{new_name}' already exists in project '{project}'")
            tx.run("UPDATE experiments SET name = ?, updated_at = ? WHERE id = ?", (new_name, self._clock(), exp_id))
            self._event(pending, "experiment", str(exp_id), "ExperimentRenamed",
                        f"experiment '{old_name}' renamed to '{new_name}'", project,
                        {"old_name": old_name, "name": new_name})

        try:
            self._tx(work)
        except Exception as exc:
            if self._tr.is_integrity_error(exc):
                raise ResourceAlreadyExists(f"Experiment '{new_name}' already exists") from None
            raise

    def delete_experiment(self, experiment_id: str) -> None:
        """Soft delete: the experiment and its runs move to the ``deleted`` lifecycle stage."""
        self._tx(lambda tx, pending: self._set_experiment_stage(tx, pending, experiment_id, DELETED))

    def restore_experiment(self, experiment_id: str) -> None:
        """Bring a soft-deleted experiment and its runs back to ``active``."""
        self._tx(lambda tx, pending: self._set_experiment_stage(tx, pending, experiment_id, ACTIVE))

    def _set_experiment_stage(self, tx: RawTx, pending: list[Event], experiment_id: str, stage: str) -> None:
        row = self._experiment_row(tx, experiment_id)
        exp_id, name, project = row.id, row.name, row.project
        if row.lifecycle_stage == stage:
            raise InvalidState(f"Experiment '{experiment_id}' is already {stage}")
        now = self._clock()
        deleted_at = now if stage == DELETED else None
        tx.run("UPDATE experiments SET lifecycle_stage = ?, deleted_at = ?, updated_at = ? WHERE id = ?",
               (stage, deleted_at, now, exp_id))
        other = ACTIVE if stage == DELETED else DELETED
        moved = [r[0] for r in tx.all("SELECT uuid FROM runs WHERE experiment_id = ? AND lifecycle_stage = ?",
                                      (exp_id, other))]
        tx.run("UPDATE runs SET lifecycle_stage = ?, deleted_at = ? WHERE experiment_id = ? AND lifecycle_stage = ?",
               (stage, deleted_at, exp_id, other))
        verb = "Deleted" if stage == DELETED else "Restored"
        self._event(pending, "experiment", str(exp_id), f"Experiment{verb}",
                    f"experiment '{name}' {verb.lower()} with {len(moved)} run(s)", project, {"runs": len(moved)})
        for run_uuid in moved:
            self._event(pending, "run", run_uuid, f"Run{verb}", f"run {verb.lower()} with experiment '{name}'",
                        project, {"experiment_id": str(exp_id)})

    def set_experiment_tag(self, experiment_id: str, key: str, value: str) -> None:
        """Set (or overwrite) a tag on an active experiment."""
        key, value = check_tag(key, value, "tag", limit=MAX_EXPERIMENT_TAG_VALUE_LENGTH)

        def work(tx: RawTx, _pending: list[Event]) -> None:
            exp_id = self._active_experiment_row(tx, experiment_id).id
            tx.run("INSERT INTO experiment_tags (experiment_id, key, value) VALUES (?, ?, ?) "
                   "ON CONFLICT (experiment_id, key) DO UPDATE SET value = excluded.value", (exp_id, key, value))

        self._tx(work)

    def delete_experiment_tag(self, experiment_id: str, key: str) -> None:
        """Remove a tag from an active experiment; a missing tag is `ResourceDoesNotExist`."""
        def work(tx: RawTx, _pending: list[Event]) -> None:
            exp_id = self._active_experiment_row(tx, experiment_id).id
            if not tx.run("DELETE FROM experiment_tags WHERE experiment_id = ? AND key = ?", (exp_id, key)):
                raise ResourceDoesNotExist(f"No tag with name: {key} in experiment with id {experiment_id}")

        self._tx(work)

    # ------------------------------------------------------------------------------------------ runs

    def create_run(self, experiment_id: str, *, user_id: str = "", start_time: int | None = None,
                   run_name: str | None = None, tags: Sequence[RunTag] = (), source: str = "",
                   git_commit: str = "") -> RunInfo:
        """Create a RUNNING run. ``run_name`` defaults to a generated two-word name; it is also stored as the
        ``mlflow.runName`` tag, as MLflow does."""
        tag_rows = check_run_tags(tags)
        tagged_name = tag_rows.get(RUN_NAME_TAG)
        if run_name and tagged_name and run_name != tagged_name:
            raise InvalidParameterValue(
                f"run_name: {run_name!r} differs from the {RUN_NAME_TAG} tag {tagged_name!r}; give one or make "
                "them equal")
        name = run_name or tagged_name or generate_run_name()
        check_name(name, "run_name", limit=MAX_RUN_NAME_LENGTH)
        tag_rows[RUN_NAME_TAG] = name
        source = source or tag_rows.get(SOURCE_NAME_TAG, "")
        git_commit = git_commit or tag_rows.get(GIT_COMMIT_TAG, "")
        if len(git_commit) > 64:
            raise InvalidParameterValue(f"git_commit: {len(git_commit)} characters is longer than the limit of 64")
        if len(user_id) > 256:
            raise InvalidParameterValue(f"user_id: {len(user_id)} characters is longer than the limit of 256")
        start = self._clock() if start_time is None else check_time(start_time, "start_time")

        def work(tx: RawTx, pending: list[Event]) -> RunInfo:
            exp = self._active_experiment_row(tx, experiment_id)
            exp_id, exp_name, location, project = exp.id, exp.name, exp.artifact_location, exp.project
            run_uuid = uuid.uuid4().hex
            artifact_uri = f"{location.rstrip('/')}/{run_uuid}/artifacts"
            rid = tx.insert_id(sql.SQL_INSERT_RUN, (run_uuid, exp_id, name, user_id, start, artifact_uri, source,
                                                 git_commit))
            tx.many(sql.SQL_UPSERT_TAG, [(rid, k, v) for k, v in tag_rows.items()])
            self._event(pending, "run", run_uuid, "RunCreated", f"run '{name}' created in experiment '{exp_name}'",
                        project, {"experiment_id": str(exp_id), "run_name": name})
            return RunInfo(run_uuid, name, str(exp_id), user_id, "RUNNING", start, None, artifact_uri, ACTIVE,
                           source, git_commit)

        return self._tx(work)

    def get_run(self, run_id: str) -> Run:
        """The run with its latest metrics, params, tags, inputs and outputs."""
        return self._read(lambda tx: load_runs(tx, [self._run_row(tx, run_id)])[0])

    def update_run(self, run_id: str, *, status: str | None = None, end_time: int | None = None,
                   run_name: str | None = None) -> RunInfo:
        """Change status, end time or name of an active run; entering a terminal status emits RunFinished,
        RunFailed or RunKilled."""
        if status is not None:
            check_status(status)
        if run_name:
            check_name(run_name, "run_name", limit=MAX_RUN_NAME_LENGTH)
        if end_time is not None:
            end_time = check_time(end_time, "end_time")

        def work(tx: RawTx, pending: list[Event]) -> RunInfo:
            row = self._run_row(tx, run_id)
            info = run_info(row)
            if info.lifecycle_stage != ACTIVE:
                raise InvalidState(f"Run '{run_id}' is deleted; restore it before updating it with "
                                   f"`capstan runs restore {run_id}`")
            new_status = status or info.status
            new_end = info.end_time if end_time is None else end_time
            new_name = run_name or info.run_name
            tx.run("UPDATE runs SET status = ?, end_time = ?, name = ? WHERE id = ?",
                   (new_status, new_end, new_name, row.id))
            if run_name:
                tx.run(sql.SQL_UPSERT_TAG, (row.id, RUN_NAME_TAG, run_name))
            if new_status in TERMINAL_STATUSES and new_status != info.status:
                self._event(pending, "run", info.run_id, _TERMINAL_REASONS[new_status],
                            f"run '{new_name}' ended {new_status}", row.project,
                            {"status": new_status, "end_time": new_end},
                            type=WARNING if new_status == "FAILED" else NORMAL)
            return RunInfo(info.run_id, new_name, info.experiment_id, info.user_id, new_status, info.start_time,
                           new_end, info.artifact_uri, info.lifecycle_stage, info.source, info.git_commit)

        return self._tx(work)

    def delete_run(self, run_id: str) -> None:
        """Soft delete (idempotent): the run moves to the ``deleted`` lifecycle stage."""
        def work(tx: RawTx, pending: list[Event]) -> None:
            row = self._run_row(tx, run_id)
            if row.lifecycle_stage == DELETED:
                return
            tx.run("UPDATE runs SET lifecycle_stage = ?, deleted_at = ? WHERE id = ?", (DELETED, self._clock(), row.id))
            self._event(pending, "run", row.uuid, "RunDeleted", f"run '{row.name}' deleted", row.project)

        self._tx(work)

    def restore_run(self, run_id: str) -> None:
        """Bring a soft-deleted run back (idempotent); its experiment must be active."""
        def work(tx: RawTx, pending: list[Event]) -> None:
            row = self._run_row(tx, run_id)
            if row.lifecycle_stage == ACTIVE:
                return
            stage = tx.one("SELECT lifecycle_stage FROM experiments WHERE id = ?", (row.experiment_id,))
            if stage is None or stage[0] != ACTIVE:
                raise InvalidState(f"Run '{run_id}' belongs to deleted experiment '{row.experiment_id}'; restore "
                                   f"the experiment instead with `capstan experiments restore {row.experiment_id}`")
            tx.run("UPDATE runs SET lifecycle_stage = ?, deleted_at = NULL WHERE id = ?", (ACTIVE, row.id))
            self._event(pending, "run", row.uuid, "RunRestored", f"run '{row.name}' restored", row.project)

        self._tx(work)

    def log_batch(self, run_id: str, *, metrics: Sequence[Metric] = (), params: Sequence[Param] = (),
                  tags: Sequence[RunTag] = ()) -> None:
        """Atomically log metrics, params and tags. Re-logging a param with a different value raises
        `InvalidParameterValue`; an identical value is accepted. Identical metric points are absorbed."""
        check_batch_limits(len(metrics), len(params), len(tags))
        metric_rows = [check_metric(m, f"metrics[{i}]") for i, m in enumerate(metrics)]
        param_rows: dict[str, tuple[int, str]] = {}
        for index, param in enumerate(params):
            key, value = check_param(param, f"params[{index}]")
            if key in param_rows:
                raise InvalidParameterValue(
                    f"params[{index}].key: duplicate key {key!r} in one batch (also params[{param_rows[key][0]}])")
            param_rows[key] = (index, value)
        tag_rows = check_run_tags(tags)
        if RUN_NAME_TAG in tag_rows:
            check_name(tag_rows[RUN_NAME_TAG], f"tags[{RUN_NAME_TAG!r}].value", limit=MAX_RUN_NAME_LENGTH)
        key_ids = self._intern_keys([row[0] for row in metric_rows]) if metric_rows else {}

        def work(tx: RawTx, _pending: list[Event]) -> None:
            rid = self._active_run_id(tx, run_id)
            if metric_rows:
                write_metrics(tx, rid, metric_rows, key_ids)
            if param_rows:
                write_params(tx, rid, run_id, param_rows)
            if tag_rows:
                tx.many(sql.SQL_UPSERT_TAG, [(rid, k, v) for k, v in sorted(tag_rows.items())])
                if RUN_NAME_TAG in tag_rows:
                    tx.run("UPDATE runs SET name = ? WHERE id = ?", (tag_rows[RUN_NAME_TAG], rid))

        self._tx(work, retry_conflicts=bool(param_rows))

    def log_metrics_for_runs(self, batches: Mapping[str, Sequence[Metric]]) -> None:
        """Log metric points for several runs in one transaction (used by the SDK's background writer)."""
        checked: dict[str, list[MetricRow]] = {}
        for run_id, points in batches.items():
            checked[run_id] = [check_metric(m, f"batches[{run_id!r}][{i}]") for i, m in enumerate(points)]
        key_ids = self._intern_keys([row[0] for rows in checked.values() for row in rows])

        def work(tx: RawTx, _pending: list[Event]) -> None:
            for run_id in sorted(checked):
                rid = self._active_run_id(tx, run_id)
                if checked[run_id]:
                    write_metrics(tx, rid, checked[run_id], key_ids)

        self._tx(work)

    def delete_tag(self, run_id: str, key: str) -> None:
        """Remove a tag from an active run; a missing tag is `ResourceDoesNotExist`."""
        def work(tx: RawTx, _pending: list[Event]) -> None:
            rid = self._active_run_id(tx, run_id)
            if not tx.run("DELETE FROM run_tags WHERE run_id = ? AND key = ?", (rid, key)):
                raise ResourceDoesNotExist(f"No tag with name: {key} in run with id {run_id}")

        self._tx(work)

    def get_metric_history(self, run_id: str, key: str, *, max_results: int | None = None,
                           page_token: str | None = None) -> Page[Metric]:
        """Every point of ``key`` ordered by step then timestamp."""
        if max_results is not None:
            check_max_results(max_results, limit=MAX_INT32)
        offset = decode_page_token(page_token)
        limit = MAX_INT64 if max_results is None else max_results + 1

        def work(tx: RawTx) -> Page[Metric]:
            rid = self._run_row(tx, run_id).id
            key_id = self._known_key_ids(tx, [key]).get(key)
            if key_id is None:
                return Page(())
            rows = tx.all("SELECT step, timestamp, value, is_nan FROM metrics WHERE run_id = ? AND key_id = ? "
                          "ORDER BY step, timestamp, value, is_nan LIMIT ? OFFSET ?", (rid, key_id, limit, offset))
            token = None
            if max_results is not None and len(rows) > max_results:
                rows, token = rows[:max_results], encode_page_token(offset + max_results)
            nan = float("nan")
            return Page(tuple(Metric(key, nan if n else float(v), t, s) for s, t, v, n in rows), token)

        return self._read(work)

    def metric_series(self, run_id: str, key: str, query: SeriesQuery) -> MetricSeries:
        """Metric ``key`` of the run downsampled for a chart (`capstan.store.tracking_series`)."""

        def work(tx: RawTx) -> MetricSeries:
            rid = self._run_row(tx, run_id).id
            key_id = self._known_key_ids(tx, [key]).get(key)
            if key_id is None:
                raise ResourceDoesNotExist(f"Metric {key!r} not found in run '{run_id}'")
            return read_series(tx, self._dialect, rid, key_id, run_id, key, query, self._series_cache)

        return self._read(work)

    def search_runs(self, experiment_ids: Sequence[str], *, filter_string: str = "",
                    view_type: str = "ACTIVE_ONLY", max_results: int = 1000, order_by: Sequence[str] = (),
                    page_token: str | None = None) -> Page[Run]:
        """MLflow search syntax: ``metrics.x > 0.5 AND params.p = 'a' AND tags.t LIKE '%x%' AND
        attributes.status = 'FINISHED'``; ``order_by`` like ``["metrics.acc DESC", "start_time"]``."""
        stages = check_view_type(view_type)
        check_max_results(max_results)
        filters = parse_filter(filter_string, RUNS)
        order = parse_order_by(order_by, RUNS)
        offset = decode_page_token(page_token)
        exp_ids = [n for n in (parse_experiment_id(e, "experiment_ids") for e in experiment_ids) if n is not None]
        metric_names = [c.key for c in filters if c.kind == METRIC] + [o.key for o in order if o.kind == METRIC]

        def work(tx: RawTx) -> Page[Run]:
            key_ids = self._known_key_ids(tx, metric_names) if metric_names else {}
            query = run_search_query(experiment_ids=exp_ids, stages=stages, filters=filters, order=order,
                                     key_ids=key_ids, dialect=self._dialect, limit=max_results + 1, offset=offset)
            rows = tx.all(query) if query is not None and exp_ids else []
            token = encode_page_token(offset + max_results) if len(rows) > max_results else None
            return Page(tuple(load_runs(tx, rows[:max_results])), token)

        return self._read(work)

    def log_inputs(self, run_id: str, *, datasets: Sequence[DatasetInput] = (),
                   model_ids: Sequence[str] = ()) -> None:
        """Record datasets (and MLflow 3 logged models) a run consumed; re-logging one updates it."""
        rows: dict[tuple[str, str], str] = {}
        for index, dataset in enumerate(datasets):
            check_dataset(dataset, f"datasets[{index}]")
            ref = f"{dataset.digest}:{dataset.name}"
            if len(ref) > 256:  # the ref column is 256 wide; a hash keeps long names distinct
                ref = f"{dataset.digest}:{hashlib.sha256(dataset.name.encode()).hexdigest()}"
            rows[("dataset", ref)] = dataset_payload(dataset)
        for model_id in model_ids:
            rows[("model", model_id)] = "{}"

        def work(tx: RawTx, _pending: list[Event]) -> None:
            rid = self._active_run_id(tx, run_id)
            lm.require_models(tx, list(model_ids))
            tx.many("INSERT INTO run_inputs (run_id, kind, ref, payload) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (run_id, kind, ref) DO UPDATE SET payload = excluded.payload",
                    [(rid, kind, ref, payload) for (kind, ref), payload in sorted(rows.items())])

        self._tx(work)

    def log_outputs(self, run_id: str, model_ids_and_steps: Sequence[tuple[str, int]]) -> None:
        """Record MLflow 3 logged models a run produced (``runs/outputs``); re-logging updates the step."""
        steps = {model_id: check_step(step, f"model_ids_and_steps[{i}].step")
                 for i, (model_id, step) in enumerate(model_ids_and_steps)}

        def work(tx: RawTx, _pending: list[Event]) -> None:
            rid = self._active_run_id(tx, run_id)
            lm.require_models(tx, list(steps))
            tx.many("INSERT INTO run_outputs (run_id, model_id, step) VALUES (?, ?, ?) "
                    "ON CONFLICT (run_id, model_id) DO UPDATE SET step = excluded.step",
                    [(rid, m, s) for m, s in sorted(steps.items())])

        self._tx(work)

    # ------------------------------------------------------------------------------------------ logged models

    def create_logged_model(self, experiment_id: str, *, name: str | None = None,
                            source_run_id: str | None = None, model_type: str = "",
                            params: Mapping[str, str] | None = None,
                            tags: Mapping[str, str] | None = None) -> LoggedModel:
        """Create a PENDING logged model under an active experiment; its artifacts live at
        ``<experiment artifact location>/models/<model_id>/artifacts``."""
        checked = lm.check_new_model(name, model_type, params, tags)

        def work(tx: RawTx, _pending: list[Event]) -> LoggedModel:
            exp = self._active_experiment_row(tx, experiment_id)
            if source_run_id:
                self._run_row(tx, source_run_id)
            return lm.insert_model(tx, exp.id, exp.artifact_location, checked, source_run_id or None, self._clock())

        return self._tx(work)

    def get_logged_model(self, model_id: str) -> LoggedModel:
        """A logged model that is not deleted."""
        return self._read(lambda tx: lm.get_model(tx, model_id))

    def finalize_logged_model(self, model_id: str, status: str) -> LoggedModel:
        """Set the model's final status (``READY`` or ``FAILED``; MLflow's proto names are accepted too)."""
        return self._tx(lambda tx, _pending: lm.set_status(tx, model_id, status, self._clock()))

    def set_logged_model_tags(self, model_id: str, tags: Mapping[str, str]) -> None:
        """Set (or overwrite) tags on a logged model."""
        checked = check_tag_mapping(tags)
        self._tx(lambda tx, _pending: lm.set_tags(tx, model_id, checked, self._clock()))

    def log_logged_model_params(self, model_id: str, params: Mapping[str, str]) -> None:
        """Add params to a logged model (MLflow logs them in batches of 100 when a run has many)."""
        checked: dict[str, str] = {}
        for key, value in params.items():
            k, v = check_param(Param(key, value), f"params[{key!r}]")
            checked[k] = v
        self._tx(lambda tx, _pending: lm.add_params(tx, model_id, checked, self._clock()))

    def log_logged_model_metrics(self, run_id: str, points: Sequence[tuple[str, Metric, str, str]]) -> None:
        """Link metric points logged by an active run to logged models (MLflow's ``model_id`` on a metric):
        ``points`` are ``(model_id, metric, dataset_name, dataset_digest)``; they show in ``LoggedModel.metrics``."""
        rows: list[lm.LinkedMetricRow] = []
        for index, (model_id, metric, dataset_name, dataset_digest) in enumerate(points):
            field_name = f"metrics[{index}]"
            if not isinstance(model_id, str) or not model_id or len(model_id) > 64:
                raise InvalidParameterValue(f"{field_name}.model_id: must be a logged model id, got {model_id!r}")
            key, value, is_nan, timestamp, step = check_metric(metric, field_name)
            if len(dataset_name) > 500 or len(dataset_digest) > 36:
                raise InvalidParameterValue(f"{field_name}.dataset_name/dataset_digest: longer than 500/36 "
                                            "characters")
            rows.append((model_id, run_id, key, step, timestamp, value, is_nan, dataset_name, dataset_digest))

        def work(tx: RawTx, _pending: list[Event]) -> None:
            self._active_run_id(tx, run_id)
            if rows:
                lm.add_metrics(tx, rows)

        self._tx(work)

    def delete_logged_model_tag(self, model_id: str, key: str) -> None:
        """Remove one tag; a missing tag is `ResourceDoesNotExist`."""
        self._tx(lambda tx, _pending: lm.delete_tag(tx, model_id, key, self._clock()))

    def delete_logged_model(self, model_id: str) -> None:
        """Soft delete; `purge_deleted` removes it for good."""
        self._tx(lambda tx, _pending: lm.soft_delete(tx, model_id, self._clock()))

    def search_logged_models(self, experiment_ids: Sequence[str], *, filter_string: str = "",
                             max_results: int = 100, page_token: str | None = None,
                             order_by: Sequence[LoggedModelOrder] = (),
                             datasets: Sequence[DatasetFilter] = ()) -> Page[LoggedModel]:
        """Active logged models of the experiments, filtered on attributes (name, model_id, model_type, status,
        source_run_id, creation_timestamp, last_updated_timestamp), params, tags and metrics (some point matches;
        only points on ``datasets`` count when given), ordered by ``order_by`` and then newest first."""
        check_max_results(max_results)
        filters = parse_filter(filter_string, LOGGED_MODELS)
        order = parse_logged_model_order(order_by)
        wanted = check_dataset_filters(datasets)
        offset = decode_page_token(page_token)
        exp_ids = [n for n in (parse_experiment_id(e, "experiment_ids") for e in experiment_ids) if n is not None]
        metric_filters = [c for c in filters if c.kind == METRIC]
        other_filters = [c for c in filters if c.kind != METRIC]

        def work(tx: RawTx) -> Page[LoggedModel]:
            found = lm.search_models(tx, exp_ids, other_filters)
            points = logged_model_points(tx, [m.model_id for m in found]) if found else {}
            if metric_filters or wanted:
                found = filter_models_by_metrics(found, points, metric_filters, wanted)
            found = order_models(found, points, order)
            page = found[offset:offset + max_results]
            token = encode_page_token(offset + max_results) if len(found) > offset + max_results else None
            return Page(tuple(page), token)

        return self._read(work)

    # ------------------------------------------------------------------------------------------ gc

    def purge_deleted(self, *, older_than_ms: int | None = None, dry_run: bool = False) -> PurgeReport:
        """Permanently remove soft-deleted runs, experiments and logged models (those deleted at least
        ``older_than_ms`` milliseconds ago when given) and return the ArtifactStore path prefixes they owned.
        ``dry_run`` reports the same selection without deleting anything."""
        if older_than_ms is not None and older_than_ms < 0:
            raise InvalidParameterValue(f"older_than_ms: must not be negative, got {older_than_ms}")

        def work(tx: RawTx, _pending: list[Event]) -> PurgeReport:
            cutoff = None if older_than_ms is None else self._clock() - older_than_ms
            return purge_deleted(tx, cutoff, dry_run=dry_run)

        return self._tx(work)
