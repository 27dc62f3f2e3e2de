"""``capstan train`` and ``capstan jobs ...`` as real subprocesses on a temporary ``CAPSTAN_HOME``: a job run in the
foreground (rank 0's output only, a few lines of progress), a failure with its reason, Ctrl-C, the same through
``CAPSTAN_URL`` against a real server, ``capstan logs JOB --worker N`` and ``capstan why JOB``; bad input is one
``error:`` line naming the option, without a traceback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from helpers.server import ServerProcess, capstan_command, clean_env, start_server

SCRIPTS = {
    "hello.py": """
import os, sys
rank = os.environ["RANK"]
print(f"hello from rank {rank} of {os.environ['WORLD_SIZE']} with {sys.argv[1:]}", flush=True)
print(f"a warning from rank {rank}", file=sys.stderr)
""",
    "broken.py": """
import os, sys
print(f"rank {os.environ['RANK']} starts", flush=True)
if os.environ["RANK"] == "1":
    sys.exit(3)
""",
    "slow.py": """
import os, pathlib, signal, sys, time
pathlib.Path(f"pid-{os.environ['RANK']}").write_text(str(os.getpid()))
def stop(*_):
    print("stopping on SIGTERM", flush=True)
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
print("started", flush=True)
for i in range(3000):
    time.sleep(0.1)
""",
}


@pytest.fixture(scope="module")
def scripts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("scripts")
    for name, text in SCRIPTS.items():
        (folder / name).write_text(text.lstrip())
    return folder


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("train-cli") / "home"


def capstan(home: Path, cwd: Path, *args: str, env: Mapping[str, str] | None = None,
            timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*capstan_command(), *args], env=clean_env(home, env), cwd=cwd, text=True,
                          capture_output=True, timeout=timeout)


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("error: "), result.stderr
    return lines[-1]


@pytest.mark.parametrize(("args", "message"), [
    (["missing.py"], "error: SCRIPT_OR_MODULE: script 'missing.py' does not exist"),
    (["no_such_module.train"], "error: SCRIPT_OR_MODULE: module 'no_such_module.train' cannot be found"),
    (["hello.py", "--workers", "0"], "error: --workers: must be between 1 and 1024, got 0"),
    (["hello.py", "--gpus", "1.5"], "error: --gpus: a fraction of a GPU is possible only below 1; got 1.5"),
    (["hello.py", "--workers", "1000"], "error: --workers: the gang of 1000 worker(s) can never be admitted"),
    (["hello.py", "--env", "RANK=1"], "error: --env RANK: is set by Capstan for every worker"),
])
def test_bad_input_is_one_line_naming_the_option(home: Path, scripts: Path, args: list[str], message: str) -> None:
    result = capstan(home, scripts, "train", *args)
    assert result.returncode == 1
    assert one_error_line(result).startswith(message), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, "nothing was submitted or started"


def test_a_job_runs_in_the_foreground_and_is_kept(home: Path, scripts: Path) -> None:
    result = capstan(home, scripts, "train", "hello.py", "--workers", "2", "--name", "greet", "--", "--lr", "0.1")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["[rank 0] hello from rank 0 of 2 with ['--lr', '0.1']",
                                          "[rank 0 err] a warning from rank 0"], "rank 0's output only, prefixed"
    progress = result.stderr.strip().splitlines()
    assert len(progress) <= 8, progress
    assert progress[-1].startswith("job greet-") and "succeeded; run " in progress[-1]
    assert any(line.endswith(": Running") for line in progress)
    job_id = progress[-1].split()[1]

    listed = json.loads(capstan(home, scripts, "jobs", "list", "--json").stdout)
    assert [(j["id"], j["state"]) for j in listed] == [(job_id, "Succeeded")]
    assert capstan(home, scripts, "jobs", "list", "--state", "Failed", "--json").stdout.strip() == "[]"
    shown = capstan(home, scripts, "jobs", "show", job_id)
    assert shown.returncode == 0 and "Succeeded" in shown.stdout and "python hello.py --lr 0.1" in shown.stdout
    assert "2 worker(s) x 1 process(es)" in shown.stdout and listed[0]["run_id"] in shown.stdout
    worker1 = capstan(home, scripts, "logs", job_id, "--worker", "1")
    assert worker1.stdout == "hello from rank 1 of 2 with ['--lr', '0.1']\na warning from rank 1\n"
    assert capstan(home, scripts, "jobs", "logs", job_id, "--worker", "1", "--follow").stdout == worker1.stdout
    assert capstan(home, scripts, "logs", job_id).stdout.startswith("hello from rank 0")
    no_worker = capstan(home, scripts, "logs", job_id, "--worker", "2")
    assert one_error_line(no_worker).startswith("error: worker: job"), no_worker.stderr
    not_a_job = capstan(home, scripts, "logs", "run-that-is-not-a-job")
    assert "not a training job" in one_error_line(not_a_job)
    cancel = capstan(home, scripts, "jobs", "cancel", job_id)
    assert cancel.returncode == 0 and "already ended (Succeeded)" in cancel.stdout


def test_a_failing_job_exits_1_with_its_reason_and_why_explains_it(home: Path, scripts: Path) -> None:
    result = capstan(home, scripts, "train", "broken.py", "--workers", "2")
    assert result.returncode == 1
    last = one_error_line(result)
    assert last.startswith("error: job broken-") and "failed (WorkerFailed: rank 1 exited with code 3" in last
    job_id = last.split()[2]
    why = capstan(home, scripts, "why", job_id)
    assert why.returncode == 0, why.stderr
    assert "State:     Failed" in why.stdout and "WorkerFailed: rank 1 exited with code 3" in why.stdout
    as_json = json.loads(capstan(home, scripts, "why", job_id, "--json").stdout)
    assert as_json["attempts"][0]["rank"] == 1 and as_json["attempts"][0]["exit_code"] == 3
    assert "text" not in as_json
    unknown = capstan(home, scripts, "why", "nothing-here-abcdef")
    assert "does not exist" in one_error_line(unknown), "neither a job nor a workload"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_ctrl_c_cancels_the_job_and_stops_its_workers(home: Path, scripts: Path, tmp_path: Path) -> None:
    for name, text in SCRIPTS.items():
        (tmp_path / name).write_text(text.lstrip())
    process = subprocess.Popen([*capstan_command(), "train", "slow.py", "--workers", "2"], cwd=tmp_path,
                               env=clean_env(home), text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not all((tmp_path / f"pid-{r}").exists() for r in (0, 1)):
        assert process.poll() is None and time.monotonic() < deadline, "the workers never started"
        time.sleep(0.1)
    pids = [int((tmp_path / f"pid-{r}").read_text()) for r in (0, 1)]
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 1, err
    assert "Traceback" not in err and "cancelling" in err
    assert err.strip().splitlines()[-1].startswith("error: job slow-") and " cancelled" in err
    assert "[rank 0] started" in out
    assert not any(_alive(pid) for pid in pids), "every worker was stopped"


QUEUE = """
flavors: [{name: cpu}]
clusterQueues:
  - name: train
    resourceGroups:
      - coveredResources: [cpu, memory]
        flavors: [{name: cpu, resources: [{name: cpu, nominalQuota: 1}, {name: memory, nominalQuota: 64Gi}]}]
