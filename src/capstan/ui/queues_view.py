"""Read models of the queue pages: what ``/ui/queues``, ``/ui/queues/NAME`` and ``/ui/queues/usage`` show.

- `queues_overview`: every ClusterQueue with its quota per flavor and resource (nominal, used, borrowed, lent; the
  numbers of ``capstan queue status``), every cohort with its pool and what its members use, and the latest
  preemptions (events ``workload``/``Preempted``, newest first);
- `cluster_queue_view`: one ClusterQueue: its quota, its LocalQueues, its pending workloads in admission order,
  each with the queue's explanation (``capstan why``), its admitted workloads, and its recent preemptions;
- `usage_view`: the usage showback of ``capstan queue usage`` (``GET /api/v1/queue/usage``), with prices.

Everything is computed from one `QueueManager` (the queue's state rebuilt from the store, as every ``/api/v1/queue``
call does) and, for preemptions, the event log. Workloads of projects the viewer may not read are left out (and
counted); quota is shown to anyone who may read the queue. Only the rows of the requested page are explained.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from capstan.errors import InvalidParameterValue, ResourceDoesNotExist
from capstan.queue.model import LocalQueue
from capstan.queue.records import ADMITTED, EVICTING, PENDING, WorkloadRecord
from capstan.resources.quantity import format_quantity

if TYPE_CHECKING:
    from capstan.events.ports import EventLog
    from capstan.events.records import Event
    from capstan.queue.explain import Explanation
    from capstan.queue.manager import QueueManager
    from capstan.queue.state import Node
    from capstan.queue.status import QueueStatus
    from capstan.queue.store import QueueStore
    from capstan.queue.usage import UsageRow

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 200
"""Pending rows are explained one by one, so a page holds at most this many."""
DEFAULT_PREEMPTIONS = 20
MAX_PREEMPTIONS = 200
PREEMPTION_SCAN = 200
"""A ClusterQueue page shows its own among this many latest preemptions of every queue."""
MayRead = Callable[[str], bool]


# -- quota bars -----------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class BarPart:
    """One segment of a quota bar: its kind (CSS class), its width in percent of the bar and a tooltip."""

    kind: str
    percent: float
    label: str


@dataclass(frozen=True, slots=True)
class QuotaBar:
    """One flavor-resource of a ClusterQueue or cohort, in milli-units.

    For a ClusterQueue ``nominal`` is its nominal quota, ``used`` what its admitted workloads use, ``borrowed`` the
    part of ``used`` above ``nominal`` and ``lent`` the part of its idle nominal quota that others in its cohort
    use. For a cohort ``nominal`` is its pool (its own quota plus what its members lend it), ``used`` what its
    ClusterQueues use together, and ``lent`` is None (not attributed at that level).
    """

    flavor: str
    resource: str
    nominal: int
    used: int
    borrowed: int
    lent: int | None

    @property
    def scale(self) -> int:
        """The value the full width of the bar stands for."""
        return max(self.nominal, self.used, 1)

    def fmt(self, milli: int | None) -> str:
        """A quantity of this resource for people (``16Gi``, ``2``, ``500m``)."""
        return "" if milli is None else format_quantity(milli, self.resource)

    def parts(self) -> tuple[BarPart, ...]:
        """The bar's segments from left to right: used within nominal, lent, idle, then borrowed beyond it."""
        within = min(self.used, self.nominal)
        lent = min(self.lent or 0, self.nominal - within)
        idle = self.nominal - within - lent
        amounts = (("used", within, f"used {self.fmt(within)} of nominal {self.fmt(self.nominal)}"),
                   ("lent", lent, f"lent {self.fmt(lent)} to others in the cohort"),
                   ("idle", idle, f"idle {self.fmt(idle)}"),
                   ("borrowed", self.borrowed, f"borrowed {self.fmt(self.borrowed)} beyond nominal"))
        return tuple(BarPart(kind, round(100 * amount / self.scale, 3), label)
                     for kind, amount, label in amounts if amount > 0)

    @property
    def nominal_percent(self) -> float:
        """Where the nominal quota ends, in percent of the bar."""
        return round(100 * self.nominal / self.scale, 3)

    def to_dict(self) -> dict[str, Any]:
        """JSON form: quantities in whole units, as ``GET /api/v1/queue/status``."""
        return {"flavor": self.flavor, "resource": self.resource, "nominal": self.nominal / 1000,
                "used": self.used / 1000, "borrowed": self.borrowed / 1000,
                "lent": None if self.lent is None else self.lent / 1000}


