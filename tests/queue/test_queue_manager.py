"""The queue manager over both store adapters: submit, admit, finish, preempt, apply config, usage, why."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from capstan.errors import InvalidParameterValue, ResourceDoesNotExist
from capstan.queue.manager import Backoff, QueueManager
from capstan.queue.model import PodSet, Reason
from capstan.queue.records import ADMITTED, EVICTING, PENDING
from capstan.queue.store import MemoryQueueStore, QueueStore
from capstan.resources.quantity import parse_quantity
from helpers.clock import FakeClock

TEAMS = """
flavors:
  - {name: a100}
  - name: a100-shared
    gpus: 2
    sharing: {slotsPerGpu: 4, strategy: mps}
cohorts: [{name: research}]
priorityClasses: [{name: low, value: 0}, {name: high, value: 100}]
defaultPriorityClass: low
clusterQueues:
  - name: team-a
    cohort: research
    preemption: {withinClusterQueue: LowerPriority, reclaimWithinCohort: Any}
    resourceGroups:
      - coveredResources: [gpu]
        flavors:
          - {name: a100, resources: [{name: gpu, nominalQuota: 8}]}
          - {name: a100-shared, resources: [{name: gpu, nominalQuota: 2}]}
  - name: team-b
    cohort: research
    resourceGroups:
      - coveredResources: [gpu]
        flavors: [{name: a100, resources: [{name: gpu, nominalQuota: 6}]}]
localQueues:
  - {name: a-ml, clusterQueue: team-a, project: ml}
  - {name: b-vision, clusterQueue: team-b, project: vision}
