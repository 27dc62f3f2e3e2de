"""`JobRunner`: submits a training job (checked before anything starts) and drives it to its end.

``submit`` checks the entry point (a script below the working directory, or a module found from it without
importing anything) and asks the admission whether the gang (``count = workers`` pods of ``cpu``/``memory``/
``gpus`` each) could ever fit; a job that can never fit is refused with the queue's reason, naming the field. It
then creates the job's tracking run (in ``spec.experiment``) and stores the job ``Pending``.

``run`` claims the job (one runner per job, see `JobStore.claim`) and loops:

1. admission: ask for the gang's lease until granted (the job shows the queue's ``Waiting`` reason meanwhile; a
   ``Rejected`` verdict fails it);
2. an attempt: the runner's `capstan.training.launcher.GangLauncher` starts every worker (processes on this
   machine by default, an indexed Job with the ``kubernetes`` backend); while the cluster's admission holds the
   started gang back (`RunningGang.held`: Kueue has not admitted its Job) the job stays ``Pending`` with that
   reason; then the runner watches it: the gang's outcome, ``cancel_requested`` in the store, and whether the queue
   revoked the lease (preemption). A job with ``min_workers`` runs the workers its admission granted: the lease's
   pods (Capstan's queue), or the pods Kueue admitted its Job with (`RunningGang.admitted_workers`), recorded alike
   (the message, the ``Started`` event, `WORKERS_ADMITTED_TAG`);
3. the decision of `capstan.training.policy.next_step`: end the job, restart the gang after a back-off (keeping the
   lease), or release the lease for requeueing and go back to step 1 (preemption).

Every restart and its reason (``WorkerFailed`` with rank and exit code, ``OOMKilled``, ``Preempted``,
``NodeLost``) is an event of kind ``job`` (`EVENT_KIND`) with the job id as its object. When the job ends, its run
ends ``FINISHED``, ``FAILED`` or ``KILLED``. A runner that finds an attempt a dead runner left open stops its
processes, ends it ``NodeLost`` and restarts the gang.

While it drives a job, the runner renews its hold on it every `HEARTBEAT_INTERVAL_MS` from a thread of its own, so
that a runner on another machine can tell it is alive (`capstan.training.jobs_sql.owner_alive`). A runner that finds
another runner holding the job (it was taken over), or cannot renew for `FENCE_S` (beyond which another machine may
take it over), stops its gang and gives up the job without writing anything more: `InvalidState`.

`JobController` (in ``capstan.training.controller``) runs submitted jobs in the leader of ``capstan server``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.machinery
import logging
import os
import secrets
import sys
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from capstan.clock import Clock, monotonic_of, system_clock
from capstan.errors import (
    CapstanError,
    InvalidParameterValue,
    InvalidState,
    ResourceAlreadyExists,
    ResourceDoesNotExist,
)
from capstan.events.records import WARNING
from capstan.resources.admission import Lease, Rejected, ResourceRequest
from capstan.tracking.records import DELETED, RunTag
from capstan.training.jobs_sql import HEARTBEAT_INTERVAL_MS, OWNER_LEASE_MS, owner_id
from capstan.training.launcher import GangLauncher, GangStart, LocalGangLauncher, RunningGang
from capstan.training.policy import AttemptEnd, next_step
from capstan.training.ports import JobAttempt, JobRecord, JobStore
from capstan.training.spec import TrainingJobSpec

if TYPE_CHECKING:
    from capstan.events.ports import EventLog
    from capstan.resources.admission import Admission
    from capstan.settings import Settings
    from capstan.tracking.ports import TrackingStore

__all__ = ["EVENT_KIND", "WORKERS_ADMITTED_TAG", "WORKERS_REQUESTED_VARIABLE", "JobRunner", "admitted_spec",
           "gang_request", "launched_spec", "local_launcher", "worker_base_env"]

EVENT_KIND = "job"
"""Kind of the job events in the event log (``capstan events job/<id>``)."""
WORKERS_ADMITTED_TAG = "capstan.job.workers_admitted"
"""Run tag of a job with ``min_workers``: the workers its latest attempt started with (its ``WORLD_SIZE`` is this
times ``nproc_per_worker``)."""
WORKERS_REQUESTED_VARIABLE = "CAPSTAN_JOB_WORKERS_REQUESTED"
"""Set in every worker of a job with ``min_workers``: the ``workers`` it asked for (``GROUP_WORLD_SIZE`` is what
it got)."""
DEFAULT_EXPERIMENT = "Default"
RUN_STATUS = {"Succeeded": "FINISHED", "Failed": "FAILED", "Cancelled": "KILLED"}
_REMOTE_VARIABLES = ("CAPSTAN_URL", "CAPSTAN_TOKEN")
"""Inherited variables a worker must not see: it works on the runner's stores directly, as the runner does."""
GANG_TICK_S = 0.05
FENCE_S = (OWNER_LEASE_MS - 2 * HEARTBEAT_INTERVAL_MS) / 1000
"""How long a runner goes on without renewing its hold on a job before it stops the gang itself: two renewals
before the lease runs out, so the gang has stopped before a runner on another machine may take the job over."""

