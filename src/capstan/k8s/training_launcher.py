"""Training jobs on a cluster: the `capstan.training.launcher.GangLauncher` adapter of the ``kubernetes`` backend.

The runner (`capstan.training.runner`) keeps its admission, restart, back-off, preemption and event logic; only the
gang changes. Each attempt is the ``native`` rendering of `capstan.k8s.render_training.render_training`: a headless
Service for the rendezvous and an indexed ``batch/v1`` Job whose pod ``i`` is worker ``i`` (``GROUP_RANK``), named
``<job id>-a<attempt>`` so that a whole-gang restart is a new Job. The Job gets ``backoffLimit: 0``: the first pod
that fails ends the attempt and the runner decides what comes next, as it does for local processes. Each pod's
environment carries the job's own variables (job id, tracking run, attempt, restart count, project).

`KubeGang` follows the Job and its pods with a `capstan.k8s.kube_watch.Watcher` and maps them with
`capstan.k8s.reasons`: the first pod to fail decides the attempt (``OOMKilled`` stays ``OOMKilled``; a lost node,
an eviction or a node shutdown is ``NodeLost`` and a scheduler preemption ``Preempted``, neither counted as a
restart; anything else ``WorkerFailed``), with that pod's first rank and its container's exit code. A container
stuck in ``ImagePullBackOff``, ``CrashLoopBackOff``... for ``stuck_after_s`` fails the attempt; an
``Unschedulable`` pod waits. Every change of the Job's state or reason is an event of the job (``capstan events
job/<id>``). Each pod's log is streamed into the rank log file the local launcher would write
(``$CAPSTAN_HOME/jobs/<id>/attempt-<n>/worker-<g>/rank-<first rank>.out``), so ``capstan logs JOB --worker N``
(and ``--follow``) work the same and outlive the pods. Stopping the gang deletes the Job with Foreground
propagation (and its Service); a finished attempt's Job is deleted once its logs are in.

Before anything is created (`KubeGangLauncher.check` at submit, and `launch`), the gang is checked against the
namespace's ResourceQuotas and the nodes (`capstan.k8s.preflight.gang_refusals`: one pod, and all the workers' pods
at once). In Kueue mode (``KubeTrainingOptions.kueue``, ``CAPSTAN_KUBE_ADMISSION=kueue``, decision 0726) the Job is
created suspended with Kueue's queue label and Kueue unsuspends it: a suspended Job is pending (`KubeGang.held`
gives Kueue's reason, read by `capstan.k8s.kueue_status`, and the runner keeps the job ``Pending`` meanwhile,
decision 0742), and the Workload's conditions (``KueuePending`` with Kueue's reason, ``KueueAdmitted``...) become
events of the job with the mapped status in their ``kueue`` field. A Job Kueue suspends again after it ran (its
Workload evicted: preempted, ``PodsReadyTimeout``...) ends the attempt as ``Preempted``, not ``WorkerFailed``: the
pods the Job controller then ends are not the workers' failures (decision 0743). A job with ``min_workers`` whose
whole gang the runner handed over (``GangStart.min_workers``) is rendered for Kueue's partial admission in Kueue
mode (the renderer's ``job-min-parallelism`` annotations and ``torchrun --nnodes=MIN:MAX``); once Kueue unsuspends
the Job with a lower ``parallelism``, `KubeGang.admitted_workers` says how many pods run, the gang waits for those
only, and the runner records that count (decision 0744). In Capstan mode the queue's lease decided the count
before the Job was created: ``parallelism`` = ``completions`` = the workers granted, ``WORLD_SIZE`` their product.

The code reaches the pods one of two ways (``KubeTrainingOptions.ship_code``, docs/kubernetes-training.md,
decision 0725). Shipped: each attempt uploads the spec's ``working_dir`` as a content-addressed code package
(`capstan.pipelines.code_package`; the same files are the same blob, so a restart re-uploads nothing) and the
container runs ``capstan worker run-code --code sha256:... -- <command>``, which unpacks it into ``/tmp`` and
execs the command there, the entry made relative to the package. Not shipped: the entry runs from the
image's working directory (the image must contain it). `kube_gang_launcher` ships when the artifact store is remote
(``s3://``, ``gs://``...), the only kind pods can download from, and not for a local folder. Pods reach the stores
(rank 0's tracking run, `capstan.checkpoint`) through the Secrets of ``render.env_from_secrets`` (``envFrom``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from capstan.artifacts.paths import is_local_uri
from capstan.errors import CapstanError, InvalidParameterValue
from capstan.events.records import NORMAL, WARNING
from capstan.k8s.client import JOB, POD, WORKLOAD, KubeApi, KubeNotFound, KubeRejected, Ref
from capstan.k8s.kube_watch import Watcher, name_of
from capstan.k8s.kueue_admission import KUEUE_WARNINGS, workload_condition, workload_job
from capstan.k8s.kueue_status import KueueStatus, admitted_count, kueue_status
from capstan.k8s.labels import PRIORITY_CLASS_LABEL, QUEUE_NAME_LABEL
from capstan.k8s.preflight import gang_refusals, snapshot_from
from capstan.k8s.reasons import STUCK, Reason, WorkloadStatus, job_status, pod_status
from capstan.k8s.render_datasets import check_mounts, parse_mount
from capstan.k8s.render_studies import trial_labels
from capstan.k8s.render_training import TrainingRenderOptions, render_training, rendezvous_host
from capstan.training.env import WorkerPlace, capstan_env
from capstan.training.launcher import GangExit, GangHold, GangStart, attempt_dir, rank_log
from capstan.training.spec import TrainingJobSpec

if TYPE_CHECKING:
    from capstan.artifacts.store import ArtifactStore
    from capstan.events.ports import EventLog
    from capstan.settings import Settings
    from capstan.training.ports import AttemptReason

__all__ = ["JOB_LABEL", "SERVICE", "KubeGang", "KubeGangLauncher", "KubeTrainingOptions", "attempt_job_name",
           "kube_gang_launcher", "kueue_min_workers"]

SERVICE: Final = Ref("v1", "Service", "services")
JOB_LABEL: Final = "capstan.dev/job"
"""The label `render_training` puts on the Job, its pods and its Service (the attempt's Job name)."""
JOB_ID_ANNOTATION: Final = "capstan.dev/job-id"
ATTEMPT_ANNOTATION: Final = "capstan.dev/attempt"
MANAGED: Final = {"app.kubernetes.io/managed-by": "capstan"}
INDEX_KEY: Final = "batch.kubernetes.io/job-completion-index"
_ATTEMPT_REASONS: Final[dict[str, AttemptReason]] = {Reason.NODE_LOST: "NodeLost", Reason.EVICTED: "NodeLost",
                                               Reason.PREEMPTED: "Preempted", Reason.OOM_KILLED: "OOMKilled"}
_LOG_PHASES: Final = frozenset({"Running", "Succeeded", "Failed"})


@dataclass(frozen=True, slots=True)
class KubeTrainingOptions:
    """How training jobs meet the cluster. ``image``: the image of jobs whose spec names none; ``render``: the
    rendering options (GPU flavors, ``/dev/shm``, rendezvous port, ``working_dir`` in the image...; the format is
    always ``native``); ``watch_timeout_s`` each watch request's length; ``stuck_after_s`` how long a container may
    stay in a waiting state it does not leave by itself before the attempt fails; ``log_wait_s`` how long an ended
    attempt waits for its log streams; ``delete_wait_s`` how long `KubeGang.stop` waits, beyond the grace period,
    for the Job and its pods to be gone; ``ship_code`` whether each attempt uploads the job's ``working_dir`` as a
    code package that the pods run from (True) or the image holds the code (False); None lets `kube_gang_launcher`
    decide from the artifact store (shipped when it is remote), and counts as False for a launcher built directly.
    ``kueue``: Kueue admits the Jobs (``CAPSTAN_KUBE_ADMISSION=kueue``): each is created suspended with Kueue's
    queue label (the spec's ``queue``, else ``queue``) and Kueue unsuspends it; otherwise the Job carries no Kueue
    label (Capstan's queue admitted the gang before `KubeGangLauncher.launch`). ``preflight``: whether `check` and
    `launch` first refuse a gang that the namespace's ResourceQuotas or the nodes can never hold
    (`capstan.k8s.preflight.gang_refusals`); None lets `kube_gang_launcher` decide (it does), and counts as False
    for a launcher built directly.
    """

    image: str | None = None
    render: TrainingRenderOptions = field(default_factory=TrainingRenderOptions)
    watch_timeout_s: int = 30
    stuck_after_s: float = 300.0
    log_wait_s: float = 5.0
    delete_wait_s: float = 30.0
    ship_code: bool | None = None
    kueue: bool = False
    queue: str = "default"
    preflight: bool | None = None


def attempt_job_name(job_id: str, attempt: int, workers: int) -> str:
    """The Job (and Service) of one attempt: ``<job id>-a<attempt>``, cut with a short hash where pod ``i``'s
    hostname ``<name>-<i>`` would exceed a DNS label, and led by ``j-`` where it would start with a digit (a
    Service name must start with a letter)."""
    name = f"{job_id}-a{attempt}".lower()
    if name[:1].isdigit():
        name = f"j-{name}"
    room = 63 - 1 - len(str(max(workers - 1, 0)))
    if len(name) <= room:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[:room - 9].rstrip('-')}-{digest}"


