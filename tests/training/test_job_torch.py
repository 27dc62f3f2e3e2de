"""A real torch.distributed job (gloo on CPU), run unchanged as under torchrun: the ranks all-reduce, a tiny model
trains with DDP and checkpoints every step; a worker is SIGKILLed mid-run, the whole gang restarts and resumes from
the latest checkpoint; rank 0's metrics land once per step in the job's run."""

from __future__ import annotations

import importlib.util

import pytest
from training_helpers import Env, events_of

from capstan.sdk.backends import ArtifactOwner
from capstan.sdk.backends_local import LocalBackend

pytestmark = pytest.mark.skipif(importlib.util.find_spec("torch") is None,
                                reason="torch is not installed (test extra: pip install torch==2.13.0)")

STEPS = 4
KILL_AT = 1


def test_ddp_job_restarts_from_its_checkpoint_after_a_worker_is_killed(env: Env) -> None:
    spec = env.spec("ddp_train.py", str(env.out), str(STEPS), str(KILL_AT), workers=2, max_restarts=1,
                    checkpoint_keep=2)
    record = env.submit_and_run(spec)
    assert (record.state, record.restarts, record.attempt) == ("Succeeded", 1, 2), record.message
    # The ranks found each other: 0 + 1 on both ranks, in both attempts.
    for attempt in (1, 2):
        for rank in (0, 1):
            assert (env.out / f"allreduce-attempt-{attempt}-rank-{rank}").read_text() == "1 2"
    # Rank 1 killed itself after step 1 of attempt 1: the gang restarted from step 1's checkpoint.
    first, second = env.services.jobs.attempts(record.id)
    assert (second.reason, second.rank) == ("Succeeded", None)
    assert (first.reason, first.rank, first.exit_code) == ("WorkerFailed", 1, -9)
    assert first.message == "rank 1 was killed by SIGKILL"
    assert [(env.out / f"start-attempt-2-rank-{r}").read_text() for r in (0, 1)] == [str(KILL_AT + 1)] * 2
    assert [e.reason for e in events_of(env, record.id)] == ["Submitted", "Started", "WorkerFailed", "Started",
                                                             "Succeeded"]
    # One loss per step, from rank 0 only, across both attempts; the last two checkpoints are kept.
    assert record.run_id is not None
    history = env.services.tracking.get_metric_history(record.run_id, "loss").items
    assert sorted(m.step for m in history) == list(range(STEPS))
    backend = LocalBackend(env.settings)
    try:
        files = backend.list_artifacts(ArtifactOwner.run(record.run_id), "checkpoints")
    finally:
        backend.close()
    assert {f.path for f in files} == {"checkpoints/manifest.json", "checkpoints/slot-0.ckpt",
                                       "checkpoints/slot-1.ckpt"}