log = logging.getLogger("capstan.training.runner")


def gang_request(spec: TrainingJobSpec, *, key: str, project: str) -> ResourceRequest:
    """The admission request of the job's gang: ``workers`` identical pods asking for ``cpu``, ``memory`` and
    ``gpus`` each, in ``spec.queue`` with ``spec.priority``; ``min_workers`` allows a partial admission."""
    labels = [("kind", "training-job")]
    if spec.queue:
        labels.append(("queue", spec.queue))
    if spec.priority:
        labels.append(("priority_class", spec.priority))
    return ResourceRequest(key, spec.cpu, spec.memory, spec.gpus, spec.gpu_flavor if spec.gpus > 0 else None,
                           project, tuple(labels), count=spec.workers, min_count=spec.min_workers)


def launched_spec(spec: TrainingJobSpec, lease: Lease) -> tuple[TrainingJobSpec, str]:
    """The spec one attempt runs with under ``lease``, and the words its message starts with: the job's spec, or,
    after a partial admission (``min_workers``), that spec with ``workers`` = the pods granted (so ``WORLD_SIZE``,
    ``GROUP_WORLD_SIZE`` and the ranks follow) and ``"3 of 4 workers (partial admission, min_workers 2), "``.
    The launched spec has no ``min_workers``: what the queue granted is what starts."""
    if spec.min_workers is None:
        return spec, ""
    return admitted_spec(spec, lease.pods)


def admitted_spec(spec: TrainingJobSpec, granted: int) -> tuple[TrainingJobSpec, str]:
    """``spec`` (a job with ``min_workers``) run by the ``granted`` workers an admission let start (Capstan's queue
    through the lease, or Kueue on the cluster: `capstan.training.launcher.RunningGang.admitted_workers`), and the
    words of its message (empty when every worker was granted). Pure."""
    granted = min(spec.workers, granted)
    words = (f"{granted} of {spec.workers} workers (partial admission, min_workers {spec.min_workers}), "
             if granted < spec.workers else "")
    return dataclasses.replace(spec, workers=granted, min_workers=None), words