class KubeGangLauncher:
    """The `capstan.training.launcher.GangLauncher` of a cluster (see the module docstring). ``api`` gives the
    cluster's `KubeApi` (called on first use); ``home`` is where rank logs are kept; ``events`` receives what the
    cluster reports, as events of the job; ``artifacts`` holds the code packages when ``options.ship_code``."""

    def __init__(self, api: Callable[[], KubeApi], *, home: Path, events: EventLog,
                 options: KubeTrainingOptions | None = None, artifacts: ArtifactStore | None = None) -> None:
        self._api = api
        self.home = home
        self.events = events
        self.options = options or KubeTrainingOptions()
        self.ship_code = bool(self.options.ship_code)
        if self.ship_code and artifacts is None:
            raise ValueError("shipping code needs the artifact store the pods download it from")  # a wiring mistake
        self._artifacts = artifacts

    def check(self, spec: TrainingJobSpec) -> None:
        """`InvalidParameterValue` naming the field when ``spec`` cannot be rendered: no image, a GPU fraction with
        no shareable flavor, a queue or priority class the queue configuration lacks, a bad Secret name; when the
        code is shipped, a script the package of ``working_dir`` would not hold. With ``options.preflight``, also
        when the cluster can never hold the gang (see `preflight`)."""
        docs = self.render(spec, job_id=spec.name, attempt=1)
        if self.options.preflight:  # with min_workers, the fewest workers it may run with must fit
            self.preflight(docs, spec.min_workers or spec.workers)

    def preflight(self, docs: Sequence[Mapping[str, Any]], workers: int) -> None:
        """`InvalidParameterValue` in one line naming the quota or the nodes when the namespace's ResourceQuotas
        or the cluster's nodes can never hold the ``workers`` pods of the attempt's Job in ``docs`` (one pod, or
        all of them at once); in Kueue mode, also when Kueue's Workload API does not answer."""
        from capstan.k8s.client import NODE, RESOURCE_QUOTA, WORKLOAD

        api = self._api()
        if self.options.kueue:
            try:
                api.list(WORKLOAD)
            except (KubeNotFound, KubeRejected):
                raise InvalidParameterValue(
                    f"CAPSTAN_KUBE_ADMISSION: kueue, but Kueue's Workload API ({WORKLOAD.api_version}) does not "
                    f"answer in namespace {api.namespace}: install Kueue or use CAPSTAN_KUBE_ADMISSION=capstan"
                ) from None
        quotas = api.list(RESOURCE_QUOTA).items
        try:
            nodes: Sequence[Mapping[str, Any]] = api.list(NODE).items
        except KubeRejected:  # a namespaced service account may not list nodes: skip that check
            nodes = ()
        snap = snapshot_from(api.namespace, quotas, nodes)
        job = next(d for d in docs if d.get("kind") == "Job")
        reasons = gang_refusals(job, snap, workers)
        if reasons:
            raise InvalidParameterValue(f"job.workers: the gang of {workers} worker(s) can never run on this cluster: "
                                        + "; ".join(reasons))

    def render(self, spec: TrainingJobSpec, *, job_id: str, attempt: int,
               code: str | None = None) -> list[dict[str, Any]]:
        """The Service and the indexed Job of one attempt, before the job's own variables are added; with
        ``code`` (a package reference) the container runs the command from that package."""
        image = spec.image or self.options.image
        if not image:
            holds = "holds Capstan and the job's dependencies" if self.ship_code else "contains its code"
            raise InvalidParameterValue(f"job.image: the kubernetes backend runs the job in a container image that "
                                        f"{holds}; name one (capstan train --image, or the spec's image)")
        if self.ship_code:
            spec = shipped_entry(spec)
        name = attempt_job_name(job_id, attempt, spec.workers)
        opts = dataclasses.replace(self.options.render, format="native", image=image)
        docs = render_training(dataclasses.replace(spec, name=name, image=image, working_dir=None), opts)
        job = next(d for d in docs if d["kind"] == "Job")
        job["spec"]["backoffLimit"] = 0  # the runner restarts the whole gang; one failed pod ends the attempt
        labels = job["metadata"].setdefault("labels", {})
        if self.options.kueue:
            labels[QUEUE_NAME_LABEL] = spec.queue or self.options.queue
            job["spec"]["suspend"] = True  # Kueue unsuspends it once admitted
        else:  # Capstan's queue admitted the gang: Kueue, if installed, must not hold it a second time
            labels.pop(QUEUE_NAME_LABEL, None)
            labels.pop(PRIORITY_CLASS_LABEL, None)
        if code is not None:
            container = job["spec"]["template"]["spec"]["containers"][0]
            container["command"] = [*run_code_command(code), *container["command"]]
        job["metadata"].setdefault("annotations", {}).update({JOB_ID_ANNOTATION: job_id,
                                                               ATTEMPT_ANNOTATION: str(attempt)})
        extra = trial_labels(dict(spec.env))  # a study's trial: its study and number (decision 0745)
        for doc in (*docs, job["spec"]["template"]):
            doc.setdefault("metadata", {}).setdefault("labels", {}).update(extra)
        return docs

    def launch(self, start: GangStart) -> KubeGang:
        """Create the attempt's Service and Job and start following them."""
        api = self._api()
        least = kueue_min_workers(self.options, start)
        spec = start.spec if least is None else dataclasses.replace(start.spec, min_workers=least)
        code = self._upload(spec)
        docs = self.render(spec, job_id=start.job_id, attempt=start.attempt, code=code)
        if self.options.preflight:
            self.preflight(docs, least or spec.workers)  # the quota may have shrunk since the job was submitted
        job = next(d for d in docs if d["kind"] == "Job")
        container = job["spec"]["template"]["spec"]["containers"][0]
        _set_env(container, _job_variables(start, elastic=least is not None))
        name = name_of(job)
        created: list[Ref] = []
        try:
            for doc in docs:
                api.create(doc)
                created.append(JOB if doc["kind"] == "Job" else SERVICE)
        except BaseException:
            for ref in reversed(created):
                with contextlib.suppress(CapstanError):
                    api.delete(ref, name, propagation="Foreground")
            raise
        gang = KubeGang(api, start, name=name, container=str(container["name"]),
                        folder=attempt_dir(self.home, start.job_id, start.attempt),
                        master_port=self.options.render.master_port, events=self.events, options=self.options)
        shipped = f"; code package {code}" if code is not None else ""
        kueue = f"; suspended until Kueue admits it (queue {job['metadata']['labels'][QUEUE_NAME_LABEL]})" \
            if self.options.kueue else ""
        fewer = f" (Kueue may admit as few as {least}: min_workers)" if least is not None else ""
        gang.event(NORMAL, "JobCreated", f"job {name} created in namespace {api.namespace}: {spec.workers} pod(s)"
                   f"{fewer}, rendezvous on {gang.rendezvous}{shipped}{kueue}")
        gang.start()
        return gang

    def _upload(self, spec: TrainingJobSpec) -> str | None:
        """The reference of the package of ``working_dir`` when the code is shipped (uploaded unless stored)."""
        if not self.ship_code:
            return None
        from capstan.pipelines.code_package import upload_package

        assert self._artifacts is not None  # checked when built
        return upload_package(self._artifacts, _code_root(spec)).ref

    def stop_stale(self, job_id: str, attempt: int) -> int:
        """Delete (Foreground) the Job and Service an earlier runner left for ``attempt``; how many pods it had."""
        api = self._api()
        stopped = 0
        for job in api.list(JOB, labels=MANAGED).items:
            notes = (job.get("metadata") or {}).get("annotations") or {}
            if notes.get(JOB_ID_ANNOTATION) != job_id or notes.get(ATTEMPT_ANNOTATION) != str(attempt):
                continue
            name = name_of(job)
            stopped += len(api.list(POD, labels={JOB_LABEL: name}).items)
            api.delete(JOB, name, propagation="Foreground")
            api.delete(SERVICE, name, propagation="Foreground")
        return stopped


