"""Contract of the training job store (`capstan.training.ports.JobStore`), run against SQLite and PostgreSQL."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from collections.abc import Iterator

import pytest

from capstan.errors import ResourceAlreadyExists, ResourceDoesNotExist
from capstan.settings import Settings
from capstan.store.engine import create_store_engine
from capstan.training.jobs_sql import OWNER_LEASE_MS, SqlJobStore, owner_id, pid_exists
from capstan.training.ports import JobAttempt, JobRecord, JobStore
from capstan.training.spec import parse_job_spec
from helpers.clock import T0, FakeClock

SPEC = parse_job_spec({"name": "mnist", "entry": "train.py", "args": ["--lr", "0.1"], "workers": 2,
                       "nproc_per_worker": 2, "cpu": 1.5, "memory": "2Gi", "gpus": 0.5, "gpu_flavor": "a100",
                       "max_restarts": 3, "experiment": "digits", "queue": "team-a", "priority": "high",
                       "env": {"SEED": "7"}, "log_all_ranks": True, "checkpoint_keep": 5})


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(backend_settings: Settings, clock: FakeClock) -> Iterator[JobStore]:
    engine = create_store_engine(backend_settings)
    yield SqlJobStore(engine, clock=clock)
    engine.dispose()


def _job(job_id: str = "mnist-0a1b2c", project: str = "alpha", created_ms: int = T0, state: str = "Pending",
         owner: str | None = None) -> JobRecord:
    return JobRecord(id=job_id, project=project, spec=SPEC, state=state, created_ms=created_ms,  # type: ignore[arg-type]  # a state literal
                     user="ada", owner=owner)


def _dead_pid() -> int:
    """The pid of a process of ours that has exited and been reaped (so nothing runs under it now)."""
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    return int(proc.stdout)


def test_create_get_round_trips_every_field(store: JobStore) -> None:
    full = dataclasses.replace(_job(), run_id="r" * 32, workload="job-mnist-0a1b2c", attempt=2, restarts=1,
                               preemptions=1, reason="Restarting", message="rank 1 exited with 3",
                               started_ms=T0 + 5, ended_ms=None, cancel_requested=True, owner="host:1")
    assert store.create(full) == full
    got = store.get(full.id)
    assert got == full
    assert got is not None and got.spec == SPEC and got.spec.env == (("SEED", "7"),)
    assert store.get("nope-000000") is None


def test_create_refuses_a_taken_id(store: JobStore) -> None:
    store.create(_job())
    with pytest.raises(ResourceAlreadyExists, match="mnist-0a1b2c"):
        store.create(_job(project="beta"))


def test_list_is_newest_first_and_filters_by_project_and_state(store: JobStore) -> None:
    store.create(_job("a-000001", created_ms=T0 + 1))
    store.create(_job("b-000002", created_ms=T0 + 3, state="Running"))
    store.create(_job("c-000003", created_ms=T0 + 2, project="beta", state="Failed"))
    store.create(_job("d-000004", created_ms=T0 + 3))  # same time as b: the id breaks the tie
    assert [j.id for j in store.list()] == ["d-000004", "b-000002", "c-000003", "a-000001"]
    assert [j.id for j in store.list(project="alpha")] == ["d-000004", "b-000002", "a-000001"]
    assert [j.id for j in store.list(states=["Running", "Failed"])] == ["b-000002", "c-000003"]
    assert [j.id for j in store.list(project="beta", states=["Running"])] == []
    assert [j.id for j in store.list(limit=2)] == ["d-000004", "b-000002"]
    assert [j.id for j in store.list(limit=2, offset=1)] == ["b-000002", "c-000003"]
    assert [j.id for j in store.list(project="alpha", offset=2)] == ["a-000001"]
    assert store.list(offset=4) == []
    assert store.list(project="nobody") == []


def test_update_replaces_and_compare_and_set_refuses_a_moved_state(store: JobStore) -> None:
    job = store.create(_job())
    running = dataclasses.replace(job, state="Running", attempt=1, started_ms=T0 + 10, workload="wl-1")
    assert store.update(running, expected_state="Pending") is True
    assert store.get(job.id) == running
    late = dataclasses.replace(job, state="Cancelled")
    assert store.update(late, expected_state="Pending") is False  # it is Running now: not written
    assert store.get(job.id) == running
    done = dataclasses.replace(running, state="Succeeded", ended_ms=T0 + 20, reason="Succeeded")
    assert store.update(done) is True  # no expectation: written whatever the stored state
    assert store.get(job.id) == done
    assert store.update(_job("ghost-000000")) is False


def test_cancel_of_an_unheld_pending_job_ends_it_at_once(store: JobStore, clock: FakeClock) -> None:
    store.create(_job())
    clock.advance(1_000)
    got = store.request_cancel("mnist-0a1b2c")
    assert got is not None and got.state == "Cancelled" and got.cancel_requested
    assert got.ended_ms == T0 + 1_000 and got.reason == "Cancelled"
    assert store.request_cancel("nope-000000") is None


def test_cancel_of_a_held_or_running_job_only_sets_the_flag(store: JobStore) -> None:
    store.create(_job("held-000001", owner=owner_id()))
    store.create(_job("run-000002", state="Running", owner=owner_id()))
    for job_id, state in (("held-000001", "Pending"), ("run-000002", "Running")):
        got = store.request_cancel(job_id)
        assert got is not None and got.state == state and got.cancel_requested and got.ended_ms is None


def test_cancel_of_a_pending_job_whose_runner_died_ends_it(store: JobStore) -> None:
    store.create(_job(owner=owner_id(_dead_pid())))
    got = store.request_cancel("mnist-0a1b2c")
    assert got is not None and got.state == "Cancelled" and got.owner is None


def test_cancel_leaves_an_ended_job_alone(store: JobStore) -> None:
    store.create(_job(state="Succeeded"))
    got = store.request_cancel("mnist-0a1b2c")
    assert got is not None and got.state == "Succeeded" and not got.cancel_requested


def test_claim_is_exclusive_while_the_owner_lives(store: JobStore) -> None:
    store.create(_job())
    me = owner_id()
    assert store.claim("mnist-0a1b2c", me) is True
    assert store.claim("mnist-0a1b2c", me) is True  # again: still ours
    assert store.claim("mnist-0a1b2c", "other-host:1") is False  # we are alive
    job = store.get("mnist-0a1b2c")
    assert job is not None and job.owner == me
    assert store.claim("nope-000000", me) is False


def test_a_dead_owner_on_this_host_may_be_taken_over(store: JobStore) -> None:
    dead_pid = _dead_pid()
    assert pid_exists(dead_pid) is False
    dead = owner_id(dead_pid)
    store.create(_job(owner=dead))
    assert store.claim("mnist-0a1b2c", owner_id()) is True
    job = store.get("mnist-0a1b2c")
    assert job is not None and job.owner == owner_id()


def test_an_owner_on_another_host_is_alive_while_its_heartbeat_is_fresh(store: JobStore, clock: FakeClock) -> None:
    store.create(_job(owner="elsewhere.example:1"))  # held from its creation: heartbeat now
    clock.advance(OWNER_LEASE_MS - 1)
    assert store.claim("mnist-0a1b2c", owner_id()) is False
    assert store.heartbeat("mnist-0a1b2c", "elsewhere.example:1") is True
    clock.advance(OWNER_LEASE_MS - 1)
    assert store.claim("mnist-0a1b2c", owner_id()) is False  # renewed: still alive
    clock.advance(1)
    assert store.claim("mnist-0a1b2c", owner_id()) is True  # a lease without renewal: dead
    assert store.heartbeat("mnist-0a1b2c", "elsewhere.example:1") is False  # it has lost the job


def test_an_ended_job_is_never_claimed(store: JobStore) -> None:
    store.create(_job(state="Failed"))
    assert store.claim("mnist-0a1b2c", owner_id()) is False


def test_attempts_are_added_ended_and_listed_in_order(store: JobStore) -> None:
    store.create(_job())
    second = JobAttempt("mnist-0a1b2c", 2, T0 + 50, 29501, "/logs/2")
    first = JobAttempt("mnist-0a1b2c", 1, T0 + 10, 29500, "/logs/1")
    store.add_attempt(second)
    store.add_attempt(first)
    store.add_attempt(JobAttempt("other-000000", 1, T0, 1, "/x"))
    with pytest.raises(ResourceAlreadyExists):
        store.add_attempt(first)
    ended = dataclasses.replace(first, ended_ms=T0 + 40, reason="WorkerFailed", rank=1, exit_code=3,
                                message="rank 1 exited with 3")
    store.end_attempt(ended)
    assert store.attempts("mnist-0a1b2c") == [ended, second]
    assert store.attempts("nope-000000") == []
    with pytest.raises(ResourceDoesNotExist):
        store.end_attempt(JobAttempt("mnist-0a1b2c", 9, T0, 1, "/x", reason="Succeeded"))


def test_an_update_from_a_stale_read_keeps_a_cancel(store: JobStore) -> None:
    store.create(_job("run-000003", state="Running", owner=owner_id()))
    stale = store.get("run-000003")
    assert stale is not None and not stale.cancel_requested
    store.request_cancel("run-000003")  # lands between the runner's read and its write
    assert store.update(dataclasses.replace(stale, attempt=2, message="attempt 2"))
    got = store.get("run-000003")
    assert got is not None and got.cancel_requested and got.attempt == 2
