"""Immutable records of the workload queue: configuration objects, workloads and admission decisions.

Quantities are integer milli-units (see `capstan.resources.quantity`). A flavor-resource pair, the unit quota is
accounted in, is written ``FR = (flavor, resource)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the engine's record, only named here
    from capstan.queue.preemption import SearchReport

FR = tuple[str, str]
"""A (flavor, resource) pair: the unit quota and usage are accounted in."""


class Reason(StrEnum):
    """Why a workload is where it is. The values are the codes users see."""

    WAITING_FOR_QUOTA = "WaitingForQuota"
    NO_FITTING_FLAVOR = "NoFittingFlavor"
    BLOCKED_BY_HEAD_OF_QUEUE = "BlockedByHeadOfQueue"
    WAITING_FOR_PREEMPTION = "WaitingForPreemption"
    GANG_INCOMPLETE = "GangIncomplete"
    INACTIVE = "Inactive"
    ADMITTED = "Admitted"
    PREEMPTED = "Preempted"
    EVICTED = "Evicted"


class QueueingStrategy(StrEnum):
    """How a ClusterQueue treats a head that does not fit."""

    STRICT_FIFO = "StrictFIFO"
    BEST_EFFORT_FIFO = "BestEffortFIFO"


class PreemptWithin(StrEnum):
    """``withinClusterQueue`` and ``reclaimWithinCohort`` values."""

    NEVER = "Never"
    LOWER_PRIORITY = "LowerPriority"
    LOWER_OR_NEWER_EQUAL_PRIORITY = "LowerOrNewerEqualPriority"
    ANY = "Any"


class Fungibility(StrEnum):
    """``flavorFungibility`` values."""

    BORROW = "Borrow"
    PREEMPT = "Preempt"
    TRY_NEXT_FLAVOR = "TryNextFlavor"


@dataclass(frozen=True, slots=True)
class Taint:
    """A node taint carried by a flavor; pods need a matching toleration."""

    key: str
    value: str = ""
    effect: str = "NoSchedule"


@dataclass(frozen=True, slots=True)
class Toleration:
    """A pod toleration; ``operator`` is ``Equal`` or ``Exists``; an empty ``effect`` matches every effect."""

    key: str = ""
    operator: str = "Equal"
    value: str = ""
    effect: str = ""

    def tolerates(self, taint: Taint) -> bool:
        """True when this toleration matches ``taint``."""
        if self.effect and self.effect != taint.effect:
            return False
        if self.operator == "Exists":
            return not self.key or self.key == taint.key
        return self.key == taint.key and self.value == taint.value


@dataclass(frozen=True, slots=True)
class GpuSharing:
    """How a shareable flavor splits each physical GPU.

    ``slots_per_gpu`` is the most workloads one GPU takes; a fraction is rounded up to whole slots.
    ``strategy`` is ``time-slicing`` or ``mps``; with ``mps`` the executor sets
    ``CUDA_MPS_ACTIVE_THREAD_PERCENTAGE`` to ``mps_thread_percentage`` or, when that is ``None``, to the
    fraction's share of 100.
    """

    slots_per_gpu: int
    strategy: str = "time-slicing"
    mps_thread_percentage: int | None = None


@dataclass(frozen=True, slots=True)
class ResourceFlavor:
    """A kind of node: labels that pods must not contradict, taints they must tolerate, optional GPU sharing.

    ``gpus`` is the number of physical GPUs of the flavor when the queue should track which device each
    workload uses (required for shareable flavors; optional otherwise).
    """

    name: str
    node_labels: Mapping[str, str] = field(default_factory=dict)
    taints: tuple[Taint, ...] = ()
    tolerations: tuple[Toleration, ...] = ()
    sharing: GpuSharing | None = None
    gpus: int | None = None


@dataclass(frozen=True, slots=True)
class ResourceQuota:
    """Quota of one resource in one flavor of a ClusterQueue or Cohort."""

    resource: str
    nominal: int
    borrowing_limit: int | None = None
    lending_limit: int | None = None


@dataclass(frozen=True, slots=True)
class FlavorQuotas:
    """One flavor's quotas within a resource group."""

    flavor: str
    resources: tuple[ResourceQuota, ...]


@dataclass(frozen=True, slots=True)
class ResourceGroup:
    """Resources that are always assigned the same flavor, with the flavors to try in order."""

    covered_resources: tuple[str, ...]
    flavors: tuple[FlavorQuotas, ...]