def kueue_min_workers(options: KubeTrainingOptions, start: GangStart) -> int | None:
    """The ``min_workers`` an attempt's Job is rendered with for Kueue's partial admission: ``start.min_workers`` in
    Kueue mode when it is below the workers; None otherwise (Capstan mode, where the queue's lease decided the
    workers already, or no fewer workers allowed). Pure."""
    least = start.min_workers
    if not options.kueue or least is None or least >= start.spec.workers:
        return None
    return least


def run_code_command(code: str) -> tuple[str, ...]:
    """What a pod's command is prefixed with to run it from the code package ``code``."""
    return ("capstan", "worker", "run-code", "--code", code, "--")


def _code_root(spec: TrainingJobSpec) -> Path:
    if not spec.working_dir or not Path(spec.working_dir).is_absolute():
        raise InvalidParameterValue("job.working_dir: shipping the code needs the job's folder as an absolute path, "
                                    f"got {spec.working_dir!r}")
    return Path(spec.working_dir)


def shipped_entry(spec: TrainingJobSpec) -> TrainingJobSpec:
    """``spec`` with its script made relative to ``working_dir``, the root of its code package;
    `InvalidParameterValue` when the package would not hold the script (outside the folder, hidden, a link...)."""
    from capstan.pipelines.code_package import package_files

    root = _code_root(spec)
    if spec.entry_kind == "module":
        return spec
    script = Path(os.path.normpath(root / spec.entry))
    if script not in package_files(root):
        raise InvalidParameterValue(f"job.entry: script {spec.entry!r} is not among the files the code package of "
                                    f"{str(root)!r} holds (regular files below it, not hidden, not links)")
    return dataclasses.replace(spec, entry=script.relative_to(root).as_posix())


