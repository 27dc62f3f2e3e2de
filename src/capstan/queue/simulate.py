"""Trace replay in virtual time through the admission engine (`capstan simulate`).

The replay is event-driven: arrivals, completions, requeues after preemption and attained-service demotions are
the only instants at which the state changes, and at each one the same `schedule` the queue manager uses runs
until it decides nothing new. Time alone changes a cycle's outcome only where a pending job reaches an aging limit
or a protection that a victim search passed over ends (`CycleResult.wake_at`), so cycles run at those instants
too, and at no other (an instant holding only outdated events is skipped).
Each trace job becomes a one-pod workload asking ``num_gpus`` GPUs from the LocalQueue named by its ``cluster``.

Policies (a policy never reads a job's true duration unless it is labelled ``oracle``):

* ``strict-fifo``: Kueue ``StrictFIFO``, nominal quota only (no borrowing), no preemption.
* ``best-effort-fifo``: Kueue's default, ``BestEffortFIFO`` with cohort borrowing, no preemption.
* ``capstan-las``: Capstan's policy: least-attained-service priority levels (Tiresias-style: a job's priority
  drops as the GPU-hours it has received cross thresholds), ``BestEffortFIFO`` backfill, cohort borrowing, and
  preemption (lower priority within a queue, reclaim of borrowed quota, preemption while borrowing). Preempted
  jobs resume from their last checkpoint after a restart overhead; the lost work is reported as wasted.
* ``capstan-small-first``: fewest GPUs first, ``BestEffortFIFO`` backfill, cohort borrowing, no preemption.
* ``capstan-small-first-reclaim``: the same order, and a job that fits its queue's nominal quota may reclaim lent
  GPUs by preempting borrowers' jobs that ask more GPUs than it does (``reclaimWithinCohort: LowerPriority``);
  victims are those that lose least work since their last checkpoint (``checkpointIntervalSeconds``), and only
  after ``minRunSeconds`` of running.
* ``sjf-oracle`` (oracle): shortest job first by true duration, best-effort FIFO with borrowing, no preemption.

Policies named ``capstan-*`` follow the configuration's aging rule (``aging``; the FIFO baselines and the oracle
do not): a job pending longer than ``afterSeconds`` is tried first, one pending longer than ``holdAfterSeconds``
holds its cohort tree, and a job admitted by the rule keeps the top priority (no LAS demotion, no preemption by
younger jobs).

The measures (JCT, wait, bounded slowdown, wasted work; per policy and per ClusterQueue) come from
`capstan.queue.sim_measures`.

Partial admission (``simulation.partialAdmission: {minFraction: F, gpusPerPod: P}``, off by default): a job of
more than ``P`` GPUs, a multiple of ``P``, becomes ``num_gpus / P`` pods of ``P`` GPUs that declare ``min_count =
ceil(F x pods)``; admitted with fewer pods, it runs longer in proportion (its work is conserved: the remaining
duration scales by pods asked over pods got). `SimResult.partial_admissions` counts such admissions.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from capstan.errors import InvalidParameterValue
from capstan.queue.engine import AGED_PRIORITY, schedule
from capstan.queue.model import (
    Admission,
    Admit,
    ClusterQueue,
    FlavorQuotas,
    PodSet,
    Preempt,
    Preemption,
    PreemptWithin,
    QueueConfig,
    QueueingStrategy,
    ResourceGroup,
    Workload,
)
from capstan.queue.pending import PendingQueues
from capstan.queue.sim_measures import SLOWDOWN_FLOOR_S, JobOutcome, Measures, jain, measures
from capstan.queue.sim_measures import percentile as percentile
from capstan.queue.state import ClusterState, Topology
from capstan.queue.trace import TraceJob
from capstan.resources.quantity import GPU_RESOURCES, MILLI


@dataclass(frozen=True, slots=True)
class Policy:
    """A named way of configuring the queue for a replay."""

    name: str
    strategy: QueueingStrategy
    borrowing: bool
    preemption: Preemption
    priority: str  # "fifo", "las" or "sjf"
    oracle: bool = False
    description: str = ""
    aging: bool = False  # whether the configuration's aging rule applies (Kueue's FIFO baselines: no)


_PREEMPT_ALL = Preemption(PreemptWithin.LOWER_PRIORITY, PreemptWithin.ANY, PreemptWithin.LOWER_PRIORITY)

POLICIES: dict[str, Policy] = {
    "strict-fifo": Policy("strict-fifo", QueueingStrategy.STRICT_FIFO, False, Preemption(), "fifo",
                          description="Kueue StrictFIFO, nominal quota only"),
    "best-effort-fifo": Policy("best-effort-fifo", QueueingStrategy.BEST_EFFORT_FIFO, True, Preemption(), "fifo",
                               description="Kueue default: BestEffortFIFO with cohort borrowing"),
    "capstan-las": Policy("capstan-las", QueueingStrategy.BEST_EFFORT_FIFO, True, _PREEMPT_ALL, "las",
                          description="least attained service + preemption + backfill + borrowing + aging",
                          aging=True),
    "capstan-small-first": Policy("capstan-small-first", QueueingStrategy.BEST_EFFORT_FIFO, True, Preemption(),
                                  "small", description="fewest GPUs first, backfill, borrowing, aging",
                                  aging=True),
    "capstan-small-first-reclaim": Policy(
        "capstan-small-first-reclaim", QueueingStrategy.BEST_EFFORT_FIFO, True,
        Preemption(reclaim_within_cohort=PreemptWithin.LOWER_PRIORITY), "small",
        description="fewest GPUs first, backfill, borrowing, checkpoint-aware reclaim of lent quota, aging",
        aging=True),
    "sjf-oracle": Policy("sjf-oracle", QueueingStrategy.BEST_EFFORT_FIFO, True, Preemption(), "sjf", oracle=True,
                         description="shortest job first by true duration (oracle reference)"),
}


GPUS_PER_POD = 8
"""``simulation.partialAdmission.gpusPerPod`` by default: one node of 8 GPUs per pod."""


@dataclass(frozen=True, slots=True)
class SimSettings:
    """Knobs of the replay, read from the cluster file's ``simulation`` block."""

    las_thresholds_gpu_hours: tuple[float, ...] = (8.0, 64.0)
    checkpoint_interval_s: float = 900.0
    restart_overhead_s: float = 60.0
    requeue_backoff_s: float = 10.0
    gpu_resource: str = "gpu"
    slowdown_floor_s: float = SLOWDOWN_FLOOR_S
    min_run_s: float = 2700.0
    partial_min_fraction: float | None = None  # partialAdmission.minFraction (None: every job is one pod)
    gpus_per_pod: int = 8  # partialAdmission.gpusPerPod (`GPUS_PER_POD` when not given)


