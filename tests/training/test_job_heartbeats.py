"""A training job's runner renews a heartbeat in the store; a runner on another machine is dead once that heartbeat
is older than the lease, and its job is claimed by exactly one of the runners that find it dead (issue 14, part 3).

The liveness decision (`owner_alive`) is a pure function: these tests give it the clock reading, the host and the
process probe. The claims run on SQLite and PostgreSQL (``backend_settings``)."""

from __future__ import annotations

import dataclasses
import re
import threading
from collections.abc import Callable, Iterator
from typing import Any, cast

import pytest
from sqlalchemy import select
from training_helpers import Env, events_of, pid_gone

from capstan.errors import InvalidState
from capstan.settings import Settings
from capstan.store.engine import create_store_engine
from capstan.store.schema import jobs
from capstan.training.jobs_sql import OWNER_LEASE_MS, SqlJobStore, owner_alive
from capstan.training.ports import JobRecord, JobStore
from capstan.training.runner import FENCE_S, JobRunner
from capstan.training.spec import parse_job_spec
from helpers.clock import T0, FakeClock

SPEC = parse_job_spec({"name": "mnist", "entry": "train.py"})
HERE = "node-a"


def alive(owner: str, heartbeat_ms: int | None, *, now_ms: int = T0, live_pids: frozenset[int] = frozenset(),
          lease_ms: int = OWNER_LEASE_MS) -> bool:
    probed: list[int] = []

    def exists(pid: int) -> bool:
        probed.append(pid)
        return pid in live_pids

    verdict = owner_alive(owner, heartbeat_ms, now_ms=now_ms, this_host=HERE, process_exists=exists,
                          lease_ms=lease_ms)
    if not owner.startswith(f"{HERE}:"):
        assert probed == [], "a process on another host is never probed"
    return verdict


# -- the pure decision ---------------------------------------------------------------------------------------------
def test_on_this_host_the_process_decides_whatever_the_heartbeat() -> None:
    assert alive("node-a:42", None, live_pids=frozenset({42})) is True
    assert alive("node-a:42", T0 - 10 * OWNER_LEASE_MS, live_pids=frozenset({42})) is True  # old beat, live pid
    assert alive("node-a:43", T0, live_pids=frozenset({42})) is False  # fresh beat, but the process is gone
    assert alive("node-a:0", T0, live_pids=frozenset({0})) is False
    assert alive("node-a:not-a-pid", T0) is False


def test_on_another_host_the_heartbeat_decides_against_the_lease() -> None:
    assert alive("node-b:42", T0) is True
    assert alive("node-b:42", T0 - OWNER_LEASE_MS + 1) is True
    assert alive("node-b:42", T0 - OWNER_LEASE_MS) is False  # exactly one lease old: dead
    assert alive("node-b:42", T0 - 3_000, lease_ms=2_000) is False
    assert alive("node-b:42", T0 - 3_000, lease_ms=4_000) is True
    assert alive("node-b:42", None) is False, "no heartbeat is no proof of life"
    assert alive("node-b:42", T0 + 500) is True, "a beat from a clock slightly ahead counts as fresh"


def test_a_host_name_with_colons_is_split_at_the_last_one() -> None:
    assert alive("fe80::1:42", T0) is True  # another host: the heartbeat decides
    assert owner_alive("fe80::1:42", None, now_ms=T0, this_host="fe80::1", process_exists={42}.__contains__)


# -- claims in the store --------------------------------------------------------------------------------------------
class RendezvousClock(FakeClock):
    """A fake clock that, while ``meet`` is set, holds each caller until ``parties`` callers have read it: the
    claimers read the clock between reading the job and writing their claim, so all of them have seen the same
    stale owner before any of them writes."""

    def __init__(self, parties: int) -> None:
        super().__init__()
        self.meet = False
        self._barrier = threading.Barrier(parties, timeout=30)

    def __call__(self) -> int:
        if self.meet:
            self._barrier.wait()
        return super().__call__()


@pytest.fixture
def engines(backend_settings: Settings) -> Iterator[Callable[..., SqlJobStore]]:
    """Stores on separate engines (connection pools), as two server processes have; all on one clock if given."""
    made = []

    def make(clock: FakeClock | None = None) -> SqlJobStore:
        engine = create_store_engine(backend_settings)
        made.append(engine)
        return SqlJobStore(engine, clock=clock or FakeClock())

    yield make
    for engine in made:
        engine.dispose()


