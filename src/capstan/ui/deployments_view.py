"""Read models of the deployments pages: what ``/ui/deployments`` and ``/ui/deployments/NAME`` show, computed once
for each page, its live part and its JSON twin.

- `deployment_list`: one page of a project's deployments (by name) with state, each version's traffic weight and
  replicas ready against desired;
- `deployment_detail`: one deployment: its traffic split, per version the request rate, latency percentiles, error
  rate and quality, its replicas, live drift per feature and recent events.

The figures come from the functions ``capstan deployments status`` uses, never from a second implementation: the
state from `capstan.serving.manage.deployment_state`, the split from `capstan.serving.ports.routing_table`,
desired counts from `capstan.serving.autoscale.side_replicas`, latency, errors and quality from
`capstan.serving.abtest.quality_report`, drift from `DeploymentManager.drift` (the drift route). What differs is how
much is read: the newest `QUALITY_SAMPLE` outcomes (one query, also used for the request rates) and the newest
events through the event log's index, so a refresh costs the same at 100,000 stored outcomes as at 100
(decision 0545).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from capstan.errors import InvalidParameterValue
from capstan.events.ports import EventLog
from capstan.events.records import Event
from capstan.serving.abtest import QualityReport, VersionQuality, quality_report
from capstan.serving.autoscale import rate, side_replicas
from capstan.serving.controller import EVENT_KIND, RPS_WINDOW_MS, object_id, resource_request
from capstan.serving.drift_monitor import VersionDrift
from capstan.serving.manage import RECENT_EVENTS, DeploymentManager, deployment_state, record_json
from capstan.serving.outcomes import Outcome, OutcomeStore
from capstan.serving.ports import DeploymentRecord, DeploymentStore, ReplicaRecord, routing_table
from capstan.ui.paging import page_size

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
QUALITY_SAMPLE = 10_000
"""Outcomes (newest first) the deployment page reads per refresh: its latency, error and quality figures cover the
newest this many requests (``deployments status`` covers every kept outcome, up to 100,000)."""
RATE_WINDOW_MS = RPS_WINDOW_MS
"""Requests per second are averaged over the autoscaler's window (10 s)."""


# -- the list -----------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class RouteShare:
    """One version a deployment serves: its role, its share of traffic (percent; for the shadow, the share of
    requests mirrored), its ready replicas and the replicas the controller aims for."""

    role: str
    model_version: str
    version: str
    weight: float
    ready: int
    desired: int


@dataclass(frozen=True, slots=True)
class DeploymentRow:
    """One line of the deployments list."""

    name: str
    state: str
    revision: int
    routes: tuple[RouteShare, ...]
    updated_ms: int

    @property
    def ready(self) -> int:
        """Ready replicas over every served version."""
        return sum(r.ready for r in self.routes)

    @property
    def desired(self) -> int:
        """Replicas the controller aims for over every served version."""
        return sum(r.desired for r in self.routes)


@dataclass(frozen=True, slots=True)
class DeploymentList:
    """One page of a project's deployments, by name, and the token of the next page (None on the last)."""

    project: str
    rows: tuple[DeploymentRow, ...]
    max_results: int
    page_token: str | None
    next_page_token: str | None


def check_page_size(value: int | str | None) -> int:
    """A page size between 1 and `MAX_PAGE_SIZE` (`DEFAULT_PAGE_SIZE` when not given)."""
    return page_size(value, default=DEFAULT_PAGE_SIZE, maximum=MAX_PAGE_SIZE)


def _token(name: str) -> str:
    return base64.urlsafe_b64encode(name.encode()).decode().rstrip("=")


def _after(token: str | None) -> str:
    """The deployment name a page token continues after ("" for the first page)."""
    if not token:
        return ""
    try:
        return base64.b64decode(token + "=" * (-len(token) % 4), altchars=b"-_", validate=True).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise InvalidParameterValue(f"page_token: not a token of this list: {token[:40]!r}") from None


def route_shares(record: DeploymentRecord, replicas: Sequence[ReplicaRecord]) -> tuple[RouteShare, ...]:
    """The versions ``record`` serves (primary, canary, then shadow) with weights and replica counts: the primary
    wants the deployment's desired count, a canary or shadow its traffic share of it (as the controller does)."""
    table = routing_table(record, replicas)
    primary = record.desired_replicas
    routes = (*table.routes, *(() if table.shadow is None else (table.shadow,)))
    return tuple(RouteShare(r.role, r.model_version, r.version, r.weight, len(r.urls),
                            primary if r.role == "primary" else side_replicas(primary, r.weight)) for r in routes)


