"""Timelines and diagnoses of training jobs, their tracking runs, queue workloads and study trials, recorded through
the real runner and the workload queue of the metadata store (whose decisions go to the event log), on SQLite and
PostgreSQL: a worker that imports a missing module, one that raises, a job preempted by higher-priority work, a job
that waits for quota, a trial whose script imports a missing module."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from troubleshoot_helpers import SCRIPTS, describe

from capstan.resources.admission import Lease, ResourceRequest
from capstan.services import Services
from capstan.settings import Settings
from capstan.training.ports import JobRecord
from capstan.training.runner import JobRunner
from capstan.training.spec import parse_job_spec
from capstan.troubleshoot.classify import Cause

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


@dataclass
class Env:
    settings: Settings
    services: Services
    runner: JobRunner
    out: Path

    def submit(self, entry: str, *args: str, **fields: object) -> JobRecord:
        data: dict[str, object] = {"name": "t", "entry": entry, "args": list(args), "working_dir": str(SCRIPTS),
                                   "grace_s": 2.0, "cpu": 1, **fields}
        return self.runner.submit(parse_job_spec(data), project="default", user="tester", hold=True)

    def start(self, record: JobRecord) -> threading.Thread:
        thread = threading.Thread(target=self.runner.run, args=(record.id,), daemon=True)
        thread.start()
        return thread

    def job(self, job_id: str) -> JobRecord:
        found = self.services.jobs.get(job_id)
        assert found is not None
        return found

    def cancel(self, record: JobRecord, thread: threading.Thread) -> None:
        self.services.jobs.request_cancel(record.id)
        thread.join(30)
        assert self.job(record.id).state == "Cancelled"


def wait_for(check: Callable[[], bool], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


@pytest.fixture
def env(tmp_path: Path, backend_settings: Settings) -> Iterator[Env]:
    """Local stores (SQLite, then PostgreSQL) whose admission is the SQL workload queue (4 CPUs, low and high
    priority)."""
    settings = backend_settings
    services = Services.open(settings)
    with services.admission.get().session() as mgr:  # type: ignore[attr-defined]  # the QueueAdmission
        mgr.apply_config(QUEUE)
    runner = JobRunner(services.jobs, tracking=services.tracking, events=services.events,
                       admission=services.admission.get, settings=settings, clock=services.clock, poll_s=0.05)
    out = tmp_path / "out"
    out.mkdir()
    yield Env(settings, services, runner, out)
    services.close()


def test_a_worker_importing_a_missing_module(env: Env) -> None:
    record = env.runner.run(env.submit("no_module.py").id)
    assert (record.state, record.reason) == ("Failed", "WorkerFailed")
    found = describe(env.services, f"job/{record.id}")
    assert found.diagnosis.cause is Cause.IMPORT_ERROR
    assert dict(found.diagnosis.data)["module"] == "not_a_module"
    assert found.log_tail[-1] == "ModuleNotFoundError: No module named 'not_a_module'"
    assert found.log_source == "attempt 1, worker 0, rank 0 (stderr)"
    assert "exit code 1" in found.diagnosis.evidence
    queue = [item.reason for item in found.items if item.source == f"workload/job/{record.id}"]
    assert queue == ["Submitted", "Admitted", "Finished"]
    assert [(item.kind, item.reason) for item in found.items if item.kind == "log"] == [("log", "LogExcerpt")]
    assert record.run_id is not None  # the job's tracking run takes the job's diagnosis
    run = describe(env.services, f"run/{record.run_id}")
    assert (run.state, run.diagnosis.cause, run.log_tail) == ("FAILED", Cause.IMPORT_ERROR, found.log_tail)
    assert ("job", record.id) in {(r.kind, r.id) for r in run.related}


def test_a_worker_that_raises_exits_non_zero_with_the_exception_line(env: Env) -> None:
    record = env.runner.run(env.submit("diverges.py", max_restarts=1, restart_backoff_s=0.05).id)
    assert (record.state, record.restarts) == ("Failed", 1)
    found = describe(env.services, f"job/{record.id}", tail=3)
    assert found.diagnosis.cause is Cause.NON_ZERO_EXIT
    assert found.diagnosis.summary == \
        "exited with code 1: ValueError: loss diverged to inf at epoch 3 (learning rate 5.0)"
    assert found.log_tail[-1] == "ValueError: loss diverged to inf at epoch 3 (learning rate 5.0)"
    assert len(found.log_tail) == 3
    assert any(line.startswith("earlier: attempt 1: WorkerFailed") for line in found.diagnosis.evidence)
    attempts = [item.text for item in found.items if item.kind == "attempt" and item.reason == "WorkerFailed"]
    assert len(attempts) == 2 and attempts[0].startswith("attempt 1 ended after ")
    assert [item.reason for item in found.items if item.kind == "restart"] == ["WorkerFailed"]


def test_a_job_preempted_by_higher_priority_work(env: Env) -> None:
    record = env.submit("loop.py", str(env.out), workers=2, cpu=2, priority="low")
    thread = env.start(record)
    progress = env.out / "progress"
    wait_for(lambda: progress.exists() and int(progress.read_text() or 0) >= 3)
    urgent = ResourceRequest("urgent", cpu=4, memory=0, labels=(("priority_class", "high"),))
    admission = env.services.admission.get()
    leases: list[Lease] = []

    def urgent_admitted() -> bool:
        verdict = admission.acquire_many([urgent])[0]
        if isinstance(verdict, Lease):
            leases.append(verdict)
        return bool(leases)

    wait_for(urgent_admitted)
    wait_for(lambda: env.job(record.id).state == "Pending" and env.job(record.id).preemptions == 1)
    found = describe(env.services, f"job/{record.id}")
    assert found.diagnosis.cause is Cause.PREEMPTED
    assert found.diagnosis.summary.startswith("preempted by urgent: the queue took its quota back")
    assert found.diagnosis.summary.endswith("; it waits to be admitted again")
    assert any(line.startswith("the stopped attempt had run for ") for line in found.diagnosis.evidence)
    assert dict(found.diagnosis.data)["lost_ms"] > 0
    queue = [item.reason for item in found.items if item.source == f"workload/job/{record.id}"]
    assert queue[:4] == ["Submitted", "Admitted", "Preempted", "Requeued"]
    assert "Preempted" in [item.reason for item in found.items if item.kind == "attempt"]
    workload = describe(env.services, f"workload/job/{record.id}")
    assert (workload.state, workload.diagnosis.cause) == ("Pending", Cause.PREEMPTED)
    assert [(r.kind, r.id) for r in workload.related] == [("job", record.id)]
    env.cancel(record, thread)
    admission.release(leases[0])


def test_a_job_waiting_for_quota_is_unschedulable_with_the_queues_reason(env: Env) -> None:
    admission = env.services.admission.get()
    holder = admission.acquire_many([ResourceRequest("holder", cpu=4, memory=0,
                                                     labels=(("priority_class", "high"),))])[0]
    assert isinstance(holder, Lease)
    record = env.submit("loop.py", str(env.out), cpu=2, priority="low")
    thread = env.start(record)
    wait_for(lambda: env.job(record.id).workload is not None and env.job(record.id).reason != "")
    waiting = env.job(record.id)
    found = describe(env.services, f"job/{record.id}")
    assert found.diagnosis.cause is Cause.UNSCHEDULABLE
    assert found.diagnosis.summary.startswith(f"waiting for the queue: {waiting.reason}: ")
    assert "(position 1 of 1 in main)" in found.diagnosis.summary
    assert dict(found.diagnosis.data)["queue_reason"] == waiting.reason
    assert found.diagnosis.hint
    assert [(r.kind, r.role) for r in found.related][:1] == [("workload", "queue workload")]
    env.cancel(record, thread)
    admission.release(holder)


def test_a_study_trial_that_imports_a_missing_module(env: Env) -> None:
    from capstan.tuning.sdk import run_study
    from capstan.tuning.spec import parse_study_spec

    spec = parse_study_spec({"name": "broken-study", "objective": {"metric": "score", "goal": "maximize"},
                             "parameters": {"x": {"type": "float", "min": 0.0, "max": 1.0}},
                             "trial": {"script": "no_module.py"}, "algorithm": "random", "max_trials": 1,
                             "seed": 1, "working_dir": str(SCRIPTS)})
    result = run_study(spec, settings=env.settings)
    [trial] = result.trials
    assert trial.state == "FAILED"
    found = describe(env.services, f"trial/broken-study/{trial.number}")
    assert (found.kind, found.state, found.diagnosis.cause) == ("trial", "FAILED", Cause.IMPORT_ERROR)
    assert found.log_tail[-1] == "ModuleNotFoundError: No module named 'not_a_module'"
    queue = [item.reason for item in found.items if item.kind == "queue"]
    assert queue[:2] == ["Submitted", "Admitted"]
    assert {r.kind for r in found.related} == {"workload", "run"}
