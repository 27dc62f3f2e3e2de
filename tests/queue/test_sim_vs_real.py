"""The simulator against real runs: one small trace, replayed by `capstan simulate` and run for real.

Forty jobs of 1-3.5 s, each a ``sleep`` process on declared GPUs (a flavor with ``gpus: 8``, so every
admission is placed on device numbers exported as ``CUDA_VISIBLE_DEVICES``), are submitted at their trace times
to a `QueueManager` and run by the `LocalExecutor`, under the configuration the simulator replays. Each policy
without preemption runs twice for real:

* **Free-running**: the executor steps every 20 ms and each process sleeps its full duration. The real average
  JCT, which includes process start-up and the time to notice an exit, must be within 10% of the simulator's.
* **On the trace's grid**: trace times and durations are multiples of 0.5 s, and the executor steps once per
  0.5 s, half-way between multiples; each process sleeps until its duration has passed since the multiple its
  step stands for, and the queue's clock reads that multiple. Each exit is then seen at the step where the
  simulator's virtual clock has it, even when a step runs or a process starts up to 250 ms late, and jobs that end
  at the same virtual instant are handled in one admission cycle, as in the simulator: the admission order must be
  the same, job for job. (Free-running, two exits a few milliseconds apart may each get their own cycle; with
  different request shapes, a `BestEffortFIFO` queue can then admit another job first.) The average JCT must
  agree within 10% too. A run during which some exit was seen at another step than its duration says (a machine
  too loaded to hold the grid) is void and runs once more.

The four runs of each kind go at once, each in its own thread (``sleep`` processes use no CPU), the runs on the
grid first, alone, so that no busy thread delays their steps: the test takes about 45 s.
"""

from __future__ import annotations

import random
import shutil
import threading
import time
from dataclasses import dataclass, field

import pytest

from capstan.clock import system_clock
from capstan.queue.config import load_yaml, parse_config
from capstan.queue.executor import LocalExecutor, placement_env
from capstan.queue.manager import QueueManager
from capstan.queue.model import PodSet
from capstan.queue.records import WorkloadRecord
from capstan.queue.simulate import POLICIES, Policy, SimResult, SimSettings, policy_config, replay
from capstan.queue.store import MemoryQueueStore
from capstan.queue.trace import TraceJob

pytestmark = pytest.mark.slow

SLEEP = shutil.which("sleep")
CHECKED = ("strict-fifo", "best-effort-fifo", "capstan-small-first", "sjf-oracle")
"""Every simulator policy whose priorities are fixed at submission; `capstan-las` demotes running jobs as they
attain service, which the queue manager does not do, so it has no real counterpart to compare with."""
TEAMS = (("team-a", 4), ("team-b", 2), ("team-c", 2))
POLL_S = 0.02
GRID = 0.5  # a power of two: sums of trace times stay exact in floating point, so ties stay ties


def trace(seed: int = 15) -> list[TraceJob]:
    """Forty jobs over about 8 s on a `GRID` of 0.5 s: durations 1-3.5 s, 1, 2 or 4 GPUs."""
    rng = random.Random(seed)
    jobs = []
    t = 0
    for i in range(40):
        t += rng.choice((0, 0, 0, 1, 1))
        team = rng.choice(("team-a", "team-a", "team-b", "team-c"))
        gpus = rng.choice((1, 1, 1, 2, 2, 4) if team == "team-a" else (1, 1, 2))
        jobs.append(TraceJob(f"j{i:02d}", t * GRID, rng.randint(2, 7) * GRID, gpus, team))
    return jobs


def _priority(policy: Policy, job: TraceJob) -> int:
    # The simulator's static priorities (`replay`), expressed as priority classes for the real queue.
    if policy.priority == "sjf":
        return -int(job.duration)
    if policy.priority == "small":
        return -job.gpus
    return 0


