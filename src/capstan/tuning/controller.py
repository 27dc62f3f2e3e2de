"""`StudyController`: runs a study to its end, ``parallel_trials`` at a time, each trial a queued workload and a
child tracking run of the study's parent run, and resumes a study whose controller died.

One round of the loop (see `StudyController.run`):

1. take the ends of trials (reported by the launchers' threads), record each (the Optuna study is told, the trial's
   row, its run and the progress line are written) and give its lease back;
2. decide whether the study is over: the trial limit reached (``max_trials``, or the grid's size), more than
   ``max_failed_trials`` failed, or the queue refused a trial for good;
3. otherwise ask the admission, in one ``settle`` with the leases given back, for as many trials as fit in
   ``parallel_trials`` (re-runs first); each admitted trial gets its parameters from the sampler now (so it learns
   from every trial that ended before it started), a child run, a ``RUNNING`` row, and starts.

Reports arrive on the launchers' threads: the controller tells the Optuna trial and answers with the pruner's
verdict. A trial that was running when its controller died is re-run once with the same parameters (its second
interruption fails it); WAITING trials keep their place in the queue.
"""

from __future__ import annotations

import contextlib
import dataclasses
import getpass
import math
import os
import queue
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from capstan.clock import Clock, monotonic_of, system_clock
from capstan.errors import CapstanError, InvalidParameterValue, InvalidState
from capstan.resources.admission import Lease, Rejected, ResourceRequest, Waiting
from capstan.tracking.records import Metric, Param, RunTag
from capstan.tuning import sampling
from capstan.tuning.launch import (
    STUDY_VARIABLE,
    ScriptProcess,
    TrialEnd,
    TrialListener,
    WorkerPool,
    kill_group,
    shared_key,
)
from capstan.tuning.outcomes import best_trial, judge, metric_lines, progress_line
from capstan.tuning.ports import StudyRecord, StudyResult, StudyStore, TrialRecord
from capstan.tuning.preflight import check_study, script_path, trial_request, working_dir_of
from capstan.tuning.spec import FunctionTrial, JobTrial, ScriptTrial, StudySpec, substitute, substitute_env
from capstan.tuning.studies_sql import owner_id

if TYPE_CHECKING:
    import optuna

    from capstan.resources.admission import Admission
    from capstan.sdk.backends import TrackingBackend
    from capstan.settings import Settings
    from capstan.training.runner import JobRunner

__all__ = ["LIMIT_CHANGES", "StudyController"]

LIMIT_CHANGES = frozenset({"max_trials", "parallel_trials", "max_failed_trials", "working_dir"})
"""Fields a study may change when it is run again (to run more trials, or more at once, or from a moved folder)."""
FLUSH_S = 2.0
"""How often a trial's reported points are written to its run while it runs."""
RUN_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "FINISHED", "FAILED": "FAILED"}
STUDY_RUN_STATUS = {"Succeeded": "FINISHED", "Failed": "FAILED", "Stopped": "KILLED"}


@dataclass(slots=True)
class _Running:
    """A trial that has started: its record, its Optuna trial, its lease and what it reported."""

    record: TrialRecord
    trial: optuna.trial.Trial
    lease: Lease
    reports: list[tuple[int, float]] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    points: list[Metric] = field(default_factory=list)
    flushed: float = 0.0
    pruned: bool = False
    script: ScriptProcess | None = None
    job_stop: threading.Event | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


