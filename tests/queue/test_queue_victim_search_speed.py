"""The victim search's shortcuts (decision 0771) change nothing: the same lost work, the same replay outcome."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import replace

import pytest
from queue_helpers import gpu_queues

from capstan.queue import preemption
from capstan.queue.model import Admission, PreemptWithin
from capstan.queue.simulate import POLICIES, SimSettings, replay
from capstan.queue.state import ClusterState, Topology
from capstan.queue.trace import TraceJob


def reference_iter(self: preemption.Group) -> Iterator[tuple[Admission, str]]:
    """`Group.__iter__` as it was before the shortcuts: `_allowed` for every candidate, `last_checkpoint` for lost
    work."""
    state, now = self.state, self.now
    levels = sorted({p for name in self.names for p in state.by_priority[name] if self.level_ok(p)})
    for prio in levels:
        found: list[tuple[float, int, int, Admission]] = []
        for rank, name in enumerate(self.names):
            table = state.by_priority[name].get(prio)
            if not table or name in self.stopped:
                continue
            for order, adm in enumerate(table.values()):
                if adm.id in self.gone or not preemption._allowed(self.policy, adm.workload, self.wl):
                    continue
                if adm.workload.min_run_seconds and now - adm.admitted_at < adm.workload.min_run_seconds:
                    if self.protected is not None:
                        self.protected[adm.id] = adm.admitted_at + adm.workload.min_run_seconds
                    continue
                gpus = sum(q for (_f, r), q in adm.usage.items() if r == "gpu") / 1000
                lost = max(0.0, now - state.last_checkpoint(adm, now)) * max(gpus, 1.0)
                found.append((lost, rank, -order, adm))
        found.sort(key=lambda e: (e[0], e[1], e[2]))
        for _lost, _rank, _order, adm in found:
            if adm.cluster_queue in self.stopped:
                continue
            yield adm, self.reason


def busy_trace(n: int = 300, seed: int = 15) -> list[TraceJob]:
    # Overlapping jobs of 1-8 GPUs and 50-3,000 s in three queues: they borrow, reclaim, age and get demoted.
    rng = random.Random(seed)
    t = 0.0
    jobs = []
    for i in range(n):
        t += rng.choice((0.0, 5.0, 20.0, 60.0))
        jobs.append(TraceJob(f"j{i}", t, float(rng.choice((50, 200, 600, 1500, 3000))), rng.choice((1, 1, 2, 4, 8)),
                             rng.choice(("a", "b", "c"))))
    return jobs


@pytest.mark.parametrize("name", ["capstan-las", "capstan-small-first-reclaim"])
def test_replays_are_the_same_as_with_the_plain_victim_order(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    base = replace(gpu_queues(("a", 8), ("b", 6), ("c", 4)), aging_seconds=1500.0, hold_seconds=4000.0)
    settings = SimSettings(checkpoint_interval_s=120.0, restart_overhead_s=10.0, requeue_backoff_s=5.0,
                           min_run_s=300.0, las_thresholds_gpu_hours=(0.2, 1.0))
    jobs = busy_trace()
    fast = replay(base, jobs, POLICIES[name], settings)
    monkeypatch.setattr(preemption.Group, "__iter__", reference_iter)
    plain = replay(base, jobs, POLICIES[name], settings)
    assert fast.preemptions > 0
    assert fast.admission_order == plain.admission_order
    assert fast.jct_by_job == plain.jct_by_job
    assert fast.wasted_gpu_hours == plain.wasted_gpu_hours


@pytest.mark.parametrize("policy", [PreemptWithin.ANY, PreemptWithin.LOWER_PRIORITY,
                                    PreemptWithin.LOWER_OR_NEWER_EQUAL_PRIORITY])
def test_group_yields_what_the_plain_order_yields(policy: PreemptWithin) -> None:
    from queue_helpers import wl

    state = ClusterState(Topology(gpu_queues(("a", 16), cohort=None)))
    rng = random.Random(7)
    for i in range(40):
        w = replace(wl(f"w{i}", "a", gpu=rng.choice((1, 2, 4)), priority=rng.choice((0, 5, 10)),
                       created=float(rng.randrange(100))),
                    checkpoint_interval_seconds=rng.choice((0.0, 30.0)), min_run_seconds=rng.choice((0.0, 60.0)))
        state.admit(Admission(w, "a", (), {("a100", "gpu"): w.total("gpu")}, float(rng.randrange(100))))
    state.record_checkpoint("w3", 120.0)
    preemptor = wl("p", "a", gpu=4, priority=5, created=50.0)
    seen_protected: dict[str, float] = {}
    for now in (100.0, 140.0, 171.5):
        def group(now: float, protected: dict[str, float]) -> preemption.Group:
            return preemption.Group(state, ["a"], lambda p: preemption._priority_allowed(policy, p, 5), policy,
                                    preemptor, {"w7"}, "InClusterQueue", set(), now, protected)

        fast_protected: dict[str, float] = {}
        plain_protected: dict[str, float] = {}
        fast = list(group(now, fast_protected))
        plain = list(reference_iter(group(now, plain_protected)))
        assert fast
        seen_protected |= fast_protected
        assert [a.id for a, _r in fast] == [a.id for a, _r in plain]
        assert fast_protected == plain_protected
        for adm, _reason in fast:
            gpus = adm.workload.total("gpu") / 1000
            assert state.lost_work(adm, now) == max(0.0, now - state.last_checkpoint(adm, now)) * max(gpus, 1.0)
    assert seen_protected  # some candidates were within their minimum run time