def config_yaml(policy: Policy, jobs: list[TraceJob]) -> str:
    """The queue configuration as ``policy`` runs it, with one priority class per priority its jobs get."""
    values = sorted({_priority(policy, j) for j in jobs})
    classes = ", ".join(f"{{name: p{v - min(values)}, value: {v}}}" for v in values)
    limit = ", borrowingLimit: 0" if not policy.borrowing else ""
    lines = ["flavors: [{name: gpu, gpus: 8}]", "cohorts: [{name: lab}]", f"priorityClasses: [{classes}]",
             "defaultPriorityClass: p0", "clusterQueues:"]
    for name, nominal in TEAMS:
        lines.append(f"""  - name: {name}
    cohort: lab
    queueingStrategy: {policy.strategy.value}
    resourceGroups:
      - coveredResources: [gpu]
        flavors: [{{name: gpu, resources: [{{name: gpu, nominalQuota: {nominal}{limit}}}]}}]""")
    lines.append("localQueues:")
    lines += [f"  - {{name: {name}, clusterQueue: {name}}}" for name, _ in TEAMS]
    return "\n".join(lines) + "\n"


@dataclass
class RealRun:
    """What happened when the trace ran for real under one policy."""

    order: list[str] = field(default_factory=list)
    jct: dict[str, float] = field(default_factory=dict)
    devices: dict[str, str] = field(default_factory=dict)
    late_s: float = 0.0  # on the grid: the latest any step ran after its time
    off_grid: list[str] = field(default_factory=list)  # on the grid: jobs whose exit was seen at another step
    error: BaseException | None = None

    @property
    def avg_jct_s(self) -> float:
        return sum(self.jct.values()) / len(self.jct)


class GridExecutor(LocalExecutor):
    """Starts each process with a sleep that ends exactly its trace duration after the grid instant of the step
    that admitted it, however late that step ran or the process was spawned."""

    def __init__(self, manager: QueueManager, durations: dict[str, float]) -> None:
        super().__init__(manager, grace_s=1.0)
        self.durations = durations
        self.instant = 0.0  # the monotonic time of the grid instant the current step stands for

    def _start(self, record: WorkloadRecord) -> None:
        left = self.instant + self.durations[record.id] - time.monotonic()
        self.commands[record.id] = [str(SLEEP), f"{max(0.0, left):.3f}"]
        super()._start(record)


def run_for_real(policy: Policy, jobs: list[TraceJob], out: RealRun, *, grid_s: float | None = None,
                 timeout_s: float = 120.0) -> None:
    """Submit each job at its trace time and step the executor (every `POLL_S`, or on ``grid_s``); time each job
    from its submission to the step that sees its process has ended."""
    assert SLEEP is not None
    min_priority = min(_priority(policy, j) for j in jobs)
    # On the grid the queue's clock reads the instant each step stands for, as the simulator's does: jobs submitted
    # at one instant then tie on their creation time in both (the engine orders the heads of different queues by
    # creation time; on a tie, not by submission order).
    instant_ms = [0]
    manager = QueueManager(MemoryQueueStore(), clock=(lambda: instant_ms[0]) if grid_s else system_clock)
    manager.apply_config(config_yaml(policy, jobs))
    executor = GridExecutor(manager, {j.id: j.duration for j in jobs}) if grid_s else LocalExecutor(manager,
                                                                                                   grace_s=1.0)
    # Steps run half-way between grid instants: a process ends on an instant, so it may exit up to half a step
    # late, and a step may run up to half a step late, without the exit being seen at another step.
    phase = grid_s / 2 if grid_s else 0.0
    submitted: dict[str, float] = {}
    todo = sorted(jobs, key=lambda j: j.submit)
    seen: set[str] = set()
    started_tick: dict[str, int] = {}
    by_id = {j.id: j for j in jobs}
    try:
        start = time.monotonic()
        deadline = start + timeout_s
        tick = 0
        while todo or executor.busy():
            if grid_s:
                due = start + tick * grid_s + phase
                time.sleep(max(0.0, due - time.monotonic()))
                out.late_s = max(out.late_s, time.monotonic() - due)
                executor.instant = due - phase  # type: ignore[attr-defined]
                instant_ms[0] = 1_000_000 + round(tick * grid_s * 1000)
                virtual = tick * grid_s + 1e-6
            else:
                virtual = time.monotonic() - start
            now = time.monotonic()
            if now > deadline:
                raise TimeoutError(f"{policy.name}: jobs still running after {timeout_s}s")
            while todo and todo[0].submit <= virtual:
                job = todo.pop(0)
                executor.submit(job.id, [str(SLEEP), f"{job.duration:.3f}"],
                                [PodSet("main", 1, {"gpu": job.gpus * 1000})], local_queue=job.queue,
                                priority_class=f"p{_priority(policy, job) - min_priority}")
                submitted[job.id] = now
            executor.step()
            for wid in executor.procs:
                if wid not in seen:
                    seen.add(wid)
                    out.order.append(wid)
                    out.devices[wid] = placement_env(manager.get(wid)).get("CUDA_VISIBLE_DEVICES", "")
                    started_tick[wid] = tick
            for wid in executor.exit_codes:
                if wid not in out.jct:
                    out.jct[wid] = now - submitted[wid]
                    if grid_s and tick - started_tick[wid] != round(by_id[wid].duration / grid_s):
                        out.off_grid.append(wid)
            tick += 1
            if not grid_s:
                time.sleep(POLL_S)
    except Exception as exc:  # noqa: BLE001 - reported by the test thread, not lost in this one
        out.error = exc
    finally:
        executor.shutdown()