def deployment_list(store: DeploymentStore, project: str, *, max_results: int = DEFAULT_PAGE_SIZE,
                    page_token: str | None = None) -> DeploymentList:
    """The page of ``project``'s deployments after ``page_token`` (by name), with their replicas read in one query."""
    after = _after(page_token)
    records = [r for r in store.list(project) if r.name > after]
    shown = records[:max_results]
    replicas: dict[str, list[ReplicaRecord]] = defaultdict(list)
    for replica in store.replicas(project):
        replicas[replica.deployment].append(replica)
    rows = tuple(DeploymentRow(r.name, deployment_state(r, replicas[r.name]), r.revision,
                               route_shares(r, replicas[r.name]), r.updated_ms) for r in shown)
    following = _token(shown[-1].name) if len(records) > max_results and shown else None
    return DeploymentList(project, rows, max_results, page_token or None, following)


def route_json(route: RouteShare) -> dict[str, Any]:
    """A served version as JSON (the keys of ``deployments status``'s ``traffic``, plus ``desired_replicas``)."""
    return {"role": route.role, "model_version": route.model_version, "version": route.version,
            "weight": route.weight, "ready_replicas": route.ready, "desired_replicas": route.desired}


def deployment_list_json(listing: DeploymentList) -> dict[str, Any]:
    """The JSON twin of the deployments list."""
    return {"project": listing.project, "next_page_token": listing.next_page_token,
            "deployments": [{"name": r.name, "state": r.state, "revision": r.revision, "updated_ms": r.updated_ms,
                             "ready_replicas": r.ready, "desired_replicas": r.desired,
                             "traffic": [route_json(t) for t in r.routes]} for r in listing.rows]}


# -- one deployment -----------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class VersionRow:
    """One line of the versions table: a served version's route (None for a version no longer served whose
    outcomes are still in the sample), its request rate and its quality figures (None without outcomes)."""

    version: str
    role: str
    route: RouteShare | None
    rps: float
    quality: VersionQuality | None

    @property
    def error_rate(self) -> float | None:
        """Server errors (5xx, or no answer) per request in the sample; None without requests."""
        if self.quality is None or not self.quality.requests:
            return None
        return self.quality.errors / self.quality.requests


@dataclass(frozen=True, slots=True)
class Sample:
    """What the figures were computed from: ``outcomes`` newest outcomes (at most ``limit``), the oldest from
    ``oldest_ms``, and the span the request rates are averaged over."""

    outcomes: int
    limit: int
    oldest_ms: int | None
    rate_span_ms: int


@dataclass(frozen=True, slots=True)
class DriftRow:
    """One statistic of one feature of one version, from the latest drift window."""

    version: str
    role: str
    feature: str
    kind: str
    stat: str
    value: float
    p_value: float | None
    threshold: float
    drifted: bool

    @property
    def tested(self) -> float | None:
        """The number compared with the threshold: the value for PSI, the p-value for KS and chi-square."""
        return self.value if self.stat == "psi" else self.p_value


@dataclass(frozen=True, slots=True)
class DeploymentDetail:
    """Everything the deployment page shows, as of ``now_ms``."""

    record: DeploymentRecord
    state: str
    routes: tuple[RouteShare, ...]
    versions: tuple[VersionRow, ...]
    quality: QualityReport
    sample: Sample
    replicas: tuple[ReplicaRecord, ...]
    last_cold_start_s: float | None
    events: tuple[Event, ...]
    drift: Mapping[str, Any]
    now_ms: int

    @property
    def project(self) -> str:
        return self.record.project

    @property
    def name(self) -> str:
        return self.record.name

    @property
    def queued(self) -> bool:
        """Whether each replica is a workload of the queue (its timeline then has the queue's decisions)."""
        return not resource_request(self.record, "-").empty

    def role_of(self, model_version: str) -> str | None:
        """The role serving ``model_version`` now, or None when no role does (the replica is leaving)."""
        return next((role for role, uri in self.record.versions if uri == model_version), None)

    @property
    def drift_versions(self) -> tuple[VersionDrift, ...]:
        """Each version's merged drift report."""
        return tuple(VersionDrift.from_dict(v) for v in self.drift.get("versions", ()))

    @property
    def drift_rows(self) -> tuple[DriftRow, ...]:
        """Every statistic of the latest windows, drifted ones first."""
        roles = {r.version: r.role for r in self.routes}
        rows = [DriftRow(v.version, roles.get(v.version, ""), f.feature, f.kind, f.stat, f.value, f.p_value,
                         f.threshold, f.drifted) for v in self.drift_versions for f in v.features]
        return tuple(sorted(rows, key=lambda r: (not r.drifted, r.version, r.feature, r.stat)))

    @property
    def traffic(self) -> tuple[RouteShare, ...]:
        """The live routes (primary and canary), whose weights add up to 100."""
        return tuple(r for r in self.routes if r.role != "shadow")

    @property
    def shadow(self) -> RouteShare | None:
        return next((r for r in self.routes if r.role == "shadow"), None)


