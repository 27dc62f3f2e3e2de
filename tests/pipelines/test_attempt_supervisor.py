"""`AttemptSupervisor` driven directly with a fake executor and a fake admission: launching in two halves (place
before the commit, start after it), timeouts on the injected monotonic clock, preemption through revoked leases,
cancelling, recovering an attempt a previous orchestrator left running, and the in-memory values."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import capstan.pipelines as cp
from capstan.pipelines import state as sm
from capstan.pipelines.dsl import Step
from capstan.pipelines.execution import CANCELLED, INTERRUPTED, TIMEOUT, Outcome, Task, failed
from capstan.pipelines.executor_port import NO_VALUES, Placement
from capstan.pipelines.state import StepState as S
from capstan.pipelines.steprec import StepRec
from capstan.pipelines.storage import AttemptRecord, Batch
from capstan.pipelines.supervisor import AttemptSupervisor, Effect, resource_request
from capstan.resources.admission import PREEMPTED, Lease, ResourceRequest, Verdict
from helpers.clock import FakeClock


@cp.step(isolation="thread", timeout=10)
def first() -> int:
    return 1


@cp.step(isolation="thread")
def second(x: int) -> int:
    return x + 1


@cp.pipeline
def flow():
    return second(first())


class FakeExecutor:
    """Records what the supervisor asks; ``recovered`` is what `recover` answers."""

    isolation = "thread"
    reports_start = False

    def __init__(self, *, in_process: bool = True, recovered: Outcome | None = None) -> None:
        self.in_process = in_process
        self.recovered = recovered
        self.calls: list[tuple[Any, ...]] = []

    def prepare(self, steps: Sequence[Step]) -> None:
        self.calls.append(("prepare", [s.name for s in steps]))

    def place(self, lease: Lease | None) -> Placement:
        self.calls.append(("place", lease.key if lease else None))
        return Placement(worker_pid=4242, worker_started=7)

    def start(self, task: Task, placement: Placement, *, lease: Lease | None = None, step: Step | None = None,
              values: Mapping[str, Any] = NO_VALUES) -> None:
        self.calls.append(("start", task.key, dict(values)))

    def stop(self, key: str, reason: str, *, grace_s: float | None = None) -> None:
        self.calls.append(("stop", key, reason))

    def recover(self, task: Task, placement: Placement, started_at: int) -> Outcome | None:
        self.calls.append(("recover", task.key, placement.worker_pid))
        return self.recovered

    def placement_of(self, worker_pid: int | None, worker_started: int | None) -> Placement:
        return Placement(worker_pid=worker_pid, worker_started=worker_started, results_path="/nowhere/results")

    def shutdown(self, *, kill: bool = False) -> None:
        self.calls.append(("shutdown", kill))


class FakeAdmission:
    """Grants every request; ``revoke`` lists the lease keys to report as taken back."""

    def __init__(self) -> None:
        self.released: list[tuple[str, bool]] = []
        self.withdrawn: list[str] = []
        self.reclaimed: list[tuple[str, bool]] = []
        self.revoke: set[str] = set()

    def check(self, request: ResourceRequest) -> None:
        return None

    def try_acquire(self, request: ResourceRequest) -> Lease | None:
        return Lease(request.key, request)

    def settle(self, releases: Sequence[tuple[Lease, bool]], requests: Sequence[ResourceRequest]) -> list[Verdict]:
        self.released.extend((lease.key, requeue) for lease, requeue in releases)
        return [Lease(r.key, r) for r in requests]

    def reclaim(self, request: ResourceRequest, *, held_only: bool = False) -> Lease | None:
        self.reclaimed.append((request.key, held_only))
        return Lease(request.key, request)

    def release(self, lease: Lease, *, requeue: bool = False) -> None:
        self.released.append((lease.key, requeue))

    def withdraw(self, key: str) -> None:
        self.withdrawn.append(key)

    def revoked(self, leases: Sequence[Lease]) -> list[tuple[Lease, str]]:
        return [(lease, "a higher priority workload") for lease in leases if lease.key in self.revoke]


class Rig:
    """A supervisor over the two steps of ``flow``, with the round's callbacks recorded."""

    def __init__(self, executor: FakeExecutor | None = None) -> None:
        self.graph = flow.build({})
        self.recs = {n.id: StepRec(n, S.PENDING) for n in self.graph.nodes.values()}
        self.executor = executor or FakeExecutor()
        self.admission = FakeAdmission()
        self.clock = FakeClock()
        self.events: list[tuple[str, str]] = []
        self.supervisor = AttemptSupervisor(run_id="r1", project="p", run_dir="/tmp/r1", recs=self.recs,
                                            executors={"thread": self.executor}, admission=self.admission,
                                            clock=self.clock, transition=self.transition, event=self.event)

    def transition(self, rec: StepRec, trigger: sm.Trigger, batch: Batch) -> None:
        rec.state = sm.transition(rec.state, trigger)
        batch.touched[rec.node.id] = rec

    def event(self, batch: Batch, kind: str, sid: str, reason: str, message: str = "", *, warning: bool = False,
              data: dict[str, Any] | None = None) -> None:
        self.events.append((sid, reason))

    def rec(self, name: str) -> StepRec:
        return next(r for r in self.recs.values() if r.node.step.name == name)

    def launch(self, rec: StepRec, batch: Batch, effects: list[Effect]) -> Lease:
        rec.state = S.QUEUED
        request = resource_request("r1", "p", rec, f"r1/{rec.node.id}#{rec.attempt + 1}")
        (lease,) = self.supervisor.settle([request])
        assert isinstance(lease, Lease)
        self.supervisor.launch(rec, lease, batch, self.clock(), effects)
        return lease


