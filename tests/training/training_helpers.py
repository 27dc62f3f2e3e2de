"""Helpers of the training job tests: local stores under a temporary home, an admission, a runner that polls
quickly, the scripts the jobs run."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from capstan.events.records import Event
from capstan.resources.admission import Admission
from capstan.services import Services
from capstan.settings import Settings
from capstan.training.ports import JobRecord
from capstan.training.runner import JobRunner
from capstan.training.spec import TrainingJobSpec, parse_job_spec

SCRIPTS = Path(__file__).parent / "scripts"
GIB = 2**30
# One ClusterQueue of 4 CPUs serving project default: the queue of the tests that fill it to force a partial
# admission or a preemption.
CPU_QUEUE = """
flavors:
  - {name: cpu}
clusterQueues:
  - name: main
    resourceGroups:
      - coveredResources: [cpu]
        flavors: [{name: cpu, resources: [{name: cpu, nominalQuota: 4}]}]
localQueues:
  - {name: main, clusterQueue: main, project: default}
"""


@dataclass
class Env:
    """What a training test works with."""

    settings: Settings
    services: Services
    admission: Admission
    runner: JobRunner
    out: Path

    def spec(self, entry: str, *args: str, **fields: object) -> TrainingJobSpec:
        """A spec running ``entry`` from the scripts folder with ``args`` (fast restarts, short grace)."""
        data: dict[str, object] = {"name": "t", "entry": entry, "args": list(args), "working_dir": str(SCRIPTS),
                                   "restart_backoff_s": 0.05, "grace_s": 2.0, "cpu": 1}
        data.update(fields)
        return parse_job_spec(data)

    def submit_and_run(self, spec: TrainingJobSpec,
                       progress: Callable[[JobRecord], None] | None = None) -> JobRecord:
        record = self.runner.submit(spec, project="default", user="tester", hold=True)
        return self.runner.run(record.id, progress=progress)

    def run_in_thread(self, spec: TrainingJobSpec) -> tuple[JobRecord, threading.Thread, list[JobRecord]]:
        """Submit ``spec`` and run it on a thread; returns the submitted job, the thread and where the final
        record lands."""
        record = self.runner.submit(spec, project="default", user="tester", hold=True)
        done: list[JobRecord] = []
        thread = threading.Thread(target=lambda: done.append(self.runner.run(record.id)), daemon=True)
        thread.start()
        return record, thread, done

    def wait_for(self, check: Callable[[], bool], timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not check():
            if time.monotonic() > deadline:
                raise AssertionError("condition not reached in time")
            time.sleep(0.05)

    def running_gang(self, job_id: str, ranks: int = 2) -> list[int]:
        """Wait until job ``job_id`` is Running and every rank of its ``sleeper.py`` gang wrote its pid (the ranks
        start in either order); their pids."""
        files = [self.out / f"pid-{rank}" for rank in range(ranks)]
        self.wait_for(lambda: all(f.exists() for f in files) and self.job(job_id).state == "Running")
        return [int(f.read_text()) for f in files]

    def job(self, job_id: str) -> JobRecord:
        found = self.services.jobs.get(job_id)
        assert found is not None
        return found


def make_env(tmp_path: Path, admission: Admission) -> Iterator[Env]:
    settings = Settings.for_home(tmp_path / "home")
    services = Services.open(settings, admission=admission)
    runner = JobRunner(services.jobs, tracking=services.tracking, events=services.events,
                       admission=lambda: admission, settings=settings, clock=services.clock, poll_s=0.05)
    out = tmp_path / "out"
    out.mkdir()
    try:
        yield Env(settings, services, admission, runner, out)
    finally:
        services.close()


def events_of(env: Env, job_id: str) -> list[Event]:
    """The job's events, oldest first."""
    return list(env.services.events.list("job", job_id))


def pid_gone(pid: int) -> bool:
    """Whether process ``pid`` has ended (and been reaped, or is a zombie nobody waits for)."""
    import psutil

    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
