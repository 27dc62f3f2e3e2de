"""The joints of managed deployments: the records the control plane writes and the router reads, and the store port.

Managed deployments have two halves that meet only here:

- the **control plane** (`capstan.serving.controller`, run by the leader process of ``capstan server``) turns each
  `DeploymentRecord` into supervised replica processes (each a queue workload), scales them, and writes one
  `ReplicaRecord` per replica;
- the **router** (`capstan.serving.router`, in every worker of ``capstan server``) reads a `RoutingTable` built from
  those records, sends each request to a replica of the version the traffic split (or the client's pin) chose,
  mirrors a share to the shadow, and reports the demand it sees as `LoadReport` rows, from which the autoscaler
  decides (and a deployment scaled to zero is woken).

Both go through `DeploymentStore` (SQL adapter: `capstan.serving.deployments_sql`), so several server workers share one
view, and a restarted server finds what was running.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from capstan.serving.spec import DeploymentSpec

__all__ = [
    "DeploymentRecord",
    "DeploymentStore",
    "LoadReport",
    "ReplicaRecord",
    "ReplicaState",
    "Role",
    "RoutingTable",
    "VersionRoute",
    "routing_table",
]

Role = Literal["primary", "canary", "shadow"]
"""Which part of a deployment a replica serves: the primary model, the canary (a weighted share of live traffic) or
the shadow (a mirrored share whose answers are discarded and compared)."""

ReplicaState = Literal["pending", "starting", "ready", "draining", "failed", "stopped"]
"""A replica's life: waiting for admission, loading, serving, finishing in-flight requests before it stops,
crashed (restarted with back-off), stopped."""

VERSION_HEADER = "x-capstan-version"
"""A request header that pins the model version (``3``) or role (``canary``) a request goes to."""


@dataclass(frozen=True, slots=True)
class DeploymentRecord:
    """A deployment as stored: its spec, the concrete model version each role resolved to, and bookkeeping.

    ``revision`` grows by one on each change (apply, promote, rollback, scale); ``versions`` maps each role present in
    the spec to the ``models:/NAME/VERSION`` its URI resolved to when this revision was written (an alias is resolved
    once, so a moved alias does not silently change what is served); ``previous`` is the spec of the revision before
    (what ``rollback`` returns to when there is no canary to drop). ``desired_replicas`` is the autoscaler's (or
    ``scale``'s) current count for the primary role.
    """

    name: str
    project: str
    spec: DeploymentSpec
    revision: int
    versions: tuple[tuple[Role, str], ...]
    desired_replicas: int
    created_ms: int
    updated_ms: int
    previous: DeploymentSpec | None = None
    previous_versions: tuple[tuple[Role, str], ...] = ()
    """The resolved versions of ``previous`` (so a rollback returns to the versions that ran, even when an alias
    has moved since)."""

    def version_of(self, role: Role) -> str | None:
        """The resolved ``models:/NAME/VERSION`` of ``role``, or None when the spec has no such role."""
        return next((uri for r, uri in self.versions if r == role), None)


@dataclass(frozen=True, slots=True)
class ReplicaRecord:
    """One replica process of a deployment role, as the control plane last saw it."""

    id: str
    deployment: str
    project: str
    role: Role
    model_version: str
    """The ``models:/NAME/VERSION`` it serves."""
    state: ReplicaState
    url: str | None
    """``http://127.0.0.1:PORT`` once it listens, else None."""
    pid: int | None
    restarts: int
    started_ms: int
    updated_ms: int
    message: str = ""
    peak_memory: int | None = None
    """The peak resident memory (bytes) of its current (or last) process: the largest ``VmHWM`` the controller
    sampled while it ran, or the kernel's ``ru_maxrss`` at its exit when that is larger; None until measured."""


@dataclass(frozen=True, slots=True)
class LoadReport:
    """What one router worker saw of one deployment since its previous report: requests in flight now, requests
    finished, and requests waiting for a replica because none is ready (a cold start)."""

    worker: str
    deployment: str
    project: str
    in_flight: int
    completed: int
    waiting: int
    time_ms: int


@dataclass(frozen=True, slots=True)
class VersionRoute:
    """Where one role's requests go: its resolved version, its share of traffic (percent; for the shadow, the share
    of requests mirrored) and its ready replicas' URLs."""

    role: Role
    model_version: str
    weight: float
    urls: tuple[str, ...]

    @property
    def version(self) -> str:
        """The version number clients see (``3`` of ``models:/NAME/3``)."""
        return self.model_version.rpartition("/")[2]


@dataclass(frozen=True, slots=True)
class RoutingTable:
    """The router's view of one deployment: the live routes (primary and canary, weights summing to 100) and the
    shadow, if any."""

    deployment: str
    project: str
    revision: int
    routes: tuple[VersionRoute, ...]
    shadow: VersionRoute | None


def routing_table(record: DeploymentRecord, replicas: Sequence[ReplicaRecord]) -> RoutingTable:
    """The routing table of ``record`` given its replicas (only ``ready`` ones with a URL receive traffic). Pure.

    A replica serves whichever role currently names its model version (a replica is matched by version, not by the
    role it was started for), so promoting the canary moves primary traffic onto the canary's running replicas at
    once, with no gap.

    The canary gets ``spec.canary.traffic`` percent and the primary the rest; the shadow mirrors
    ``spec.shadow.traffic`` percent of requests.
    """
    spec = record.spec

    def route(role: Role, weight: float) -> VersionRoute | None:
        version = record.version_of(role)
        if version is None:
            return None
        urls = tuple(sorted(r.url for r in replicas
                            if r.state == "ready" and r.url and r.model_version == version))
        return VersionRoute(role, version, weight, urls)

    canary_share = spec.canary.traffic if spec.canary is not None else 0.0
    live = [r for r in (route("primary", 100.0 - canary_share), route("canary", canary_share)) if r is not None]
    shadow = route("shadow", spec.shadow.traffic) if spec.shadow is not None else None
    return RoutingTable(record.name, record.project, record.revision, tuple(live), shadow)


class DeploymentStore(Protocol):
    """Deployments, their replicas and the routers' load reports, shared by every server worker."""

    def put(self, record: DeploymentRecord, *, expected_revision: int | None = None) -> DeploymentRecord:
        """Create or replace a deployment. With ``expected_revision`` the write fails with `InvalidState` unless the
        stored revision is that one (0: must not exist), so two writers never lose each other's change."""
        ...

    def get(self, project: str, name: str) -> DeploymentRecord | None:
        """The deployment ``name`` of ``project``, or None."""
        ...

    def list(self, project: str | None = None) -> tuple[DeploymentRecord, ...]:
        """Deployments (of one project, or all), by name."""
        ...

    def delete(self, project: str, name: str) -> bool:
        """Remove the deployment and its replica rows; False when it did not exist."""
        ...

    def put_replica(self, replica: ReplicaRecord) -> None:
        """Insert or update a replica row (keyed by ``id``)."""
        ...

    def delete_replica(self, replica_id: str) -> None:
        """Forget a replica that has stopped."""
        ...

    def replicas(self, project: str | None = None, deployment: str | None = None) -> tuple[ReplicaRecord, ...]:
        """Replica rows, optionally of one deployment."""
        ...

    def report_load(self, report: LoadReport) -> None:
        """Record a router worker's latest report for a deployment (one row per worker and deployment)."""
        ...

    def load(self, project: str, deployment: str, *, since_ms: int) -> tuple[LoadReport, ...]:
        """The reports of every worker for a deployment written at or after ``since_ms``."""
        ...