def run(effects: list[Effect]) -> None:
    for effect in effects:
        effect()
    effects.clear()


def test_launch_places_now_and_starts_after_the_commit() -> None:
    rig = Rig()
    rec = rig.rec("first")
    batch, effects = Batch.new(), []
    lease = rig.launch(rec, batch, effects)
    assert rig.executor.calls == [("place", lease.key)]  # the placement goes into the row before the commit
    assert rec.state is S.RUNNING and rec.attempt == 1 and rec.lease == lease and rec.executor == "thread"
    assert [(a.step_id, a.attempt, a.worker_pid) for a in batch.attempts_new] == [(rec.node.id, 1, 4242)]
    assert rig.events == [(rec.node.id, "StepStarted")]
    assert rec.deadline == rig.clock.monotonic() + 10  # threads begin at once: the timeout starts now
    assert rig.supervisor.next_deadline() == rec.deadline and rig.supervisor.has_deadlines()
    run(effects)
    assert rig.executor.calls[-1] == ("start", lease.key, {})
    assert rig.supervisor.take(lease.key) == (rec.node.id, None)
    assert rig.supervisor.take(lease.key) is None  # a late second outcome is ignored
    assert rig.supervisor.next_deadline() is None


def test_in_process_values_reach_successors_and_stay_out_of_other_executors() -> None:
    rig = Rig()
    up, down = rig.rec("first"), rig.rec("second")
    up.executor = "thread"
    rig.supervisor.keep_value(up, 1)
    assert rig.supervisor.values == {up.node.id: 1}
    effects: list[Effect] = []
    lease = rig.launch(down, Batch.new(), effects)
    run(effects)
    assert rig.executor.calls[-1] == ("start", lease.key, {up.node.id: 1})

    other = Rig(FakeExecutor(in_process=False))
    rec = other.rec("first")
    rec.executor = "thread"
    other.supervisor.keep_value(rec, 1)
    assert other.supervisor.values == {}


def test_a_timeout_finishes_the_attempt_stops_it_after_the_commit_and_gives_the_lease_back() -> None:
    rig = Rig()
    rec = rig.rec("first")
    effects: list[Effect] = []
    lease = rig.launch(rec, Batch.new(), effects)
    run(effects)
    batch = Batch.new()
    assert list(rig.supervisor.expire(batch, rig.clock(), effects)) == []
    rig.clock.advance_s(10)
    expired = list(rig.supervisor.expire(batch, rig.clock(), effects))
    assert expired == [(rec, "attempt 1 exceeded its timeout of 10s")]
    assert [(a.state, a.reason, a.duration_ms) for a in batch.attempts_done] == [("failed", TIMEOUT, 10_000)]
    assert rec.lease is None and rec.deadline is None
    assert ("stop", lease.key, TIMEOUT) not in rig.executor.calls  # nothing is stopped before the commit
    run(effects)
    assert rig.executor.calls[-1] == ("stop", lease.key, TIMEOUT)
    rig.supervisor.give_back()
    assert rig.admission.released == [(lease.key, False)]
    assert rig.supervisor.take(lease.key) is None  # its late outcome is ignored


