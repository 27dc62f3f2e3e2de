"""The orchestrator driven directly: what one run writes to its row (heartbeats never undo the start), and time
taken from the injected clock (a step timeout decided by a fake monotonic reading)."""

from __future__ import annotations

import threading
import time
from typing import Any

import capstan.pipelines as cp
from capstan.clock import monotonic_of, system_clock
from capstan.pipelines.orchestrator import Orchestrator
from capstan.pipelines.runner import PipelineRunner
from capstan.pipelines.storage import UNSET, Batch, RunUpdate
from helpers.clock import FakeClock

RELEASE = threading.Event()  # lets the stuck step's thread end once its attempt was given up
ENTERED = threading.Event()


@cp.step(isolation="thread")
def add_one(x: int) -> int:
    return x + 1


@cp.pipeline
def two_steps(x: int = 1):
    return add_one(add_one(x))


@cp.step(isolation="thread", timeout=3600)
def stuck() -> int:
    ENTERED.set()
    RELEASE.wait(60)
    return 0


@cp.pipeline
def stuck_flow():
    return stuck()


def orchestrator(runner: PipelineRunner, pipe: Any, **kwargs: Any) -> Orchestrator:
    run, graph = runner.create_run(pipe, {}, ref=f"tests:{pipe.name}")
    return Orchestrator(engine=runner.engine, store=runner.artifacts, settings=runner.settings, run=run, graph=graph,
                        steps=runner.store.steps(run.id, run.project), admission=runner.ensure_admission(), **kwargs)


def test_heartbeat_every_round_keeps_the_run_started(runner: PipelineRunner) -> None:
    # heartbeat_s=0: the first round's heartbeat lands in the same batch as the start; it used to replace the start
    # (status running, started_at) so a finished run was stored with started_at=None.
    orch = orchestrator(runner, two_steps, heartbeat_s=0)
    assert orch.run() == "succeeded"
    stored = runner.store.get_run(orch.run_id)
    assert stored.status == "succeeded"
    assert stored.started_at is not None and stored.started_at == orch.started_at
    assert stored.finished_at is not None and stored.heartbeat_at is not None
    assert set(orch.final) == {"status", "finished_at", "message", "heartbeat_at"}


def test_heartbeat_after_a_slow_start_keeps_the_run_started(runner: PipelineRunner) -> None:
    orch = orchestrator(runner, two_steps, heartbeat_s=0.05)
    time.sleep(0.1)  # the first round starts a heartbeat period after the orchestrator was built
    assert orch.run() == "succeeded"
    stored = runner.store.get_run(orch.run_id)
    assert (stored.status, stored.started_at) == ("succeeded", orch.started_at)
    assert stored.started_at is not None


def test_run_updates_merge_and_write_only_what_is_set() -> None:
    start = RunUpdate("r", status="running", heartbeat_at=1, started_at=1, finished_at=None)
    assert start.values() == {"status": "running", "heartbeat_at": 1, "started_at": 1, "finished_at": None}
    beat = RunUpdate("r", heartbeat_at=2)
    assert beat.values() == {"heartbeat_at": 2} and beat.message is UNSET
    batch = Batch.new()
    assert not batch
    batch.update_run(start)
    batch.update_run(beat)
    assert batch and batch.run is not None
    assert batch.run.values() == {"status": "running", "heartbeat_at": 2, "started_at": 1, "finished_at": None}


def test_monotonic_reading_comes_from_the_clock() -> None:
    fake = FakeClock()
    assert monotonic_of(fake)() == 1000.0
    assert monotonic_of(lambda: 5) is time.monotonic  # a plain wall clock: the system's monotonic reading
    assert abs(monotonic_of(system_clock)() - time.monotonic()) < 1


