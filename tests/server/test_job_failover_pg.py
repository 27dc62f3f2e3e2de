"""A training job survives a leader that dies with its machine (issue 14, part 3).

Two real ``capstan server`` processes on one PostgreSQL schema, each with its own ``CAPSTAN_HOME`` and its own host
name (a ``sitecustomize`` on their path renames the host for them and the workers they start), sharing only the
artifact root: two machines with a shared bucket. The leader runs a training job that checkpoints every step; the
test kills the leader and its gang at once (``kill -9``: the machine is gone). The other server cannot probe a
process on another host, so it waits until the job's heartbeat is older than the lease, claims the job, ends the
lost attempt ``NodeLost`` and restarts the gang, which resumes from the last checkpoint and succeeds.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path
from typing import Any

import httpx
from test_leader_failover_pg import leader_pids, wait_for

from capstan.services import Services
from capstan.settings import Settings
from capstan.training.jobs_sql import HEARTBEAT_INTERVAL_MS, OWNER_LEASE_MS
from helpers.server import start_server

SCRIPTS = Path(__file__).parents[1] / "training" / "scripts"
SITECUSTOMIZE = '''
import os
import socket

_MACHINE = os.environ.get("TEST_MACHINE_NAME")
if _MACHINE:
    socket.gethostname = lambda: _MACHINE
'''
STEPS = 40


def machine_env(settings: Settings, site: Path, bucket: Path, name: str) -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)
    return {"CAPSTAN_DB_URL": settings.db_url, "CAPSTAN_ARTIFACTS": str(bucket), "TEST_MACHINE_NAME": name,
            "PYTHONPATH": path}


def shown(url: str, job_id: str) -> dict[str, Any]:
    got = httpx.get(f"{url}/api/v1/jobs/{job_id}", timeout=10)
    assert got.status_code == 200, got.text
    return dict(got.json())


def progress(out: Path) -> int:
    with contextlib.suppress(OSError, ValueError):
        return int((out / "progress-rank-0").read_text())
    return -1


def test_a_job_of_a_leader_lost_with_its_machine_is_adopted_once_its_heartbeat_is_stale_and_resumes(
        pg_settings: Settings, tmp_path: Path) -> None:
    site, bucket, out = tmp_path / "site", tmp_path / "bucket", tmp_path / "out"
    site.mkdir()
    out.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    with start_server(tmp_path / "a", env=machine_env(pg_settings, site, bucket, "machine-a")) as first:
        wait_for(lambda: leader_pids(pg_settings) == {first.process.pid}, 10, "the first server to lead")
        with start_server(tmp_path / "b", env=machine_env(pg_settings, site, bucket, "machine-b")) as second:
            submitted = httpx.post(f"{first.url}/api/v1/jobs", timeout=30, json={
                "name": "steps", "entry": "steps.py", "args": [str(out), str(STEPS), "0.15"],
                "working_dir": str(SCRIPTS), "cpu": 0.5, "grace_s": 2, "restart_backoff_s": 0.05})
            assert submitted.status_code == 201, submitted.text
            job_id = submitted.json()["job"]["id"]
            wait_for(lambda: progress(out) >= 3, 90, "the job to checkpoint a few steps")
            job = shown(second.url, job_id)["job"]
            assert job["state"] == "Running" and job["owner"] == f"machine-a:{first.process.pid}", job
            worker = int((out / "pid-attempt-1-rank-0").read_text())

            # The machine is gone: the server and its gang die at once.
            os.kill(first.process.pid, signal.SIGKILL)
            assert os.getpgid(worker) == worker, "the worker leads a process group of its own"
            os.killpg(worker, signal.SIGKILL)
            killed_ms = time.time_ns() // 1_000_000
            first.process.wait(timeout=10)
            at_kill = progress(out)

            wait_for(lambda: leader_pids(pg_settings) == {second.process.pid}, 10, "the second server to lead")
            wait_for(lambda: shown(second.url, job_id)["job"]["state"] in ("Succeeded", "Failed", "Cancelled"),
                     120, "the adopted job to end")
            final = shown(second.url, job_id)
            why = httpx.get(f"{second.url}/api/v1/jobs/{job_id}/why", timeout=10).json()

    job, attempts = final["job"], final["attempts"]
    assert (job["state"], job["restarts"], job["owner"]) == ("Succeeded", 0, None), job
    assert [a["reason"] for a in attempts] == ["NodeLost", "Succeeded"], attempts
    lost, resumed = attempts
    # Nothing could probe machine-a: the job was adopted only once its last heartbeat (about one renewal interval
    # before the kill, another one allowed for a busy machine) was a lease old.
    assert lost["ended_ms"] - killed_ms >= OWNER_LEASE_MS - 2 * HEARTBEAT_INTERVAL_MS, (lost, killed_ms)
    assert lost["message"].startswith("attempt 1 was left by a runner that is gone"), lost
    assert resumed["log_dir"].startswith(str(tmp_path / "b")), "the gang restarted on the other machine"
    start = int((out / "start-attempt-2-rank-0").read_text())
    # The worker saves step N's checkpoint before it writes N to its progress file, and the kill can fall between
    # the two: the resumed gang starts at most two steps past the progress file, never at 0.
    assert 0 < start <= at_kill + 2, f"resumed from step {start}; the lost gang had reached {at_kill}"
    assert progress(out) == STEPS - 1
    assert "NodeLost" in why["text"], why["text"]

    services = Services.open(pg_settings)
    try:
        reasons = [e.reason for e in services.events.list("job", job_id)]
    finally:
        services.close()
    assert reasons == ["Submitted", "Started", "NodeLost", "Started", "Succeeded"], reasons

