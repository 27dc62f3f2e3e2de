"""Kill -9 the orchestrator at several points of a 20-step pipeline and resume: every step's side effect happens
exactly once (process isolation), finished steps are never run again, steps that were running are adopted."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from pipeline_helpers import capstan, popen_capstan, write_pipeline

from capstan.pipelines.executors import close_pools
from capstan.settings import Settings
from helpers.pipelines import open_runner

TWENTY = '''
import time
from pathlib import Path

import capstan.pipelines as cp


def mark(marks, name):
    with open(Path(marks) / name, "a") as fh:
        fh.write("done\\n")


@cp.step(isolation="{isolation}")
def work(name: str, marks: str, delay: float, *after: str) -> str:
    time.sleep(delay)
    mark(marks, name)
    return name


@cp.pipeline
def twenty(marks: str = ".", delay: float = 0.12, slow: str = "", slow_delay: float = 1.5):
    def call(name, *after):
        return work.with_options(name=name)(name, marks, slow_delay if name == slow else delay, *after)

    first = call("s00")
    fan = [call(f"s0{{i}}", first) for i in (1, 2, 3)]
    prev = call("s04", *fan)
    for i in range(5, 20):
        prev = call(f"s{{i:02d}}", prev)
    return prev
'''

STEPS = [f"s{i:02d}" for i in range(20)]


@pytest.fixture
def home(settings: Settings) -> Iterator[Settings]:
    yield settings
    close_pools()


def running(settings: Settings, step: str) -> bool:
    runner = open_runner(settings)
    try:
        runs = runner.store.list_runs()
        return bool(runs) and any(s.step_id == step and s.state == "running"
                                  for s in runner.store.steps(runs[0].id, "default"))
    finally:
        runner.close()


def start_and_kill(settings: Settings, file: Path, marks: Path, after: int, *params: str,
                   when_running: str | None = None) -> str:
    """Run the pipeline with `capstan run`, SIGKILL it once ``after`` steps have finished (or once step
    ``when_running`` runs); returns the run id."""
    proc = popen_capstan(settings, "run", f"{file}:twenty", "-p", f"marks={marks}", *params, "--json")
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if when_running is None and len(list(marks.iterdir())) >= after:
            break
        if when_running is not None and running(settings, when_running):
            break
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before the kill point: {proc.communicate()}")
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    runner = open_runner(settings)
    try:
        (run,) = runner.store.list_runs()
        assert run.status == "running", "a killed orchestrator leaves its run running"
        return run.id
    finally:
        runner.close()


def check_exactly_once(settings: Settings, run_id: str, marks: Path) -> None:
    runner = open_runner(settings)
    try:
        result = runner.result(run_id)
        assert result.status == "succeeded", result.run.message
        assert {s.step_id: s.state for s in result.steps} == dict.fromkeys(STEPS, "succeeded")
        for step in STEPS:
            assert (marks / step).read_text() == "done\n", f"{step} ran {(marks / step).read_text().count('done')}x"
            succeeded = [a for a in runner.store.attempts(run_id, step) if a.state == "succeeded"]
            assert len(succeeded) == 1, f"{step} recorded {len(succeeded)} successful attempts"
        assert result.value() == "s19"
    finally:
        runner.close()


@pytest.mark.parametrize("after", [1, 6, 13])
def test_kill_and_resume_runs_every_step_exactly_once(home: Settings, tmp_path: Path, after: int) -> None:
    file = write_pipeline(tmp_path / "code", "twenty", TWENTY.format(isolation="process"))
    marks = tmp_path / "marks"
    marks.mkdir()
    run_id = start_and_kill(home, file, marks, after)
    resumed = capstan(home, "pipelines", "resume", run_id[:10], "--json")
    assert resumed.returncode == 0, resumed.stderr
    check_exactly_once(home, run_id, marks)


def test_a_step_running_during_the_crash_is_re_attached(home: Settings, tmp_path: Path) -> None:
    file = write_pipeline(tmp_path / "code", "twenty", TWENTY.format(isolation="process"))
    marks = tmp_path / "marks"
    marks.mkdir()
    # s08 sleeps 2.5 s; kill once s07 finished, i.e. while s08 runs in its worker.
    run_id = start_and_kill(home, file, marks, 0, "-p", "slow=s08", "-p", "slow_delay=2.5", when_running="s08")
    assert not (marks / "s08").exists()
    runner = open_runner(home)
    try:
        assert {s.step_id: s.state for s in runner.store.steps(run_id, "default")}["s08"] == "running"
        result = runner.resume(run_id)
        assert result.ok
        (attempt,) = runner.store.attempts(run_id, "s08")
        assert attempt.attempt == 1 and attempt.state == "succeeded", "the running attempt was adopted, not retried"
    finally:
        runner.close()
    check_exactly_once(home, run_id, marks)


def test_thread_steps_finished_before_the_crash_are_not_rerun(home: Settings, tmp_path: Path) -> None:
    file = write_pipeline(tmp_path / "code", "twenty", TWENTY.format(isolation="thread"))
    marks = tmp_path / "marks"
    marks.mkdir()
    run_id = start_and_kill(home, file, marks, 9)
    runner = open_runner(home)
    try:
        done_before = {s.step_id for s in runner.store.steps(run_id, "default") if s.state == "succeeded"}
        assert done_before
        result = runner.resume(run_id)
        assert result.ok
    finally:
        runner.close()
    for step in STEPS:
        count = (marks / step).read_text().count("done")
        assert count == 1 if step in done_before else 1 <= count <= 2, step


def test_resume_refuses_a_live_orchestrator_and_a_finished_run(home: Settings, tmp_path: Path) -> None:
    file = write_pipeline(tmp_path / "code", "twenty", TWENTY.format(isolation="thread"))
    marks = tmp_path / "marks"
    marks.mkdir()
    proc = popen_capstan(home, "run", f"{file}:twenty", "-p", f"marks={marks}", "-p", "delay=2")
    try:
        deadline = time.monotonic() + 60
        while not list(marks.iterdir()) and time.monotonic() < deadline:
            time.sleep(0.02)
        runner = open_runner(home)
        (run,) = runner.store.list_runs()
        runner.close()
        busy = capstan(home, "pipelines", "resume", run.id)
        assert busy.returncode == 1 and "is being orchestrated by" in busy.stderr
        assert "Traceback" not in busy.stderr
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    assert proc.returncode == 130
    finished = capstan(home, "pipelines", "resume", run.id)
    assert finished.returncode == 1 and "has already cancelled" in finished.stderr


ORPHAN = '''
import os
import signal

import capstan.pipelines as cp


@cp.step
def first() -> int:
    return 1


@cp.step
def kills_its_orchestrator(x: int, once: str) -> int:
    if not os.path.exists(once):
        open(once, "w").close()
        os.kill(os.getppid(), signal.SIGKILL)  # the worker's parent is the orchestrator
    return x + 1


@cp.step
def last(x: int) -> int:
    return x + 1


@cp.pipeline
def orphan(once: str = "killed"):
    return last(kills_its_orchestrator(first(), once))
'''


@pytest.mark.parametrize("result_kept", [True, False])
def test_an_attempt_that_ended_while_its_orchestrator_was_down_gives_its_quota_back(
        home: Settings, tmp_path: Path, result_kept: bool) -> None:
    # The step's worker finishes after the orchestrator was killed (its result file is kept, or lost): the run
    # records nothing of it, while the queue still has its workload admitted. Resume adopts the result (or retries
    # the lost attempt); either way that workload must be finished, or its quota would stay taken and later steps
    # of the run (or of any run) would wait for it forever.
    file = write_pipeline(tmp_path / "code", "orphan", ORPHAN)
    killed = capstan(home, "run", f"{file}:orphan", "-p", f"once={tmp_path / 'killed'}", "--json")
    assert killed.returncode == -signal.SIGKILL
    admitted = orjson.loads(capstan(home, "queue", "list", "--state", "Admitted", "--json").stdout)
    assert [w["workload"]["id"].rsplit("/", 1)[1] for w in admitted] == ["kills_its_orchestrator"]
    runner = open_runner(home)
    try:
        (run,) = runner.store.list_runs()
        if not result_kept:
            (attempt,) = runner.store.attempts(run.id, "kills_its_orchestrator")
            files = [p for p in (home.home / "pipelines" / "workers").iterdir()
                     if p.name.startswith(f"{attempt.worker_pid}-")]
            for path in files:
                path.unlink()
    finally:
        runner.close()
    resumed = capstan(home, "pipelines", "resume", run.id, "--json")
    assert resumed.returncode == 0, resumed.stderr
    runner = open_runner(home)
    try:
        attempts = [(a.state, a.reason) for a in runner.store.attempts(run.id, "kills_its_orchestrator")]
        if result_kept:
            assert attempts == [("succeeded", "")], "the result was adopted, not run again"
        else:
            assert attempts == [("failed", "Interrupted"), ("succeeded", "")], "the lost attempt was retried"
        assert runner.result(run.id).value() == 3
    finally:
        runner.close()
    assert orjson.loads(capstan(home, "queue", "list", "--json").stdout) == []
