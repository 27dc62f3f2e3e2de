"""``/api/v1/jobs`` against a real ``capstan server`` on a loopback port, whose leader runs the submitted jobs as real
worker processes: submit, list (state filter, pages), show, logs (followed with a cursor), why, cancel; bad specs and
gangs that can never fit answer 400 naming the field; a job of another project is not there."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from helpers.server import ServerProcess, start_server

API = "/api/v1/jobs"

# The jobs of this module go to LocalQueue "train": 2 CPUs of quota, so a 2-CPU job keeps a second one pending.
QUEUE = """
flavors: [{name: cpu}]
clusterQueues:
  - name: train
    resourceGroups:
      - coveredResources: [cpu, memory]
        flavors: [{name: cpu, resources: [{name: cpu, nominalQuota: 2}, {name: memory, nominalQuota: 64Gi}]}]
localQueues: [{name: train, clusterQueue: train, project: default}]
"""

SCRIPTS = {
    "hello.py": """
import os, sys
rank = os.environ["RANK"]
print(f"hello from rank {rank} of {os.environ['WORLD_SIZE']} with {sys.argv[1:]}", flush=True)
print(f"a warning from rank {rank}", file=sys.stderr)
""",
    "flaky.py": """
import os, sys
restart = int(os.environ["TORCHELASTIC_RESTART_COUNT"])
print(f"rank {os.environ['RANK']} restart {restart}", flush=True)
if os.environ["RANK"] == "1" and restart == 0:
    sys.exit(3)
""",
    "slow.py": """
import signal, sys, time
def stop(*_):
    print("stopping on SIGTERM", flush=True)
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
print("started", flush=True)
for i in range(3000):
    time.sleep(0.1)