localQueues: [{name: train, clusterQueue: train, project: default}]
"""


def _wait_for_state(home: Path, cwd: Path, name: str, state: str) -> str:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        jobs = json.loads(capstan(home, cwd, "jobs", "list", "--json").stdout)
        found = [j for j in jobs if j["name"] == name and j["state"] == state and (state != "Pending" or
                                                                                   j["workload"])]
        if found:
            return str(found[0]["id"])
        time.sleep(0.2)
    raise AssertionError(f"job {name} never became {state}")


def test_a_waiting_job_is_explained_by_the_queue_and_cancelled_from_another_shell(tmp_path: Path) -> None:
    home = tmp_path / "home"
    for name, text in SCRIPTS.items():
        (tmp_path / name).write_text(text.lstrip())
    (tmp_path / "queue.yaml").write_text(QUEUE)
    assert capstan(home, tmp_path, "queue", "apply", "-f", "queue.yaml").returncode == 0
    blocker = subprocess.Popen([*capstan_command(), "train", "slow.py", "--queue", "train"], cwd=tmp_path,
                               env=clean_env(home), text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    waiter: subprocess.Popen[str] | None = None
    try:
        blocker_id = _wait_for_state(home, tmp_path, "slow", "Running")
        waiter = subprocess.Popen([*capstan_command(), "train", "hello.py", "--queue", "train", "--name", "waiter"],
                                  cwd=tmp_path, env=clean_env(home), text=True, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE)
        waiter_id = _wait_for_state(home, tmp_path, "waiter", "Pending")
        why = capstan(home, tmp_path, "why", waiter_id)
        assert "State:     Pending" in why.stdout and "Reason:    WaitingForQuota" in why.stdout, why.stdout
        assert "Queue:" in why.stdout and f"Held by:   job/{blocker_id}" in why.stdout, why.stdout
        cancel = capstan(home, tmp_path, "jobs", "cancel", waiter_id)
        assert "cancel requested" in cancel.stdout, "its runner (the other shell) holds it"
        _, err = waiter.communicate(timeout=60)
        assert waiter.returncode == 1 and err.strip().splitlines()[-1].startswith(f"error: job {waiter_id} cancelled")
        assert "Pending (WaitingForQuota" in err, "the wait was reported"
        assert "attempt 1 started" not in err, "it never started"
    finally:
        for process in (blocker, waiter):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGINT)
                process.communicate(timeout=60)
    assert blocker.returncode == 1


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with start_server(tmp_path_factory.mktemp("train-remote") / "home") as server:
        yield server


def test_through_a_server(server: ServerProcess, scripts: Path, tmp_path: Path) -> None:
    remote = {"CAPSTAN_URL": server.url}
    client_home = tmp_path / "client"  # the client's own home stays empty: everything goes to the server
    result = capstan(client_home, scripts, "train", "hello.py", "--workers", "2", env=remote)
    assert result.returncode == 0, result.stderr
    assert "[rank 0] hello from rank 0 of 2 with []" in result.stdout
    assert "hello from rank 1" not in result.stdout
    job_id = result.stderr.strip().splitlines()[-1].split()[1]
    assert f"submitted to {server.url}" in result.stderr
    listed = json.loads(capstan(client_home, scripts, "jobs", "list", "--json", env=remote).stdout)
    assert [j["id"] for j in listed] == [job_id]
    logs = capstan(client_home, scripts, "logs", job_id, "--worker", "1", env=remote)
    assert logs.stdout == "hello from rank 1 of 2 with []\na warning from rank 1\n"
    why = capstan(client_home, scripts, "why", job_id, env=remote)
    assert "State:     Succeeded" in why.stdout
    failed = capstan(client_home, scripts, "train", "broken.py", "--workers", "2", env=remote)
    assert "WorkerFailed: rank 1 exited with code 3" in one_error_line(failed)
    bad = capstan(client_home, scripts, "train", "hello.py", "--workers", "1000", env=remote)
    assert one_error_line(bad).startswith("error: --workers: the gang of 1000 worker(s) can never be admitted")
    assert not (client_home / "jobs").exists()