def pod_shape(gpus: int, settings: SimSettings) -> tuple[int, int, int | None]:
    """A trace job's pods: ``(count, GPUs per pod, min_count)``. One pod of all its GPUs unless partial admission
    is on and the job asks more than ``gpus_per_pod``, in a multiple of it (see the module docstring)."""
    per_pod, fraction = settings.gpus_per_pod, settings.partial_min_fraction
    if fraction is None or gpus <= per_pod or gpus % per_pod:
        return 1, gpus, None
    count = gpus // per_pod
    least = max(1, math.ceil(fraction * count - 1e-9))
    return count, per_pod, (least if least < count else None)


def _partial_settings(raw: object) -> tuple[float | None, int]:
    """``simulation.partialAdmission``: ``{minFraction: 0 < F <= 1, gpusPerPod: P >= 1 (default 8)}``."""
    if raw is None:
        return None, GPUS_PER_POD
    where = "simulation.partialAdmission"
    if not isinstance(raw, Mapping):
        raise InvalidParameterValue(f"{where}: expected a mapping like {{minFraction: 0.5, gpusPerPod: 8}}")
    unknown = sorted(set(raw) - {"minFraction", "gpusPerPod"})
    if unknown:
        raise InvalidParameterValue(f"{where}: unknown field {unknown[0]!r}")
    fraction = raw.get("minFraction")
    if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0 < fraction <= 1:
        raise InvalidParameterValue(f"{where}.minFraction: expected a number above 0 and at most 1, got {fraction!r}")
    per_pod = raw.get("gpusPerPod", GPUS_PER_POD)
    if isinstance(per_pod, bool) or not isinstance(per_pod, int) or per_pod < 1:
        raise InvalidParameterValue(f"{where}.gpusPerPod: expected a whole number >= 1, got {per_pod!r}")
    return float(fraction), per_pod


