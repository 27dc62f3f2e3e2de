"""Two real ``capstan server`` processes on one PostgreSQL schema (issue 14, part 3).

The leader is elected with an advisory lock. SIGKILL it while a pipeline run it orchestrates is in the middle of a
step: the other server becomes the leader within seconds, resumes the run to the end, nothing is lost, and every
step's side effect happens exactly once (the step that was running finishes in its worker process and its result
is adopted, not run again). And two servers admitting queue workloads at the same time never over-admit a quota:
queue sessions are serialised through the database.
"""

from __future__ import annotations

import os
import signal
import socket
import textwrap
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from capstan.settings import Settings
from helpers.server import ServerProcess, start_server

CHAIN = '''
import os
import time
from pathlib import Path

import capstan.pipelines as cp


@cp.step
def work(name: str, marks: str, delay: float, previous: int) -> int:
    time.sleep(delay)
    with open(Path(marks) / name, "a") as fh:  # one line per execution: a step run twice has two
        fh.write(f"{os.getpid()}\\n")
    return previous + 1


@cp.pipeline
def chain(marks: str = ".", slow: str = "s2", delay: float = 0.3, slow_delay: float = 8.0):
    total = 0
    for i in range(6):
        name = f"s{i}"
        total = work.with_options(name=name)(name, marks, slow_delay if name == slow else delay, total)
    return total
'''
STEPS = [f"s{i}" for i in range(6)]
FAILOVER_LIMIT_S = 5.0


def _raw(url: str) -> str:
    """The psycopg form of the schema's URL (its ``search_path`` option kept)."""
    return url.replace("postgresql+psycopg", "postgresql")


def leader_pids(settings: Settings) -> set[int]:
    """The processes holding this schema's leader lock, read from PostgreSQL (their lock sessions name themselves).
    Only this schema's key counts: other tests' servers may lead their own schemas in the same database."""
    from sqlalchemy import create_engine

    from capstan.queue.locking import advisory_key
    from capstan.server.leader import LEADER_LOCK

    engine = create_engine(settings.db_url)
    try:
        with engine.connect() as conn:
            key = advisory_key(conn, LEADER_LOCK)
    finally:
        engine.dispose()
    with psycopg.connect(_raw(settings.db_url), autocommit=True) as conn:
        rows = conn.execute(
            "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'advisory' AND l.granted AND a.application_name LIKE 'capstan-leadership %%' "
            "AND l.objsubid = 1 AND ((l.classid::bigint << 32) | l.objid::bigint) = %s", (key,)
        ).fetchall()
    return {int(name.rsplit(":", 1)[1]) for (name,) in rows}


