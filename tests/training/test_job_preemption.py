"""Preemption under the workload queue: a higher-priority workload takes the gang's quota, the job goes back to
Pending (a preemption, not a failure) and resumes from its checkpoint once the queue admits it again."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from training_helpers import Env, events_of, make_env

from capstan.queue.admission import QueueAdmission
from capstan.queue.manager import Backoff
from capstan.queue.records import FINISHED
from capstan.queue.store import MemoryQueueStore
from capstan.resources.admission import Lease, ResourceRequest
from capstan.resources.machine import Capacity

QUEUE = """
flavors:
  - {name: cpu}
priorityClasses: [{name: low, value: 0}, {name: high, value: 1000}]
clusterQueues:
  - name: main
    preemption: {withinClusterQueue: LowerPriority}
    resourceGroups:
      - coveredResources: [cpu]
        flavors: [{name: cpu, resources: [{name: cpu, nominalQuota: 4}]}]
localQueues:
  - {name: main, clusterQueue: main, project: default}
"""


@pytest.fixture
def queued(tmp_path: Path) -> Iterator[Env]:
    queue = QueueAdmission(MemoryQueueStore(), capacity=Capacity(cpu=4, memory=8 * 2**30), backoff=Backoff(base_s=0))
    with queue.session() as mgr:
        mgr.apply_config(QUEUE)
    yield from make_env(tmp_path, queue)


def test_a_preempted_job_waits_and_resumes_from_its_checkpoint(queued: Env) -> None:
    env = queued
    assert isinstance(env.admission, QueueAdmission)
    spec = env.spec("steps.py", str(env.out), "30", "0.1", workers=2, cpu=2, priority="low")
    record, thread, done = env.run_in_thread(spec)
    progress = env.out / "progress-rank-0"
    env.wait_for(lambda: progress.exists() and int(progress.read_text()) >= 2)
    assert env.job(record.id).workload == f"job/{record.id}"
    urgent = ResourceRequest("urgent", cpu=4, memory=0, labels=(("priority_class", "high"),))
    leases: list[Lease] = []

    def urgent_admitted() -> bool:  # the queue evicts the job; its runner stops the gang and gives the quota back
        verdict = env.admission.acquire_many([urgent])[0]
        if isinstance(verdict, Lease):
            leases.append(verdict)
        return bool(leases)

    env.wait_for(urgent_admitted)
    # the runner gives the quota back while it records the preemption: wait for the record, not only the quota
    env.wait_for(lambda: env.job(record.id).state == "Pending")
    waiting = env.job(record.id)
    assert (waiting.state, waiting.preemptions, waiting.restarts) == ("Pending", 1, 0)
    assert [a.reason for a in env.services.jobs.attempts(record.id)] == ["Preempted"]
    preempted = [e for e in events_of(env, record.id) if e.reason == "Preempted"]
    assert len(preempted) == 1 and preempted[0].message.startswith("preempted by the queue: ")
    stopped_at = int(progress.read_text())
    env.admission.release(leases[0])  # the urgent work is done: the job is admitted again
    thread.join(60)
    [final] = done
    assert (final.state, final.restarts, final.preemptions, final.attempt) == ("Succeeded", 0, 1, 2)
    resumed = int((env.out / "start-attempt-2-rank-0").read_text())
    assert 0 < resumed <= stopped_at + 1  # from the last checkpoint, not from scratch
    assert final.run_id is not None and env.services.tracking.get_run(final.run_id).info.status == "FINISHED"
    with env.admission.session() as mgr:
        assert mgr.get(f"job/{record.id}").state == FINISHED