def sim_settings(raw: object) -> SimSettings:
    """Validate the ``simulation`` block of a cluster file."""
    if raw is None:
        return SimSettings()
    if not isinstance(raw, Mapping):
        raise InvalidParameterValue("simulation: expected a mapping")
    allowed = {"lasThresholdsGpuHours", "checkpointIntervalSeconds", "restartOverheadSeconds", "gpuResource",
               "requeueBackoffSeconds", "slowdownFloorSeconds", "minRunSeconds", "partialAdmission"}
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise InvalidParameterValue(f"simulation: unknown field {unknown[0]!r}")
    base = SimSettings()

    def number(key: str, default: float) -> float:
        value = raw.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise InvalidParameterValue(f"simulation.{key}: expected a number >= 0, got {value!r}")
        return float(value)

    thresholds = raw.get("lasThresholdsGpuHours", list(base.las_thresholds_gpu_hours))
    if not isinstance(thresholds, list) or not all(isinstance(t, int | float) and t > 0 for t in thresholds) \
            or thresholds != sorted(thresholds):
        raise InvalidParameterValue("simulation.lasThresholdsGpuHours: expected an ascending list of positive numbers")
    resource = raw.get("gpuResource", base.gpu_resource)
    if resource not in GPU_RESOURCES:
        raise InvalidParameterValue(f"simulation.gpuResource: {resource!r} is not one of {sorted(GPU_RESOURCES)}")
    return SimSettings(tuple(float(t) for t in thresholds),
                       number("checkpointIntervalSeconds", base.checkpoint_interval_s),
                       number("restartOverheadSeconds", base.restart_overhead_s),
                       number("requeueBackoffSeconds", base.requeue_backoff_s), str(resource),
                       number("slowdownFloorSeconds", base.slowdown_floor_s),
                       number("minRunSeconds", base.min_run_s), *_partial_settings(raw.get("partialAdmission")))


def policy_config(config: QueueConfig, policy: Policy) -> QueueConfig:
    """The configuration as ``policy`` runs it: strategy and preemption replaced, borrowing removed if off."""
    cqs = []
    for cq in config.cluster_queues:
        groups = cq.resource_groups
        if not policy.borrowing and cq.cohort is not None:
            groups = tuple(ResourceGroup(g.covered_resources, tuple(
                FlavorQuotas(fq.flavor, tuple(replace(rq, borrowing_limit=0) for rq in fq.resources))
                for fq in g.flavors)) for g in groups)
        cqs.append(replace(cq, resource_groups=groups, queueing_strategy=policy.strategy,
                           preemption=policy.preemption))
    return replace(config, cluster_queues=tuple(cqs), fair_sharing=False,
                   aging_seconds=config.aging_seconds if policy.aging else None,
                   hold_seconds=config.hold_seconds if policy.aging else None)


@dataclass(slots=True)
class _Job:
    job: TraceJob
    remaining: float
    attained: float = 0.0  # GPU-seconds received so far
    level: int = 0
    start: float = -1.0
    first_start: float = -1.0
    finish: float = -1.0
    gen: int = 0
    seq: int = 0
    preemptions: int = 0
    restart: bool = False
    wasted: float = 0.0  # GPU-seconds of work lost to preemptions
    aged: bool = False  # admitted by the aging rule: top priority, no more LAS demotion
    gpus: int = 0  # GPUs it runs with (fewer than asked after a partial admission)
    scale: float = 1.0  # wall seconds per second of full-size work (pods asked over pods got)