def wait_for(condition: Any, timeout: float, what: str) -> float:
    """Poll ``condition`` until it is true; returns the seconds it took."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.05)
    return time.monotonic() - started


@contextmanager
def servers(settings: Settings, first_home: Path, second_home: Path,
            env: dict[str, str]) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    """Two servers on one PostgreSQL schema; the first one started leads."""
    env = {"CAPSTAN_DB_URL": settings.db_url, **env}
    with start_server(first_home, env=env) as first:
        wait_for(lambda: leader_pids(settings) & {first.process.pid}, 10, "the first server to lead")
        with start_server(second_home, env=env) as second:
            yield first, second


@pytest.fixture
def two_servers(pg_settings: Settings) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    """Two servers on one PostgreSQL schema and one CAPSTAN_HOME: one machine."""
    with servers(pg_settings, pg_settings.home, pg_settings.home, {}) as pair:
        yield pair


@pytest.fixture
def two_machines(pg_settings: Settings, tmp_path: Path) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    """Two servers on one PostgreSQL schema, each with its own CAPSTAN_HOME, sharing only the artifact root: as
    on two machines with a shared bucket (the processes they start are still visible to both here)."""
    artifacts = tmp_path / "bucket"
    with servers(pg_settings, tmp_path / "a", tmp_path / "b", {"CAPSTAN_ARTIFACTS": str(artifacts)}) as pair:
        yield pair


def run_state(server: ServerProcess, run_id: str) -> dict[str, Any]:
    shown = httpx.get(f"{server.url}/api/v1/pipelines/runs/{run_id}", timeout=10)
    assert shown.status_code == 200, shown.text
    return dict(shown.json())


def kill_the_leader_mid_step(settings: Settings, leader: ServerProcess, follower: ServerProcess,
                             folder: Path) -> tuple[dict[str, Any], Path]:
    """Submit the six-step chain to the leader, SIGKILL the leader while step s2 runs, check that the follower leads
    within `FAILOVER_LIMIT_S` and wait for the run to end; the run as the follower shows it, and the marks folder."""
    assert leader_pids(settings) == {leader.process.pid}, "one leader, the other server follows"
    code = folder / "code"
    code.mkdir()
    (code / "chain.py").write_text(textwrap.dedent(CHAIN))
    marks = folder / "marks"
    marks.mkdir()
    created = httpx.post(f"{leader.url}/api/v1/pipelines/runs", timeout=30,
                         json={"pipeline": f"{code / 'chain.py'}:chain", "params": {"marks": str(marks)}})
    assert created.status_code == 201, created.text
    run_id = created.json()["run"]["id"]

    def slow_step_running() -> bool:
        steps = {s["step"]: s for s in run_state(follower, run_id)["steps"]}
        return steps["s2"]["state"] == "running" and bool(steps["s2"]["attempts"])

    wait_for(slow_step_running, 60, "step s2 to run")
    time.sleep(0.5)  # well inside s2's eight seconds (long enough that a loaded machine still polls it running)
    assert [p.name for p in sorted(marks.iterdir())] == ["s0", "s1"]
    os.kill(leader.process.pid, signal.SIGKILL)
    leader.process.wait(timeout=10)

    took = wait_for(lambda: leader_pids(settings) == {follower.process.pid}, FAILOVER_LIMIT_S + 5,
                    "the follower to lead")
    assert took < FAILOVER_LIMIT_S, f"failover took {took:.1f}s"
    wait_for(lambda: run_state(follower, run_id)["run"]["status"] not in ("pending", "running"), 90,
             "the resumed run to end")
    shown = run_state(follower, run_id)
    assert shown["run"]["status"] == "succeeded", shown["run"]["message"]
    assert f":{follower.process.pid}:" in shown["run"]["orchestrator"], "the new leader resumed the run"
    steps = {s["step"]: s for s in shown["steps"]}
    assert {name: s["state"] for name, s in steps.items()} == dict.fromkeys(STEPS, "succeeded"), "nothing lost"
    assert steps["s5"]["output"] is not None
    return shown, marks


def executions(marks: Path, step: str) -> int:
    return len((marks / step).read_text().splitlines())


def test_the_follower_takes_over_a_killed_leader_and_finishes_its_run_exactly_once(
        pg_settings: Settings, two_servers: tuple[ServerProcess, ServerProcess], tmp_path: Path) -> None:
    shown, marks = kill_the_leader_mid_step(pg_settings, *two_servers, tmp_path)
    steps = {s["step"]: s for s in shown["steps"]}
    for name in STEPS:
        assert executions(marks, name) == 1, f"step {name} ran {executions(marks, name)} times"
        assert [a["attempt"] for a in steps[name]["attempts"]] == [1], f"{name}: {steps[name]['attempts']}"
    # The step that was running at the kill finished in its worker (started by the dead leader) and was adopted.
    assert steps["s2"]["attempts"][0]["state"] == "succeeded"


def test_across_machines_only_the_step_running_at_the_kill_may_run_again(
        pg_settings: Settings, two_machines: tuple[ServerProcess, ServerProcess], tmp_path: Path) -> None:
    """The new leader cannot adopt the result of a worker on the dead leader's machine (its results file is in
    that machine's CAPSTAN_HOME): the interrupted step runs again, without using up a retry. Finished steps are
    never run again, and no other step runs twice."""
    shown, marks = kill_the_leader_mid_step(pg_settings, *two_machines, tmp_path)
    steps = {s["step"]: s for s in shown["steps"]}
    for name in STEPS:
        if name != "s2":
            assert executions(marks, name) == 1, f"step {name} ran {executions(marks, name)} times"
            assert [a["attempt"] for a in steps[name]["attempts"]] == [1]
    assert executions(marks, "s2") in (1, 2), "at least once, and at most once more than that"
    attempts = steps["s2"]["attempts"]
    assert [a["attempt"] for a in attempts] == [1, 2] and attempts[0]["reason"] == "Interrupted", attempts
    assert steps["s2"]["retries_used"] == 0, "an interruption does not use up the step's retries"


def test_a_leader_that_loses_its_database_session_stops_leading(
        pg_settings: Settings, two_servers: tuple[ServerProcess, ServerProcess]) -> None:
    """The leader's lock session is ended under it (what a dropped network does): it notices within its check
    interval, stops the leader's work, and competes again; one process leads again within seconds."""
    leader, _follower = two_servers
    with psycopg.connect(_raw(pg_settings.db_url), autocommit=True) as conn:
        ended = conn.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = %s",
            (f"capstan-leadership {socket.gethostname()}:{leader.process.pid}"[:63],)).fetchone()
    assert ended == (1,)
    wait_for(lambda: "lost the leader lock" in leader.startup_text, 10, "the leader to notice")
    took = wait_for(lambda: len(leader_pids(pg_settings)) == 1, FAILOVER_LIMIT_S, "a leader again")
    assert took < FAILOVER_LIMIT_S
    assert httpx.get(f"{leader.url}/health", timeout=10).status_code == 200, "it still serves as a follower"