def _job_variables(start: GangStart, *, elastic: bool = False) -> dict[str, str]:
    """What every pod of the attempt is told beyond the rendering: the job, its tracking run, the attempt and the
    restart count (torchrun's ``TORCHELASTIC_RESTART_COUNT``), and after a partial admission by Capstan's queue
    the workers the job asked for (``CAPSTAN_JOB_WORKERS_REQUESTED``). Not the lease's devices or placement
    variables: on a cluster the device plugin gives each pod its GPUs. ``elastic``: the pods run torchrun's
    elastic rendezvous, which sets its agent-store variable itself."""
    from capstan.training.runner import WORKERS_REQUESTED_VARIABLE

    env = capstan_env(start.spec, job_id=start.job_id, run_id=start.run_id, attempt=start.attempt)
    env.update({"CAPSTAN_PROJECT": start.project, "TORCHELASTIC_RESTART_COUNT": str(start.restart_count),
                "TORCHELASTIC_MAX_RESTARTS": str(start.spec.max_restarts)})
    requested = start.lease_env.get(WORKERS_REQUESTED_VARIABLE)
    if requested is not None:
        env[WORKERS_REQUESTED_VARIABLE] = requested
    if start.spec.nproc_per_worker == 1 and not elastic:  # torchrun sets it for the processes it starts
        env["TORCHELASTIC_USE_AGENT_STORE"] = "False"
    return env


