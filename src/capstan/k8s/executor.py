"""The Kubernetes executor: pipeline steps' attempts run as ``batch/v1`` Jobs, an adapter of the
`capstan.pipelines.executor_port.Executor` port (``--backend kubernetes``; docs/kubernetes-executor.md).

Each attempt becomes one Job rendered by `capstan.k8s.render_pipelines` (restricted pod, ``capstan worker
run-step`` in the step's image), named after the run, step and attempt and labelled with them. Before it is
created, `capstan.k8s.preflight` refuses a pod that the namespace's ResourceQuota or the largest node can never
hold. Admission has two modes:

- **Kueue** (``KubeOptions.kueue``; from ``CAPSTAN_KUBE_ADMISSION=kueue`` in the composition root, which then
  gives the orchestrator a `capstan.k8s.kueue_admission.KueueAdmission` that grants at once, so Capstan's queue is
  not asked): the Job carries the queue label and is created suspended; Kueue alone admits it. The executor
  follows every ``Workload`` of the namespace (matched to its Job by owner) and records its conditions as events:
  ``KueuePending`` with Kueue's message (``couldn't assign flavors ... insufficient quota``) while it waits, then
  ``KueueQuotaReserved``, ``KueueAdmitted``, ``KueueEvicted``..., each with the Workload mapped by
  `capstan.k8s.kueue_status` in its ``kueue`` field (the flavor, resource and how much more; who preempted it),
  which ``capstan why RUN/STEP`` and the step's timeline read back (decision 0741).
- **Capstan's queue**: the orchestrator asked Capstan's queue before `start` (the lease); the Job is created with
  ``spec.suspend: true`` and unsuspended with a merge patch, which is the admission.

A `capstan.k8s.kube_watch.Watcher` follows Jobs and Pods (and Workloads) with resourceVersion, listing again after
a 410. Each change is mapped by `capstan.k8s.reasons.job_status`; a change of state or reason becomes an event on
the step (``capstan events``, ``capstan why``) and a finished Job becomes the attempt's `Outcome`. Pod logs are
followed into the attempt's live log file and uploaded to the artifact store when the attempt ends, so they outlive
the pods. `stop` deletes the Job with Foreground propagation; finished Jobs are deleted (Background) once their
outcome is delivered, unless ``keep_finished``.

The pod runs ``capstan worker run-step --pipeline REF --node NODE --run RUN --attempt N --code sha256:...``: the
run's pipeline folder is shipped once per run as a content-addressed package (`capstan.pipelines.code_package`),
and the worker records the attempt's `Outcome` in the artifact store (`capstan.pipelines.remote_step`), which
the executor reads back when the Job succeeds (its output reference is what successors consume).
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Final

from capstan.errors import CapstanError
from capstan.events.records import NORMAL, WARNING
from capstan.k8s.client import JOB, POD, WORKLOAD, KubeApi, KubeNotFound, KubeRejected, Propagation
from capstan.k8s.kube_watch import Watcher, name_of
from capstan.k8s.kueue_admission import KUEUE_WARNINGS, workload_condition, workload_job
from capstan.k8s.kueue_status import kueue_status
from capstan.k8s.preflight import Snapshot, refusals, snapshot_from
from capstan.k8s.reasons import STUCK, Reason, WorkloadStatus, job_status
from capstan.k8s.render_pipelines import USAGE_EXIT_CODE
from capstan.pipelines.execution import (
    CANCELLED,
    INTERRUPTED,
    UNSCHEDULABLE,
    WORKER_LOST,
    Outcome,
    Task,
    failed,
    now_ms,
)
from capstan.pipelines.executor_port import NO_VALUES, NOWHERE, Deliver, Executor, ExecutorFactory, Placement, Started

if TYPE_CHECKING:
    from capstan.events.ports import EventLog
    from capstan.k8s.pods import Resources
    from capstan.k8s.render_pipelines import JobOptions
    from capstan.pipelines.dsl import Step
    from capstan.resources.admission import Lease
    from capstan.settings import Settings

__all__ = ["ATTEMPT_LABEL", "RUN_LABEL", "KubeOptions", "KubernetesExecutor", "RunInfo", "attempt_job_name",
           "kube_executor_factory"]

RUN_LABEL: Final = "capstan.dev/run-id"
ATTEMPT_LABEL: Final = "capstan.dev/attempt"
MANAGED: Final = {"app.kubernetes.io/managed-by": "capstan"}
JOB_NAME_LABELS: Final = ("batch.kubernetes.io/job-name", "job-name")
_DROP_ENV: Final = frozenset({"CUDA_VISIBLE_DEVICES"})  # the device plugin decides a pod's GPUs
_WORKER_REASONS: Final = frozenset({Reason.NON_ZERO_EXIT, Reason.POD_FAILURE_POLICY, Reason.BACKOFF_LIMIT_EXCEEDED,
                                    Reason.FAILED})
_CHILD: Final = re.compile(r"^(.*)\[(\d+)\]$")

RunInfo = Callable[[str], tuple[str, Mapping[str, Any]]]
"""A run's pipeline reference as stored (``/abs/file.py:func``) and its parameters, by run id."""
Ship = Callable[[str], tuple[str, str]]
"""Uploads a pipeline's folder: (``--code`` package reference, ``--pipeline`` reference inside the package)."""