def test_a_revoked_lease_stops_the_attempt_once_and_its_outcome_names_the_preemption() -> None:
    rig = Rig()
    rec = rig.rec("first")
    effects: list[Effect] = []
    lease = rig.launch(rec, Batch.new(), effects)
    run(effects)
    rig.supervisor.preempt(Batch.new(), effects)
    assert effects == []  # nothing revoked
    rig.admission.revoke.add(lease.key)
    rig.supervisor.preempt(Batch.new(), effects)
    run(effects)
    rig.supervisor.preempt(Batch.new(), effects)  # asked once per attempt
    assert effects == []
    assert rig.executor.calls[-1] == ("stop", lease.key, PREEMPTED)
    assert rig.events[-1] == (rec.node.id, PREEMPTED)
    assert rig.supervisor.take(lease.key) == (rec.node.id, "a higher priority workload")


def test_cancel_stops_running_attempts_and_withdraws_queued_requests() -> None:
    rig = Rig()
    running, queued = rig.rec("first"), rig.rec("second")
    effects: list[Effect] = []
    lease = rig.launch(running, Batch.new(), effects)
    run(effects)
    queued.state = S.QUEUED
    batch = Batch.new()
    rig.supervisor.cancel([running, queued], batch, rig.clock(), "cancelled by request", effects)
    assert [(a.step_id, a.state, a.reason) for a in batch.attempts_done] == [(running.node.id, "cancelled", CANCELLED)]
    assert rig.admission.withdrawn == [f"r1/{queued.node.id}#1"]
    run(effects)
    assert rig.executor.calls[-1] == ("stop", lease.key, CANCELLED)
    rig.supervisor.shutdown(kill=True)
    assert rig.executor.calls[-1] == ("shutdown", True)


def attempt_row(rec: StepRec, started_at: int) -> AttemptRecord:
    return AttemptRecord("r1", rec.node.id, rec.attempt, "running", "", "", "thread", 99, 5, started_at, None, None,
                         None, None, None)


def test_recover_follows_an_attempt_still_running_with_what_is_left_of_its_timeout() -> None:
    rig = Rig()
    rec = rig.rec("first")
    rec.state, rec.attempt = S.RUNNING, 1
    outcome = rig.supervisor.recover(rec, attempt_row(rec, rig.clock() - 4_000))
    assert outcome is None
    key = f"r1/{rec.node.id}#1"
    assert rig.executor.calls == [("recover", key, 99)]
    assert rec.executor == "thread" and rec.deadline == rig.clock.monotonic() + 6
    assert rig.admission.reclaimed == [(key, False)]
    assert rig.supervisor.take(key) == (rec.node.id, None)


def test_recover_hands_back_an_adopted_or_lost_outcome_holding_only_the_lease_it_still_has() -> None:
    rig = Rig()
    rec = rig.rec("first")
    rec.state, rec.attempt = S.RUNNING, 1
    outcome = rig.supervisor.recover(rec, None)  # no attempt row: nothing to recover, the attempt was lost
    assert outcome is not None and outcome.reason == INTERRUPTED
    assert rig.admission.reclaimed == [(f"r1/{rec.node.id}#1", True)]

    task_outcome = failed(make_task_for(rig, rec), "Exception", "boom", started_at=1, finished_at=2)
    adopted = Rig(FakeExecutor(recovered=task_outcome))
    rec2 = adopted.rec("first")
    rec2.state, rec2.attempt = S.RUNNING, 1
    assert adopted.supervisor.recover(rec2, attempt_row(rec2, adopted.clock())) is task_outcome
    assert rec2.deadline is None  # nothing to follow


def make_task_for(rig: Rig, rec: StepRec) -> Task:
    from capstan.pipelines.steprec import make_task

    return make_task("r1", "p", "/tmp/r1", rec, rig.recs, None, attempt=rec.attempt)