""",
}


def wait_for(what: str, check: Callable[[], Any], timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def scripts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("scripts")
    for name, text in SCRIPTS.items():
        (folder / name).write_text(text.lstrip())
    return folder


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with start_server(tmp_path_factory.mktemp("jobs-api") / "home") as server:
        applied = httpx.post(f"{server.url}/api/v1/queue/config", content=QUEUE.encode(),
                             headers={"Content-Type": "application/yaml"}, timeout=30)
        assert applied.status_code == 200, applied.text
        yield server


def call(server: ServerProcess, method: str, path: str = "", **kwargs: Any) -> httpx.Response:
    return httpx.request(method, f"{server.url}{API}{path}", timeout=30, **kwargs)


def submit(server: ServerProcess, scripts: Path, entry: str, **fields: Any) -> dict[str, Any]:
    spec = {"name": entry.removesuffix(".py"), "entry": entry, "working_dir": str(scripts), "queue": "train",
            "restart_backoff_s": 0, "grace_s": 5, **fields}
    answer = call(server, "POST", json=spec)
    assert answer.status_code == 201, answer.text
    job: dict[str, Any] = answer.json()["job"]
    return job


def job_of(server: ServerProcess, job_id: str) -> dict[str, Any]:
    answer = call(server, "GET", f"/{job_id}")
    assert answer.status_code == 200, answer.text
    return answer.json()  # type: ignore[no-any-return]  # JSON


def ended(server: ServerProcess, job_id: str) -> dict[str, Any]:
    return wait_for(f"job {job_id} to end", lambda: (d := job_of(server, job_id))["job"]["state"]  # type: ignore[no-any-return]  # JSON
                    in ("Succeeded", "Failed", "Cancelled") and d)


def test_a_submitted_job_runs_and_its_workers_logs_are_kept(server: ServerProcess, scripts: Path) -> None:
    job = submit(server, scripts, "hello.py", workers=2, args=["--lr", "0.1"])
    assert job["state"] == "Pending" and job["id"].startswith("hello-") and job["spec"]["workers"] == 2
    done = ended(server, job["id"])
    assert done["job"]["state"] == "Succeeded", done
    assert [(a["number"], a["reason"]) for a in done["attempts"]] == [(1, "Succeeded")]
    assert done["job"]["run_id"] and done["job"]["restarts"] == 0

    logs = call(server, "GET", f"/{job['id']}/logs", params={"worker": 1})
    assert logs.status_code == 200 and logs.headers["x-capstan-attempt"] == "1", logs.text
    assert logs.text == "hello from rank 1 of 2 with ['--lr', '0.1']\na warning from rank 1\n"
    assert logs.headers["x-capstan-job-state"] == "Succeeded"
    again = call(server, "GET", f"/{job['id']}/logs", params={"cursor": logs.headers["x-capstan-log-cursor"],
                                                              "worker": 1})
    assert again.status_code == 200 and again.text == "", "a cursor skips what was read"
    only_rank0 = call(server, "GET", f"/{job['id']}/logs", params={"rank": 0})
    assert only_rank0.text.startswith("hello from rank 0 of 2")

    for params, field in (({"worker": 2}, "worker"), ({"worker": 0, "rank": 1}, "rank"),
                          ({"attempt": 5}, "attempt"), ({"cursor": "garbage"}, "cursor")):
        bad = call(server, "GET", f"/{job['id']}/logs", params=params)
        assert bad.status_code == 400 and bad.json()["message"].startswith(f"{field}:"), bad.text

    listed = call(server, "GET", params={"state": "Succeeded"}).json()["jobs"]
    assert job["id"] in [j["id"] for j in listed]
    assert all(j["state"] == "Succeeded" for j in listed)
    bad_state = call(server, "GET", params={"state": "Done"})
    assert bad_state.status_code == 400 and "state" in bad_state.json()["message"]


def test_a_failed_worker_restarts_the_gang_and_why_says_so(server: ServerProcess, scripts: Path) -> None:
    job = submit(server, scripts, "flaky.py", workers=2, max_restarts=1)
    done = ended(server, job["id"])
    assert done["job"]["state"] == "Succeeded" and done["job"]["restarts"] == 1, done
    first, second = done["attempts"]
    assert (first["reason"], first["rank"], first["exit_code"]) == ("WorkerFailed", 1, 3)
    assert second["reason"] == "Succeeded"
    why = call(server, "GET", f"/{job['id']}/why").json()
    assert why["state"] == "Succeeded" and why["restarts"] == 1 and why["max_restarts"] == 1
    assert [a["reason"] for a in why["attempts"]] == ["WorkerFailed", "Succeeded"]
    assert "Restarts:  1 of 1 allowed" in why["text"]
    assert "WorkerFailed: rank 1 exited with code 3" in why["text"], why["text"]
    old = call(server, "GET", f"/{job['id']}/logs", params={"worker": 0, "attempt": 1})
    assert old.text == "rank 0 restart 0\n" and old.headers["x-capstan-attempt"] == "1"


def test_a_pending_job_is_explained_by_the_queue_and_cancels_at_once(server: ServerProcess,
                                                                      scripts: Path) -> None:
    blocker = submit(server, scripts, "slow.py", cpu=2)
    wait_for("the blocker to run", lambda: job_of(server, blocker["id"])["job"]["state"] == "Running")
    waiter = submit(server, scripts, "hello.py", name="waiter", cpu=1)
    pending = wait_for("the waiter's workload", lambda: (j := job_of(server, waiter["id"])["job"])["workload"] and j)
    assert pending["state"] == "Pending"
    why = call(server, "GET", f"/{waiter['id']}/why").json()
    assert why["state"] == "Pending" and why["queue"] is not None, why
    assert why["queue"]["cluster_queue"] == "train" and why["queue"]["state"] == "Pending"
    assert "Queue:" in why["text"] and "ClusterQueue train" in why["text"]

    cancelled = call(server, "POST", f"/{waiter['id']}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["job"]["cancel_requested"] is True
    assert ended(server, waiter["id"])["job"]["state"] == "Cancelled"
    assert call(server, "GET", f"/{waiter['id']}/logs").headers["x-capstan-attempt"] == "0", "it never started"

    first = call(server, "GET", f"/{blocker['id']}/logs")
    assert first.text == "started\n"
    call(server, "POST", f"/{blocker['id']}/cancel")
    done = ended(server, blocker["id"])
    assert done["job"]["state"] == "Cancelled" and done["attempts"][-1]["reason"] == "Cancelled"
    rest = call(server, "GET", f"/{blocker['id']}/logs", params={"cursor": first.headers["x-capstan-log-cursor"]})
    assert rest.text == "stopping on SIGTERM\n", "the workers got SIGTERM and their last words were kept"
    assert call(server, "POST", f"/{blocker['id']}/cancel").json()["job"]["state"] == "Cancelled"


@pytest.mark.parametrize(("fields", "needle"), [
    ({"workers": 0}, "job.workers: must be between 1 and 1024"),
    ({"gpus": 1.5}, "job.gpus: a fraction of a GPU"),
    ({"env": {"RANK": "1"}}, "job.env.RANK:"),
    ({"entry": "missing.py"}, "job.entry: script 'missing.py' does not exist"),
    ({"entry": "no_such_module.train"}, "job.entry: module 'no_such_module.train' cannot be found"),
    ({"colour": "red"}, "job.colour: unknown field"),
    ({"workers": 3, "cpu": 1}, "job.workers: the gang of 3 worker(s) can never be admitted"),
    ({"cpu": 3}, "job.cpu: the gang of 1 worker(s) can never be admitted"),
    ({"queue": "nope"}, "job.queue:"),
])
def test_bad_specs_answer_400_naming_the_field(server: ServerProcess, scripts: Path, fields: dict[str, Any],
                                               needle: str) -> None:
    spec = {"name": "bad", "entry": "hello.py", "working_dir": str(scripts), "queue": "train", **fields}
    answer = call(server, "POST", json=spec)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error_code"] == "INVALID_PARAMETER_VALUE" and needle in answer.json()["message"], \
        answer.text


def test_jobs_belong_to_their_project_and_list_in_pages(server: ServerProcess, scripts: Path) -> None:
    ids = [submit(server, scripts, "hello.py", name=f"page{i}")["id"] for i in range(3)]
    elsewhere = {"X-Capstan-Project": "elsewhere"}
    for path in ("", "/why", "/logs"):
        hidden = call(server, "GET", f"/{ids[0]}{path}", headers=elsewhere)
        assert hidden.status_code == 404 and hidden.json()["error_code"] == "RESOURCE_DOES_NOT_EXIST", hidden.text
    assert call(server, "POST", f"/{ids[0]}/cancel", headers=elsewhere).status_code == 404
    assert call(server, "GET", headers=elsewhere).json()["jobs"] == []

    seen: list[str] = []
    token: str | None = None
    while True:
        params: dict[str, Any] = {"max_results": 2}
        if token:
            params["page_token"] = token
        page = call(server, "GET", params=params).json()
        assert len(page["jobs"]) <= 2
        seen += [j["id"] for j in page["jobs"]]
        token = page["next_page_token"]
        if token is None:
            break
    assert seen[:3] == ids[::-1], "newest first, across pages"
    assert len(seen) == len(set(seen))
    for job_id in ids:
        ended(server, job_id)