def test_step_timeout_follows_the_injected_clock(runner: PipelineRunner) -> None:
    fake = FakeClock()
    ENTERED.clear()
    RELEASE.clear()
    orch = orchestrator(runner, stuck_flow, clock=fake, poll_s=0.02)
    result: list[str] = []
    thread = threading.Thread(target=lambda: result.append(orch.run()), daemon=True)
    thread.start()
    try:
        assert ENTERED.wait(30)
        time.sleep(0.2)
        assert thread.is_alive()  # an hour's timeout, and the fake clock has not moved
        fake.advance_s(3601)
        thread.join(20)
        assert result == ["failed"]
    finally:
        RELEASE.set()
    (step,) = runner.store.steps(orch.run_id, orch.project)
    assert (step.state, step.reason) == ("failed", "Timeout")
    (attempt,) = runner.store.attempts(orch.run_id, "stuck")
    assert attempt.state == "failed" and attempt.reason == "Timeout" and attempt.finished_at == fake.now


@cp.step(isolation="thread")
def link(i: int, *after: int) -> int:
    return i


@cp.pipeline
def chain_of_ten():
    x = link(0)
    for i in range(1, 10):
        x = link(i, x)
    return x


NAPPING = threading.Event()


@cp.step(isolation="thread")
def nap(seconds: float) -> float:
    NAPPING.set()
    time.sleep(seconds)
    return seconds


@cp.pipeline
def one_nap(seconds: float = 1.0):
    return nap(seconds)


def count_commits(monkeypatch: Any) -> list[int]:
    from capstan.pipelines.storage import RoundWriter

    commits: list[int] = []
    real = RoundWriter.commit

    def counted(self: RoundWriter, batch: Batch) -> None:
        commits.append(len(batch.events))
        real(self, batch)

    monkeypatch.setattr(RoundWriter, "commit", counted)
    return commits


def test_thread_steps_share_commits_and_every_change_is_written(runner: PipelineRunner, monkeypatch: Any) -> None:
    commits = count_commits(monkeypatch)
    orch = orchestrator(runner, chain_of_ten)
    assert orch.run() == "succeeded"
    # 10 steps take 11 rounds (start, then one per finished step); grouped, they take far fewer commits.
    assert 1 <= len(commits) < 11
    steps = runner.store.steps(orch.run_id, orch.project)
    assert {s.state for s in steps} == {"succeeded"} and len(steps) == 10
    for step in steps:
        (attempt,) = runner.store.attempts(orch.run_id, step.step_id)
        assert attempt.state == "succeeded"
    from capstan.store.events_sql import SqlEventLog

    events = SqlEventLog(runner.engine).list(limit=1000)
    mine = [e.reason for e in events if e.object_id.startswith(f"{orch.run_id}/")]
    assert sorted(set(mine)) == ["StepQueued", "StepStarted", "StepSucceeded"]
    assert all(mine.count(reason) == 10 for reason in set(mine)), "no round's events are lost in a group"


def test_a_waiting_group_is_committed_within_the_window(runner: PipelineRunner) -> None:
    from capstan.pipelines.orchestrator import GROUP_COMMIT_S

    NAPPING.clear()
    orch = orchestrator(runner, one_nap)
    thread = threading.Thread(target=orch.run, daemon=True)
    thread.start()
    try:
        assert NAPPING.wait(30)
        deadline = time.monotonic() + GROUP_COMMIT_S + 0.5  # the orchestrator's thread commits the started step
        while time.monotonic() < deadline:
            (step,) = runner.store.steps(orch.run_id, orch.project)
            if step.state == "running":
                break
            time.sleep(0.01)
        assert step.state == "running", "a running thread step must reach the database while it runs"
    finally:
        thread.join(30)
    (step,) = runner.store.steps(orch.run_id, orch.project)
    assert step.state == "succeeded"


def test_rounds_that_start_worker_processes_commit_before_they_act(runner: PipelineRunner,
                                                                   monkeypatch: Any) -> None:
    commits = count_commits(monkeypatch)
    orch = orchestrator(runner, two_process_steps)
    assert orch.run() == "succeeded"
    assert len(commits) == 3  # start + first launch, second launch, the end: no round waits for a later one


@cp.step
def add_two(x: int) -> int:
    return x + 2


@cp.pipeline
def two_process_steps(x: int = 1):
    return add_two(add_two(x))