def _job(job_id: str, owner: str | None, state: str = "Running") -> JobRecord:
    return JobRecord(id=job_id, project="alpha", spec=SPEC, state=state, created_ms=T0, owner=owner)  # type: ignore[arg-type]  # a state literal


def test_a_stale_owner_on_another_host_is_claimed_exactly_once_by_concurrent_claimers(
        engines: Callable[..., SqlJobStore]) -> None:
    clock = RendezvousClock(parties=2)
    first, second = engines(clock), engines(clock)
    first.create(_job("mnist-000001", owner="gone-host:7"))  # its heartbeat: T0
    clock.advance(OWNER_LEASE_MS)
    results: dict[str, bool] = {}

    def claim(store: SqlJobStore, me: str) -> None:
        results[me] = store.claim("mnist-000001", me)

    clock.meet = True
    threads = [threading.Thread(target=claim, args=(store, me))
               for store, me in ((first, "leader-1:10"), (second, "leader-2:20"))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    clock.meet = False
    assert sorted(results.values()) == [False, True], results
    winner = next(me for me, won in results.items() if won)
    job = first.get("mnist-000001")
    assert job is not None and job.owner == winner
    loser = next(me for me in results if me != winner)
    assert first.heartbeat("mnist-000001", loser) is False and first.heartbeat("mnist-000001", winner) is True


def test_many_claimers_racing_for_many_stale_jobs_take_each_job_once(engines: Callable[..., SqlJobStore]) -> None:
    clock = FakeClock()
    stores = [engines(clock) for _ in range(4)]
    ids = [f"job-{i:06d}" for i in range(12)]
    for job_id in ids:
        stores[0].create(_job(job_id, owner="gone-host:7"))
    clock.advance(OWNER_LEASE_MS + 1)
    won: list[tuple[str, str]] = []
    lock = threading.Lock()
    start = threading.Barrier(len(stores), timeout=30)

    def sweep(store: SqlJobStore, me: str) -> None:
        start.wait()
        for job_id in ids:
            if store.claim(job_id, me):
                with lock:
                    won.append((job_id, me))

    threads = [threading.Thread(target=sweep, args=(s, f"leader-{n}:{n}")) for n, s in enumerate(stores)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert sorted(job_id for job_id, _me in won) == ids, "every job claimed, none twice"
    for job_id, me in won:
        job = stores[0].get(job_id)
        assert job is not None and job.owner == me


def test_an_owner_that_renews_between_the_read_and_the_claim_keeps_its_job(
        engines: Callable[..., SqlJobStore]) -> None:
    owner_clock, claim_clock = FakeClock(), FakeClock()
    owner = engines(owner_clock)
    owner.create(_job("mnist-000002", owner="slow-host:3"))
    owner_clock.advance(OWNER_LEASE_MS)
    claim_clock.advance(OWNER_LEASE_MS)

    class RenewingClock(FakeClock):
        """Read by the claimer after it found the heartbeat stale: the slow owner renews just then."""

        def __call__(self) -> int:
            owner.heartbeat("mnist-000002", "slow-host:3")
            return claim_clock()

    claimer = engines(RenewingClock())
    assert claimer.claim("mnist-000002", "leader:1") is False
    job = owner.get("mnist-000002")
    assert job is not None and job.owner == "slow-host:3"


def test_a_runner_that_was_taken_over_writes_nothing_more(engines: Callable[..., SqlJobStore]) -> None:
    clock = FakeClock()
    store = engines(clock)
    record = store.create(_job("mnist-000003", owner="old-host:1"))
    clock.advance(OWNER_LEASE_MS)
    assert store.claim("mnist-000003", "new-host:2") is True
    late = dataclasses.replace(record, state="Failed", reason="RunnerError")
    assert store.update(late, holder="old-host:1") is False
    job = store.get("mnist-000003")
    assert job is not None and (job.state, job.owner) == ("Running", "new-host:2")
    assert store.update(dataclasses.replace(job, message="attempt 2"), holder="new-host:2") is True


def test_a_pending_job_of_a_dead_remote_runner_is_cancelled_at_once(engines: Callable[..., SqlJobStore]) -> None:
    clock = FakeClock()
    store = engines(clock)
    store.create(_job("mnist-000004", owner="old-host:1", state="Pending"))
    clock.advance(1_000)
    held = store.request_cancel("mnist-000004")
    assert held is not None and held.state == "Pending" and held.cancel_requested  # its runner is alive
    store.create(_job("mnist-000005", owner="old-host:1", state="Pending"))
    clock.advance(OWNER_LEASE_MS)
    ended = store.request_cancel("mnist-000005")
    assert ended is not None and (ended.state, ended.owner) == ("Cancelled", None)


# -- the runner's hold -----------------------------------------------------------------------------------------------
def _runner(env: Env, store: JobStore | None = None) -> JobRunner:
    return JobRunner(store or env.services.jobs, tracking=env.services.tracking, events=env.services.events,
                     admission=lambda: env.admission, settings=env.settings, poll_s=0.05, heartbeat_s=0.05)


def _drive(runner: JobRunner, job_id: str) -> tuple[threading.Thread, list[BaseException]]:
    failures: list[BaseException] = []

    def drive() -> None:
        try:
            runner.run(job_id)
        except InvalidState as exc:
            failures.append(exc)

    thread = threading.Thread(target=drive, daemon=True)
    thread.start()
    return thread, failures


def test_a_running_job_renews_its_heartbeat(env: Env) -> None:
    runner = _runner(env)
    record = runner.submit(env.spec("sleeper.py", str(env.out), workers=2), project="default", hold=True)
    thread, _failures = _drive(runner, record.id)
    env.running_gang(record.id)
    store = env.services.jobs
    assert isinstance(store, SqlJobStore)
    first = _beat(store, record.id)
    env.wait_for(lambda: _beat(store, record.id) > first)
    env.services.jobs.request_cancel(record.id)
    thread.join(30)
    assert env.job(record.id).state == "Cancelled" and _beat(store, record.id) is None, "released with the job"


def _beat(store: SqlJobStore, job_id: str) -> Any:
    """The job's stored heartbeat (a column only the store reads)."""
    with store._engine.connect() as conn:
        return conn.execute(select(jobs.c.heartbeat_ms).where(jobs.c.id == job_id)).scalar_one()


def test_a_runner_whose_job_was_taken_over_stops_its_gang_and_writes_nothing_more(env: Env) -> None:
    runner = _runner(env)
    record = runner.submit(env.spec("sleeper.py", str(env.out), workers=2), project="default", hold=True)
    thread, failures = _drive(runner, record.id)
    pids = env.running_gang(record.id)
    # What another machine's claim does once it found this runner's heartbeat stale.
    assert env.services.jobs.update(dataclasses.replace(env.job(record.id), owner="machine-b:9"),
                                    holder=runner.owner)
    thread.join(30)
    assert not thread.is_alive() and len(failures) == 1 and "another runner holds it now" in str(failures[0])
    assert all(pid_gone(pid) for pid in pids), "its gang was stopped"
    after = env.job(record.id)
    assert (after.state, after.owner, after.reason) == ("Running", "machine-b:9", "")
    assert [a.ended_ms for a in env.services.jobs.attempts(record.id)] == [None], "the new owner ends it"
    assert len(list(env.admission.in_use())) == 1, "the lease stays with the job"
    assert [e.reason for e in events_of(env, record.id)] == ["Submitted", "Started"]


class _StoreThatLosesTheDatabase:
    """The job store, whose heartbeats fail once ``down`` is set (the database became unreachable for this runner
    only)."""

    def __init__(self, inner: JobStore) -> None:
        self.inner = inner
        self.down = threading.Event()

    def heartbeat(self, job_id: str, owner: str) -> bool:
        if self.down.is_set():
            raise ConnectionError("the database is unreachable")
        return self.inner.heartbeat(job_id, owner)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_a_runner_that_cannot_renew_its_hold_stops_its_gang_before_the_lease_runs_out(env: Env) -> None:
    store = _StoreThatLosesTheDatabase(env.services.jobs)
    runner = _runner(env, cast("JobStore", store))
    record = runner.submit(env.spec("sleeper.py", str(env.out), workers=2), project="default", hold=True)
    thread, failures = _drive(runner, record.id)
    pids = env.running_gang(record.id)
    store.down.set()
    thread.join(30)
    assert not thread.is_alive() and len(failures) == 1, failures
    silent = re.search(r"could not be renewed for ([0-9.]+) s", str(failures[0]))
    assert silent is not None, failures[0]
    assert FENCE_S <= float(silent.group(1)) < OWNER_LEASE_MS / 1000, "it gave up after the fence, before the lease"
    assert all(pid_gone(pid) for pid in pids)
    assert env.job(record.id).state == "Running", "nothing written: the job is adopted like a lost one"