def attempt_job_name(task: Task) -> str:
    """The Job of one attempt: run, step and attempt in a valid, unique name."""
    from capstan.k8s.render_pipelines import job_name

    return job_name(f"capstan-{task.run_id[:12]}", f"{task.step_id}-a{task.attempt}")


@dataclass(frozen=True, slots=True)
class KubeOptions:
    """How the executor uses the cluster. ``kueue``: True lets Kueue admit (its Workload API must answer), False
    has Capstan's queue admit, None detects it (the Workload API answers); ``queue`` is the LocalQueue of steps
    that name none (Kueue mode); ``jobs`` the rendering options (image, project, secrets...); ``propagation`` how
    `stop` deletes; ``keep_finished`` keeps finished Jobs (their ``ttlSecondsAfterFinished`` still applies);
    ``watch_timeout_s`` each watch request's length;
    ``stuck_after_s`` how long a container may stay in a waiting state it does not leave by itself
    (`capstan.k8s.reasons.STUCK`: ``ImagePullBackOff``, ``CrashLoopBackOff``...) before the attempt fails with it;
    ``log_wait_s`` how long an ended attempt waits for its log streams to drain."""

    kueue: bool | None = None
    queue: str = "default"
    jobs: JobOptions | None = None
    propagation: Propagation = "Foreground"
    keep_finished: bool = False
    watch_timeout_s: int = 30
    log_wait_s: float = 5.0
    stuck_after_s: float = 300.0


@dataclass(slots=True)
class _Attempt:
    task: Task
    job: str
    started_at: int
    last: tuple[str, str, str] = ("", "", "")
    kueue_last: tuple[str, str] = ("", "")  # the Workload's last recorded (reason, message)
    running: bool = False
    stop_reason: str | None = None
    done: bool = False
    stuck_since: float | None = None
    verdict: WorkloadStatus | None = None  # decided here (given up on), not by the Job
    lock: threading.RLock = field(default_factory=threading.RLock)  # watch threads and the ticker share it
    # Calls to the orchestrator (deliver, on_started), made after the lock is released: the orchestrator calls
    # back into the executor (start, stop) while holding its own lock.
    effects: list[Callable[[], None]] = field(default_factory=list)
    log_threads: dict[str, threading.Thread] = field(default_factory=dict)
    log_parts: dict[str, bytearray] = field(default_factory=dict)