@dataclass(frozen=True, slots=True)
class SimResult(Measures):
    """Figures of one policy's replay: the `Measures` of all its jobs, and what only a whole replay has."""

    policy: str
    oracle: bool
    makespan_s: float
    gpu_utilization: float
    jain_fairness: float
    preemptions: int
    capacity_gpus: int
    wall_s: float = 0.0
    per_queue: dict[str, dict[str, float]] = field(default_factory=dict)
    series: dict[str, list[float]] = field(default_factory=dict)
    jcts: list[float] = field(default_factory=list)
    admission_order: list[str] = field(default_factory=list)
    jct_by_job: dict[str, float] = field(default_factory=dict)
    partial_admissions: int = 0

    def summary(self) -> dict[str, Any]:
        """The JSON object ``capstan simulate --json`` prints for this policy."""
        # Named as in `per_queue`, where ``gpu_hours`` is what a queue received.
        overall = {"requested_gpu_hours" if f.name == "gpu_hours" else f.name: getattr(self, f.name)
                   for f in fields(Measures)}
        return {"policy": self.policy, "oracle": self.oracle, **overall, "makespan_s": self.makespan_s,
                "gpu_utilization": self.gpu_utilization, "jain_fairness": self.jain_fairness,
                "preemptions": self.preemptions, "capacity_gpus": self.capacity_gpus, "wall_s": self.wall_s,
                "partial_admissions": self.partial_admissions, "per_queue": self.per_queue}


_FINISH, _DEMOTE, _ARRIVE, _REQUEUE, _WAKE = 0, 1, 2, 3, 4

_SKIP_UNCHANGED = True
"""Run no cycle at an instant whose events change nothing a cycle reads (tests turn it off to compare)."""