@dataclass(frozen=True, slots=True)
class Preemption:
    """A ClusterQueue's preemption policies (Kueue semantics)."""

    within_cluster_queue: PreemptWithin = PreemptWithin.NEVER
    reclaim_within_cohort: PreemptWithin = PreemptWithin.NEVER
    borrow_within_cohort: PreemptWithin = PreemptWithin.NEVER
    borrow_max_priority_threshold: int | None = None

    @property
    def enabled(self) -> bool:
        """True when any policy allows preemption."""
        return (self.within_cluster_queue is not PreemptWithin.NEVER
                or self.reclaim_within_cohort is not PreemptWithin.NEVER
                or self.borrow_within_cohort is not PreemptWithin.NEVER)


@dataclass(frozen=True, slots=True)
class ClusterQueue:
    """Quota holder that workloads are admitted against."""

    name: str
    resource_groups: tuple[ResourceGroup, ...]
    cohort: str | None = None
    queueing_strategy: QueueingStrategy = QueueingStrategy.BEST_EFFORT_FIFO
    preemption: Preemption = Preemption()
    when_can_borrow: Fungibility = Fungibility.BORROW
    when_can_preempt: Fungibility = Fungibility.TRY_NEXT_FLAVOR
    fair_weight: float = 1.0
    stopped: bool = False


@dataclass(frozen=True, slots=True)
class Cohort:
    """A node of the cohort tree; may hold quota of its own and have a parent cohort."""

    name: str
    parent: str | None = None
    resource_groups: tuple[ResourceGroup, ...] = ()
    fair_weight: float = 1.0


@dataclass(frozen=True, slots=True)
class LocalQueue:
    """A project's entry point into a ClusterQueue."""

    name: str
    cluster_queue: str
    project: str = "default"
    stopped: bool = False


@dataclass(frozen=True, slots=True)
class PriorityClass:
    """A named workload priority."""

    name: str
    value: int
    description: str = ""


@dataclass(frozen=True, slots=True)
class QueueConfig:
    """Everything ``capstan queue apply`` reads, validated and cross-checked.

    ``aging_seconds`` and ``hold_seconds`` are the aging rule: a workload pending at least ``aging_seconds`` is
    tried before every other workload (oldest first); one pending at least ``hold_seconds`` that does not fit
    also holds its cohort tree, so nothing else is admitted there until it is (None: no aging, no hold).
    """

    flavors: tuple[ResourceFlavor, ...] = ()
    cluster_queues: tuple[ClusterQueue, ...] = ()
    cohorts: tuple[Cohort, ...] = ()
    local_queues: tuple[LocalQueue, ...] = ()
    priority_classes: tuple[PriorityClass, ...] = ()
    fair_sharing: bool = False
    default_priority_class: str | None = None
    aging_seconds: float | None = None
    hold_seconds: float | None = None

    def local_queue(self, name: str) -> LocalQueue | None:
        """The local queue called ``name``, or None."""
        return next((lq for lq in self.local_queues if lq.name == name), None)

    def priority_value(self, name: str | None) -> int | None:
        """The value of priority class ``name`` (None when unknown); no name means the default class or 0."""
        if name is None:
            name = self.default_priority_class
            if name is None:
                return 0
        pc = next((p for p in self.priority_classes if p.name == name), None)
        return None if pc is None else pc.value


@dataclass(frozen=True, slots=True)
class PodSet:
    """``count`` identical pods, each requesting ``requests`` (resource -> milli-units).

    ``min_count`` (Kueue's ``minCount``): when the full count does not fit, the pod set may be admitted with
    fewer pods, down to this many (None: all or nothing).
    """

    name: str
    count: int
    requests: Mapping[str, int]
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Toleration, ...] = ()
    min_count: int | None = None

    @property
    def least(self) -> int:
        """The fewest pods the pod set may be admitted with."""
        return self.count if self.min_count is None else self.min_count


@dataclass(frozen=True, slots=True)
class Workload:
    """A unit of admission: pod sets admitted all together or not at all.

    ``created`` orders workloads of equal priority (seconds, any epoch the caller uses consistently).
    ``cluster_queue`` is resolved from ``queue`` (the local queue) at submission.
    ``min_run_seconds``: once admitted, the workload is not chosen as a preemption victim before it has run
    this long. ``checkpoint_interval_seconds`` (0: unknown): how often it saves a checkpoint, so that the
    engine can estimate its last save when none was recorded (see `ClusterState.checkpoints`).
    """

    id: str
    queue: str
    cluster_queue: str
    pod_sets: tuple[PodSet, ...]
    priority: int = 0
    created: float = 0.0
    project: str = "default"
    user: str = ""
    priority_class: str | None = None
    active: bool = True
    min_run_seconds: float = 0.0
    checkpoint_interval_seconds: float = 0.0

    def total(self, resource: str) -> int:
        """Total request of ``resource`` over every pod (milli-units)."""
        return sum(ps.count * ps.requests.get(resource, 0) for ps in self.pod_sets)

    @property
    def resources(self) -> tuple[str, ...]:
        """Resources the workload requests, sorted."""
        return tuple(sorted({r for ps in self.pod_sets for r, v in ps.requests.items() if v > 0}))