class KubernetesExecutor:
    """The `Executor` that runs each attempt as a Job in ``api``'s namespace (see the module docstring).

    ``events`` receives everything seen; ``store`` is the artifact store (code and logs up, outcomes down);
    ``run_info`` names a run's pipeline and parameters, ``ship`` uploads its code (default: the run's folder as a
    `capstan.pipelines.code_package`); ``read_result`` reads a succeeded attempt's outcome (default: what
    `capstan.pipelines.remote_step` recorded in ``store``)."""

    isolation = "process"
    reports_start = True
    in_process = False

    def __init__(self, deliver: Deliver, on_started: Started | None, *, api: KubeApi, events: EventLog,
                 store: Any, run_info: RunInfo, options: KubeOptions | None = None, ship: Ship | None = None,
                 read_result: Callable[[Task], Outcome | None] | None = None) -> None:
        self._deliver = deliver
        self._on_started = on_started
        self._api = api
        self._events = events
        self._store = store
        self._opts = options or KubeOptions()
        self._read_result = read_result or self._stored_result
        self._run_info = run_info
        self._ship = ship or self._ship_package
        self._shipped: dict[str, tuple[str, str, Mapping[str, Any]]] = {}
        self._steps: dict[str, Step] = {}
        self._attempts: dict[str, _Attempt] = {}
        self._lock = threading.Lock()
        self._watcher: Watcher | None = None
        self._workloads: Watcher | None = None
        self._kueue: bool | None = self._opts.kueue
        self._snapshot: Snapshot | None = None
        self._stopping = threading.Event()

    # -- the port ---------------------------------------------------------------------------------------------
    def prepare(self, steps: Sequence[Step]) -> None:
        """Remember the run's steps (their options render the Jobs) and start following the namespace."""
        self._steps.update({s.name: s for s in steps})
        with contextlib.suppress(CapstanError):  # an unreachable cluster is reported by each attempt's start
            self._ensure_watch()

    def place(self, lease: Lease | None) -> Placement:
        """Nothing to choose: the cluster places pods; the live log is the run's default file."""
        return NOWHERE

    def placement_of(self, worker_pid: int | None, worker_started: int | None) -> Placement:
        """Attempts on a cluster have no worker process."""
        return NOWHERE

    def start(self, task: Task, placement: Placement, *, lease: Lease | None = None, step: Step | None = None,
              values: Mapping[str, Any] = NO_VALUES) -> None:
        """Render, check and create the attempt's Job; its outcome arrives through ``deliver``."""
        started = now_ms()
        created: str | None = None
        try:
            self._ensure_watch()  # detects Kueue, which decides how the Job is rendered
            doc = self._render(task, step or self._steps.get(task.step_name))
            reasons = refusals(doc, self._cluster_snapshot())
            if reasons:
                self._event(task, WARNING, "Refused", f"job {name_of(doc)} can never run: " + "; ".join(reasons))
                self._deliver(failed(task, UNSCHEDULABLE, f"step {task.step_id!r} can never run on this cluster: "
                                     + "; ".join(reasons), started_at=started, finished_at=now_ms(),
                                     retryable=False))
                return
            attempt = _Attempt(task, name_of(doc), started)
            with self._lock:
                self._attempts[task.key] = attempt
            self._api.create(doc)
            created = attempt.job
            self._event(task, NORMAL, "JobCreated", f"job {attempt.job} created in namespace "
                        f"{self._api.namespace} ({'Kueue admits it' if self._kueue else 'suspended until admitted'})")
            if not self._kueue:
                self._api.merge_patch(JOB, attempt.job, {"spec": {"suspend": False}})
                who = f" (workload {lease.workload})" if lease is not None and lease.workload else ""
                self._event(task, NORMAL, "Admitted", f"Capstan's queue admitted job {attempt.job}{who}: unsuspended")
            self._refresh(attempt.job)
        except CapstanError as exc:
            with self._lock:
                self._attempts.pop(task.key, None)
            if created is not None:  # half started (the unsuspend failed): leave nothing behind
                with contextlib.suppress(CapstanError):
                    self._api.delete(JOB, created, propagation="Background")
            reason = "Rejected" if isinstance(exc, KubeRejected) else WORKER_LOST
            self._event(task, WARNING, reason, exc.message)
            self._deliver(failed(task, reason, f"step {task.step_id!r}: {exc.message}", started_at=started,
                                 finished_at=now_ms(), retryable=not isinstance(exc, KubeRejected)))

    def stop(self, key: str, reason: str, *, grace_s: float | None = None) -> None:
        """Delete the attempt's Job with the configured propagation (its pods go with it); the outcome (failed
        with ``reason`` unless it finished first) arrives when the watch sees it gone."""
        with self._lock:
            attempt = self._attempts.get(key)
            if attempt is None or attempt.done:
                return
            attempt.stop_reason = reason
        self._event(attempt.task, WARNING, "Stopping", f"deleting job {attempt.job} ({reason}, "
                    f"{self._opts.propagation} propagation)")
        try:
            self._api.delete(JOB, attempt.job, propagation=self._opts.propagation)
        except CapstanError as exc:
            self._event(attempt.task, WARNING, "StopFailed", exc.message)
        self._refresh(attempt.job)

    def recover(self, task: Task, placement: Placement, started_at: int) -> Outcome | None:
        """Follow the attempt's Job again if it is still there (its outcome arrives through ``deliver``), or
        report it interrupted when it is gone."""
        name = attempt_job_name(task)
        try:
            self._api.get(JOB, name)
        except KubeNotFound:
            return failed(task, INTERRUPTED, f"attempt {task.attempt}: job {name} is gone",
                          started_at=started_at, finished_at=now_ms())
        with self._lock:
            self._attempts[task.key] = _Attempt(task, name, started_at)
        self._ensure_watch()
        self._refresh(name)
        return None

    def shutdown(self, *, kill: bool = False) -> None:
        """Stop watching; with ``kill`` delete the Jobs of attempts still running first."""
        if kill:
            with self._lock:
                keys = [k for k, a in self._attempts.items() if not a.done]
            for key in keys:
                self.stop(key, CANCELLED)
        self._stopping.set()
        for watcher in (self._watcher, self._workloads):
            if watcher is not None:
                watcher.stop()

    # -- rendering --------------------------------------------------------------------------------------------
    def _render(self, task: Task, step: Step | None) -> dict[str, Any]:
        from capstan.k8s.render_pipelines import JobOptions, StepJob, render_step_job

        opts = step.options if step is not None else None
        queue = (opts.queue if opts is not None else None) or self._opts.queue
        code, ref, params = self._code_of(task.run_id)
        env = {k: v for k, v in task.env.items() if k not in _DROP_ENV}
        node, child = task.step_id, _CHILD.match(task.step_id)
        if child is not None:  # an item of a map: the worker finds it from the map's node and the index
            node, env["CHUNK_INDEX"] = child.group(1), child.group(2)
        record = StepJob(
            pipeline=ref.rpartition(":")[2] or task.step_name, pipeline_ref=ref, node=node, step=task.step_name,
            params={k: _param_text(v) for k, v in params.items()},
            image=opts.image if opts is not None else None, retries=0,
            timeout_s=task.timeout, resources=_resources(step), env=env,
            gpu_flavor=opts.resources.gpu_flavor if opts is not None else None,
            queue=queue if self._kueue else None,
            priority_class=(opts.priority_class if opts is not None else None) if self._kueue else None)
        doc = render_step_job(record, self._opts.jobs or JobOptions(), {node: attempt_job_name(task)})
        doc["metadata"]["namespace"] = self._api.namespace
        extra = {**MANAGED, RUN_LABEL: task.run_id[:63], ATTEMPT_LABEL: str(task.attempt)}
        doc["metadata"]["labels"].update(extra)
        doc["spec"]["template"]["metadata"].setdefault("labels", {}).update(extra)
        doc["spec"]["suspend"] = True
        container = doc["spec"]["template"]["spec"]["containers"][0]
        container["command"] = [*container["command"], "--run", task.run_id, "--attempt", str(task.attempt),
                                "--code", code]
        return doc

    def _code_of(self, run_id: str) -> tuple[str, str, Mapping[str, Any]]:
        """The run's code package, pipeline reference inside it and parameters (shipped once per run)."""
        if run_id not in self._shipped:
            canonical, params = self._run_info(run_id)
            code, ref = self._ship(canonical)
            self._shipped[run_id] = (code, ref, params)
        return self._shipped[run_id]

    def _ship_package(self, canonical: str) -> tuple[str, str]:
        from capstan.pipelines.code_package import ship_pipeline

        return ship_pipeline(self._store, canonical)

    # -- the cluster ------------------------------------------------------------------------------------------
    def _cluster_snapshot(self) -> Snapshot:
        if self._snapshot is None:
            from capstan.k8s.client import NODE, RESOURCE_QUOTA

            quotas = self._api.list(RESOURCE_QUOTA).items
            try:
                nodes: Sequence[Mapping[str, Any]] = self._api.list(NODE).items
            except KubeRejected:  # a namespaced service account may not list nodes: skip that check
                nodes = ()
            self._snapshot = snapshot_from(self._api.namespace, quotas, nodes)
        return self._snapshot

    def _detect_kueue(self) -> bool:
        try:
            self._api.list(WORKLOAD)
        except (KubeNotFound, KubeRejected):
            return False
        return True

    def _ensure_watch(self) -> None:
        with self._lock:
            if self._watcher is not None:
                return
            if self._kueue is None:
                self._kueue = self._detect_kueue()
            elif self._kueue and not self._detect_kueue():
                raise KubeRejected(f"Kueue admits this backend's Jobs (CAPSTAN_KUBE_ADMISSION=kueue), but Kueue's "
                                   f"Workload API ({WORKLOAD.api_version}) does not answer in namespace "
                                   f"{self._api.namespace}: install Kueue or use CAPSTAN_KUBE_ADMISSION=capstan")
            self._watcher = Watcher(self._api, (JOB, POD), namespace=self._api.namespace, labels=MANAGED,
                                    on_change=self._changed, on_relist=self._relisted,
                                    timeout_s=self._opts.watch_timeout_s)
            if self._kueue:  # Kueue's Workloads do not carry the Job's labels: follow them all, matched by owner
                self._workloads = Watcher(self._api, (WORKLOAD,), namespace=self._api.namespace, labels={},
                                          on_change=self._changed, on_relist=self._relisted,
                                          timeout_s=self._opts.watch_timeout_s)
        self._watcher.start()
        if self._workloads is not None:
            self._workloads.start()
        threading.Thread(target=self._tick, name="capstan-kube-tick", daemon=True).start()

    def _relisted(self, ref: Any, why: str) -> None:
        with self._lock:
            live = [a for a in self._attempts.values() if not a.done]
        for attempt in live:
            self._event(attempt.task, NORMAL, "WatchResumed", f"{ref.plural}: {why}; listed again")

    def _changed(self, ref: Any, kind: str, doc: dict[str, Any]) -> None:
        if ref == JOB:
            self._refresh(name_of(doc))
        elif ref == POD:
            job = _job_of_pod(doc)
            if job:
                self._refresh(job)
        elif ref == WORKLOAD:
            self._workload(doc)

    def _attempt_of(self, job: str) -> _Attempt | None:
        with self._lock:
            return next((a for a in self._attempts.values() if a.job == job and not a.done), None)

    def _refresh(self, job_name: str) -> None:
        """Re-evaluate one attempt from the watcher's latest Job and Pods."""
        attempt = self._attempt_of(job_name)
        if attempt is None or self._watcher is None:
            return
        with attempt.lock:
            if not attempt.done:
                self._evaluate(attempt, job_name, self._watcher)
            effects, attempt.effects = attempt.effects, []
        for effect in effects:
            effect()

    def _evaluate(self, attempt: _Attempt, job_name: str, watcher: Watcher) -> None:
        job = watcher.get(JOB, job_name)
        pods = [p for p in watcher.objects(POD) if _job_of_pod(p) == job_name]
        if job is None:
            if attempt.stop_reason is not None or self._gone(job_name):
                self._finish(attempt, None, pods)
            return
        status = job_status(job, pods)
        if status.state in ("succeeded", "failed"):
            # The Pod watch may lag the Job's: read the pods once more so the final reason is the most telling.
            pods = self._pods_now(job_name, pods)
            status = job_status(job, pods)
        self._follow_logs(attempt, pods)
        key = (status.state, status.reason, status.pod or "")
        if key != attempt.last:
            attempt.last = key
            kind = WARNING if status.state == "failed" or status.reason in STUCK or \
                status.reason == Reason.UNSCHEDULABLE else NORMAL
            self._event(attempt.task, kind, status.reason, status.message, data={"job": job_name,
                                                                                 **status.to_dict()})
        if self._given_up(attempt, status):
            return
        # A pod that ran and ended between two watch events is seen succeeded, never running: it still started.
        if status.state in ("running", "succeeded") and not attempt.running:
            attempt.running = True
            if self._on_started is not None:
                started, began = self._on_started, attempt.task.key
                attempt.effects.append(lambda: started(began))
        if status.state in ("succeeded", "failed"):
            self._finish(attempt, status, pods)

    def _given_up(self, attempt: _Attempt, status: WorkloadStatus) -> bool:
        """Fail an attempt whose container has been stuck (`STUCK`) for longer than ``stuck_after_s``."""
        if status.reason not in STUCK or status.state in ("succeeded", "failed"):
            attempt.stuck_since = None
            return False
        now = time.monotonic()
        if attempt.stuck_since is None:
            attempt.stuck_since = now
        if now - attempt.stuck_since < self._opts.stuck_after_s:
            return False
        self._event(attempt.task, WARNING, "GaveUp", f"job {attempt.job}: {status.reason} for more than "
                    f"{self._opts.stuck_after_s:g}s; deleting it")
        attempt.verdict = replace(status, state="failed")  # before the delete, which the watch may report first
        with contextlib.suppress(CapstanError):
            self._api.delete(JOB, attempt.job, propagation="Background")
        self._finish(attempt, attempt.verdict, [])
        return True

    def _tick(self) -> None:
        """Re-evaluate the running attempts every second: a stuck container changes nothing the watch would see."""
        while self._watcher is not None and not self._stopping.wait(1.0):
            with self._lock:
                jobs = [a.job for a in self._attempts.values() if not a.done and a.stuck_since is not None]
            for job in jobs:
                self._refresh(job)

    def _pods_now(self, job_name: str, cached: list[dict[str, Any]]) -> list[dict[str, Any]]:
        try:
            return list(self._api.list(POD, labels={JOB_NAME_LABELS[0]: job_name}).items)
        except CapstanError:
            return cached

    def _gone(self, job_name: str) -> bool:
        try:
            self._api.get(JOB, job_name)
        except KubeNotFound:
            return True
        except CapstanError:
            return False
        return False

    def _workload(self, doc: dict[str, Any]) -> None:
        job = workload_job(doc)
        attempt = self._attempt_of(job) if job else None
        if attempt is None:
            return
        found = workload_condition(doc)
        if found is None:
            return
        reason, message, latest = found
        with attempt.lock:
            if (reason, message) == attempt.kueue_last:
                return
            attempt.kueue_last = (reason, message)
        kind = WARNING if reason in KUEUE_WARNINGS and latest.get("reason") not in ("Succeeded", None) else NORMAL
        kueue = kueue_status(doc)  # what `capstan why` and the step's timeline read back
        self._event(attempt.task, kind, reason, f"workload {name_of(doc)}: {message}".strip(),
                    data={"job": job, "workload": name_of(doc), "condition": dict(latest),
                          "kueue": kueue.to_dict() if kueue is not None else None})

    # -- finishing --------------------------------------------------------------------------------------------
    def _finish(self, attempt: _Attempt, status: WorkloadStatus | None, pods: Sequence[Mapping[str, Any]]) -> None:
        with self._lock:
            if attempt.done:
                return
            attempt.done = True
        task = attempt.task
        status = status or attempt.verdict
        log_path = self._store_log(attempt, pods)
        outcome = self._outcome(attempt, status, log_path)
        if not self._opts.keep_finished and status is not None:
            with contextlib.suppress(CapstanError):
                self._api.delete(JOB, attempt.job, propagation="Background")
            self._event(task, NORMAL, "JobCollected", f"job {attempt.job} deleted (its log is kept)")
        with self._lock:
            self._attempts.pop(task.key, None)
        attempt.effects.append(lambda: self._deliver(outcome))

    def _outcome(self, attempt: _Attempt, status: WorkloadStatus | None, log_path: str | None) -> Outcome:
        task, now = attempt.task, now_ms()
        if attempt.stop_reason is not None and (status is None or status.state != "succeeded"):
            return failed(task, attempt.stop_reason, f"step {task.step_id!r} stopped ({attempt.stop_reason}): "
                          f"job {attempt.job} deleted", started_at=attempt.started_at, finished_at=now,
                          retryable=attempt.stop_reason != CANCELLED, log_path=log_path)
        if status is None:
            return failed(task, WORKER_LOST, f"job {attempt.job} was deleted before it finished",
                          started_at=attempt.started_at, finished_at=now, log_path=log_path)
        if status.state == "succeeded":
            recorded = self._read_result(task)
            if recorded is None:
                return failed(task, "ResultMissing", f"job {attempt.job} succeeded but its worker recorded no "
                              "outcome in the artifact store", started_at=attempt.started_at, finished_at=now,
                              retryable=False, log_path=log_path)
            return replace(recorded, log_path=log_path or recorded.log_path)
        if status.reason in _WORKER_REASONS:
            # The step failed inside the worker, which recorded why (an exception, a command's exit code).
            recorded = self._read_result(task)
            if recorded is not None and not recorded.ok:
                return replace(recorded, log_path=log_path or recorded.log_path)
        # As locally, a failure may be retried (the step's retries decide), except what no retry can fix: the
        # worker's usage errors (exit code 2, failed by the podFailurePolicy) and a stuck container given up on.
        hopeless = status.reason == Reason.POD_FAILURE_POLICY or status.exit_code == USAGE_EXIT_CODE or \
            status.reason in STUCK
        return failed(task, status.reason, status.message, started_at=attempt.started_at, finished_at=now,
                      retryable=status.retryable or not hopeless, exit_code=status.exit_code, log_path=log_path)

    def _stored_result(self, task: Task) -> Outcome | None:
        from capstan.pipelines.remote_step import read_outcome

        try:
            return read_outcome(self._store, task.run_id, task.step_id, task.attempt)
        except (CapstanError, OSError):
            return None

    # -- logs -------------------------------------------------------------------------------------------------
    def _follow_logs(self, attempt: _Attempt, pods: Sequence[Mapping[str, Any]]) -> None:
        for pod in pods:
            name = name_of(pod)
            phase = (pod.get("status") or {}).get("phase")
            if name in attempt.log_threads or phase not in ("Running", "Succeeded", "Failed"):
                continue
            buf = attempt.log_parts.setdefault(name, bytearray())
            thread = threading.Thread(target=self._read_log, args=(attempt, name, buf),
                                      name=f"capstan-log-{name}", daemon=True)
            attempt.log_threads[name] = thread
            thread.start()

    def _read_log(self, attempt: _Attempt, pod: str, buf: bytearray) -> None:
        from capstan.k8s.render_pipelines import CONTAINER

        try:
            with open(attempt.task.live_log, "ab") as live:
                for chunk in self._api.logs(pod, container=CONTAINER, follow=True):
                    buf.extend(chunk)
                    live.write(chunk)
                    live.flush()
        except (CapstanError, OSError):
            return  # what was streamed is kept; the pod may already be gone

    def _store_log(self, attempt: _Attempt, pods: Sequence[Mapping[str, Any]]) -> str | None:
        from capstan.pipelines.serialize import output_prefix

        deadline = time.monotonic() + self._opts.log_wait_s
        for thread in list(attempt.log_threads.values()):
            thread.join(max(0.0, deadline - time.monotonic()))
        self._follow_logs(attempt, pods)  # pods that ended before we saw them running
        for thread in list(attempt.log_threads.values()):
            thread.join(max(0.0, deadline - time.monotonic()))
        parts = [(name, bytes(buf)) for name, buf in attempt.log_parts.items() if buf]
        if not parts:
            return None
        data = parts[0][1] if len(parts) == 1 else b"".join(
            f"=== pod {name} ===\n".encode() + text for name, text in parts)
        task = attempt.task
        try:
            entry = self._store.put_bytes(f"{output_prefix(task.run_id, task.step_id, task.attempt)}/log.txt", data)
        except (CapstanError, OSError) as exc:
            self._event(task, WARNING, "LogNotStored", f"job {attempt.job}: {exc}")
            return None
        with contextlib.suppress(OSError):
            import os

            os.unlink(task.live_log)
        return str(entry.path)

    # -- events -----------------------------------------------------------------------------------------------
    def _event(self, task: Task, kind: str, reason: str, message: str,
               data: Mapping[str, object] | None = None) -> None:
        from capstan.pipelines.storage import STEP_KIND

        with contextlib.suppress(Exception):  # an event that cannot be written must not stop the attempt
            self._events.append(STEP_KIND, f"{task.run_id}/{task.step_id}", reason, message, type=kind,
                                project=task.project, data=data)