def replay(config: QueueConfig, jobs: Sequence[TraceJob], policy: Policy, settings: SimSettings | None = None,
           *, progress: Callable[[int], None] | None = None) -> SimResult:
    """Replay ``jobs`` through the engine under ``policy`` and measure the outcome."""
    import time as _time

    started_wall = _time.perf_counter()
    settings = settings or SimSettings()
    gpu = settings.gpu_resource
    cfg = policy_config(config, policy)
    topo = Topology(cfg)
    state = ClusterState(topo)
    pending = PendingQueues()
    thresholds = [t * 3600.0 for t in settings.las_thresholds_gpu_hours]
    levels = len(thresholds) + 1
    capacity = sum(v for pool in topo.root_pool.values() for r, v in pool.items() if r == gpu) // MILLI
    lq_to_cq = {lq.name: lq.cluster_queue for lq in cfg.local_queues}
    nominal_gpu: dict[str, int] = {}
    for cq in cfg.cluster_queues:
        nominal_gpu[cq.name] = _nominal(cq, gpu)
    for job in jobs:
        if job.queue not in lq_to_cq:
            raise InvalidParameterValue(f"trace job {job.id}: cluster {job.queue!r} is not a LocalQueue of the "
                                        f"cluster file (have: {', '.join(sorted(lq_to_cq))})")
    state_jobs: dict[str, _Job] = {}
    # Events are (time, kind, sequence, job id, generation), taken in tuple order. Arrivals are known upfront, so
    # they stay in a sorted list merged with the heap of the events the replay creates (a smaller heap).
    events: list[tuple[float, int, int, str, int]] = []
    arrivals: list[tuple[float, int, int, str, int]] = []
    for seq, job in enumerate(jobs, start=1):
        arrivals.append((job.submit, _ARRIVE, seq, job.id, 0))
        state_jobs[job.id] = _Job(job, job.duration, seq=seq, gpus=job.gpus)
    arrivals.sort()
    arrived = 0

    aging = cfg.aging_seconds
    # Instants a cycle asked to be looked at again (`CycleResult.wake_at`), already in `events`.
    wakes: set[float] = set()
    look_next = False

    def priority(j: _Job) -> int:
        if j.aged:
            return AGED_PRIORITY
        if policy.priority == "las":
            return 100 * (levels - j.level)
        if policy.priority == "sjf":
            return -int(j.job.duration)
        if policy.priority == "small":
            return -j.job.gpus
        return 0

    def workload(j: _Job) -> Workload:
        cq = lq_to_cq[j.job.queue]
        # Every job declares the checkpoint interval the replay models and the minimum run time, so the engine
        # picks victims by the work they would lose, as it does with checkpoints recorded by real workloads.
        count, per_pod, least = pod_shape(j.job.gpus, settings)
        return Workload(j.job.id, j.job.queue, cq, (PodSet("main", count, {gpu: per_pod * MILLI}, min_count=least),),
                        priority(j), j.job.submit, min_run_seconds=settings.min_run_s,
                        checkpoint_interval_seconds=settings.checkpoint_interval_s)

    busy = 0
    busy_gpu_seconds = 0.0
    preemptions = 0
    partial = 0
    last_t = jobs[0].submit if jobs else 0.0
    per_queue_gpu_s: dict[str, float] = {cq.name: 0.0 for cq in cfg.cluster_queues}
    running_by_cq: dict[str, int] = {cq.name: 0 for cq in cfg.cluster_queues}
    pending_by_cq: dict[str, int] = {cq.name: 0 for cq in cfg.cluster_queues}
    # Per day: GPU-seconds each queue received and wanted (running + pending), and the seconds covered.
    windows: dict[int, tuple[dict[str, float], dict[str, float], list[float]]] = {}
    series_t: list[float] = []
    series_busy: list[float] = []
    series_pending: list[float] = []
    done = 0
    zero_jobs: list[_Job] = []
    order: list[str] = []

    def stop(j: _Job, now: float) -> None:
        nonlocal busy
        ran = now - j.start
        j.attained += ran * j.gpus
        busy -= j.gpus
        running_by_cq[lq_to_cq[j.job.queue]] -= j.gpus

    while events or arrived < len(arrivals):
        if arrived < len(arrivals) and (not events or arrivals[arrived] < events[0]):
            now = arrivals[arrived][0]
        else:
            now = events[0][0]
        dt = now - last_t
        if dt > 0:
            busy_gpu_seconds += busy * dt
            received, wanted, covered = windows.setdefault(int(last_t // 86400), ({}, {}, [0.0]))
            covered[0] += dt
            for name, used in running_by_cq.items():
                if used:
                    per_queue_gpu_s[name] += used * dt
                    received[name] = received.get(name, 0.0) + used * dt
                want = used + pending_by_cq[name]
                if want:
                    wanted[name] = wanted.get(name, 0.0) + want * dt
            last_t = now
        # Whether this instant's events change anything a cycle reads. A cycle's outcome depends on time only
        # through aging limits and the minimum run times of the workloads its victim searches passed over
        # (`CycleResult.wake_at`), so an instant holding nothing else is skipped.
        changed = look_next or not _SKIP_UNCHANGED
        while True:
            if arrived < len(arrivals) and (not events or arrivals[arrived] < events[0]):
                if arrivals[arrived][0] != now:
                    break
                _t, kind, _s, wid, gen = arrivals[arrived]
                arrived += 1
            elif events and events[0][0] == now:
                _t, kind, _s, wid, gen = heapq.heappop(events)
            else:
                break
            if kind == _WAKE:
                # A pending job reaches an aging limit (it matters only while the job waits), or an instant a
                # cycle asked for (no job): nothing changes but the time, which the cycle below reads.
                if not wid:
                    wakes.discard(now)
                changed = changed or not wid or wid in pending
                continue
            j = state_jobs[wid]
            if kind == _REQUEUE:
                if gen == j.gen:
                    pending.push(workload(j), seq=j.seq)
                    pending_by_cq[lq_to_cq[j.job.queue]] += j.job.gpus
                    changed = True
                continue
            if kind == _ARRIVE:
                if j.job.gpus == 0:
                    j.first_start = j.start = now
                    j.finish = now + j.job.duration
                    zero_jobs.append(j)
                    order.append(wid)
                    done += 1
                    continue
                pending.push(workload(j), seq=j.seq)
                pending_by_cq[lq_to_cq[j.job.queue]] += j.job.gpus
                changed = True
                if aging is not None:
                    heapq.heappush(events, (now + aging, _WAKE, j.seq, wid, 0))
                    if cfg.hold_seconds is not None and cfg.hold_seconds > aging:
                        heapq.heappush(events, (now + cfg.hold_seconds, _WAKE, j.seq, wid, 0))
            elif gen != j.gen:
                continue
            elif kind == _FINISH:
                changed = True
                state.release(wid)
                stop(j, now)
                j.finish = now
                j.gen += 1
                done += 1
                if progress is not None:
                    progress(done)
            else:  # demotion: attained service crossed a threshold while running
                changed = True
                j.attained += (now - j.start) * j.gpus
                j.start = now
                j.level += 1
                state.set_priority(wid, priority(j))
                _schedule_demotion(events, j, now, thresholds)
        if not changed:
            series_t.append(now)
            series_busy.append(float(busy))
            series_pending.append(float(len(pending)))
            continue
        look_next = False
        for _round in range(10_000):
            result = schedule(state, pending, now, explain=False)
            pending.mark_blocked(result.blocked)
            pending.mark_blocked(result.settled)  # every decision below is applied
            pending.mark_futile(result.futile)
            moved = False
            for d in result.decisions:
                if isinstance(d, Preempt):
                    victim = state_jobs[d.victim]
                    state.release(victim.job.id)
                    ran = now - victim.start
                    stop(victim, now)
                    ckpt = settings.checkpoint_interval_s
                    saved = (ran // ckpt) * ckpt if ckpt > 0 else ran
                    saved = max(0.0, saved - (settings.restart_overhead_s if victim.restart else 0.0))
                    victim.remaining = max(0.0, victim.remaining - saved / victim.scale)
                    victim.wasted += (ran - saved) * victim.gpus
                    victim.gen += 1
                    victim.preemptions += 1
                    victim.restart = True
                    preemptions += 1
                    victim.level = _level(victim.attained, thresholds)
                    # Like the queue manager, requeue evicted work after a backoff; the preemptor gets the
                    # quota it freed before its victim can compete for it again.
                    heapq.heappush(events, (now + settings.requeue_backoff_s, _REQUEUE, victim.seq, victim.job.id,
                                            victim.gen))
                    moved = True
            for d in result.decisions:
                if isinstance(d, Admit):
                    wl = d.workload
                    j = state_jobs[wl.id]
                    pending.remove(wl.id)
                    pending_by_cq[d.cluster_queue] -= j.job.gpus
                    state.admit(Admission(wl, d.cluster_queue, d.pod_sets, d.usage, now))
                    j.start = now
                    if aging is not None and not j.aged and now - j.job.submit >= aging:
                        j.aged = True
                        state.set_priority(wl.id, priority(j))
                    if j.first_start < 0:
                        j.first_start = now
                        order.append(wl.id)
                    asked, per_pod, _least = pod_shape(j.job.gpus, settings)
                    got = sum(ps.count for ps in d.pod_sets)
                    j.gpus, j.scale = (got * per_pod, asked / got) if got < asked else (j.job.gpus, 1.0)
                    partial += got < asked
                    busy += j.gpus
                    running_by_cq[d.cluster_queue] += j.gpus
                    run_for = j.remaining * j.scale + (settings.restart_overhead_s if j.restart else 0.0)
                    if j.restart:
                        j.remaining += settings.restart_overhead_s / j.scale
                    j.restart = False
                    heapq.heappush(events, (now + run_for, _FINISH, j.seq, wl.id, j.gen))
                    if policy.priority == "las" and not j.aged:
                        _schedule_demotion(events, j, now, thresholds)
                    moved = True
            if not moved:
                # The settled cycle's searches are those a later cycle at this state would make.
                wake = result.wake_at
                if wake is not None and wake <= now:
                    look_next = True
                elif wake is not None and wake not in wakes:
                    wakes.add(wake)
                    heapq.heappush(events, (wake, _WAKE, 0, "", 0))
                break
        else:
            raise InvalidParameterValue(f"admission did not settle at t={now:g}s (preemption loop)")
        series_t.append(now)
        series_busy.append(float(busy))
        series_pending.append(float(len(pending)))
    if len(pending):
        raise InvalidParameterValue(f"{len(pending)} workloads could never be admitted (do they fit the cluster?)")
    return _result(policy, jobs, state_jobs, lq_to_cq, capacity, busy_gpu_seconds, preemptions, per_queue_gpu_s,
                   nominal_gpu, windows, (series_t, series_busy, series_pending), order, partial,
                   _time.perf_counter() - started_wall, settings.slowdown_floor_s)


def _nominal(cq: ClusterQueue, gpu: str) -> int:
    return sum(rq.nominal for g in cq.resource_groups for fq in g.flavors for rq in fq.resources
               if rq.resource == gpu) // MILLI


def _level(attained: float, thresholds: Sequence[float]) -> int:
    return sum(1 for t in thresholds if attained >= t)


def _schedule_demotion(events: list[tuple[float, int, int, str, int]], j: _Job, now: float,
                       thresholds: Sequence[float]) -> None:
    if j.level >= len(thresholds):
        return
    need = thresholds[j.level] - j.attained
    when = now + max(0.0, need) / j.gpus
    if when < now + j.remaining * j.scale:
        heapq.heappush(events, (when, _DEMOTE, j.seq, j.job.id, j.gen))


def _windowed_jain(windows: Mapping[int, tuple[dict[str, float], dict[str, float], list[float]]],
                   nominal_gpu: Mapping[str, int], capacity: int) -> float:
    """Jain's index over entitlement, per day, weighted by what queues were entitled to that day.

    A queue's fair amount in a day is the lesser of what it wanted (running plus pending GPUs over time) and
    its entitlement (nominal share of the pool times the time covered); its score is what it received over
    that, capped at 1. Queues wanting nothing that day are left out.
    """
    total_nominal = sum(nominal_gpu.values())
    if not total_nominal:
        return 1.0
    weighted = 0.0
    weight = 0.0
    for received, wanted, covered in windows.values():
        scores = []
        fair_total = 0.0
        for name, want in wanted.items():
            fair = min(want, nominal_gpu.get(name, 0) / total_nominal * capacity * covered[0])
            if fair > 0:
                scores.append(min(1.0, received.get(name, 0.0) / fair))
                fair_total += fair
        if scores:
            weighted += jain(scores) * fair_total
            weight += fair_total
    return weighted / weight if weight else 1.0


def _result(policy: Policy, jobs: Sequence[TraceJob], state_jobs: Mapping[str, _Job], lq_to_cq: Mapping[str, str],
            capacity: int, busy_gpu_seconds: float, preemptions: int,
            per_queue_gpu_s: Mapping[str, float], nominal_gpu: Mapping[str, int],
            windows: Mapping[int, tuple[dict[str, float], dict[str, float], list[float]]],
            series: tuple[list[float], list[float], list[float]], order: list[str], partial: int, wall: float,
            slowdown_floor_s: float) -> SimResult:
    series_t, series_busy, series_pending = series
    outcomes: dict[str, list[JobOutcome]] = {cq: [] for cq in per_queue_gpu_s}
    for j in state_jobs.values():
        outcomes.setdefault(lq_to_cq[j.job.queue], []).append(
            JobOutcome(j.job.submit, j.job.duration, j.finish, j.job.gpus, j.wasted))
    overall = measures((o for rows in outcomes.values() for o in rows), slowdown_floor_s=slowdown_floor_s)
    jcts = sorted(j.finish - j.job.submit for j in state_jobs.values())
    first = min((j.submit for j in jobs), default=0.0)
    last = max((j.finish for j in state_jobs.values()), default=0.0)
    makespan = max(0.0, last - first)
    total_received = sum(per_queue_gpu_s.values())
    total_nominal = sum(nominal_gpu.values())
    per_queue: dict[str, dict[str, float]] = {}
    for name, received in sorted(per_queue_gpu_s.items()):
        entitlement = nominal_gpu.get(name, 0) / total_nominal if total_nominal else 0.0
        share = received / total_received if total_received else 0.0
        queue = measures(outcomes[name], slowdown_floor_s=slowdown_floor_s).as_dict()
        per_queue[name] = {**queue, "gpu_hours": received / 3600, "requested_gpu_hours": queue["gpu_hours"],
                           "share": share, "entitlement": entitlement,
                           "share_over_entitlement": share / entitlement if entitlement else 0.0}
    thin = max(1, len(series_t) // 2000)
    return SimResult(
        **asdict(overall),
        policy=policy.name, oracle=policy.oracle, makespan_s=makespan,
        gpu_utilization=busy_gpu_seconds / (capacity * makespan) if capacity and makespan else 0.0,
        jain_fairness=_windowed_jain(windows, nominal_gpu, capacity), preemptions=preemptions,
        capacity_gpus=capacity, wall_s=wall, per_queue=per_queue, admission_order=order, partial_admissions=partial,
        series={"t": series_t[::thin], "busy_gpus": series_busy[::thin], "pending": series_pending[::thin]},
        jcts=jcts, jct_by_job={j.job.id: j.finish - j.job.submit for j in state_jobs.values()})