def worker_base_env(settings: Settings, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """What every worker inherits: this process's environment without a server URL or token, with the variables
    that point `Settings.from_env` at the runner's stores."""
    env = dict(os.environ if environ is None else environ)
    for name in _REMOTE_VARIABLES:
        env.pop(name, None)
    env.update(settings.store_environment())
    return env


def local_launcher(settings: Settings) -> LocalGangLauncher:
    """The gang launcher of this machine: processes under ``settings.home`` with `worker_base_env`."""
    return LocalGangLauncher(settings.home, lambda: worker_base_env(settings))


def _find_module(name: str, search: list[str]) -> bool:
    """Whether module ``name`` can be found on ``search`` (then on its packages' paths) without importing it."""
    path: list[str] | None = search
    spec = None
    for part in name.split("."):
        if path is None:
            return False
        spec = importlib.machinery.PathFinder.find_spec(part, path)
        if spec is None:
            return False
        locations = spec.submodule_search_locations
        path = list(locations) if locations is not None else None
    return spec is not None


def check_entry(spec: TrainingJobSpec, *, cwd: str | None = None) -> TrainingJobSpec:
    """The spec with ``working_dir`` made absolute, once its entry point exists there (a script file, or a module
    found from the working directory and this interpreter's path); `InvalidParameterValue` naming the field."""
    base = Path(cwd or os.getcwd())
    folder = (base / spec.working_dir) if spec.working_dir else base
    if not folder.is_dir():
        raise InvalidParameterValue(f"job.working_dir: {str(folder)!r} is not a folder")
    folder = folder.resolve()
    if spec.entry_kind == "script":
        script = folder / spec.entry
        if not script.is_file():
            raise InvalidParameterValue(f"job.entry: script {spec.entry!r} does not exist in {str(folder)!r}")
    elif not _find_module(spec.entry, [str(folder), *sys.path[1:]]):
        raise InvalidParameterValue(f"job.entry: module {spec.entry!r} cannot be found from {str(folder)!r} or the "
                                    "Python path")
    return dataclasses.replace(spec, working_dir=str(folder))


def _unfit_field(admission: Admission, request: ResourceRequest, spec: TrainingJobSpec) -> str:
    """Which spec field makes ``request`` unfit: the queue or priority, the per-worker resources, or ``workers``."""
    tiny = dataclasses.replace(request, cpu=0.001, memory=0, gpu=0.0, gpu_flavor=None, count=1)
    why = admission.check(tiny)
    if why is not None:
        return "job.priority" if "priority class" in why else "job.queue"
    one = dataclasses.replace(request, count=1)
    if admission.check(one) is None:
        return "job.workers"
    if spec.gpus > 0:
        if spec.gpu_flavor and admission.check(dataclasses.replace(one, gpu_flavor=None)) is None:
            return "job.gpu_flavor"
        if admission.check(dataclasses.replace(one, gpu=0.0, gpu_flavor=None)) is None:
            return "job.gpus"
    if spec.memory > 0 and admission.check(dataclasses.replace(one, memory=0)) is None:
        return "job.memory"
    return "job.cpu"


class JobRunner:
    """Submits jobs and drives them (see the module docstring). Thread-safe: each `run` keeps its own state.

    ``poll_s`` is how often a running job reads its record (cancel) and asks whether its lease was revoked, and how
    often a pending one asks the admission again; ``heartbeat_s`` how often the runner renews its hold on the job;
    ``launcher`` starts the gangs (`local_launcher` of ``settings`` when None).
    """

    def __init__(self, store: JobStore, *, tracking: TrackingStore, events: EventLog,
                 admission: Callable[[], Admission], settings: Settings, clock: Clock = system_clock,
                 poll_s: float = 0.5, owner: str | None = None,
                 heartbeat_s: float = HEARTBEAT_INTERVAL_MS / 1000, launcher: GangLauncher | None = None) -> None:
        self.store = store
        self.tracking = tracking
        self.events = events
        self.admission = admission
        self.settings = settings
        self.clock = clock
        self.poll_s = poll_s
        self.owner = owner or owner_id()
        self.heartbeat_s = heartbeat_s
        self.launcher = launcher if launcher is not None else local_launcher(settings)

    # -- submit -----------------------------------------------------------------------------------------------------
    def check(self, spec: TrainingJobSpec, *, project: str) -> TrainingJobSpec:
        """The spec as it will run (absolute ``working_dir``), once its entry point exists and its gang could ever
        be admitted; `InvalidParameterValue` naming the field otherwise. Starts nothing."""
        checked = check_entry(spec)
        self.launcher.check(checked)
        request = gang_request(checked, key=f"job/{checked.name}", project=project)
        admission = self.admission()
        why = admission.check(request)
        if why is not None:
            raise InvalidParameterValue(f"{_unfit_field(admission, request, checked)}: the gang of {checked.workers} "
                                        f"worker(s) can never be admitted: {why}")
        return checked

    def submit(self, spec: TrainingJobSpec, *, project: str, user: str = "", hold: bool = False) -> JobRecord:
        """Check ``spec`` (see `check`), create the job's tracking run and store the job ``Pending``.

        With ``hold`` this runner holds the job from the start (the caller runs it with `run` next), so a
        `JobController` never picks it up; otherwise the first runner that claims it runs it."""
        checked = self.check(spec, project=project)
        job_id = f"{checked.name}-{secrets.token_hex(3)}"
        run_id = self._create_run(checked, job_id, project, user)
        record = JobRecord(id=job_id, project=project, spec=checked, state="Pending", created_ms=self.clock(),
                           user=user, run_id=run_id, owner=self.owner if hold else None)
        self.store.create(record)
        least = f" (at least {checked.min_workers})" if checked.min_workers is not None else ""
        self.event(record, "Submitted", f"{checked.workers} worker(s){least} x {checked.nproc_per_worker} "
                                        f"process(es) of {checked.entry}; tracking run {run_id}")
        return record

    def _create_run(self, spec: TrainingJobSpec, job_id: str, project: str, user: str) -> str:
        name = spec.experiment or self.settings.experiment or DEFAULT_EXPERIMENT
        experiment = self.tracking.get_experiment_by_name(name, project=project)
        if experiment is None:
            try:
                experiment_id = self.tracking.create_experiment(name, project=project)
            except ResourceAlreadyExists:  # created meanwhile by someone else
                found = self.tracking.get_experiment_by_name(name, project=project)
                if found is None:
                    raise
                experiment_id = found.experiment_id
        elif experiment.lifecycle_stage == DELETED:
            raise InvalidParameterValue(f"job.experiment: experiment {name!r} is deleted; restore it or choose "
                                        "another name")
        else:
            experiment_id = experiment.experiment_id
        tags = [RunTag("capstan.job.id", job_id), RunTag("mlflow.source.type", "JOB"),
                RunTag("mlflow.source.name", spec.entry), RunTag("capstan.job.workers", str(spec.workers)),
                RunTag("capstan.job.nproc_per_worker", str(spec.nproc_per_worker))]
        if spec.min_workers is not None:
            tags.append(RunTag("capstan.job.min_workers", str(spec.min_workers)))
        info = self.tracking.create_run(experiment_id, user_id=user, start_time=self.clock(), run_name=job_id,
                                        tags=tags, source=spec.entry)
        return info.run_id

    # -- run --------------------------------------------------------------------------------------------------------
    def run(self, job_id: str, *, progress: Callable[[JobRecord], None] | None = None,
            stop: threading.Event | None = None) -> JobRecord:
        """Drive the job to its end and return it (see the module docstring). ``progress`` is called with the job
        after each change; setting ``stop`` (a server shutting down) stops the gang and hands the job back
        ``Pending`` for the next runner. `InvalidState` when another live runner holds the job, or took it over
        while this one ran it (see the module docstring)."""
        record = self.store.get(job_id)
        if record is None:
            raise ResourceDoesNotExist(f"job {job_id!r} does not exist")
        if record.done:
            return record
        if not self.store.claim(job_id, self.owner):
            raise InvalidState(f"job {job_id!r} is held by another runner ({record.owner})")
        return _Drive(self, job_id, progress, stop or threading.Event()).run()

    def event(self, record: JobRecord, reason: str, message: str, *, warning: bool = False,
              data: dict[str, object] | None = None) -> None:
        """Append one event of the job."""
        self.events.append(EVENT_KIND, record.id, reason, message, type=WARNING if warning else "Normal",
                           project=record.project, data=data)


class _Drive:
    """One `JobRunner.run`: the job's record as this runner last wrote it, its lease and its attempts."""

    def __init__(self, runner: JobRunner, job_id: str, progress: Callable[[JobRecord], None] | None,
                 stop: threading.Event) -> None:
        self.runner = runner
        self.store = runner.store
        self.job_id = job_id
        self.progress = progress
        self.stop = stop
        self.monotonic = monotonic_of(runner.clock)
        current = self.store.get(job_id)
        assert current is not None
        self.record = current
        self.request = gang_request(current.spec, key=f"job/{job_id}", project=current.project)
        self.lease: Lease | None = None
        self.last_port: int | None = None
        self.ended: JobAttempt | None = None
        self.hold = _Hold(self.store, job_id, runner.owner, runner.heartbeat_s, self.monotonic)

    # -- the record -------------------------------------------------------------------------------------------------
    def fresh(self) -> JobRecord:
        if self.hold.lost.is_set():
            raise _TakenOver(f"job {self.job_id!r}: this runner no longer holds it ({self.hold.why})")
        found = self.store.get(self.job_id)
        if found is None:
            raise ResourceDoesNotExist(f"job {self.job_id!r} was deleted while it ran")
        if found.owner != self.runner.owner:
            raise _TakenOver(f"job {self.job_id!r}: another runner holds it now ({found.owner})")
        return found

    def save(self, *, release_owner: bool = False, **changes: Any) -> JobRecord:
        """Write the job with ``changes``, keeping a cancel request that arrived meanwhile; this runner stays its
        owner unless ``release_owner``."""
        stored = self.fresh()
        if release_owner:
            self.hold.stop()  # the renewals end with the hold
        record = dataclasses.replace(self.record, **changes)
        record = dataclasses.replace(record, owner=None if release_owner else self.runner.owner,
                                     cancel_requested=record.cancel_requested or stored.cancel_requested)
        if not self.store.update(record, holder=self.runner.owner):
            raise _TakenOver(f"job {self.job_id!r}: another runner holds it now")
        self.record = record
        if self.progress is not None:
            self.progress(record)
        return record

    def event(self, reason: str, message: str, *, warning: bool = False, **data: object) -> None:
        self.runner.event(self.record, reason, message, warning=warning, data=data or None)

    def finish(self, state: str, reason: str, message: str, **data: object) -> JobRecord:
        self.fresh()  # still ours: the lease is not released under a runner that took the job over
        self.release()
        record = self.save(state=state, reason=reason, message=message, ended_ms=self.runner.clock(),
                           release_owner=True)
        if record.run_id:
            try:
                self.runner.tracking.update_run(record.run_id, status=RUN_STATUS[state], end_time=record.ended_ms)
            except CapstanError as exc:  # the run was deleted: the job's own record still says how it ended
                self.event("RunNotUpdated", f"tracking run {record.run_id} could not be ended: {exc}", warning=True)
        self.event(state, message, warning=state == "Failed", **data)
        return record

    # -- the loop ---------------------------------------------------------------------------------------------------
    def run(self) -> JobRecord:
        gang: list[RunningGang] = []
        self.hold.start()
        try:
            self.adopt_stale()
            return self.loop(gang)
        except _TakenOver:  # the job, its lease and its attempts are the new runner's now: only the gang is ours
            for g in gang:
                g.stop(self.record.spec.grace_s)
            raise
        except BaseException as exc:
            for g in gang:
                g.stop(self.record.spec.grace_s)
            if not self.record.done and not self.hold.lost.is_set():
                interrupted = isinstance(exc, KeyboardInterrupt)
                with contextlib.suppress(Exception):  # the first error is the one to report
                    self.finish("Cancelled" if interrupted else "Failed", "Cancelled" if interrupted else "RunnerError",
                                "interrupted" if interrupted else f"the job runner failed: {exc}")
            raise
        finally:
            self.hold.stop()

    def adopt_stale(self) -> None:
        """End an attempt a dead runner left open (``NodeLost``), stopping its processes if any still run."""
        attempts = self.store.attempts(self.job_id)
        if not attempts or attempts[-1].ended_ms is not None:
            return
        last = attempts[-1]
        stopped = self.runner.launcher.stop_stale(self.job_id, last.number)
        message = (f"attempt {last.number} was left by a runner that is gone"
                   + (f"; stopped its {stopped} remaining worker(s)" if stopped else ""))
        self.store.end_attempt(dataclasses.replace(last, ended_ms=self.runner.clock(), reason="NodeLost",
                                                   message=message))
        self.event("NodeLost", message + "; restarting the gang", warning=True, attempt=last.number)
        self.save(state="Restarting", reason="NodeLost", message=message)

    def loop(self, gang: list[RunningGang]) -> JobRecord:
        while True:
            if self.fresh().cancel_requested:
                return self.finish("Cancelled", "Cancelled", "cancelled before the gang started")
            if self.stop.is_set():
                return self.hand_back("the runner stopped while the job waited")
            if self.lease is None:
                admitted = self.admit()
                if isinstance(admitted, JobRecord):
                    return admitted
                self.lease = admitted
            end = self.attempt(self.lease, gang)
            if end.reason == "NodeLost" and self.stop.is_set():
                return self.hand_back(end.message)
            record = self.record
            step = next_step(record.spec, restarts=record.restarts, preemptions=record.preemptions, end=end)
            peaks = self.peak_data()
            if step.action == "succeed":
                return self.finish("Succeeded", step.reason, step.message, attempt=record.attempt, **peaks)
            if step.action in ("fail", "cancel"):
                return self.finish(step.state, step.reason, step.message, attempt=record.attempt, rank=end.rank,
                                   exit_code=end.exit_code, **peaks)
            self.event(end.reason, step.message, warning=True, attempt=record.attempt, rank=end.rank,
                       exit_code=end.exit_code, **peaks)
            if step.action == "requeue":
                self.release(requeue=True)
                self.save(state="Pending", reason=step.reason, message=step.message, preemptions=step.preemptions)
                continue
            self.save(state="Restarting", reason=step.reason, message=step.message, restarts=step.restarts)
            if not self.wait(step.delay_s):
                continue  # cancelled, stopped or preempted meanwhile: the top of the loop handles it

    def hand_back(self, message: str) -> JobRecord:
        """Give the job back (``Pending``, no owner) for the next runner; its workload leaves the queue."""
        self.fresh()
        self.release()
        self.runner.admission().withdraw(self.request.key)
        record = self.save(state="Pending", reason="NodeLost", message=message, release_owner=True)
        self.event("NodeLost", f"{message}; the job waits for the next runner", warning=True)
        return record

    def wait(self, seconds: float) -> bool:
        """Sleep ``seconds`` before a restart; False when a cancel, a stop or a preemption cut it short."""
        deadline = self.monotonic() + seconds
        while True:
            left = deadline - self.monotonic()
            if left <= 0:
                return True
            if self.stop.wait(min(left, self.runner.poll_s)) or self.fresh().cancel_requested:
                return False
            if self.lease is not None and self.runner.admission().revoked([self.lease]):
                self.release(requeue=True)
                self.save(state="Pending", reason="Preempted", message="the queue took the gang's quota back "
                          "while it waited to restart", preemptions=self.record.preemptions + 1)
                self.event("Preempted", self.record.message, warning=True)
                return False

    def release(self, *, requeue: bool = False) -> None:
        if self.lease is not None:
            lease, self.lease = self.lease, None
            self.runner.admission().release(lease, requeue=requeue)

    # -- admission --------------------------------------------------------------------------------------------------
    def admit(self) -> Lease | JobRecord:
        """The gang's lease, asked for every ``poll_s`` until granted; or the job, ended (cancelled, never
        admissible) or handed back (stopped)."""
        while True:
            if self.fresh().cancel_requested:
                self.runner.admission().withdraw(self.request.key)
                return self.finish("Cancelled", "Cancelled", "cancelled while waiting for the queue")
            if self.stop.is_set():
                return self.hand_back("the runner stopped while the job waited for the queue")
            verdict = self.runner.admission().acquire_many([self.request])[0]
            if isinstance(verdict, Lease):
                if verdict.workload != self.record.workload:
                    self.save(workload=verdict.workload)
                return verdict
            if isinstance(verdict, Rejected):
                return self.finish("Failed", "Unschedulable", f"the queue can never admit the gang: {verdict.message}")
            reason = verdict.reason or "Waiting"
            message = verdict.message or "waiting for the queue to admit the whole gang"
            if (self.record.state, self.record.reason, self.record.message, self.record.workload) != \
                    ("Pending", reason, message, verdict.workload):
                self.save(state="Pending", reason=reason, message=message, workload=verdict.workload)
            self.stop.wait(self.runner.poll_s)

    # -- one attempt ------------------------------------------------------------------------------------------------
    def attempt(self, lease: Lease, gangs: list[RunningGang]) -> AttemptEnd:
        """Start the gang, watch it until it ends (or is stopped: cancel, preemption, runner stop) and record the
        attempt."""
        runner, record = self.runner, self.record
        spec, admitted = launched_spec(record.spec, lease)
        number = record.attempt + 1
        lease_env = dict(lease.env)
        if record.spec.min_workers is not None:
            lease_env[WORKERS_REQUESTED_VARIABLE] = str(record.spec.workers)
        # A whole lease leaves the count to the cluster's admission, if it has one (Kueue's partial admission).
        whole = record.spec.min_workers if spec.workers == record.spec.workers else None
        gang = runner.launcher.launch(GangStart(
            spec, self.job_id, record.project, record.run_id, number, number - 1,
            pod_devices=lease.devices_of if spec.gpus > 0 else None, lease_env=lease_env,
            avoid_ports=(self.last_port,) if self.last_port else (), min_workers=whole))
        gangs.append(gang)
        self.last_port = gang.master_port
        started = runner.clock()
        attempt = JobAttempt(self.job_id, number, started, gang.master_port, str(gang.folder))
        self.store.add_attempt(attempt)
        held = self.wait_held(gang, number)
        if held is not None:  # ended (cancelled, stopped) before the cluster's admission let it run
            return self.end_attempt(gang, gangs, attempt, held, spec.grace_s)
        got = gang.admitted_workers()  # Kueue may have admitted the Job with fewer pods
        if got is not None and record.spec.min_workers is not None and got != spec.workers:
            spec, admitted = admitted_spec(record.spec, got)
        self.save(state="Running", attempt=number, reason="", started_ms=record.started_ms or started,
                  message=f"attempt {number}: {admitted}{spec.world_size} process(es), rendezvous on "
                          f"{gang.rendezvous}")
        self.event("Started", self.record.message, attempt=number, master_port=gang.master_port,
                   pids=[gang.pids[r] for r in sorted(gang.pids)], workers=spec.workers,
                   workers_requested=record.spec.workers)
        self.tag_workers(spec.workers)
        end = self.watch(gang, lease)
        if end.reason in ("Succeeded",):
            gang.reap()
        else:
            gang.stop(spec.grace_s)
        gangs.remove(gang)
        self.ended = dataclasses.replace(attempt, ended_ms=runner.clock(), reason=end.reason, rank=end.rank,
                                         exit_code=end.exit_code, message=end.message, rank_peak_memory=gang.peaks())
        self.store.end_attempt(self.ended)
        return end

    def wait_held(self, gang: RunningGang, number: int) -> AttemptEnd | None:
        """While the cluster's admission holds the started gang back (`RunningGang.held`: Kueue has not admitted
        its Job), keep the job ``Pending`` with the admitter's reason and message (``Preempted`` kept after a
        preemption, which uses no restart); None once the gang may run, or how it ended meanwhile (cancelled, the
        runner stopped, an outcome)."""
        while True:
            if gang.held() is None:
                return None
            outcome = gang.poll()  # also records what the cluster says meanwhile (Kueue's reason) as events
            if outcome is not None:
                return AttemptEnd(outcome.reason, outcome.rank, outcome.exit_code, outcome.message)
            hold = gang.held()
            if hold is None:
                return None
            record = self.fresh()
            if record.cancel_requested:
                return AttemptEnd("Cancelled", message=f"cancelled while waiting to be admitted ({hold.reason})")
            reason, message = hold.reason, hold.message
            if self.record.state == "Pending" and self.record.reason == "Preempted":
                reason = "Preempted"
                message = f"preempted {self.record.preemptions} time(s); waiting to be admitted again: {hold.message}"
            if (self.record.state, self.record.attempt, self.record.reason, self.record.message) != \
                    ("Pending", number, reason, message):
                self.save(state="Pending", attempt=number, reason=reason, message=message)
            if self.stop.wait(self.runner.poll_s):
                return AttemptEnd("NodeLost", message="the runner stopped while the gang waited to be admitted")

    def end_attempt(self, gang: RunningGang, gangs: list[RunningGang], attempt: JobAttempt, end: AttemptEnd,
                    grace_s: float) -> AttemptEnd:
        """Stop a gang that never ran and record its attempt's end."""
        if self.record.attempt != attempt.number:  # the next attempt is numbered after this one
            self.save(attempt=attempt.number)
        gang.stop(grace_s)
        gangs.remove(gang)
        self.ended = dataclasses.replace(attempt, ended_ms=self.runner.clock(), reason=end.reason, rank=end.rank,
                                         exit_code=end.exit_code, message=end.message)
        self.store.end_attempt(self.ended)
        return end

    def tag_workers(self, workers: int) -> None:
        """Record the workers this attempt got on the job's run (`WORKERS_ADMITTED_TAG`), when it may get fewer than
        it asked for."""
        run_id = self.record.run_id
        if run_id is None or self.record.spec.min_workers is None:
            return
        try:
            self.runner.tracking.log_batch(run_id, tags=[RunTag(WORKERS_ADMITTED_TAG, str(workers))])
        except CapstanError as exc:  # the run was deleted: the job's message and events still say it
            self.event("RunNotUpdated", f"tracking run {run_id}: {WORKERS_ADMITTED_TAG} not set: {exc}", warning=True)

    def peak_data(self) -> dict[str, object]:
        """The event fields of the last ended attempt's peak memory: ``peak_memory`` (bytes, the largest rank's),
        ``peak_rank`` and ``rank_peak_memory`` (every rank's); none when it recorded no peak."""
        ended = self.ended
        if ended is None or ended.peak_memory is None:
            return {}
        return {"peak_memory": ended.peak_memory, "peak_rank": ended.peak_rank,
                "rank_peak_memory": list(ended.rank_peak_memory)}

    def watch(self, gang: RunningGang, lease: Lease) -> AttemptEnd:
        next_check = self.monotonic() + self.runner.poll_s
        while True:
            outcome = gang.poll()
            if outcome is not None:
                return AttemptEnd(outcome.reason, outcome.rank, outcome.exit_code, outcome.message)
            if self.stop.wait(GANG_TICK_S):
                return AttemptEnd("NodeLost", message="the runner stopped; the gang was stopped with it")
            if self.monotonic() < next_check:
                continue
            next_check = self.monotonic() + self.runner.poll_s
            if self.fresh().cancel_requested:
                return AttemptEnd("Cancelled", message="cancelled while running")
            revoked = self.runner.admission().revoked([lease])
            if revoked:
                return AttemptEnd("Preempted", message=f"preempted by the queue: {revoked[0][1]}")


class _TakenOver(InvalidState):
    """The runner lost its hold on the job it drives (see the module docstring)."""


class _Hold:
    """Renews a runner's hold on one job every ``interval_s`` on a thread of its own (not in the drive's loops, which
    block while a gang starts or stops). ``lost`` is set, and ``why`` says why, once another runner holds the job or
    no renewal has succeeded for `FENCE_S`."""

    def __init__(self, store: JobStore, job_id: str, owner: str, interval_s: float,
                 monotonic: Callable[[], float]) -> None:
        self.lost = threading.Event()
        self.why = ""
        self._store, self._job_id, self._owner = store, job_id, owner
        self._interval_s = interval_s
        self._monotonic = monotonic
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"capstan-job-hold-{job_id}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._done.set()
        if self._thread.is_alive():
            self._thread.join()

    def _loop(self) -> None:
        renewed = self._monotonic()  # the claim has just written a heartbeat
        while not self._done.wait(self._interval_s):
            tried = self._monotonic()
            try:
                held = self._store.heartbeat(self._job_id, self._owner)
            except Exception as exc:  # noqa: BLE001  # an unreachable store: retried until the fence
                silent = self._monotonic() - renewed
                if silent < FENCE_S:
                    log.warning("job %s: renewing the hold failed (%s); retrying", self._job_id, exc)
                    continue
                self._give_up(f"its hold could not be renewed for {silent:.1f} s: {exc}")
                return
            if not held:
                if not self._done.is_set():  # not the drive handing the job back or ending it
                    self._give_up("another runner holds it now")
                return
            renewed = tried

    def _give_up(self, why: str) -> None:
        self.why = why
        self.lost.set()
        log.warning("job %s: %s; stopping its gang", self._job_id, why)
