"""Small builders shared by the queue tests."""

from __future__ import annotations

from dataclasses import dataclass, field

from capstan.queue.config import load_yaml, parse_config
from capstan.queue.engine import schedule
from capstan.queue.model import Admission, CycleResult, PodSet, QueueConfig, Toleration, Workload
from capstan.queue.pending import PendingQueues
from capstan.queue.state import ClusterState, Topology
from capstan.resources.quantity import parse_quantity


def config(text: str) -> QueueConfig:
    """Parse a YAML queue configuration."""
    return parse_config(load_yaml(text))


def gpu_queues(*queues: tuple[str, float], cohort: str | None = "research", flavor: str = "a100",
               extra: str = "", fair: bool = False, preemption: str = "", strategy: str = "BestEffortFIFO",
               limits: dict[str, str] | None = None) -> QueueConfig:
    """Cluster queues with one GPU flavor; ``queues`` are (name, nominal GPUs)."""
    lines = [f"flavors: [{{name: {flavor}}}]"]
    if cohort:
        lines.append(f"cohorts: [{{name: {cohort}}}]")
    if fair:
        lines.append("fairSharing: {enable: true}")
    lines.append("clusterQueues:")
    for name, nominal in queues:
        extra_limits = (limits or {}).get(name, "")
        lines.append(f"""  - name: {name}
    {'cohort: ' + cohort if cohort else ''}
    queueingStrategy: {strategy}
    {('preemption: ' + preemption) if preemption else ''}
    resourceGroups:
      - coveredResources: [gpu]
        flavors: [{{name: {flavor}, resources: [{{name: gpu, nominalQuota: {nominal}{extra_limits}}}]}}]""")
    lines.append("localQueues:")
    for name, _ in queues:
        lines.append(f"  - {{name: {name}, clusterQueue: {name}}}")
    return config("\n".join(lines) + "\n" + extra)


def wl(wid: str, cq: str, *, gpu: float | str = 1, count: int = 1, priority: int = 0, created: float = 0.0,
       cpu: str | None = None, memory: str | None = None, selector: dict[str, str] | None = None,
       tolerations: tuple[Toleration, ...] = (), active: bool = True) -> Workload:
    """A one-pod-set workload."""
    requests = {"gpu": parse_quantity(gpu)} if gpu else {}
    if cpu:
        requests["cpu"] = parse_quantity(cpu)
    if memory:
        requests["memory"] = parse_quantity(memory)
    return Workload(wid, cq, cq, (PodSet("main", count, requests, selector or {}, tolerations),), priority, created,
                    active=active)


@dataclass
class Cluster:
    """A state plus pending queues, with helpers to run cycles and apply their decisions."""

    cfg: QueueConfig
    state: ClusterState = field(init=False)
    pending: PendingQueues = field(init=False)
    now: float = 0.0

    def __post_init__(self) -> None:
        self.state = ClusterState(Topology(self.cfg))
        self.pending = PendingQueues()

    def submit(self, *workloads: Workload) -> None:
        for w in workloads:
            self.pending.push(w)

    def cycle(self, *, apply: bool = True) -> CycleResult:
        """One cycle; admissions (and, with ``apply``, evictions) are applied to the state."""
        result = schedule(self.state, self.pending, self.now)
        self.pending.mark_blocked(result.blocked)
        if apply:
            for p in result.preempted:
                self.state.release(p.victim)
            for a in result.admitted:
                self.pending.remove(a.workload.id)
                self.state.admit(Admission(a.workload, a.cluster_queue, a.pod_sets, a.usage, self.now))
        self.now += 1
        return result

    def admitted_ids(self) -> set[str]:
        return set(self.state.admissions)

    def settle(self, limit: int = 50) -> None:
        """Run cycles until nothing changes."""
        for _ in range(limit):
            result = self.cycle()
            if not result.admitted and not result.preempted:
                return

    def admit_now(self, *workloads: Workload) -> None:
        """Submit and admit workloads that must fit right away."""
        self.submit(*workloads)
        result = self.cycle()
        got = {a.workload.id for a in result.admitted}
        assert got >= {w.id for w in workloads}, result