def _set_env(container: dict[str, Any], values: Mapping[str, str]) -> None:
    """Set plain variables in a container, replacing those of the same name."""
    env = [e for e in container.get("env", []) if e.get("name") not in values]
    env += [{"name": k, "value": v} for k, v in sorted(values.items())]
    container["env"] = env


@dataclass(slots=True)
class _PodLog:
    thread: threading.Thread
    path: Path


class KubeGang:
    """One attempt on the cluster (a `capstan.training.launcher.RunningGang`): polled by one runner thread; the
    watch and log threads only fill caches and files."""

    def __init__(self, api: KubeApi, start: GangStart, *, name: str, container: str, folder: Path,
                 master_port: int, events: EventLog, options: KubeTrainingOptions) -> None:
        self.name = name
        self.folder = folder
        self.master_port = master_port
        self._api = api
        self._start = start
        self._container = container
        self._events = events
        self._opts = options
        self._watcher = Watcher(api, (JOB, POD), namespace=api.namespace, labels={JOB_LABEL: name},
                                on_change=self._changed, timeout_s=options.watch_timeout_s)
        # Kueue's Workloads do not carry the Job's labels: follow the namespace's, matched by their owner Job.
        self._workloads = Watcher(api, (WORKLOAD,), namespace=api.namespace, labels={}, on_change=self._changed,
                                  timeout_s=options.watch_timeout_s) if options.kueue else None
        self._kueue_last: tuple[str, str] = ("", "")
        self._ran = False  # Kueue mode: the Job was seen unsuspended (admitted) at least once
        self._least = kueue_min_workers(options, start)  # Kueue may admit fewer pods (min_workers)
        self._dirty = threading.Event()
        self._exit: GangExit | None = None
        self._seen_job = False
        self._last: tuple[str, str, str] = ("", "", "")
        self._first_failed: dict[str, int] = {}
        self._stuck_since: dict[str, float] = {}
        self._logs: dict[str, _PodLog] = {}
        self._ended = False

    # -- the port -------------------------------------------------------------------------------------------------
    @property
    def rendezvous(self) -> str:
        """Pod 0's stable DNS name and the rendezvous port."""
        return f"{rendezvous_host(dataclasses.replace(self._start.spec, name=self.name))}:{self.master_port}"

    @property
    def pids(self) -> dict[int, int]:
        """None on this machine."""
        return {}

    def start(self) -> None:
        """Start following the Job and its pods."""
        self._watcher.start(wait_s=self._opts.watch_timeout_s)
        if self._workloads is not None:
            self._workloads.start(wait_s=self._opts.watch_timeout_s)
        self._dirty.set()

    def poll(self) -> GangExit | None:
        """The attempt's outcome once decided (see the module docstring), else None."""
        if self._exit is not None:
            return self._exit
        stuck = bool(self._stuck_since)
        if not self._dirty.is_set() and not stuck:
            return None
        self._dirty.clear()
        job = self._watcher.get(JOB, self.name)
        pods = [p for p in self._watcher.objects(POD) if _labels(p).get(JOB_LABEL) == self.name]
        self._follow_logs(pods)
        if job is None:
            if self._seen_job:
                self._exit = GangExit("NodeLost", message=f"job {self.name} was deleted before it finished")
            return self._exit
        self._seen_job = True
        status = job_status(job, pods)
        self._report(status)
        self._report_workload()
        self._exit = (self._evicted(job) or self._failed(pods) or self._stuck(pods)
                      or self._decided(status, pods, self._workers(job)))
        return self._exit

    def held(self) -> GangHold | None:
        """In Kueue mode, while the Job is suspended (Kueue has not admitted it yet): Kueue's reason and message
        (`capstan.k8s.kueue_status`: ``KueuePending`` with the flavor, resource and how much more is needed), or
        ``Suspended`` before Kueue has said anything. None once the Job runs, and in Capstan mode."""
        if not self._opts.kueue or self._exit is not None:
            return None
        job = self._watcher.get(JOB, self.name)
        if job is None or not _suspended(job):
            return None
        kueue = self._kueue_now()
        if kueue is not None and kueue.holds_it:
            return GangHold(kueue.reason, kueue.summary)
        queue = _labels(job).get(QUEUE_NAME_LABEL, "?")
        return GangHold(Reason.SUSPENDED, f"job {self.name} is suspended until Kueue admits it (LocalQueue {queue})")

    def admitted_workers(self) -> int | None:
        """In Kueue mode, for a Job rendered with ``min_workers``, once Kueue has unsuspended it: how many pods it
        runs, the ``parallelism`` Kueue set when it admitted it (else the Workload's admitted count,
        `capstan.k8s.kueue_status.admitted_count`). None before, and for every other Job."""
        if self._least is None:
            return None
        job = self._watcher.get(JOB, self.name)
        if job is None or _suspended(job):
            return None
        return self._workers(job)

    def stop(self, grace_s: float) -> None:
        """Delete the Job (Foreground: its pods first, each with its grace period) and the Service; wait until
        they are gone, then keep the logs. The logs of pods that have already ended are read in full first: a
        deleted pod's log can no longer be read."""
        self._drain_ended()
        with contextlib.suppress(CapstanError):
            self._api.delete(JOB, self.name, propagation="Foreground")
        with contextlib.suppress(CapstanError):
            self._api.delete(SERVICE, self.name, propagation="Foreground")
        deadline = time.monotonic() + grace_s + self._opts.delete_wait_s
        while time.monotonic() < deadline and not self._gone():
            time.sleep(0.1)
        self.event(NORMAL, "JobDeleted", f"job {self.name} deleted (Foreground propagation); its logs are kept")
        self._end()

    def reap(self) -> None:
        """Keep the logs of a decided attempt, then delete its Job and Service."""
        self._end()
        for ref in (JOB, SERVICE):
            with contextlib.suppress(CapstanError):
                self._api.delete(ref, self.name, propagation="Background")
        self.event(NORMAL, "JobCollected", f"job {self.name} deleted; its logs are kept")

    def peaks(self) -> tuple[int | None, ...]:
        """Unknown: the kubelet does not report a container's peak memory."""
        return ()

    # -- deciding -------------------------------------------------------------------------------------------------
    def _evicted(self, job: Mapping[str, Any]) -> GangExit | None:
        """In Kueue mode, a Job Kueue suspended again after admitting it (its Workload evicted: preempted, pods not
        ready in time...): ``Preempted``, which uses no restart; the runner requeues the job and its next attempt
        waits for Kueue again. Checked before the pods: the Job controller deletes the pods of a suspended Job,
        and their ends are not the workers' failures."""
        if not self._opts.kueue:
            return None
        if not _suspended(job):
            self._ran = True
            return None
        if not self._ran:
            return None
        return self._preempted()

    def _preempted(self) -> GangExit:
        kueue = self._kueue_now()
        if kueue is not None and kueue.state == "evicted":
            return GangExit("Preempted", message=kueue.summary)
        return GangExit("Preempted", message=f"Kueue suspended job {self.name} again after admitting it (its "
                                             "Workload was evicted)")

    def _kueue_now(self) -> KueueStatus | None:
        """What the attempt's Workload says now (None without one, or outside Kueue mode)."""
        if self._workloads is None:
            return None
        for doc in self._workloads.objects(WORKLOAD):
            if workload_job(doc) == self.name:
                return kueue_status(doc)
        return None

    def _suspended_now(self) -> bool:
        """Whether the Job is suspended, read from the API server (the Pod watch may be ahead of the Job watch)."""
        try:
            return _suspended(self._api.get(JOB, self.name))
        except CapstanError:
            return False

    def _failed(self, pods: Sequence[Mapping[str, Any]]) -> GangExit | None:
        """The first pod that failed (its container's end time, then the order they were seen), if any."""
        found: list[tuple[str, int, str, WorkloadStatus, Mapping[str, Any]]] = []
        for pod in pods:
            status = pod_status(pod)
            if status.state != "failed":
                continue
            name = name_of(pod)
            seen = self._first_failed.setdefault(name, len(self._first_failed))
            found.append((_finished_at(pod) or "~", seen, name, status, pod))
        if not found:
            return None
        if self._opts.kueue and self._ran and self._suspended_now():  # pods ended by Kueue's suspension
            return self._preempted()
        _at, _seen, _name, status, pod = min(found, key=lambda f: (f[0], f[1]))
        rank = self._rank_of(pod)
        reason = _ATTEMPT_REASONS.get(status.reason, "WorkerFailed")
        return GangExit(reason, rank, status.exit_code, f"rank {_rank_text(rank)}: {status.message}")

    def _stuck(self, pods: Sequence[Mapping[str, Any]]) -> GangExit | None:
        """A pod whose container has waited in a `STUCK` state for longer than ``stuck_after_s``."""
        now = time.monotonic()
        current: dict[str, float] = {}
        for pod in pods:
            status, name = pod_status(pod), name_of(pod)
            if status.reason not in STUCK or status.state == "failed":
                continue
            since = current[name] = self._stuck_since.get(name, now)
            if now - since >= self._opts.stuck_after_s:
                rank = self._rank_of(pod)
                self.event(WARNING, "GaveUp", f"job {self.name}: {status.reason} for more than "
                           f"{self._opts.stuck_after_s:g}s; ending the attempt", {"pod": name})
                return GangExit("WorkerFailed", rank, status.exit_code, f"rank {_rank_text(rank)}: {status.message}")
        self._stuck_since = current
        return None

    def _workers(self, job: Mapping[str, Any]) -> int:
        """The pods the attempt runs: the spec's workers, or for a Job Kueue may admit partially and has admitted,
        its ``parallelism`` (Kueue lowers it, with ``completions``, when it unsuspends the Job), else the count in
        its Workload's admission."""
        workers = self._start.spec.workers
        if self._least is None or _suspended(job):
            return workers
        parallelism = (job.get("spec") or {}).get("parallelism")
        if isinstance(parallelism, int) and not isinstance(parallelism, bool) and 0 < parallelism <= workers:
            return parallelism
        counted = self._admitted_count()
        return counted if counted is not None and 0 < counted <= workers else workers

    def _admitted_count(self) -> int | None:
        if self._workloads is None:
            return None
        for doc in self._workloads.objects(WORKLOAD):
            if workload_job(doc) == self.name:
                return admitted_count(doc)
        return None

    def _decided(self, status: WorkloadStatus, pods: Sequence[Mapping[str, Any]], workers: int) -> GangExit | None:
        """Success once the Job completed (or every index of the ``workers`` it runs has a succeeded pod); a Job
        failure no pod explains."""
        done = {self._index(p) for p in pods if pod_status(p).state == "succeeded"}
        if status.state == "succeeded" or len(done - {None}) == workers:
            return GangExit("Succeeded", message=f"all {workers} pod(s) of job {self.name} succeeded")
        if status.state == "failed":
            pod = next((p for p in pods if name_of(p) == status.pod), None)
            rank = self._rank_of(pod) if pod is not None else None
            return GangExit("WorkerFailed", rank, status.exit_code, status.message)
        return None

    def _report(self, status: WorkloadStatus) -> None:
        key = (status.state, status.reason, status.pod or "")
        if key == self._last:
            return
        self._last = key
        warn = status.state == "failed" or status.reason in STUCK or status.reason == Reason.UNSCHEDULABLE
        self.event(WARNING if warn else NORMAL, status.reason, status.message, status.to_dict())

    def _report_workload(self) -> None:
        """In Kueue mode, an event of the job for each change of what the attempt's Workload says (while the Job
        is suspended: ``KueuePending`` with Kueue's reason, ``couldn't assign flavors ... insufficient quota``)."""
        if self._workloads is None:
            return
        for doc in self._workloads.objects(WORKLOAD):
            if workload_job(doc) != self.name:
                continue
            found = workload_condition(doc)
            if found is None or found[:2] == self._kueue_last:
                continue
            reason, message, condition = found
            self._kueue_last = (reason, message)
            warn = reason in KUEUE_WARNINGS and condition.get("reason") not in ("Succeeded", None)
            kueue = kueue_status(doc)
            self.event(WARNING if warn else NORMAL, reason, f"workload {name_of(doc)}: {message}".strip(),
                       {"workload": name_of(doc), "condition": dict(condition),
                        "kueue": kueue.to_dict() if kueue is not None else None})

    def _index(self, pod: Mapping[str, Any]) -> int | None:
        """The pod's completion index: its label or annotation, else from its name (``<job>-<index>-<suffix>``)."""
        meta = pod.get("metadata") or {}
        for source in (meta.get("labels") or {}, meta.get("annotations") or {}):
            value = str(source.get(INDEX_KEY, ""))
            if value.isdigit():
                return int(value)
        match = re.match(rf"^{re.escape(self.name)}-(\d+)(?:-[a-z0-9]+)?$", name_of(pod))
        return int(match.group(1)) if match else None

    def _rank_of(self, pod: Mapping[str, Any]) -> int | None:
        index = self._index(pod)
        return None if index is None else index * self._start.spec.nproc_per_worker

    # -- logs -----------------------------------------------------------------------------------------------------
    def _follow_logs(self, pods: Sequence[Mapping[str, Any]]) -> None:
        for pod in pods:
            name, index = name_of(pod), self._index(pod)
            phase = (pod.get("status") or {}).get("phase")
            if name in self._logs or index is None or phase not in _LOG_PHASES:
                continue
            nproc = self._start.spec.nproc_per_worker
            path = rank_log(self.folder, WorkerPlace(index * nproc, index, 0), "out")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
            thread = threading.Thread(target=self._read_log, args=(name, path), name=f"capstan-log-{name}",
                                      daemon=True)
            self._logs[name] = _PodLog(thread, path)
            thread.start()

    def _read_log(self, pod: str, path: Path) -> None:
        try:
            with open(path, "ab") as out:
                for chunk in self._api.logs(pod, container=self._container, follow=True):
                    out.write(chunk)
                    out.flush()
        except (CapstanError, OSError):
            return  # what was streamed is kept; the pod may be gone already

    def _drain_ended(self) -> None:
        """Wait (at most ``log_wait_s``) for the log streams of the pods that have ended, which end by themselves."""
        pods = [p for p in self._watcher.objects(POD) if _labels(p).get(JOB_LABEL) == self.name]
        self._follow_logs(pods)
        ended = [name_of(p) for p in pods if (p.get("status") or {}).get("phase") in ("Succeeded", "Failed")]
        deadline = time.monotonic() + self._opts.log_wait_s
        for name in ended:
            log = self._logs.get(name)
            if log is not None:
                log.thread.join(max(0.0, deadline - time.monotonic()))

    def _end(self) -> None:
        """Wait for the log streams (at most ``log_wait_s``) and stop watching."""
        if self._ended:
            return
        self._ended = True
        pods = [p for p in self._watcher.objects(POD) if _labels(p).get(JOB_LABEL) == self.name]
        self._follow_logs(pods)  # pods that ended before a poll saw them
        deadline = time.monotonic() + self._opts.log_wait_s
        for log in list(self._logs.values()):
            log.thread.join(max(0.0, deadline - time.monotonic()))
        self._watcher.stop()
        if self._workloads is not None:
            self._workloads.stop()

    def _gone(self) -> bool:
        try:
            self._api.get(JOB, self.name)
        except KubeNotFound:
            return True
        except CapstanError:
            return False
        return False

    # -- events ---------------------------------------------------------------------------------------------------
    def _changed(self, _ref: Ref, _kind: str, _doc: dict[str, Any]) -> None:
        self._dirty.set()

    def event(self, kind: str, reason: str, message: str, data: Mapping[str, object] | None = None) -> None:
        """Append one event of the job, with the attempt and its Job in its data (never fails the attempt)."""
        from capstan.training.runner import EVENT_KIND

        with contextlib.suppress(Exception):
            self._events.append(EVENT_KIND, self._start.job_id, reason, message, type=kind,
                                project=self._start.project,
                                data={"attempt": self._start.attempt, "job": self.name, **(data or {})})