QUOTA = '''
flavors: [{name: cpu}]
clusterQueues:
  - name: team
    resourceGroups:
      - coveredResources: [cpu]
        flavors: [{name: cpu, resources: [{name: cpu, nominalQuota: 3}]}]
localQueues:
  - {name: team, clusterQueue: team, project: default}
'''
WORKLOADS = 32


def test_two_servers_admitting_at_once_never_over_admit(
        pg_settings: Settings, two_servers: tuple[ServerProcess, ServerProcess]) -> None:
    servers = two_servers
    applied = httpx.post(f"{servers[0].url}/api/v1/queue/config", content=QUOTA, timeout=30,
                         headers={"Content-Type": "application/yaml"})
    assert applied.status_code == 200, applied.text
    errors: list[str] = []
    start = threading.Barrier(WORKLOADS)

    def submit_then_finish(index: int) -> None:
        """Submit through one server; once admitted, hold the quota a moment and finish through the other."""
        via, other = servers[index % 2], servers[(index + 1) % 2]
        with httpx.Client(timeout=60) as client:
            start.wait()
            sent = client.post(f"{via.url}/api/v1/queue/workloads", json={
                "id": f"w{index}", "queue": "team", "pod_sets": [{"count": 1, "requests": {"cpu": 1}}]})
            if sent.status_code != 201:
                errors.append(sent.text)
                return
            deadline = time.monotonic() + 60
            while client.get(f"{via.url}/api/v1/queue/workloads/w{index}").json()["workload"]["state"] != "Admitted":
                if time.monotonic() > deadline:
                    errors.append(f"w{index} never admitted")
                    return
                time.sleep(0.05)
            time.sleep(0.05)
            done = client.post(f"{other.url}/api/v1/queue/workloads/w{index}/finish")
            if done.status_code != 200:
                errors.append(done.text)

    admitted_counts: list[int] = []
    finished = threading.Event()

    def watch() -> None:
        """Sample what the database holds as admitted, as any reader would see it, while the threads work."""
        with psycopg.connect(_raw(pg_settings.db_url), autocommit=True) as conn:
            while not finished.is_set():
                row = conn.execute("SELECT count(*) FROM queue_workloads WHERE state = 'Admitted'").fetchone()
                admitted_counts.append(int(row[0]) if row else 0)

    threads = [threading.Thread(target=submit_then_finish, args=(i,)) for i in range(WORKLOADS)]
    watcher = threading.Thread(target=watch)
    watcher.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    finished.set()
    watcher.join(10)
    assert not errors, errors[:3]
    assert admitted_counts and max(admitted_counts) <= 3, f"{max(admitted_counts)} workloads admitted at once"

    with psycopg.connect(_raw(pg_settings.db_url), autocommit=True) as conn:
        spans = conn.execute('SELECT workload_id, start, "end" FROM queue_usage').fetchall()
    assert len(spans) == WORKLOADS and all(end is not None for _w, _s, end in spans)
    assert max_overlap([(start_ms, end_ms) for _w, start_ms, end_ms in spans]) <= 3, \
        "more workloads held quota at one moment than the ClusterQueue's 3 CPUs"


def max_overlap(spans: list[tuple[int, int]]) -> int:
    """The most spans open at one instant (a span ending when another starts does not overlap it)."""
    edges = sorted([(end, -1) for _s, end in spans] + [(start, 1) for start, _e in spans])
    most = current = 0
    for _at, step in edges:
        current += step
        most = max(most, current)
    return most
