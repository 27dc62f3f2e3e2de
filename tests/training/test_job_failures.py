"""Failures, restarts, cancel and bad input: the whole gang stops when one worker fails, restarts with back-off up to
max_restarts, OOM kills are told apart, cancel stops it, and a job that can never run is refused before anything
starts."""

from __future__ import annotations

import pytest
from training_helpers import Env, events_of, pid_gone

from capstan.errors import InvalidParameterValue
from capstan.resources.admission import ResourceRequest
from capstan.resources.local import LocalAdmission


def test_max_restarts_exhausted_fails_with_the_rank_and_exit_code(env: Env) -> None:
    spec = env.spec("sleeper.py", str(env.out), "--exit-rank", "1", "--code", "3", workers=2, max_restarts=2)
    record = env.submit_and_run(spec)
    assert (record.state, record.reason, record.restarts, record.attempt) == ("Failed", "WorkerFailed", 2, 3)
    assert record.message == "rank 1 exited with code 3; all 2 restarts used"
    assert [(a.reason, a.rank, a.exit_code) for a in env.services.jobs.attempts(record.id)] == \
        [("WorkerFailed", 1, 3)] * 3
    events = events_of(env, record.id)
    assert [e.reason for e in events] == ["Submitted", "Started", "WorkerFailed", "Started", "WorkerFailed",
                                          "Started", "Failed"]
    restarts = [e for e in events if e.reason == "WorkerFailed"]
    assert restarts[0].message == "rank 1 exited with code 3; restarting the gang in 0.05s (restart 1 of 2)"
    assert restarts[1].message == "rank 1 exited with code 3; restarting the gang in 0.1s (restart 2 of 2)"
    assert (restarts[0].type, restarts[0].data["rank"], restarts[0].data["exit_code"]) == ("Warning", 1, 3)
    assert events[-1].message == record.message and events[-1].type == "Warning"
    assert record.run_id is not None and env.services.tracking.get_run(record.run_id).info.status == "FAILED"
    assert isinstance(env.admission, LocalAdmission) and list(env.admission.in_use()) == []


def test_exit_137_is_an_oom_kill(env: Env) -> None:
    record = env.submit_and_run(env.spec("rank_env.py", str(env.out), "--fail-rank", "0", "--fail-code", "137"))
    assert (record.state, record.reason) == ("Failed", "OOMKilled")
    assert record.message == "rank 0 was killed by the kernel's OOM killer; max_restarts is 0"


def test_one_failure_stops_the_others_sigkill_after_the_grace(env: Env) -> None:
    spec = env.spec("sleeper.py", str(env.out), "--exit-rank", "2", "--code", "5", "--ignore-term-rank", "0",
                    workers=3, grace_s=0.5)
    record = env.submit_and_run(spec)
    [attempt] = env.services.jobs.attempts(record.id)
    assert (record.state, attempt.reason, attempt.rank, attempt.exit_code) == ("Failed", "WorkerFailed", 2, 5)
    for rank in range(3):  # rank 0 ignored SIGTERM and was killed after the grace; rank 1 stopped at SIGTERM
        assert pid_gone(int((env.out / f"pid-{rank}").read_text()))


def test_cancel_stops_a_running_job(env: Env) -> None:
    record, thread, done = env.run_in_thread(env.spec("sleeper.py", str(env.out), workers=2))
    env.wait_for(lambda: (env.out / "pid-0").exists() and (env.out / "pid-1").exists())
    env.services.jobs.request_cancel(record.id)
    thread.join(30)
    [final] = done
    assert (final.state, final.reason, final.message) == ("Cancelled", "Cancelled", "cancelled while running")
    assert all(pid_gone(int((env.out / f"pid-{r}").read_text())) for r in range(2))
    assert [a.reason for a in env.services.jobs.attempts(record.id)] == ["Cancelled"]
    assert final.run_id is not None and env.services.tracking.get_run(final.run_id).info.status == "KILLED"
    assert events_of(env, record.id)[-1].reason == "Cancelled"


def test_cancel_while_waiting_for_the_queue(env: Env) -> None:
    assert isinstance(env.admission, LocalAdmission)
    blocker = env.admission.try_acquire(ResourceRequest("other", cpu=8, memory=0))
    assert blocker is not None
    record, thread, done = env.run_in_thread(env.spec("sleeper.py", str(env.out), workers=2))
    env.wait_for(lambda: env.job(record.id).reason == "Waiting")
    assert env.job(record.id).state == "Pending"
    env.services.jobs.request_cancel(record.id)
    thread.join(30)
    assert (done[0].state, done[0].message) == ("Cancelled", "cancelled while waiting for the queue")
    assert env.services.jobs.attempts(record.id) == [] and not (env.settings.home / "jobs").exists()
    env.admission.release(blocker)


@pytest.mark.parametrize(("fields", "message"), [
    ({"entry": "missing.py"}, "job.entry: script 'missing.py' does not exist in "),
    ({"entry": "pkg.nothing_here"}, "job.entry: module 'pkg.nothing_here' cannot be found from "),
    ({"entry": "nopkg.train"}, "job.entry: module 'nopkg.train' cannot be found from "),
    ({"working_dir": "/nonexistent/folder"}, "job.working_dir: '/nonexistent/folder' is not a folder"),
    ({"workers": 3, "cpu": 4}, "job.workers: the gang of 3 worker(s) can never be admitted: "),
    ({"cpu": 16}, "job.cpu: the gang of 1 worker(s) can never be admitted: requests 16 CPUs"),
    ({"gpus": 3}, "job.gpus: the gang of 1 worker(s) can never be admitted: "),
    ({"gpus": 1, "gpu_flavor": "h100"}, "job.gpu_flavor: the gang of 1 worker(s) can never be admitted: "),
    ({"memory": "64Gi"}, "job.memory: the gang of 1 worker(s) can never be admitted: "),
])
def test_bad_input_is_refused_before_anything_starts(env: Env, fields: dict[str, object], message: str) -> None:
    data: dict[str, object] = {"entry": "sleeper.py"}
    data.update(fields)
    entry = str(data.pop("entry"))
    with pytest.raises(InvalidParameterValue) as caught:
        env.runner.submit(env.spec(entry, str(env.out), **data), project="default")
    assert caught.value.message.startswith(message) and "\n" not in caught.value.message
    assert env.services.jobs.list() == [] and not (env.settings.home / "jobs").exists()
    assert list(env.out.iterdir()) == []  # no worker ran