def _resources(step: Step | None) -> Resources:
    """A step's requests as a pod's: every step is its own pod, so a thread step gets a process's one CPU."""
    from capstan.k8s.pods import Resources
    from capstan.resources.quantity import MILLI

    if step is None:
        return Resources(cpu=MILLI)
    res = step.options.resources
    return Resources(cpu=round(res.cpu_for("process") * MILLI), memory=res.memory, gpu=round(res.gpu * MILLI))


def _param_text(value: Any) -> str:
    """A run parameter as ``capstan worker run-step --param`` takes it (converted again by its annotation)."""
    if isinstance(value, str):
        return value
    import orjson

    return orjson.dumps(value).decode()


def _job_of_pod(pod: Mapping[str, Any]) -> str:
    labels = (pod.get("metadata") or {}).get("labels") or {}
    for key in JOB_NAME_LABELS:
        if labels.get(key):
            return str(labels[key])
    owners = (pod.get("metadata") or {}).get("ownerReferences") or []
    return next((str(o.get("name")) for o in owners if o.get("kind") == "Job"), "")


def kube_executor_factory(*, settings: Settings, store: Any, events: EventLog, run_info: RunInfo,
                          api: KubeApi | None = None, options: KubeOptions | None = None) -> ExecutorFactory:
    """What the composition root hands the pipeline runner for ``backend = kubernetes``: each run gets one
    `KubernetesExecutor` serving both isolations (every step is a pod). The cluster is ``api``, else the
    kubeconfig context and namespace of ``settings`` (connected once, on the first run). Kueue mode is
    ``settings.kube_admission`` (``CAPSTAN_KUBE_ADMISSION``), never detected here: with ``capstan`` the Jobs carry
    no queue label and Capstan unsuspends them; with ``kueue`` Kueue alone admits them (decision 0726)."""
    from capstan.k8s.client import connect
    from capstan.k8s.render_pipelines import JobOptions

    opts = options or KubeOptions(jobs=JobOptions(project=settings.project),
                                  kueue=settings.kube_admission == "kueue")
    shared: list[KubeApi] = [api] if api is not None else []

    def build(deliver: Deliver, on_started: Started) -> dict[str, Executor]:
        if not shared:
            shared.append(connect(context=settings.kube_context, namespace=settings.kube_namespace))
        executor = KubernetesExecutor(deliver, on_started, api=shared[0], events=events, store=store,
                                      run_info=run_info, options=opts)
        return {"process": executor, "thread": executor}

    return build