def simulate(policy: Policy, jobs: list[TraceJob]) -> SimResult:
    base = parse_config(load_yaml(config_yaml(POLICIES["best-effort-fifo"], jobs)))
    return replay(base, jobs, policy, SimSettings(slowdown_floor_s=1.0))


def test_the_real_queue_config_is_what_the_simulator_replays() -> None:
    jobs = trace()
    base = parse_config(load_yaml(config_yaml(POLICIES["best-effort-fifo"], jobs)))
    for name in CHECKED:
        real = parse_config(load_yaml(config_yaml(POLICIES[name], jobs)))
        assert real.cluster_queues == policy_config(base, POLICIES[name]).cluster_queues, name


def run_at_once(runs: dict[tuple[str, float | None], RealRun], jobs: list[TraceJob]) -> None:
    """Run each (policy, grid) for real at the same time, one thread each."""
    threads = [threading.Thread(target=run_for_real, args=(POLICIES[name], jobs, run), kwargs={"grid_s": grid},
                                daemon=True) for (name, grid), run in runs.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=180)


@pytest.mark.skipif(SLEEP is None, reason="no sleep executable on PATH")
def test_simulator_agrees_with_real_runs_on_the_local_executor() -> None:
    jobs = trace()
    assert all((x / GRID).is_integer() for j in jobs for x in (j.submit, j.duration))
    simulated = {name: simulate(POLICIES[name], jobs) for name in CHECKED}
    # The trace makes the policies differ, so agreement below is not agreement by default.
    assert len({tuple(r.admission_order) for r in simulated.values()}) == len(CHECKED)
    assert simulated["strict-fifo"].avg_jct_s > 1.3 * simulated["best-effort-fifo"].avg_jct_s
    runs = {(name, grid): RealRun() for grid in (GRID, None) for name in CHECKED}
    for kind in (GRID, None):
        run_at_once({key: run for key, run in runs.items() if key[1] == kind}, jobs)
    # A grid run is void when the machine could not hold the grid (a process ended, or was seen to end, more than
    # half a step late): that says nothing about the simulator, so such runs go once more.
    void = {key: RealRun() for key, run in runs.items() if run.off_grid}
    if void:
        run_at_once(void, jobs)
        runs.update(void)
    report = []
    for (name, grid), real in runs.items():
        sim = simulated[name]
        assert real.error is None, f"{name}: {real.error!r}"
        assert len(real.jct) == len(jobs), name
        assert all(real.devices.values()), name  # every job ran pinned to declared devices
        mode = f"on the grid (steps up to {1000 * real.late_s:.0f} ms late)" if grid else "free-running"
        assert not real.off_grid, f"{name}: this machine could not hold the {grid} s grid twice ({real.off_grid})"
        report.append(f"{name} {mode}: sim {sim.avg_jct_s:.3f}s real {real.avg_jct_s:.3f}s "
                      f"({real.avg_jct_s / sim.avg_jct_s - 1:+.1%}), same order: {real.order == sim.admission_order}")
    print("\n".join(report))
    for (name, grid), real in runs.items():
        sim = simulated[name]
        assert abs(real.avg_jct_s - sim.avg_jct_s) <= 0.10 * sim.avg_jct_s, "; ".join(report)
        if grid:
            assert real.order == sim.admission_order, f"{name}: admission order differs; " + "; ".join(report)