def _labels(doc: Mapping[str, Any]) -> Mapping[str, Any]:
    return (doc.get("metadata") or {}).get("labels") or {}


def _suspended(job: Mapping[str, Any]) -> bool:
    return (job.get("spec") or {}).get("suspend") is True


def _finished_at(pod: Mapping[str, Any]) -> str:
    """When the pod's first container ended (RFC 3339 sorts as text); empty when unknown."""
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    ends = [str(((s.get("state") or {}).get("terminated") or {}).get("finishedAt") or "") for s in statuses]
    return min((e for e in ends if e), default="")


def _rank_text(rank: int | None) -> str:
    return "?" if rank is None else str(rank)


def kube_gang_launcher(*, settings: Settings, events: EventLog, api: KubeApi | None = None,
                       options: KubeTrainingOptions | None = None,
                       artifacts: ArtifactStore | None = None) -> KubeGangLauncher:
    """What the composition root hands the job runner for ``backend = kubernetes``: the cluster of ``api``, else
    of the kubeconfig context and namespace of ``settings`` (connected once, on the first attempt). Unless
    ``options`` decide, the code is shipped through ``artifacts`` when ``settings.artifacts`` is remote (pods
    cannot download from this machine's folder); the pods get ``settings.kube_env_from``'s Secrets and mount
    ``settings.kube_datasets``' claims (`InvalidParameterValue` naming ``CAPSTAN_KUBE_DATASETS`` for a bad one)."""
    from capstan.k8s.client import connect

    opts = options or KubeTrainingOptions(kueue=settings.kube_admission == "kueue")
    if opts.preflight is None:
        opts = dataclasses.replace(opts, preflight=True)
    if opts.ship_code is None:
        opts = dataclasses.replace(opts, ship_code=artifacts is not None and not is_local_uri(settings.artifacts))
    if settings.kube_env_from and not opts.render.env_from_secrets:
        opts = dataclasses.replace(opts, render=dataclasses.replace(opts.render,
                                                                    env_from_secrets=settings.kube_env_from))
    if settings.kube_datasets and not opts.render.claims:
        where = "CAPSTAN_KUBE_DATASETS"
        claims = check_mounts([parse_mount(text, where) for text in settings.kube_datasets], path=where)
        opts = dataclasses.replace(opts, render=dataclasses.replace(opts.render, claims=claims))

    shared: list[KubeApi] = [api] if api is not None else []
    lock = threading.Lock()

    def cluster() -> KubeApi:
        with lock:
            if not shared:
                shared.append(connect(context=settings.kube_context, namespace=settings.kube_namespace))
            return shared[0]

    return KubeGangLauncher(cluster, home=settings.home, events=events, options=opts, artifacts=artifacts)
