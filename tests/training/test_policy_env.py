"""The pure parts: the restart decision after each kind of attempt end, the back-off, and the rank environment."""

from __future__ import annotations

import pytest

from capstan.training.env import WorkerPlace, worker_env, worker_places
from capstan.training.launcher import classify_exit
from capstan.training.policy import MAX_BACKOFF_S, AttemptEnd, backoff_s, next_step
from capstan.training.spec import parse_job_spec

SPEC = parse_job_spec({"name": "p", "entry": "t.py", "workers": 2, "nproc_per_worker": 3, "max_restarts": 2,
                       "restart_backoff_s": 4})


@pytest.mark.parametrize(("end", "restarts", "expected"), [
    (AttemptEnd("Succeeded", message="ok"), 0, ("succeed", "Succeeded", "Succeeded", 0, 0, 0.0)),
    (AttemptEnd("Cancelled"), 1, ("cancel", "Cancelled", "Cancelled", 1, 0, 0.0)),
    (AttemptEnd("Preempted", message="p"), 2, ("requeue", "Pending", "Preempted", 2, 1, 0.0)),
    (AttemptEnd("NodeLost", message="n"), 2, ("restart", "Restarting", "NodeLost", 2, 0, 0.0)),
    (AttemptEnd("WorkerFailed", 1, 3, "rank 1 exited with code 3"), 0,
     ("restart", "Restarting", "WorkerFailed", 1, 0, 4.0)),
    (AttemptEnd("OOMKilled", 0, 137, "oom"), 1, ("restart", "Restarting", "OOMKilled", 2, 0, 8.0)),
    (AttemptEnd("WorkerFailed", 1, 3, "rank 1 exited with code 3"), 2,
     ("fail", "Failed", "WorkerFailed", 2, 0, 0.0)),
])
def test_next_step(end: AttemptEnd, restarts: int, expected: tuple[object, ...]) -> None:
    step = next_step(SPEC, restarts=restarts, preemptions=0, end=end)
    assert (step.action, step.state, step.reason, step.restarts, step.preemptions, step.delay_s) == expected


def test_messages_and_backoff_cap() -> None:
    failed = next_step(SPEC, restarts=2, preemptions=3, end=AttemptEnd("WorkerFailed", 1, 3, "rank 1 failed"))
    assert failed.message == "rank 1 failed; all 2 restarts used" and failed.preemptions == 3
    assert next_step(SPEC, restarts=0, preemptions=0, end=AttemptEnd("WorkerFailed", 0, 1, "x")).message == \
        "x; restarting the gang in 4s (restart 1 of 2)"
    assert backoff_s(SPEC, 20) == MAX_BACKOFF_S


def test_classify_exit() -> None:
    assert classify_exit(0, oom_killed=True) == "Succeeded"
    assert classify_exit(137, oom_killed=False) == "OOMKilled"
    assert classify_exit(-9, oom_killed=True) == "OOMKilled"
    assert classify_exit(-9, oom_killed=False) == "WorkerFailed"
    assert classify_exit(1, oom_killed=True) == "WorkerFailed"


def test_rank_environment_precedence() -> None:
    places = worker_places(SPEC)
    assert places[4] == WorkerPlace(rank=4, group_rank=1, local_rank=1) and len(places) == 6
    base = {"OMP_NUM_THREADS": "8", "CUDA_VISIBLE_DEVICES": "5", "KEEP": "1", "RANK": "99"}
    env = worker_env(SPEC, places[4], base=base, job_id="p-1", run_id=None, attempt=3, master_port=1234,
                     restart_count=2, devices=None, lease_env={"CAPSTAN_WORKLOAD_ID": "job/p-1"})
    assert (env["RANK"], env["OMP_NUM_THREADS"], env["CUDA_VISIBLE_DEVICES"], env["KEEP"]) == ("4", "8", "5", "1")
    assert env["CAPSTAN_WORKLOAD_ID"] == "job/p-1" and "CAPSTAN_JOB_RUN_ID" not in env
    no_gpu = worker_env(SPEC, places[0], base=base, job_id="p-1", run_id="r", attempt=1, master_port=1,
                        restart_count=0, devices=())
    assert no_gpu["CUDA_VISIBLE_DEVICES"] == "5" and no_gpu["CAPSTAN_CHECKPOINT_URI"] == "runs:/r/checkpoints"
    placed = worker_env(SPEC, places[0], base=base, job_id="p-1", run_id="r", attempt=1, master_port=1,
                        restart_count=0, devices=("2", "3"))
    assert placed["CUDA_VISIBLE_DEVICES"] == "2,3"