def version_rates(outcomes: Sequence[Outcome], *, now_ms: int, window_ms: int = RATE_WINDOW_MS,
                  limit: int = QUALITY_SAMPLE) -> tuple[dict[tuple[str, bool], float], int]:
    """Requests per second of each (version, is shadow) over the last ``window_ms``, by arrival time, and the span
    averaged over. When the sample is full and younger than the window (more than ``limit`` requests in it), the
    rate is averaged over the span the sample covers instead."""
    if not outcomes:
        return {}, window_ms
    oldest = min(o.time_ms for o in outcomes)
    span = window_ms
    if len(outcomes) >= limit and now_ms - oldest < window_ms:
        span = max(1, now_ms - oldest)
    groups: dict[tuple[str, bool], list[tuple[int, int]]] = defaultdict(list)
    for outcome in outcomes:
        groups[(outcome.version, outcome.role == "shadow")].append((outcome.time_ms, 1))
    return {key: rate(samples, now_ms, span) for key, samples in groups.items()}, span


def _version_rows(routes: Sequence[RouteShare], quality: QualityReport,
                  rates: Mapping[tuple[str, bool], float]) -> tuple[VersionRow, ...]:
    """Served versions first (primary, canary, shadow), then versions seen in the sample but no longer served."""
    by_key = {(q.version, q.role == "shadow"): q for q in quality.versions}
    rows = [VersionRow(r.version, r.role, r, rates.get((r.version, r.role == "shadow"), 0.0),
                       by_key.pop((r.version, r.role == "shadow"), None)) for r in routes]
    rows += [VersionRow(q.version, "shadow (retired)" if shadow else "retired", None, rates.get((version, shadow), 0.0),
                        q) for (version, shadow), q in by_key.items()]
    return tuple(rows)


def deployment_detail(manager: DeploymentManager, store: DeploymentStore, outcomes: OutcomeStore, events: EventLog,
                      project: str, name: str, *, now_ms: int) -> DeploymentDetail:
    """The deployment page's model (`ResourceDoesNotExist` for an unknown deployment). Reads the record and its
    replicas, the newest `QUALITY_SAMPLE` outcomes, the newest events and the last cold start, and asks each ready
    replica for its drift (`DeploymentManager.drift`, 2 s timeout each)."""
    record = manager.get(project, name)
    replicas = store.replicas(project, name)
    routes = route_shares(record, replicas)
    sample = outcomes.outcomes(project, name, limit=QUALITY_SAMPLE)
    quality = quality_report(project, name, sample)
    rates, span = version_rates(sample, now_ms=now_ms, limit=QUALITY_SAMPLE)
    key = object_id(project, name)
    recent = events.list(EVENT_KIND, key, limit=RECENT_EVENTS, newest_first=True)
    cold = events.list(EVENT_KIND, key, reason="ColdStart", limit=1, newest_first=True)
    seconds = cold[0].data.get("seconds") if cold else None
    return DeploymentDetail(
        record=record, state=deployment_state(record, list(replicas)), routes=routes,
        versions=_version_rows(routes, quality, rates), quality=quality,
        sample=Sample(len(sample), QUALITY_SAMPLE, min((o.time_ms for o in sample), default=None), span),
        replicas=replicas, last_cold_start_s=float(seconds) if isinstance(seconds, (int, float)) else None,
        events=recent, drift=manager.drift(project, name), now_ms=now_ms)


def deployment_detail_json(detail: DeploymentDetail) -> dict[str, Any]:
    """The JSON twin of the deployment page. ``quality``, ``replicas`` and ``events`` have the shapes of
    ``GET /api/v1/deployments/NAME`` (over the sample; events newest first), ``drift`` is the drift route's body, and
    ``versions`` joins each version's route, request rate and quality as the page's versions table shows them."""
    return {
        "deployment": record_json(detail.record),
        "state": detail.state,
        "traffic": [route_json(r) for r in detail.routes],
        "versions": [{"version": v.version, "role": v.role, "weight": v.route.weight if v.route else None,
                      "ready_replicas": v.route.ready if v.route else None,
                      "desired_replicas": v.route.desired if v.route else None,
                      "rps": v.rps, "error_rate": v.error_rate,
                      "quality": None if v.quality is None else dataclasses.asdict(v.quality)}
                     for v in detail.versions],
        "quality": detail.quality.to_dict(),
        "sample": {"outcomes": detail.sample.outcomes, "limit": detail.sample.limit,
                   "oldest_ms": detail.sample.oldest_ms, "rate_window_s": detail.sample.rate_span_ms / 1000},
        "replicas": [{**dataclasses.asdict(r), "serving_as": detail.role_of(r.model_version)} for r in detail.replicas],
        "last_cold_start_s": detail.last_cold_start_s,
        "events": [{"time": e.time, "type": e.type, "reason": e.reason, "message": e.message} for e in detail.events],
        "drift": dict(detail.drift),
        "now_ms": detail.now_ms,
    }
