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
