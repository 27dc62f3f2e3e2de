"""The job controller of ``capstan server``'s leader: it runs jobs submitted without a runner, adopts a job whose
runner died (its open attempt ends NodeLost, its leftover workers are stopped, the gang restarts from the
checkpoint), leaves jobs held by a live runner alone, and hands its jobs back when it stops."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from training_helpers import SCRIPTS, Env, events_of, pid_gone

from capstan.resources.local import LocalAdmission
from capstan.training.controller import JobController
from capstan.training.jobs_sql import pid_exists


def test_the_controller_runs_submitted_jobs_and_leaves_held_ones_alone(env: Env) -> None:
    held = env.runner.submit(env.spec("steps.py", str(env.out), "1", "0"), project="default", hold=True)
    free = env.runner.submit(env.spec("pkg.hello", str(env.out), workers=2), project="default")
    assert free.owner is None and held.owner == env.runner.owner
    other = JobController(env.runner.__class__(env.services.jobs, tracking=env.services.tracking,
                                               events=env.services.events, admission=lambda: env.admission,
                                               settings=env.settings, poll_s=0.05, owner="elsewhere:1"))
    started = other.scan()
    assert started == [free.id]  # the held job's owner (this process) is alive
    env.wait_for(lambda: env.job(free.id).done)
    assert env.job(free.id).state == "Succeeded" and env.job(held.id).state == "Pending"
    other.stop()


def test_a_job_whose_runner_died_is_adopted_and_resumes(env: Env) -> None:
    spec = env.spec("steps.py", str(env.out), "25", "0.1", workers=2)
    record = env.runner.submit(spec, project="default")
    runner = subprocess.Popen([sys.executable, str(SCRIPTS / "run_job.py"), str(env.settings.home), record.id],
                              env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    progress = env.out / "progress-rank-0"
    env.wait_for(lambda: progress.exists() and int(progress.read_text()) >= 1)
    runner.send_signal(signal.SIGKILL)
    runner.wait()
    stale = [int((env.out / f"pid-attempt-1-rank-{r}").read_text()) for r in (0, 1)]
    orphaned = env.job(record.id)
    assert orphaned.state == "Running" and orphaned.owner is not None
    assert not pid_exists(int(orphaned.owner.rpartition(":")[2]))
    controller = JobController(env.runner, interval_s=0.05)
    controller.start()
    try:
        env.wait_for(lambda: env.job(record.id).done)
    finally:
        controller.stop()
    final = env.job(record.id)
    assert (final.state, final.restarts, final.attempt) == ("Succeeded", 0, 2)
    assert all(pid_gone(pid) for pid in stale)  # the dead runner's workers were stopped before the restart
    first, second = env.services.jobs.attempts(record.id)
    assert first.reason == "NodeLost" and first.message.startswith("attempt 1 was left by a runner that is gone")
    assert second.reason == "Succeeded"
    assert int((env.out / "start-attempt-2-rank-0").read_text()) > 0  # from the checkpoint
    assert [e.reason for e in events_of(env, record.id)] == ["Submitted", "Started", "NodeLost", "Started",
                                                             "Succeeded"]


def test_stopping_the_controller_hands_its_jobs_back(env: Env) -> None:
    record = env.runner.submit(env.spec("sleeper.py", str(env.out), workers=2), project="default")
    controller = JobController(env.runner, interval_s=0.05)
    controller.start()
    pids = env.running_gang(record.id)
    controller.stop()
    handed = env.job(record.id)
    assert (handed.state, handed.owner, handed.reason) == ("Pending", None, "NodeLost")
    assert all(pid_gone(pid) for pid in pids)
    assert [a.reason for a in env.services.jobs.attempts(record.id)] == ["NodeLost"]
    assert events_of(env, record.id)[-1].message == ("the runner stopped; the gang was stopped with it; the job "
                                                     "waits for the next runner")
    assert isinstance(env.admission, LocalAdmission) and list(env.admission.in_use()) == []
    # The next leader starts it again; a cancel then ends it.
    after = JobController(env.runner, interval_s=0.05)
    after.start()
    try:
        env.wait_for(lambda: env.job(record.id).attempt == 2 and env.job(record.id).state == "Running")
        env.services.jobs.request_cancel(record.id)
        env.wait_for(lambda: env.job(record.id).done)
    finally:
        after.stop()
    assert env.job(record.id).state == "Cancelled"
