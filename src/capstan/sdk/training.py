"""`capstan.TrainingJob`: a distributed training job from Python.

::

    job = capstan.TrainingJob("train.py", workers=2, nproc_per_worker=2, cpu=2, max_restarts=3,
                              experiment="mnist", args=["--epochs", "3"])
    record = job.run()          # blocks until the job has ended
    print(record.state, record.run_id)

The arguments are the fields of `capstan.training.spec.TrainingJobSpec` and are checked when the object is made
(`InvalidParameterValue` naming the field). `run` submits the job and drives it in this process with the local
stores (the workers are child processes of this one), or, with ``CAPSTAN_URL`` set, submits it to that server,
whose leader runs it, and waits for it to end. A job that can never fit the queue is refused before anything
starts.

As a pipeline step: call ``TrainingJob(...).run()`` inside a step function. The job's gang is admitted by the
queue as the job's own workload, so declare the step with ``resources={"cpu": 0}`` (it only waits) and it holds no
quota of its own while its job waits for, or holds, the gang's.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from capstan.errors import InvalidState

if TYPE_CHECKING:
    from capstan.settings import Settings
    from capstan.training.ports import JobRecord
    from capstan.training.spec import TrainingJobSpec

__all__ = ["TrainingJob"]

REMOTE_POLL_S = 1.0


def _default_name(entry: str) -> str:
    """``train`` for ``train.py`` or ``src/train.py``, ``pkg-train`` for ``pkg.train``."""
    stem = entry.rsplit("/", 1)[-1].removesuffix(".py") if entry.endswith(".py") or "/" in entry else entry
    name = re.sub(r"[^a-z0-9-]+", "-", stem.lower()).strip("-")[:63].strip("-")
    return name or "job"


class TrainingJob:
    """A training job's spec, checked at once, and how to run it (see the module docstring)."""

    def __init__(self, entry: str, *, workers: int = 1, nproc_per_worker: int = 1, cpu: float = 1.0,
                 memory: int | str | None = None, gpus: float = 0, gpu_flavor: str | None = None,
                 max_restarts: int = 0, restart_backoff_s: float = 1.0, experiment: str | None = None,
                 queue: str | None = None, priority: str | None = None, args: Sequence[str] = (),
                 env: Mapping[str, str] | None = None, name: str | None = None, working_dir: str | None = None,
                 log_all_ranks: bool = False, checkpoint_keep: int = 3, grace_s: float = 10.0,
                 entry_kind: str | None = None, min_workers: int | None = None) -> None:
        from capstan.training.spec import parse_job_spec

        fields: dict[str, Any] = {
            "name": name or _default_name(entry), "entry": entry, "args": list(args), "workers": workers,
            "nproc_per_worker": nproc_per_worker, "cpu": cpu, "memory": memory, "gpus": gpus,
            "gpu_flavor": gpu_flavor, "max_restarts": max_restarts, "restart_backoff_s": restart_backoff_s,
            "experiment": experiment, "queue": queue, "priority": priority, "env": dict(env or {}),
            "working_dir": os.path.abspath(working_dir or os.getcwd()), "log_all_ranks": log_all_ranks,
            "checkpoint_keep": checkpoint_keep, "grace_s": grace_s}
        if entry_kind is not None:
            fields["entry_kind"] = entry_kind
        if min_workers is not None:
            fields["min_workers"] = min_workers
        self.spec: TrainingJobSpec = parse_job_spec(fields)

    def __repr__(self) -> str:
        spec = self.spec
        return (f"TrainingJob({spec.entry!r}, name={spec.name!r}, workers={spec.workers}, "
                f"nproc_per_worker={spec.nproc_per_worker})")

    def run(self, *, settings: Settings | None = None,
            progress: Callable[[JobRecord], None] | None = None) -> JobRecord:
        """Submit the job and wait until it has ended; returns it (``state`` ``Succeeded``, ``Failed`` or
        ``Cancelled``, ``run_id`` its tracking run). ``settings`` default to the process's (`capstan.configure` or
        ``CAPSTAN_*``); ``progress`` is called with the job after each change of it."""
        from capstan.sdk import fluent

        settings = settings or fluent.get_settings()
        if settings.url:
            return self._run_remote(settings, progress)
        from capstan.services import Services

        services = Services.open(settings)
        try:
            runner = services.job_runner()
            record = runner.submit(self.spec, project=settings.project, user=fluent._user(), hold=True)
            return runner.run(record.id, progress=progress)
        finally:
            services.close()

    def _run_remote(self, settings: Settings, progress: Callable[[JobRecord], None] | None) -> JobRecord:
        """Submit to the server at ``settings.url`` and poll the job until it has ended."""
        from capstan.sdk.backends_http import HttpBackend
        from capstan.training.spec import parse_job_spec

        backend = HttpBackend(settings)
        try:
            body = backend._call("POST", "/jobs", json=self.spec.to_dict())  # the backend's authenticated client
            job_id = str(body["job"]["id"])
            last: dict[str, Any] | None = None
            while True:
                job = backend._call("GET", f"/jobs/{job_id}")["job"]
                if job != last:
                    last = job
                    record = _record_of(job, parse_job_spec(job["spec"]))
                    if progress is not None:
                        progress(record)
                    if record.done:
                        return record
                time.sleep(REMOTE_POLL_S)
        finally:
            backend.close()


def _record_of(job: Mapping[str, Any], spec: TrainingJobSpec) -> JobRecord:
    """The `JobRecord` of the API's JSON form of a job."""
    from capstan.training.ports import JobRecord

    state = job.get("state")
    if state not in ("Pending", "Running", "Restarting", "Succeeded", "Failed", "Cancelled"):
        raise InvalidState(f"the server answered an unknown job state {state!r}")
    return JobRecord(id=job["id"], project=job["project"], spec=spec, state=state, created_ms=job["created_ms"],
                     user=job.get("user") or "", run_id=job.get("run_id"), workload=job.get("workload"),
                     attempt=job.get("attempt") or 0, restarts=job.get("restarts") or 0,
                     preemptions=job.get("preemptions") or 0, reason=job.get("reason") or "",
                     message=job.get("message") or "", started_ms=job.get("started_ms"),
                     ended_ms=job.get("ended_ms"), cancel_requested=bool(job.get("cancel_requested")),
                     owner=job.get("owner"))