def _queue_bars(status: QueueStatus) -> tuple[QuotaBar, ...]:
    return tuple(QuotaBar(q.flavor, q.resource, q.nominal, q.used, q.borrowed, q.lent) for q in status.quota)


# -- ClusterQueues and cohorts ----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class QueueRow:
    """A ClusterQueue at a glance: ``capstan queue status`` plus the LocalQueues that feed it."""

    name: str
    cohort: str | None
    strategy: str
    stopped: bool
    preempts: bool
    pending: int
    admitted: int
    head: str | None
    head_project: str
    quota: tuple[QuotaBar, ...]
    local_queues: tuple[LocalQueue, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON form (quota in whole units)."""
        return {"cluster_queue": self.name, "cohort": self.cohort, "strategy": self.strategy,
                "stopped": self.stopped, "preempts": self.preempts, "pending": self.pending,
                "admitted": self.admitted, "head": self.head, "head_project": self.head_project,
                "quota": [b.to_dict() for b in self.quota],
                "local_queues": [{"name": lq.name, "project": lq.project, "stopped": lq.stopped}
                                 for lq in self.local_queues]}


@dataclass(frozen=True, slots=True)
class CohortRow:
    """A cohort: its parent, its direct members and, per flavor-resource, its pool against its members' use."""

    name: str
    parent: str | None
    cluster_queues: tuple[str, ...]
    cohorts: tuple[str, ...]
    quota: tuple[QuotaBar, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON form (quota in whole units)."""
        return {"cohort": self.name, "parent": self.parent, "cluster_queues": list(self.cluster_queues),
                "cohorts": list(self.cohorts), "quota": [b.to_dict() for b in self.quota]}


def _queue_rows(mgr: QueueManager) -> list[QueueRow]:
    config = mgr.config
    topo = mgr.topology
    feeders: dict[str, list[LocalQueue]] = {}
    for lq in config.local_queues:
        feeders.setdefault(lq.cluster_queue, []).append(lq)
    return [QueueRow(s.name, s.cohort, s.strategy, topo.cluster_queues[s.name].stopped, topo.preempting[s.name],
                     s.pending, s.admitted, s.head, _project_of(mgr, s.head), _queue_bars(s),
                     tuple(feeders.get(s.name, ()))) for s in mgr.status()]


def _project_of(mgr: QueueManager, workload_id: str | None) -> str:
    """The project of a workload ("" when unknown), for links to its timeline."""
    if not workload_id:
        return ""
    try:
        return mgr.get(workload_id).workload.project
    except ResourceDoesNotExist:
        return ""


def _member_usage(mgr: QueueManager, node: Node) -> dict[tuple[str, str], int]:
    """What the ClusterQueues under ``node`` use together, per flavor-resource."""
    total: dict[tuple[str, str], int] = {}
    stack = [node]
    while stack:
        current = stack.pop()
        if current.is_cq:
            for fr, value in mgr.state.usage[current.idx].items():
                total[fr] = total.get(fr, 0) + value
        stack.extend(current.children)
    return total


def _cohort_rows(mgr: QueueManager) -> list[CohortRow]:
    rows = []
    for name, node in mgr.topology.cohort_nodes.items():
        used = _member_usage(mgr, node)
        bars = tuple(QuotaBar(flavor, resource, pool, used.get((flavor, resource), 0),
                              max(0, used.get((flavor, resource), 0) - pool), None)
                     for (flavor, resource), pool in sorted(node.subtree.items()))
        rows.append(CohortRow(name, node.parent.name if node.parent is not None else None,
                              tuple(c.name for c in node.children if c.is_cq),
                              tuple(c.name for c in node.children if not c.is_cq), bars))
    return sorted(rows, key=lambda r: r.name)


# -- preemptions ----------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class PreemptionRow:
    """One preemption (an event ``workload``/``Preempted``): who was preempted, in which queue, by whom."""

    event_id: int
    time: int
    workload: str
    project: str
    cluster_queue: str
    preemptor: str
    preemptor_project: str
    message: str

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"event_id": self.event_id, "time": self.time, "workload": self.workload, "project": self.project,
                "cluster_queue": self.cluster_queue, "preemptor": self.preemptor,
                "preemptor_project": self.preemptor_project, "message": self.message}


def _cluster_queue_of(mgr: QueueManager, workload_id: str) -> str:
    try:
        record = mgr.get(workload_id)
    except ResourceDoesNotExist:  # a record the store no longer has: the event still says what happened
        return ""
    if record.admission is not None:
        return record.admission.cluster_queue
    return record.workload.cluster_queue


def recent_preemptions(mgr: QueueManager, events: EventLog, may_read: MayRead, *, limit: int,
                       cluster_queue: str | None = None) -> tuple[PreemptionRow, ...]:
    """The latest preemptions the viewer may see, newest first (of one ClusterQueue among the latest
    `PREEMPTION_SCAN` when ``cluster_queue`` is given)."""
    scan = PREEMPTION_SCAN if cluster_queue is not None else limit
    found: list[Event] = [e for e in events.list("workload", reason="Preempted", limit=scan, newest_first=True)
                          if may_read(e.project)]
    rows = []
    for event in found:
        cq = _cluster_queue_of(mgr, event.object_id)
        if cluster_queue is not None and cq != cluster_queue:
            continue
        preemptor = str(event.data.get("preemptor", ""))
        rows.append(PreemptionRow(event.id, event.time, event.object_id, event.project, cq, preemptor,
                                  _project_of(mgr, preemptor), event.message))
        if len(rows) == limit:
            break
    return tuple(rows)


@dataclass(frozen=True, slots=True)
class QueuesOverview:
    """``/ui/queues``: whether a configuration is applied, every ClusterQueue and cohort, the latest preemptions."""

    configured: bool
    cluster_queues: tuple[QueueRow, ...]
    cohorts: tuple[CohortRow, ...]
    preemptions: tuple[PreemptionRow, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON form (the twin ``GET /api/v1/views/queues``)."""
        return {"configured": self.configured, "cluster_queues": [q.to_dict() for q in self.cluster_queues],
                "cohorts": [c.to_dict() for c in self.cohorts],
                "preemptions": [p.to_dict() for p in self.preemptions]}


def check_count(value: int | str | None, *, field: str, default: int, maximum: int) -> int:
    """A page size or count between 1 and ``maximum`` (``default`` when not given)."""
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except ValueError:
        raise InvalidParameterValue(f"{field}: must be a whole number, got {str(value)[:40]!r}") from None
    if not 1 <= number <= maximum:
        raise InvalidParameterValue(f"{field}: must be between 1 and {maximum}, got {number}")
    return number


def queues_overview(mgr: QueueManager, events: EventLog, may_read: MayRead, *,
                    preemptions: int = DEFAULT_PREEMPTIONS) -> QueuesOverview:
    """Every ClusterQueue and cohort with its quota, and the latest ``preemptions`` preemptions."""
    return QueuesOverview(bool(mgr.config_text), tuple(_queue_rows(mgr)), tuple(_cohort_rows(mgr)),
                          recent_preemptions(mgr, events, may_read, limit=preemptions))


# -- one ClusterQueue -----------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class WorkloadRow:
    """A workload of a ClusterQueue page: its record, its place in the queue and, when pending, the queue's
    explanation (`capstan.queue.explain`)."""

    record: WorkloadRecord
    position: int | None
    why: Explanation | None

    @property
    def id(self) -> str:
        return self.record.id

    @property
    def requests(self) -> str:
        """``2 pods: gpu=1, cpu=4`` per pod set."""
        return "; ".join(f"{ps.count} pod{'' if ps.count == 1 else 's'}: "
                         + ", ".join(f"{r}={format_quantity(q, r)}" for r, q in sorted(ps.requests.items()))
                         for ps in self.record.workload.pod_sets)

    @property
    def flavors(self) -> str:
        """The flavors the admission chose, per resource (empty while pending)."""
        admission = self.record.admission
        if admission is None:
            return ""
        chosen = sorted({f"{r}={f}" for ps in admission.pod_sets for r, f in ps.flavors.items()})
        return ", ".join(chosen)

    def to_dict(self) -> dict[str, Any]:
        """JSON form: the record's fields, the position and the explanation with its text."""
        r, w = self.record, self.record.workload
        out: dict[str, Any] = {
            "id": r.id, "local_queue": w.queue, "cluster_queue": w.cluster_queue, "project": w.project,
            "user": w.user, "priority": w.priority, "priority_class": w.priority_class, "state": r.state,
            "reason": r.reason.value, "message": r.message, "submitted_at": r.submitted_at,
            "admitted_at": r.admitted_at, "requeue_at": r.requeue_at, "preemptions": r.preemptions,
            "position": self.position, "requests": self.requests, "flavors": self.flavors, "why": None}
        if self.why is not None:
            out["why"] = {**self.why.to_dict(), "text": self.why.render()}
        return out


@dataclass(frozen=True, slots=True)
class WorkloadPage:
    """One page of a workload list: its rows, how many the viewer may see in all, and the next page's token."""

    rows: tuple[WorkloadRow, ...]
    total: int
    hidden: int
    next_page_token: str | None

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"workloads": [row.to_dict() for row in self.rows], "total": self.total,
                "hidden_other_projects": self.hidden, "next_page_token": self.next_page_token}


@dataclass(frozen=True, slots=True)
class WorkloadsQuery:
    """Which pages of a ClusterQueue's pending and admitted workloads to show (tokens are offsets)."""

    max_results: int = DEFAULT_PAGE_SIZE
    pending_token: str | None = None
    admitted_token: str | None = None


def parse_token(token: str | None, *, field: str) -> int:
    """A page token of these pages (an offset) as an integer; `InvalidParameterValue` naming ``field``."""
    if not token:
        return 0
    if not (token.isascii() and token.isdigit()) or len(token) > 12:
        raise InvalidParameterValue(f"{field}: {token[:40]!r} is not a page token of this list")
    return int(token)


def _page(records: Sequence[tuple[WorkloadRecord, int | None]], may_read: MayRead, *, offset: int, size: int,
          explain: Callable[[WorkloadRecord], Explanation] | None) -> WorkloadPage:
    visible = [(r, pos) for r, pos in records if may_read(r.workload.project)]
    chosen = visible[offset:offset + size]
    rows = tuple(WorkloadRow(r, pos, explain(r) if explain is not None else None) for r, pos in chosen)
    more = offset + size < len(visible)
    return WorkloadPage(rows, len(visible), len(records) - len(visible), str(offset + size) if more else None)


def pending_order(mgr: QueueManager, cluster_queue: str) -> list[tuple[WorkloadRecord, int | None]]:
    """A ClusterQueue's pending workloads in admission order with their 1-based positions, then those waiting out
    a requeue backoff (no position yet), soonest first."""
    queue = mgr.pending.queue(cluster_queue)
    ordered = queue.ordered() if queue is not None else []
    out: list[tuple[WorkloadRecord, int | None]] = [(mgr.get(w.id), i) for i, w in enumerate(ordered, 1)]
    queued = {w.id for w in ordered}
    waiting = [r for r in mgr.workloads(PENDING) if r.workload.cluster_queue == cluster_queue and r.id not in queued]
    waiting.sort(key=lambda r: (r.requeue_at is None, r.requeue_at or 0, r.seq))
    return out + [(r, None) for r in waiting]


def admitted_order(mgr: QueueManager, cluster_queue: str) -> list[tuple[WorkloadRecord, int | None]]:
    """A ClusterQueue's admitted workloads (and those being evicted), in the order they were admitted."""
    records = [r for r in mgr.workloads() if r.state in (ADMITTED, EVICTING) and r.admission is not None
               and r.admission.cluster_queue == cluster_queue]
    records.sort(key=lambda r: (r.admitted_at or 0, r.seq))
    return [(r, None) for r in records]


@dataclass(frozen=True, slots=True)
class ClusterQueueView:
    """``/ui/queues/NAME``: the queue, its pending and admitted workloads (one page each), recent preemptions."""

    queue: QueueRow
    pending: WorkloadPage
    admitted: WorkloadPage
    preemptions: tuple[PreemptionRow, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON form (the twin ``GET /api/v1/views/queues/NAME``)."""
        return {"cluster_queue": self.queue.to_dict(), "pending": self.pending.to_dict(),
                "admitted": self.admitted.to_dict(), "preemptions": [p.to_dict() for p in self.preemptions]}


def cluster_queue_view(mgr: QueueManager, events: EventLog, may_read: MayRead, name: str,
                       query: WorkloadsQuery = WorkloadsQuery()) -> ClusterQueueView:
    """One ClusterQueue; `ResourceDoesNotExist` when the applied configuration has none of that name."""
    row = next((q for q in _queue_rows(mgr) if q.name == name), None)
    if row is None:
        known = ", ".join(q.name for q in mgr.config.cluster_queues) or "none; run `capstan queue apply`"
        raise ResourceDoesNotExist(f"ClusterQueue {name!r} does not exist (have: {known})")
    pending = _page(pending_order(mgr, name), may_read, size=query.max_results, explain=lambda r: mgr.why(r.id),
                    offset=parse_token(query.pending_token, field="pending_token"))
    admitted = _page(admitted_order(mgr, name), may_read, size=query.max_results, explain=None,
                     offset=parse_token(query.admitted_token, field="admitted_token"))
    return ClusterQueueView(row, pending, admitted,
                            recent_preemptions(mgr, events, may_read, limit=DEFAULT_PREEMPTIONS, cluster_queue=name))


# -- usage showback -------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class UsageView:
    """``/ui/queues/usage``: resource-hours per project, LocalQueue or user since a time, with costs when priced."""

    by: str
    since: str
    price: str
    since_ms: int
    until_ms: int
    prices: dict[str, float]
    rows: tuple[UsageRow, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON form, as ``GET /api/v1/queue/usage`` answers."""
        return {"by": self.by, "since_ms": self.since_ms, "until_ms": self.until_ms, "prices": self.prices,
                "rows": [r.to_dict() for r in self.rows]}


def usage_view(store: QueueStore, may_read: MayRead, *, by: str, since: str, price: str, now_ms: int) -> UsageView:
    """The showback report of the records the viewer may read (the computation of ``GET /api/v1/queue/usage``);
    `InvalidParameterValue` names ``by``, ``since`` or ``price``."""
    from capstan.queue.usage import GROUPINGS, parse_prices, parse_since, usage_report

    if by not in GROUPINGS:
        raise InvalidParameterValue(f"by: {by[:40]!r} is not one of {', '.join(GROUPINGS)}")
    try:
        since_ms = parse_since(since, now_ms=now_ms)
        prices = parse_prices(price or None)
    except InvalidParameterValue as exc:  # the parsers name CLI flags (--since); the page names its fields
        raise InvalidParameterValue(exc.message.removeprefix("--")) from None
    records = [r for r in store.usage_since(since_ms) if may_read(r.project)]
    rows = usage_report(records, by=by, since_ms=since_ms, now_ms=now_ms, prices=prices)
    return UsageView(by, since, price, since_ms, now_ms, prices, tuple(rows))