@dataclass(frozen=True, slots=True)
class GpuPlacement:
    """Where one pod's GPUs are: device indices of its flavor and the share of each (milli-GPUs)."""

    pod: int
    devices: tuple[int, ...]
    share: int
    mps_thread_percentage: int | None = None

    @property
    def cuda_visible_devices(self) -> str:
        """The value for ``CUDA_VISIBLE_DEVICES``."""
        return ",".join(str(d) for d in self.devices)


@dataclass(frozen=True, slots=True)
class PodSetAssignment:
    """The flavor chosen for each resource of a pod set, the usage it charges and its GPU placement."""

    name: str
    count: int
    flavors: Mapping[str, str]
    usage: Mapping[FR, int]
    gpus: tuple[GpuPlacement, ...] = ()


@dataclass(frozen=True, slots=True)
class Admission:
    """An admitted workload as the cluster state holds it."""

    workload: Workload
    cluster_queue: str
    pod_sets: tuple[PodSetAssignment, ...]
    usage: Mapping[FR, int]
    admitted_at: float

    @property
    def id(self) -> str:
        """The workload id."""
        return self.workload.id


@dataclass(frozen=True, slots=True)
class Blocking:
    """Numbers behind a quota refusal, for one flavor-resource pair."""

    flavor: str
    resource: str
    requested: int
    cq_used: int
    cq_nominal: int
    available: int
    cohort: str | None = None
    cohort_lendable: int = 0
    cohort_used: int = 0


@dataclass(frozen=True, slots=True)
class Admit:
    """Decision: admit ``workload`` with these flavor assignments."""

    workload: Workload
    cluster_queue: str
    pod_sets: tuple[PodSetAssignment, ...]
    usage: Mapping[FR, int]
    borrowing: bool


@dataclass(frozen=True, slots=True)
class Preempt:
    """Decision: evict ``victim`` so that ``preemptor`` can be admitted later."""

    victim: str
    cluster_queue: str
    preemptor: str
    reason: str


@dataclass(frozen=True, slots=True)
class Pending:
    """Decision: leave ``workload`` pending, with the reason and, when explained, its numbers and a hint."""

    workload: str
    cluster_queue: str
    reason: Reason
    message: str
    blocking: tuple[Blocking, ...] = ()
    holders: tuple[str, ...] = ()
    hint: str | None = None


Decision = Admit | Preempt | Pending


@dataclass(frozen=True, slots=True)
class CycleResult:
    """What one admission cycle decided.

    ``blocked`` maps ClusterQueues that could admit nothing to the cohort-tree version they were examined at;
    the caller hands it to `PendingQueues.mark_blocked` so unchanged queues are skipped next cycle.
    ``settled`` does the same for queues that did admit and provably have nothing left that could fit once every
    decision of this cycle is applied (`Topology.monotone` queues); a caller that applies them all (the
    simulator) may mark those blocked too, which saves the cycle that would only confirm it.
    ``futile`` (cycles without explanations only) maps ClusterQueues whose victim search was refused, in a way
    this cycle's admissions cannot undo, to the version the queue will have once every decision is applied and
    the workload searched for; such a caller hands it to `PendingQueues.mark_futile`, and the next cycle at that
    version does not repeat the search.
    ``wake_at`` is the first instant at which time alone may change what this cycle decided, besides the aging
    limits of pending workloads: the end of the minimum run time of a workload a victim search passed over (a
    search's success depends on time only through those, see `capstan.queue.preemption`); None when nothing
    but a change of state can; at or before the cycle's ``now``: any later instant may. A caller that applies
    every decision (the simulator) need not run another cycle before then unless something changes.
    """

    decisions: tuple[Decision, ...]
    blocked: Mapping[str, int] = field(default_factory=dict)
    settled: Mapping[str, int] = field(default_factory=dict)
    futile: Mapping[str, tuple[int, Workload, SearchReport]] = field(default_factory=dict)
    wake_at: float | None = None

    @property
    def admitted(self) -> tuple[Admit, ...]:
        """The admissions, in decision order."""
        return tuple(d for d in self.decisions if isinstance(d, Admit))

    @property
    def preempted(self) -> tuple[Preempt, ...]:
        """The preemptions, in decision order."""
        return tuple(d for d in self.decisions if isinstance(d, Preempt))

    @property
    def pending(self) -> tuple[Pending, ...]:
        """The pending verdicts, in decision order."""
        return tuple(d for d in self.decisions if isinstance(d, Pending))
