"""The workload queue over HTTP; `router` is mounted under ``/api/v1`` (so ``GET /api/v1/queue/status``).

Routes mirror the CLI: status, configuration, submit / list / show / why / finish / cancel workloads, and usage
showback. Workload ids may contain ``/`` (pipeline steps are ``<run>/<step>``), so routes take them with a path
converter; a new id may not end in one of the action segments (``/why``, ``/finish``...).

The metadata store is the queue's source of truth. Every call works on a `QueueManager` rebuilt from it inside
`ServerQueue.session`, which holds a lock shared by this process's threads and, through the composition root's
`capstan.queue.locking.QueueLock` (a file lock in ``CAPSTAN_HOME`` for SQLite, an advisory lock in the database for
PostgreSQL), by every process of every server on the store, so two calls never admit against the same free
quota. The same object feeds the per-queue Prometheus metrics of the server's ``/metrics`` and, in the leader
process, runs admission when a preempted workload's requeue backoff has ended.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from capstan.auth.policy import Principal, allows
from capstan.errors import (
    CapstanError,
    InvalidParameterValue,
    PermissionDenied,
    ResourceDoesNotExist,
    StoreUnavailable,
)
from capstan.queue.manager import CycleReport, QueueManager
from capstan.queue.metrics import QueueMetrics
from capstan.queue.model import PodSet, QueueConfig, Toleration
from capstan.queue.records import PENDING, WorkloadRecord, pod_set_counts, record_to_json
from capstan.server.api_v1_common import services
from capstan.server.api_v1_schemas import INT64_END, INTEGRAL
from capstan.server.errors import NAMES_AN_OBJECT
from capstan.server.security import request_project, require

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics_core import Metric

    from capstan.queue.store import QueueStore
    from capstan.services import Services

log = logging.getLogger("capstan.server.queue")

router = APIRouter(prefix="/queue", tags=["queue"])

MAX_CONFIG_BYTES = 1024 * 1024
ACTION_SEGMENTS = frozenset({"why", "finish", "cancel", "evicted", "checkpoint"})
BACKOFF_CHECK_INTERVAL_S = 5.0


# -- the server's view of the queue -------------------------------------------------------------------------------
class ServerQueue:
    """The queue as one server process serves it: a locked manager per call, metrics, and a backoff loop.

    Args:
        services: the server's open stores (engine, event log, clock) and the queue lock every process on the
            store holds around a queue session (`Services.queue_lock`).
        interval_s: how often the leader checks for workloads whose requeue backoff has ended.
    """

    def __init__(self, services: Services, *, interval_s: float = BACKOFF_CHECK_INTERVAL_S) -> None:
        from prometheus_client import CollectorRegistry

        self._services = services
        self._lock = threading.Lock()
        self.interval_s = interval_s
        # Counters and the wait histogram live for the process; the gauges are re-read from the store per scrape.
        self.registry = CollectorRegistry(auto_describe=True)
        self.metrics = QueueMetrics(self.registry)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def store(self) -> QueueStore:
        """The queue store of the composition root (`StoreUnavailable` when the queue tables are missing)."""
        return self._services.queue.get()

    @property
    def clock_ms(self) -> int:
        """The server clock, in epoch milliseconds."""
        return self._services.clock()

    @contextmanager
    def session(self) -> Iterator[QueueManager]:
        """A manager loaded from the store, used exclusively (across threads and workers) until the block ends."""
        store = self.store()
        with self._lock, self._services.queue_lock.hold(getattr(store, "transaction", None)):
            yield QueueManager(store, clock=self._services.clock, events=self._services.events,
                               metrics=self.metrics)

    # -- metrics -----------------------------------------------------------------------------------------------
    def register_metrics(self, registry: CollectorRegistry) -> None:
        """Expose the per-queue metrics on ``registry`` (the server's): gauges are read from the store per scrape."""
        registry.register(_QueueCollector(self))

    def collect_metrics(self) -> list[Metric]:
        """Refresh the gauges from the store and return every queue metric family."""
        try:
            with self.session() as mgr:
                for gauge in (self.metrics.pending, self.metrics.admitted_gauge, self.metrics.quota_used,
                              self.metrics.quota_nominal):
                    gauge.clear()  # forget queues and flavors a new configuration removed
                self.metrics.refresh(mgr)
                return list(self.registry.collect())
        except CapstanError as exc:
            log.warning("queue metrics not refreshed: %s", exc.message)
            return list(self.registry.collect())

    # -- the backoff loop --------------------------------------------------------------------------------------
    def start(self, *, cycles: bool) -> None:
        """Start the loop that admits workloads whose requeue backoff ended (``cycles``: this is the leader)."""
        if not cycles or self.interval_s <= 0 or self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="capstan-queue-backoff", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the loop (waits for a running check to end)."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout=30)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.tick()
            except CapstanError as exc:
                log.warning("queue admission check failed: %s", exc.message)
            except Exception:  # the loop must survive anything; logged with its traceback
                log.exception("queue admission check failed")

    def tick(self) -> list[CycleReport]:
        """Run admission if some preempted workload's backoff has ended; what the loop does every interval.

        Everything else that frees quota or queues work (submit, finish, cancel, apply) runs admission itself.
        """
        with self.session() as mgr:
            now = mgr.clock()
            if not any(r.requeue_at is not None and r.requeue_at <= now for r in mgr.workloads(PENDING)):
                return []
            return mgr.run_until_stable()


class _QueueCollector:
    """Prometheus collector adapter: the queue metric families, refreshed when the server registry is scraped."""

    def __init__(self, queue: ServerQueue) -> None:
        self._queue = queue

    def describe(self) -> Iterable[Metric]:
        """The families without reading the store (called once, at registration)."""
        return list(self._queue.registry.collect())

    def collect(self) -> Iterable[Metric]:
        """The families with fresh gauges."""
        return self._queue.collect_metrics()


# -- request bodies ------------------------------------------------------------------------------------------------
class TolerationBody(BaseModel):
    """A pod toleration, as in Kubernetes."""

    model_config = ConfigDict(extra="forbid", strict=True)

    key: str = ""
    operator: Literal["Equal", "Exists"] = "Equal"
    value: str = ""
    effect: str = ""


class PodSetBody(BaseModel):
    """``count`` identical pods; ``requests`` maps a resource to a quantity (``2``, ``0.25``, ``500m``, ``16Gi``);
    ``min_count`` allows a partial admission down to that many pods."""

    model_config = ConfigDict(extra="forbid", strict=True)

    name: str = Field(default="main", min_length=1, max_length=256)
    count: Annotated[int, Field(ge=1, le=100_000), INTEGRAL] = 1
    min_count: Annotated[int | None, Field(ge=1, le=100_000, description="partial admission (Kueue's minCount): "
                                           "the fewest pods the pod set may be admitted with when the full count "
                                           "does not fit (1..count; null: all or nothing)"), INTEGRAL] = None
    requests: dict[str, int | float | str] = Field(min_length=1)
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[TolerationBody] = Field(default_factory=list)


class WorkloadSubmit(BaseModel):
    """A workload to queue: all of its pod sets are admitted together or not at all."""

    model_config = ConfigDict(extra="forbid", strict=True)

    id: str = Field(min_length=1, max_length=512)
    queue: str = Field(min_length=1, max_length=256, description="LocalQueue")
    pod_sets: list[PodSetBody] = Field(min_length=1, max_length=64)
    priority_class: str | None = Field(default=None, max_length=256)
    user: str | None = Field(default=None, max_length=256,
                             description="user charged in usage reports; only a server admin may name another user")
    active: bool = True


class CheckpointReport(BaseModel):
    """A running workload saved a checkpoint now; ``step`` is the training step it holds, when known."""

    model_config = ConfigDict(extra="forbid", strict=True)

    step: Annotated[int | None, Field(ge=0, lt=INT64_END, description="the training step of the checkpoint"),
                    INTEGRAL] = None


# -- helpers -------------------------------------------------------------------------------------------------------
def _render(payload: Any, status_code: int = 200) -> Response:
    return Response(orjson.dumps(payload), status_code=status_code, media_type="application/json")


def _queue(request: Request) -> ServerQueue:
    queue = getattr(request.app.state, "queue", None)
    if not isinstance(queue, ServerQueue):
        raise StoreUnavailable("the workload queue is not enabled on this server")
    return queue


def _record(record: WorkloadRecord) -> dict[str, Any]:
    return {"id": record.id, **record_to_json(record), "pod_sets": pod_set_counts(record)}


def _changes(reports: Sequence[CycleReport]) -> dict[str, list[str]]:
    return {"admitted": [r.id for report in reports for r in report.admitted],
            "preempting": [r.id for report in reports for r in report.preempting]}


def _summary(config: QueueConfig) -> dict[str, int]:
    return {"flavors": len(config.flavors), "cluster_queues": len(config.cluster_queues),
            "cohorts": len(config.cohorts), "local_queues": len(config.local_queues),
            "priority_classes": len(config.priority_classes)}


def _check_id(workload_id: str) -> None:
    segments = workload_id.split("/")
    if any(not s or s in (".", "..") for s in segments):
        raise InvalidParameterValue(f"id: {workload_id!r} has an empty, '.' or '..' path segment")
    if len(segments) > 1 and segments[-1] in ACTION_SEGMENTS:
        raise InvalidParameterValue(f"id: {workload_id!r} may not end in '/{segments[-1]}' (an API action)")
    if any(ord(c) < 32 or c.isspace() for c in workload_id):
        raise InvalidParameterValue(f"id: {workload_id!r} contains whitespace or control characters")


def _pod_sets(bodies: Sequence[PodSetBody]) -> list[PodSet]:
    from capstan.resources.quantity import parse_quantity

    sets = []
    for i, ps in enumerate(bodies):
        requests = {name: parse_quantity(raw, path=f"pod_sets[{i}].requests.{name}")
                    for name, raw in ps.requests.items()}
        tolerations = tuple(Toleration(t.key, t.operator, t.value, t.effect) for t in ps.tolerations)
        if ps.min_count is not None and ps.min_count > ps.count:
            raise InvalidParameterValue(f"pod_sets[{i}].min_count: must be between 1 and the pod set's count "
                                        f"({ps.count}), got {ps.min_count}")
        sets.append(PodSet(ps.name, ps.count, requests, dict(ps.node_selector), tolerations, ps.min_count))
    names = [ps.name for ps in sets]
    if len(set(names)) != len(names):
        raise InvalidParameterValue("pod_sets: names must be unique")
    return sets


def _charged_user(principal: Principal, user: str | None) -> str:
    if user is None or user == principal.name:
        return principal.name
    if not principal.is_admin:
        raise PermissionDenied(f"user: only a server admin may charge usage to another user than {principal.name!r}")
    return user


def _readable(principal: Principal, project: str) -> bool:
    return principal.is_admin or allows(principal, "read", project)


def _query_error(exc: InvalidParameterValue) -> InvalidParameterValue:
    """The usage parsers name CLI flags (``--since``); the API names query parameters."""
    return InvalidParameterValue(exc.message.removeprefix("--"))


# -- routes --------------------------------------------------------------------------------------------------------
@router.get("/status", summary="Quota and counts per ClusterQueue")
def queue_status(request: Request) -> Response:
    """Each ClusterQueue's nominal, used, borrowed and lent quota per flavor, pending and admitted counts, head."""
    require(request, "read", request_project(request))
    with _queue(request).session() as mgr:
        rows = mgr.status()
    return _render({"cluster_queues": [r.to_dict() for r in rows]})


@router.get("/config", summary="The applied queue configuration")
def get_config(request: Request) -> Response:
    """The YAML last applied (``null`` before the first apply) and what it defines."""
    require(request, "read", request_project(request))
    with _queue(request).session() as mgr:
        text, config = mgr.config_text, mgr.config
    return _render({"yaml": text or None, **_summary(config)})


@router.post("/config", summary="Apply a queue configuration (server admin)")
async def apply_config(request: Request) -> Response:
    """Validate and apply the YAML request body; queued workloads are kept, then admission runs.

    Send the file as the body (``Content-Type: application/yaml``). Errors name the location, e.g.
    ``clusterQueues[2].resourceGroups[0].flavors[1]: borrowingLimit needs a cohort``.
    """
    from starlette.concurrency import run_in_threadpool

    require(request, "admin", None, target="queue/config")
    raw = await request.body()
    if len(raw) > MAX_CONFIG_BYTES:
        raise InvalidParameterValue(f"config: larger than {MAX_CONFIG_BYTES // 1024} KiB")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidParameterValue("config: the body is not UTF-8 text") from None
    if not text.strip():
        raise InvalidParameterValue("config: the body is empty; send the queue configuration YAML")
    queue = _queue(request)

    def apply() -> dict[str, Any]:
        from capstan.queue.config import load_yaml, parse_config

        parse_config(load_yaml(text, source="config"))  # fail before taking the queue lock
        with queue.session() as mgr:
            report = mgr.apply_config(text)
            reports = mgr.run_until_stable()
            return {**_summary(mgr.config), "kept": report.kept, "evicted": list(report.evicted),
                    "orphaned": list(report.orphaned), **_changes(reports)}

    return _render(await run_in_threadpool(apply))


@router.post("/workloads", status_code=201, responses=NAMES_AN_OBJECT, summary="Submit a workload")
def submit_workload(request: Request, body: WorkloadSubmit) -> Response:
    """Queue a workload in a LocalQueue (write permission in that queue's project), then run admission.

    A request that no queue could ever hold is rejected at once, with the reason.
    """
    _check_id(body.id)
    with _queue(request).session() as mgr:
        lq = mgr.config.local_queue(body.queue)
        project = lq.project if lq is not None else request_project(request)
        principal = require(request, "write", project, target=f"workload/{body.id}")
        user = _charged_user(principal, body.user)
        mgr.submit(body.id, body.queue, _pod_sets(body.pod_sets), priority_class=body.priority_class,
                   project=project, user=user, active=body.active)
        reports = mgr.run_until_stable()
        record = mgr.get(body.id)
    return _render({"workload": _record(record), **_changes(reports)}, 201)


@router.get("/workloads", summary="List active workloads")
def list_workloads(request: Request,
                   state: Annotated[Literal["Pending", "Admitted", "Evicting"] | None, Query()] = None,
                   queue: Annotated[str | None, Query(description="LocalQueue or ClusterQueue name")] = None,
                   ) -> Response:
    """Pending, admitted and evicting workloads in submission order, in the projects the caller may read."""
    principal = require(request, "read", request_project(request))
    with _queue(request).session() as mgr:
        records = mgr.workloads(state)
    shown = [r for r in records if _readable(principal, r.workload.project)
             and (queue is None or queue in (r.workload.queue, r.workload.cluster_queue))]
    return _render({"workloads": [_record(r) for r in shown]})


@router.get("/workloads/{workload_id:path}/why", summary="Why a workload is pending (or where it runs)")
def why_workload(request: Request, workload_id: str) -> Response:
    """What ``capstan why`` prints, as JSON: state, position, reason code, blocking numbers, holders, hint.

    ``text`` is the same explanation rendered for one screen.
    """
    try:
        with _queue(request).session() as mgr:
            record = mgr.get(workload_id)
            require(request, "read", record.workload.project, target=f"workload/{workload_id}")
            explanation = mgr.why(workload_id)
    except ResourceDoesNotExist:
        kueue = _kueue_step_why(request, workload_id)
        if kueue is None:
            raise
        return _render(kueue)
    return _render({**explanation.to_dict(), "text": explanation.render()})


def _kueue_step_why(request: Request, workload_id: str) -> dict[str, object] | None:
    """A pipeline step's attempt that Kueue admits (Kueue mode) is no workload of Capstan's queue: what Kueue said
    about it, for whoever may read the step's project (None when nothing was recorded)."""
    from capstan.troubleshoot.sources import step_kueue_why

    found = step_kueue_why(services(request).events, workload_id)
    if found is not None:
        require(request, "read", str(found["project"]), target=f"step/{workload_id.partition('#')[0]}")
    return found


def _end(request: Request, workload_id: str, action: Literal["finish", "cancel", "evicted"]) -> Response:
    with _queue(request).session() as mgr:
        record = mgr.get(workload_id)
        require(request, "write", record.workload.project, target=f"workload/{workload_id}")
        if action == "finish":
            done = mgr.finish(workload_id)
        elif action == "cancel":
            done = mgr.cancel(workload_id)
        else:
            done = mgr.evicted(workload_id)
        reports = mgr.run_until_stable()
    return _render({"workload": _record(done), **_changes(reports)})


@router.post("/workloads/{workload_id:path}/finish", summary="An admitted workload ended")
def finish_workload(request: Request, workload_id: str) -> Response:
    """Return the workload's quota, then run admission (``admitted`` lists who got in)."""
    return _end(request, workload_id, "finish")


@router.post("/workloads/{workload_id:path}/cancel", summary="Withdraw a workload")
def cancel_workload(request: Request, workload_id: str) -> Response:
    """Withdraw a pending or admitted workload (returning its quota), then run admission."""
    return _end(request, workload_id, "cancel")


@router.post("/workloads/{workload_id:path}/evicted", summary="A preempted workload has stopped")
def evicted_workload(request: Request, workload_id: str) -> Response:
    """The executor stopped a workload the queue preempted (state ``Evicting``): its quota is returned and it is
    requeued after a backoff; admission then runs for whoever preempted it."""
    return _end(request, workload_id, "evicted")


@router.post("/workloads/{workload_id:path}/checkpoint", responses=NAMES_AN_OBJECT,
             summary="A running workload saved a checkpoint")
def checkpoint_workload(request: Request, workload_id: str, body: CheckpointReport | None = None) -> Response:
    """Record that an admitted workload saved a checkpoint now (server clock), of ``step`` when given: a preemption
    no longer loses the work before it, victim searches prefer workloads that saved recently, and ``capstan why``
    shows what a preemption lost. Write permission in the workload's project (what `capstan.checkpoint.save` in the
    workload's processes uses, with their ``CAPSTAN_TOKEN``). A workload that is not running (pending, being
    evicted, ended) answers 400 ``INVALID_STATE``."""
    step = None if body is None else body.step
    with _queue(request).session() as mgr:
        record = mgr.get(workload_id)
        require(request, "write", record.workload.project, target=f"workload/{workload_id}")
        saved = mgr.record_checkpoint(workload_id, step=step)
    return _render({"workload": _record(saved)})


@router.get("/workloads/{workload_id:path}", summary="Show a workload")
def get_workload(request: Request, workload_id: str) -> Response:
    """The workload record in any state: request, state, reason, admission with flavors and GPU placement."""
    with _queue(request).session() as mgr:
        record = mgr.get(workload_id)
    require(request, "read", record.workload.project, target=f"workload/{workload_id}")
    return _render({"workload": _record(record)})


@router.get("/usage", summary="Usage showback")
def usage(request: Request, by: Annotated[Literal["project", "queue", "user"], Query()] = "project",
          since: Annotated[str, Query(max_length=32, description="window: 90s, 30m, 12h, 7d or 2w")] = "7d",
          price: Annotated[str | None, Query(max_length=256, description="gpu=2.5,cpu=0.05,memory=0.01")] = None,
          ) -> Response:
    """GPU-, CPU- and memory-GB-hours from admission records, in the projects the caller may read."""
    from capstan.queue.usage import parse_prices, parse_since, usage_report

    principal = require(request, "read", request_project(request))
    queue = _queue(request)
    now = queue.clock_ms
    try:
        since_ms = parse_since(since, now_ms=now)
        prices = parse_prices(price)
    except InvalidParameterValue as exc:
        raise _query_error(exc) from None
    records = [r for r in queue.store().usage_since(since_ms) if _readable(principal, r.project)]
    rows = usage_report(records, by=by, since_ms=since_ms, now_ms=now, prices=prices)
    return _render({"by": by, "since_ms": since_ms, "until_ms": now, "prices": prices,
                    "rows": [r.to_dict() for r in rows]})