class StudyController:
    """Runs one study (see the module docstring).

    Args:
        spec: the checked study.
        store: where the study and its trials are kept.
        admission: what each trial asks before it starts (the workload queue, from `capstan.services`).
        tracking: the tracking backend the parent and child runs are written to (the SDK's: local or HTTP).
        settings: this process's settings (trial processes get its stores' environment).
        project: the project of the study, its runs and its workloads.
        function: the objective itself when the SDK passed a Python function (else the spec's ``module:function``
            is imported by the workers).
        jobs: what runs training-job trials (`capstan.training.runner.JobRunner`).
        out: where the one-line progress messages go.
    """

    def __init__(self, spec: StudySpec, *, store: StudyStore, admission: Callable[[], Admission],
                 tracking: TrackingBackend, settings: Settings, project: str | None = None,
                 function: Callable[..., Any] | None = None, jobs: Callable[[], JobRunner] | None = None,
                 out: Callable[[str], None] | None = None, clock: Clock = system_clock,
                 user: str | None = None) -> None:
        self.spec = spec
        self.store = store
        self._admission_factory = admission
        self.tracking = tracking
        self.settings = settings
        self.project = project or settings.project
        self.function = function
        self.jobs = jobs
        self.out = out or (lambda line: None)
        self.clock = clock
        self.monotonic = monotonic_of(clock)
        self.user = user if user is not None else _user()
        self.owner = owner_id()
        self.record: StudyRecord | None = None
        self.study: optuna.Study | None = None
        self._events: queue.Queue[TrialEnd] = queue.Queue()
        self._running: dict[int, _Running] = {}
        self._waiting: dict[int, ResourceRequest] = {}
        self._stored_waiting: set[int] = set()
        self._reruns: dict[int, TrialRecord] = {}
        self._releases: list[tuple[Lease, bool]] = []
        self._trials: dict[int, TrialRecord] = {}
        self._next = 0
        self._optuna_lock = threading.Lock()
        self._pool: WorkerPool | None = None
        self._listener: TrialListener | None = None
        self._stop_reason: tuple[str, str, str] | None = None
        self._revoked_at = 0.0
        self._experiment_id: str | None = None
        self._logs = Path(settings.home) / "studies" / self.project / spec.name

    # -- the study ---------------------------------------------------------------------------------------------------
    @property
    def admission(self) -> Admission:
        return self._admission_factory()

    def run(self) -> StudyResult:
        """Run (or resume) the study to its end and return it. Ctrl-C stops it (``Stopped``; running it again
        resumes it). `InvalidParameterValue` for a spec that cannot run, before anything starts."""
        check_study(self.spec, project=self.project, admission=self._admission_factory, function=self.function)
        if self.settings.trial_listen and not isinstance(self.spec.trial, FunctionTrial):
            shared_key(self.settings.trial_key)  # refused before the study starts, not when its trials do
        self._check_job()
        record = self._open()
        if record.state != "Running":
            return self.result()
        try:
            self._prepare()
            self._loop()
        except KeyboardInterrupt:
            self._halt()
            self._withdraw_waiting()  # no quota is held for a stopped study; its running trials re-run on resume
            self._finish("Stopped", "Interrupted", "stopped (Ctrl-C); run it again to resume")
            raise
        except BaseException as exc:
            self._halt()
            with contextlib.suppress(Exception):
                self._finish("Failed", "ControllerError", f"the study's controller failed: {exc}")
            raise
        finally:
            self._close_launchers()
        return self.result()

    def result(self) -> StudyResult:
        """The study and its trials as stored now."""
        assert self.record is not None
        stored = self.store.get(self.project, self.spec.name) or self.record
        return StudyResult(stored, tuple(self.store.trials(self.project, self.spec.name)))

    def _check_job(self) -> None:
        """A training-job trial's gang must fit the queue: checked by the job runner before anything starts."""
        trial = self.spec.trial
        if not isinstance(trial, JobTrial) or self.jobs is None:
            return
        job = dataclasses.replace(trial.job, working_dir=trial.job.working_dir or str(working_dir_of(self.spec)),
                                  queue=trial.job.queue or self.spec.queue,
                                  priority=trial.job.priority or self.spec.priority)
        try:
            self.jobs().check(job, project=self.project)
        except InvalidParameterValue as exc:
            message = exc.message
            raise InvalidParameterValue(f"study.trial.{message}" if message.startswith("job.") else message) \
                from None

    def _open(self) -> StudyRecord:
        """The stored study (created when new), claimed by this controller; a finished one is returned as it is
        unless its limits were raised."""
        now = self.clock()
        stored = self.store.get(self.project, self.spec.name)
        if stored is None:
            fresh = StudyRecord(self.project, self.spec.name, self.spec, "Running", now, now, owner=self.owner,
                                user=self.user)
            self.record = self.store.create(fresh)
            return self.record
        old, new = stored.spec.to_dict(), self.spec.to_dict()
        changed = sorted(k for k in new if old.get(k) != new.get(k))
        if set(changed) - LIMIT_CHANGES:
            raise InvalidParameterValue(
                f"study.name: study {self.spec.name!r} already exists with a different {', '.join(changed)}; run it "
                "with its spec to resume it (only max_trials, parallel_trials, max_failed_trials and working_dir may "
                "change), or choose another name")
        if stored.state in ("Succeeded", "Failed") and not set(changed) - {"working_dir"}:
            self.record = stored  # ended: shown as it is (a Stopped study resumes)
            return stored
        if not self.store.claim(self.project, self.spec.name, self.owner):
            raise InvalidState(f"study {self.spec.name!r} is being run by another controller ({stored.owner})")
        self.record = dataclasses.replace(stored, spec=self.spec, state="Running", reason="", message="",
                                          owner=self.owner, updated_ms=now, ended_ms=None)
        self.store.update(self.record)
        return self.record

    def _save(self, **changes: Any) -> None:
        assert self.record is not None
        self.record = dataclasses.replace(self.record, updated_ms=self.clock(), **changes)
        self.store.update(self.record)

    def _prepare(self) -> None:
        """The parent run, the Optuna study rebuilt from the stored trials, interrupted trials marked for their
        re-run, the launchers."""
        assert self.record is not None
        if self.record.parent_run_id is None:
            self._save(parent_run_id=self._parent_run())
        else:
            with contextlib.suppress(CapstanError):
                self.tracking.update_run(self.record.parent_run_id, status="RUNNING")
        stored = self.store.trials(self.project, self.spec.name)
        self._trials = {t.number: t for t in stored}
        self._next = max((t.number for t in stored), default=-1) + 1
        self.study = sampling.rebuild(self.spec, stored)
        for trial in stored:
            if trial.state == "WAITING":
                self._waiting[trial.number] = self._request(trial.number)
                self._stored_waiting.add(trial.number)
            elif trial.state == "RUNNING":
                self._interrupted(trial)
        self._start_launchers()

    def _parent_run(self) -> str:
        spec = self.spec
        experiment = self.tracking.get_experiment_by_name(spec.experiment_name)
        experiment_id = experiment.experiment_id if experiment is not None else \
            self.tracking.create_experiment(spec.experiment_name)
        tags = [RunTag("capstan.study", spec.name), RunTag("mlflow.user", self.user),
                RunTag("mlflow.source.type", "STUDY"), RunTag("mlflow.source.name", f"study {spec.name}")]
        info = self.tracking.create_run(experiment_id, run_name=spec.name, tags=tags, start_time=self.clock(),
                                        user_id=self.user, source=f"study {spec.name}")
        params = {"algorithm": spec.algorithm.name, "early_stopping": spec.early_stopping.kind,
                  "max_trials": spec.max_trials, "parallel_trials": spec.parallel_trials,
                  "objective": f"{spec.objective.goal} {spec.objective.metric}", "seed": spec.seed}
        self.tracking.log_batch(info.run_id, params=[Param(k, str(v)) for k, v in params.items()])
        self._experiment_id = experiment_id
        return info.run_id

    def _interrupted(self, trial: TrialRecord) -> None:
        """A trial left RUNNING by a controller that died: its processes are stopped; it is re-run once."""
        if trial.pid and isinstance(self.spec.trial, ScriptTrial):
            _stop_stale(trial.pid, trial.started_ms)
        if isinstance(self.spec.trial, JobTrial) and trial.workload and trial.workload.startswith("job/"):
            self._stop_stale_job(trial.workload[len("job/"):])
        if trial.attempts >= 2:
            self._failed_interrupted(trial)
            return
        again = dataclasses.replace(trial, attempts=trial.attempts + 1, pid=None,
                                    message="re-run: its controller stopped while it ran")
        self.store.put_trial(again)
        self._trials[trial.number] = again
        self._reruns[trial.number] = again
        self._waiting[trial.number] = self._request(trial.number)

    def _stop_stale_job(self, job_id: str) -> None:
        """Stop the open attempt of a training-job trial whose controller died (its processes, or its Job and
        Service on a cluster), so that it does not run, and report, beside its re-run."""
        if self.jobs is None:
            return
        with contextlib.suppress(Exception):  # nothing left to stop, or the cluster is unreachable: re-run anyway
            runner = self.jobs()
            attempts = runner.store.attempts(job_id)
            # the open attempt; else the next one, whose gang may be up before its attempt was recorded
            number = attempts[-1].number + (attempts[-1].ended_ms is not None) if attempts else 1
            runner.launcher.stop_stale(job_id, number)

    def _failed_interrupted(self, trial: TrialRecord) -> None:
        ended = dataclasses.replace(trial, state="FAILED", ended_ms=self.clock(), pid=None,
                                    message="its controller stopped while it ran, twice")
        self.store.put_trial(ended)
        self._trials[trial.number] = ended
        assert self.study is not None
        self.study.add_trial(sampling.frozen_trial(ended, sampling.distributions_of(self.spec)))
        lease = self.admission.reclaim(self._request(trial.number), held_only=True)
        if lease is not None:
            self._releases.append((lease, False))
        if ended.run_id:
            with contextlib.suppress(CapstanError):
                self.tracking.update_run(ended.run_id, status="FAILED", end_time=ended.ended_ms)

    # -- launchers ---------------------------------------------------------------------------------------------------
    def _start_launchers(self) -> None:
        trial = self.spec.trial
        if isinstance(trial, FunctionTrial):
            target: Callable[..., Any] | str = self.function if self.function is not None else trial.function
            self._pool = WorkerPool(self.spec.parallel_trials, self.settings, target,
                                    working_dir=str(working_dir_of(self.spec)), on_report=self._on_report,
                                    on_end=self._events.put)
            self._pool.start()
        else:
            listen = self.settings.trial_listen  # TCP with a Secret's key: trials in other pods (decision 0745)
            self._listener = TrialListener(self._on_report, listen=listen,
                                           key=self.settings.trial_key if listen else None)
        self._logs.mkdir(parents=True, exist_ok=True)

    def _close_launchers(self) -> None:
        if self._pool is not None:
            self._pool.close()
        if self._listener is not None:
            self._listener.close()

    def _halt(self) -> None:
        """Stop every running trial now (Ctrl-C, a controller error); their rows stay RUNNING, to be re-run."""
        for running in list(self._running.values()):
            if running.script is not None:
                running.script.stop(grace_s=2.0)
            if running.job_stop is not None:
                running.job_stop.set()
            self._releases.append((running.lease, False))
        if self._pool is not None:
            self._pool.close()
            self._pool = None
        self._running.clear()
        self._settle_releases()

    # -- the loop ----------------------------------------------------------------------------------------------------
    def _loop(self) -> None:
        limit = self.spec.trial_limit()
        while True:
            self._take_ends(block=0.0)
            self._check_revoked()
            self._judge_study(limit)
            if self._stop_reason is not None and not self._running:
                self._withdraw_waiting()
                state, reason, message = self._stop_reason
                self._finish(state, reason, message)
                return
            requests = self._requests(limit) if self._stop_reason is None else []
            releases, self._releases = self._releases, []
            if requests or releases:
                verdicts = self.admission.settle(releases, requests)
                for request, verdict in zip(requests, verdicts, strict=True):
                    self._on_verdict(self._number_of(request), verdict)
            if self._stop_reason is not None and not self._running:
                continue
            wait = 0.25 if self._waiting and len(self._running) < self.spec.parallel_trials else 1.0
            self._take_ends(block=wait)

    def _judge_study(self, limit: int) -> None:
        if self._stop_reason is not None:
            return
        failed = sum(1 for t in self._trials.values() if t.state == "FAILED")
        cap = self.spec.max_failed_trials
        if cap is not None and failed > cap:
            self._stop_reason = ("Failed", "TooManyFailedTrials",
                                 f"{failed} trials failed, more than max_failed_trials={cap}")
            return
        started = sum(1 for t in self._trials.values() if t.state != "WAITING")
        if started >= limit and not self._reruns and not self._running:
            grid = self.spec.algorithm.name == "grid" and limit < self.spec.max_trials
            self._stop_reason = ("Succeeded", "GridDone" if grid else "TrialLimit",
                                 f"the grid's {limit} points were all tried" if grid else f"{started} trials ran")

    def _requests(self, limit: int) -> list[ResourceRequest]:
        """The waiting trials' requests, plus new ones up to ``parallel_trials`` and the trial limit."""
        started = sum(1 for t in self._trials.values() if t.state != "WAITING")
        new_waiting = sum(1 for n in self._waiting if n not in self._reruns)
        room = self.spec.parallel_trials - len(self._running) - len(self._waiting)
        while room > 0 and started + new_waiting < limit:
            number = self._next
            self._next += 1
            self._waiting[number] = self._request(number)
            new_waiting += 1
            room -= 1
        ordered = sorted(self._waiting, key=lambda n: (n not in self._reruns, n))
        return [self._waiting[n] for n in ordered][:max(0, self.spec.parallel_trials - len(self._running))]

    def _request(self, number: int) -> ResourceRequest:
        return trial_request(self.spec, self.project, number)

    @staticmethod
    def _number_of(request: ResourceRequest) -> int:
        return int(request.key.rsplit("-", 1)[1])

    def _on_verdict(self, number: int, verdict: Lease | Waiting | Rejected) -> None:
        if isinstance(verdict, Lease):
            del self._waiting[number]
            self._stored_waiting.discard(number)
            self._start(number, verdict)
        elif isinstance(verdict, Rejected):
            self._stop_reason = ("Failed", "Unschedulable", f"the queue can never admit trial {number}: "
                                                            f"{verdict.message}")
        elif number not in self._stored_waiting and number not in self._reruns:
            self._stored_waiting.add(number)
            waiting = TrialRecord(self.project, self.spec.name, number, "WAITING", self.clock(),
                                  workload=verdict.workload,
                                  message=f"{verdict.reason}: {verdict.message}".strip(": "))
            self.store.put_trial(waiting)
            self._trials[number] = waiting

    def _withdraw_waiting(self) -> None:
        for number in list(self._waiting):
            self.admission.withdraw(self._waiting.pop(number).key)
            if number in self._stored_waiting:
                self.store.delete_trial(self.project, self.spec.name, number)
                self._trials.pop(number, None)
        self._stored_waiting.clear()
        self._settle_releases()

    def _settle_releases(self) -> None:
        releases, self._releases = self._releases, []
        if releases:
            with contextlib.suppress(CapstanError):
                self.admission.settle(releases, [])

    def _check_revoked(self) -> None:
        """Trials whose quota the queue took back (preempted) are stopped and wait to be admitted again; they
        re-run with the same parameters."""
        now = self.monotonic()
        if now - self._revoked_at < 1.0 or not self._running:
            return
        self._revoked_at = now
        leases = [r.lease for r in self._running.values() if r.lease.workload is not None]
        for lease, _why in self.admission.revoked(leases):
            number = self._number_of(lease.request)
            running = self._running.pop(number, None)
            if running is None:
                continue
            if running.script is not None:
                running.script.stop(grace_s=2.0)
            elif self._pool is not None:
                self._pool.stop(number)
            again = dataclasses.replace(running.record, attempts=running.record.attempts + 1, pid=None,
                                        message="preempted by the queue; re-running")
            self.store.put_trial(again)
            self._trials[number] = again
            self._reruns[number] = again
            self._releases.append((lease, True))
            self._waiting[number] = self._request(number)

    # -- one trial ---------------------------------------------------------------------------------------------------
    def _start(self, number: int, lease: Lease) -> None:
        assert self.study is not None and self.record is not None
        rerun = self._reruns.pop(number, None)
        with self._optuna_lock:
            if rerun is not None:
                trial = sampling.rerun(self.study, rerun.params)
                params = dict(rerun.params)
            else:
                trial = self.study.ask()
                params = sampling.suggest(trial, self.spec)
        now = self.clock()
        run_id = rerun.run_id if rerun is not None else None
        if run_id is None and not isinstance(self.spec.trial, JobTrial):
            run_id = self._child_run(number, params)
        record = TrialRecord(self.project, self.spec.name, number, "RUNNING", now, params=params, run_id=run_id,
                             workload=lease.workload, attempts=rerun.attempts if rerun is not None else 1,
                             message=rerun.message if rerun is not None else "")
        self.store.put_trial(record)
        self._trials[number] = record
        running = _Running(record, trial, lease, flushed=self.monotonic())
        self._running[number] = running
        try:
            self._launch(running)
        except Exception as exc:  # noqa: BLE001  # a trial that cannot start fails, the study goes on
            self._events.put(TrialEnd(number, "error", error=f"the trial could not start: {exc}",
                                      started_ms=now, ended_ms=self.clock()))

    def _child_run(self, number: int, params: Mapping[str, Any]) -> str:
        assert self.record is not None and self.record.parent_run_id is not None
        experiment_id = self._experiment_id or self.tracking.get_run(self.record.parent_run_id).info.experiment_id
        self._experiment_id = experiment_id
        tags = [RunTag("mlflow.parentRunId", self.record.parent_run_id), RunTag("capstan.study", self.spec.name),
                RunTag("capstan.trial.number", str(number)), RunTag("mlflow.user", self.user),
                RunTag("mlflow.source.type", "STUDY"), RunTag("mlflow.source.name", f"study {self.spec.name}")]
        info = self.tracking.create_run(experiment_id, run_name=f"{self.spec.name}-{number}", tags=tags,
                                        start_time=self.clock(), user_id=self.user, source=f"study {self.spec.name}")
        self.tracking.log_batch(info.run_id, params=[Param(k, str(v)) for k, v in params.items()])
        return info.run_id

    def _log_path(self, number: int) -> str:
        return str(self._logs / f"trial-{number}.log")

    def _launch(self, running: _Running) -> None:
        record, trial = running.record, self.spec.trial
        if isinstance(trial, FunctionTrial):
            assert self._pool is not None
            self._pool.run(record.number, record.params, record.run_id, self._log_path(record.number))
        elif isinstance(trial, ScriptTrial):
            assert self._listener is not None
            running.script = self._script(running, trial)
            record = dataclasses.replace(record, pid=running.script.pid)
            running.record = record
            self.store.put_trial(record)
        else:
            self._job(running, trial)

    def _trial_env(self, number: int, run_id: str | None, extra: Mapping[str, str]) -> dict[str, str]:
        assert self._listener is not None
        env = {k: v for k, v in os.environ.items() if k not in ("CAPSTAN_URL", "CAPSTAN_TOKEN")}
        if self.settings.url:  # the trial's run lives on the server: the trial talks to it as this process does
            env["CAPSTAN_URL"] = self.settings.url
            if self.settings.token:
                env["CAPSTAN_TOKEN"] = self.settings.token
        env.update(self.settings.store_environment())
        env.update(self._listener.environment(number))
        if run_id is not None:
            env["CAPSTAN_JOB_RUN_ID"] = run_id  # the fluent SDK logs to the trial's run (and leaves it to us)
        env.update(extra)
        return env

    def _script(self, running: _Running, trial: ScriptTrial) -> ScriptProcess:
        record = running.record
        path = script_path(self.spec, trial.script)
        command = [sys.executable, str(path)] if path.suffix == ".py" else [str(path)]
        command += list(substitute(trial.args, record.params))
        env = substitute_env(trial.env, record.params)
        if running.lease.workload is not None:  # the trial's saves are reported to its queue workload
            env["CAPSTAN_WORKLOAD_ID"] = running.lease.workload
        return ScriptProcess(record.number, command, env=self._trial_env(record.number, record.run_id, env),
                             cwd=str(working_dir_of(self.spec)), log_path=self._log_path(record.number),
                             on_end=self._events.put)

    def _job(self, running: _Running, trial: JobTrial) -> None:
        if self.jobs is None:
            raise InvalidState("training-job trials need a job runner")
        runner = self.jobs()
        record = running.record
        job = trial.job
        env = substitute_env(job.env, record.params)
        assert self._listener is not None
        env.update(self._listener.environment(record.number))
        env[STUDY_VARIABLE] = self.spec.name  # with CAPSTAN_TRIAL_NUMBER: the labels of the trial's cluster objects
        name = f"{self.spec.name[:50].rstrip('-')}-t{record.number}"
        spec = dataclasses.replace(job, name=name, args=substitute(job.args, record.params),
                                   env=tuple(sorted(env.items())), experiment=self.spec.experiment_name,
                                   working_dir=job.working_dir or str(working_dir_of(self.spec)),
                                   queue=job.queue or self.spec.queue, priority=job.priority or self.spec.priority)
        submitted = runner.submit(spec, project=self.project, user=self.user, hold=True)
        if submitted.run_id is not None:
            assert self.record is not None and self.record.parent_run_id is not None
            self.tracking.log_batch(submitted.run_id, params=[Param(k, str(v)) for k, v in record.params.items()],
                                    tags=[RunTag("mlflow.parentRunId", self.record.parent_run_id),
                                          RunTag("capstan.study", self.spec.name),
                                          RunTag("capstan.trial.number", str(record.number))])
        record = dataclasses.replace(record, run_id=submitted.run_id, workload=f"job/{submitted.id}")
        running.record = record
        self.store.put_trial(record)
        running.job_stop = threading.Event()
        threading.Thread(target=self._drive_job, args=(runner, submitted.id, record.number, running.job_stop),
                         daemon=True, name="capstan-trial-job").start()

    def _drive_job(self, runner: JobRunner, job_id: str, number: int, stop: threading.Event) -> None:
        started = self.clock()
        try:
            done = runner.run(job_id, stop=stop)
        except Exception as exc:  # noqa: BLE001  # the job runner's failure is the trial's
            self._events.put(TrialEnd(number, "error", error=str(exc), started_ms=started, ended_ms=self.clock()))
            return
        outcome = "ok" if done.state == "Succeeded" else "error"
        self._events.put(TrialEnd(number, outcome, error=f"job {job_id} {done.state.lower()}: {done.message}",
                                  started_ms=started, ended_ms=self.clock()))

    # -- reports and ends --------------------------------------------------------------------------------------------
    def _on_report(self, number: int, value: float, step: int, metrics: Mapping[str, float]) -> bool:
        """A trial's report (on a launcher's thread): told to Optuna; the answer is the pruner's verdict."""
        running = self._running.get(number)
        if running is None:
            return False
        with self._optuna_lock:
            running.trial.report(value, step)
            prune = bool(running.trial.should_prune())
        now = self.clock()
        with running.lock:
            running.reports.append((step, value))
            running.metrics.update(metrics)
            if math.isfinite(value):
                running.points.append(Metric(self.spec.objective.metric, value, now, step))
            running.points.extend(Metric(k, v, now, step) for k, v in metrics.items() if math.isfinite(v))
            running.pruned = running.pruned or prune
            points: list[Metric] = []
            if self.monotonic() - running.flushed >= FLUSH_S and running.record.run_id:
                points, running.points, running.flushed = running.points, [], self.monotonic()
        if points and running.record.run_id:
            with contextlib.suppress(CapstanError):
                self.tracking.log_batch(running.record.run_id, metrics=points)
        return prune

    def _take_ends(self, block: float) -> None:
        try:
            end = self._events.get(timeout=block) if block > 0 else self._events.get_nowait()
        except queue.Empty:
            return
        while True:
            self._end(end)
            try:
                end = self._events.get_nowait()
            except queue.Empty:
                return

    def _printed(self, running: _Running) -> dict[str, float]:
        """Metric lines a script printed; for a training job, the latest values on its run."""
        names = self.spec.objective.metrics
        if isinstance(self.spec.trial, ScriptTrial):
            try:
                text = Path(self._log_path(running.record.number)).read_text(errors="replace")
            except OSError:
                return {}
            return metric_lines(text, names)
        if isinstance(self.spec.trial, JobTrial) and running.record.run_id:
            # The controller writes the trial's reports to the same run as they come (every `FLUSH_S`): a latest
            # value that is one of them is not the trial's own, and may be stale (the rest is written after this).
            objective = self.spec.objective.metric
            with running.lock:
                reported = {(step, value) for step, value in running.reports}
            with contextlib.suppress(CapstanError):
                run = self.tracking.get_run(running.record.run_id)
                return {m.key: m.value for m in run.data.metrics
                        if m.key in names and not (m.key == objective and (m.step, m.value) in reported)}
        return {}

    def _end(self, end: TrialEnd) -> None:
        running = self._running.pop(end.number, None)
        if running is None:
            return
        assert self.study is not None
        failed = None if end.outcome == "ok" else (end.error or "failed")
        with running.lock:
            reports, metrics, points = list(running.reports), dict(running.metrics), running.points
            running.points = []
        outcome = judge(self.spec.objective, pruned=running.pruned, failed=failed,
                        result=end.result if isinstance(self.spec.trial, FunctionTrial) else None,
                        reported=reports, reported_metrics=metrics,
                        printed=self._printed(running) if failed is None else None)
        state = {"COMPLETE": "COMPLETE", "PRUNED": "PRUNED", "FAILED": "FAIL"}[outcome.state]
        import optuna

        with self._optuna_lock:
            frozen = self.study.tell(running.trial, outcome.value if state == "COMPLETE" else None,
                                     state=optuna.trial.TrialState[state])
        started = end.started_ms or running.record.started_ms
        record = dataclasses.replace(running.record, state=outcome.state, value=outcome.value,
                                     metrics=outcome.metrics, intermediate=tuple(reports),
                                     system_attrs=frozen.system_attrs, started_ms=started,
                                     ended_ms=end.ended_ms or self.clock(),
                                     message=outcome.message or running.record.message)
        self.store.put_trial(record)
        self._trials[record.number] = record
        self._releases.append((running.lease, False))
        self._end_run(record, points, reports)
        self.out(progress_line(record, best_trial(self._trials.values(), self.spec.objective.goal),
                               self.spec.objective))

    def _end_run(self, record: TrialRecord, points: list[Metric], reports: list[tuple[int, float]]) -> None:
        if not record.run_id:
            return
        step = reports[-1][0] if reports else 0
        now = self.clock()
        finals = [Metric(k, v, now, step) for k, v in record.metrics.items()
                  if not (k == self.spec.objective.metric and record.state == "PRUNED")]
        tags = [RunTag("capstan.trial.state", record.state)]
        if record.message:
            tags.append(RunTag("capstan.trial.message", record.message[:1000]))
        try:
            self.tracking.log_batch(record.run_id, metrics=[*points, *finals], tags=tags)
            self.tracking.update_run(record.run_id, status=RUN_STATUS[record.state], end_time=record.ended_ms)
        except CapstanError as exc:  # a deleted run: the trial's own row still says how it ended
            self.out(f"trial {record.number}: its run {record.run_id} could not be updated: {exc}")

    # -- the end -----------------------------------------------------------------------------------------------------
    def _finish(self, state: str, reason: str, message: str) -> None:
        self._settle_releases()
        assert self.record is not None
        best = best_trial(self._trials.values(), self.spec.objective.goal)
        self._save(state=state, reason=reason, message=message, owner=None, ended_ms=self.clock())
        run_id = self.record.parent_run_id
        if run_id is None:
            return
        try:
            if best is not None and best.value is not None:
                self.tracking.log_batch(run_id, metrics=[Metric(f"best_{self.spec.objective.metric}", best.value,
                                                                self.clock(), best.number)],
                                        tags=[RunTag("capstan.study.best_trial", str(best.number)),
                                              RunTag("capstan.study.best_run_id", best.run_id or "")])
            self.tracking.update_run(run_id, status=STUDY_RUN_STATUS[state], end_time=self.record.ended_ms)
        except CapstanError as exc:
            self.out(f"the study's run {run_id} could not be updated: {exc}")


def _stop_stale(pid: int, started_ms: int) -> None:
    """Stop the process group of a script trial a dead controller left running (if it is that process still)."""
    try:
        import psutil

        created = psutil.Process(pid).create_time() * 1000
    except Exception:  # noqa: BLE001  # gone (NoSuchProcess) or not ours: nothing to stop
        return
    if abs(created - started_ms) <= 60_000:
        kill_group(pid, 2.0, lambda: not _exists(pid))


def _exists(pid: int) -> bool:
    try:
        import psutil

        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except Exception:  # noqa: BLE001  # NoSuchProcess and the like
        return False


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001  # no user name in this environment (a container without passwd entry)
        return ""