"""


class Events:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str]] = []

    def append(self, kind: str, object_id: str, reason: str, message: str = "", **_: object) -> object:
        self.seen.append((kind, object_id, reason))
        return None


def gpus(n: float | str, count: int = 1) -> list[PodSet]:
    return [PodSet("main", count, {"gpu": parse_quantity(n)})]


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[QueueStore]:
    """The queue-store contract runs against every adapter: in-memory, SQLite and PostgreSQL."""
    if request.param == "memory":
        yield MemoryQueueStore()
        return
    from capstan.queue.sql import SqlQueueStore
    from capstan.settings import Settings
    from capstan.store.engine import create_store_engine

    settings = (Settings.for_home(tmp_path / "home") if request.param == "sqlite"
                else request.getfixturevalue("pg_settings"))
    engine = create_store_engine(settings)
    yield SqlQueueStore(engine)
    engine.dispose()


def make(store: QueueStore) -> tuple[QueueManager, FakeClock, Events]:
    clock, events = FakeClock(), Events()
    mgr = QueueManager(store, clock=clock, events=events, backoff=Backoff(base_s=5))
    mgr.apply_config(TEAMS)
    return mgr, clock, events


def test_lifecycle_usage_and_restart_from_store(store: QueueStore) -> None:
    mgr, clock, events = make(store)
    mgr.submit("b1", "b-vision", gpus(6), user="ann")
    mgr.submit("b2", "b-vision", gpus(6), user="bob")
    mgr.cycle()
    assert mgr.get("b1").state == ADMITTED
    assert mgr.get("b2").state == ADMITTED  # borrowed 6 of team-a's idle quota
    assert mgr.get("b2").admission is not None
    clock.now += 3_600_000
    mgr.finish("b1")
    # A new manager over the same store sees the same state.
    again = QueueManager(store, clock=clock)
    assert again.get("b2").state == ADMITTED
    assert again.get("b1").state == "Finished"
    assert again.state.used("team-b", ("a100", "gpu")) == 6000
    from capstan.queue.usage import usage_report

    rows = usage_report(store.usage_since(0), by="user", since_ms=0, now_ms=clock.now, prices={"gpu": 2.0})
    assert [(r.key, round(r.gpu_hours, 3), r.cost) for r in rows] == [("ann", 6.0, 12.0), ("bob", 6.0, 12.0)]
    assert ("workload", "b1", "Admitted") in events.seen and ("workload", "b1", "Finished") in events.seen


def test_preemption_requeues_with_backoff_and_why_explains(store: QueueStore) -> None:
    mgr, clock, _ = make(store)
    mgr.submit("b-big", "b-vision", gpus(14))
    mgr.cycle()
    mgr.submit("a-need", "a-ml", gpus(4), priority_class="high")
    report = mgr.cycle()
    assert [r.id for r in report.preempting] == ["b-big"]
    assert mgr.get("b-big").state == EVICTING
    assert mgr.why("a-need").reason is Reason.WAITING_FOR_PREEMPTION
    mgr.evicted("b-big")
    requeued = mgr.get("b-big")
    assert requeued.state == PENDING and requeued.reason is Reason.PREEMPTED and requeued.requeue_at is not None
    mgr.cycle()
    assert mgr.get("a-need").state == ADMITTED
    assert mgr.get("b-big").state == PENDING  # still in backoff
    clock.now += 6_000
    mgr.cycle()
    why = mgr.why("b-big")
    assert why.reason is Reason.WAITING_FOR_QUOTA
    assert "needs 14 a100 GPUs; ClusterQueue team-b uses 0/6 nominal; cohort research can lend 10" in why.message
    assert why.holders and why.holders[0].startswith("a-need")


def test_rejects_what_can_never_fit_and_unknown_queues(store: QueueStore) -> None:
    mgr, _, _ = make(store)
    with pytest.raises(InvalidParameterValue, match="can never be admitted by ClusterQueue team-b"):
        mgr.submit("huge", "b-vision", gpus(15))
    with pytest.raises(InvalidParameterValue, match="not shareable"):
        mgr.submit("frac", "b-vision", gpus("0.5"))
    with pytest.raises(ResourceDoesNotExist, match="LocalQueue 'nope' does not exist"):
        mgr.submit("x", "nope", gpus(1))
    with pytest.raises(InvalidParameterValue, match="priority class 'urgent' does not exist"):
        mgr.submit("y", "a-ml", gpus(1), priority_class="urgent")


def test_apply_config_keeps_queued_workloads(store: QueueStore) -> None:
    mgr, _, _ = make(store)
    mgr.submit("b1", "b-vision", gpus(14))
    mgr.cycle()
    mgr.submit("b2", "b-vision", gpus(2))
    # Shrink team-b and drop LocalQueue a-ml: nothing queued is lost.
    mgr.submit("a1", "a-ml", gpus(1))
    smaller = TEAMS.replace("nominalQuota: 6", "nominalQuota: 4").replace(
        "  - {name: a-ml, clusterQueue: team-a, project: ml}\n", "")
    report = mgr.apply_config(smaller)
    assert set(report.orphaned) == {"a1"}
    assert {r.id for r in mgr.workloads()} == {"b1", "b2", "a1"}
    assert mgr.why("a1").reason is Reason.INACTIVE
    assert mgr.get("b1").state == ADMITTED
    mgr.apply_config(TEAMS)
    mgr.finish("b1")
    mgr.cycle()
    assert {r.id for r in mgr.workloads(ADMITTED)} == {"b2", "a1"}


def test_why_hints(store: QueueStore) -> None:
    mgr, _, _ = make(store)
    mgr.submit("a-full", "a-ml", gpus(8), priority_class="high")
    mgr.submit("b-full", "b-vision", gpus(6))
    mgr.submit("s1", "a-ml", gpus(1))  # a whole shared device
    mgr.submit("s2", "a-ml", gpus("0.25"))  # a quarter of the other one
    mgr.cycle()
    assert mgr.get("s1").state == ADMITTED and mgr.get("s2").state == ADMITTED
    mgr.submit("a-more", "a-ml", gpus(1))
    mgr.cycle()
    why = mgr.why("a-more")
    assert why.reason is Reason.WAITING_FOR_QUOTA
    assert why.hint == "fits now in flavor a100-shared at 0.75 GPU"
    mgr.submit("a-two", "a-ml", gpus(2))
    why = mgr.why("a-two")
    # s1 and s2 (priority 0) hold the shared devices; at priority 1 they could be preempted.
    assert why.hint == "would be admitted if priority >= 1"
    text = why.render()
    assert "Reason:    WaitingForQuota" in text and "Hint:      would be admitted if priority >= 1" in text


def test_fractional_placement_is_reported(store: QueueStore) -> None:
    mgr, _, _ = make(store)
    mgr.submit("a-full", "a-ml", gpus(8))
    mgr.cycle()
    mgr.submit("frac", "a-ml", gpus("0.25"))
    mgr.cycle()
    why = mgr.why("frac")
    assert why.reason is Reason.ADMITTED
    assert any("CUDA_VISIBLE_DEVICES=0" in p and "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=25" in p for p in why.placement)
