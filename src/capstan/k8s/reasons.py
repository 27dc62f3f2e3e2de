"""From Kubernetes Job and Pod status documents to Capstan states and reason codes. Pure: no I/O, no clock.

`pod_status` reads one Pod (as the API server returns it, a mapping) and `job_status` one ``batch/v1`` Job with the
Pods it owns; both answer a `WorkloadStatus`: a Capstan ``state`` (``pending``, ``running``, ``succeeded``,
``failed``), a reason code, a one-line message, and the pod and container involved with its exit code.

The reason codes are those Capstan already uses (``OOMKilled``, ``NodeLost``, ``Preempted``, ``Unschedulable``,
``NonZeroExit``...) plus the kubelet's and the Job controller's own (``ImagePullBackOff``, ``ErrImagePull``,
``CrashLoopBackOff``, ``Evicted``, ``DeadlineExceeded``, ``BackoffLimitExceeded``, ``PodFailurePolicy``). A failed
Job reports the most telling failed pod's reason (``OOMKilled`` beats ``NonZeroExit``; among equals the first to
fail) with the Job's own reason in ``job_reason`` and its message appended, except ``DeadlineExceeded``, which is
the Job's own doing. The rules are listed in docs/kubernetes-reasons.md.
"""

from __future__ import annotations

import re
import signal
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any, Literal

__all__ = ["DISRUPTIONS", "STUCK", "Reason", "State", "WorkloadStatus", "job_status", "pod_status"]

State = Literal["pending", "running", "succeeded", "failed"]
"""Where a workload is, in the words Capstan's classifier (`capstan.troubleshoot.classify.Phase`) reads."""


class Reason(StrEnum):
    """The reason codes the mapping names; any other kubelet reason passes through unchanged."""

    OOM_KILLED = "OOMKilled"
    KILLED = "Killed"
    NON_ZERO_EXIT = "NonZeroExit"
    IMAGE_PULL_BACK_OFF = "ImagePullBackOff"
    ERR_IMAGE_PULL = "ErrImagePull"
    CRASH_LOOP_BACK_OFF = "CrashLoopBackOff"
    UNSCHEDULABLE = "Unschedulable"
    EVICTED = "Evicted"
    PREEMPTED = "Preempted"
    NODE_LOST = "NodeLost"
    DEADLINE_EXCEEDED = "DeadlineExceeded"
    BACKOFF_LIMIT_EXCEEDED = "BackoffLimitExceeded"
    POD_FAILURE_POLICY = "PodFailurePolicy"
    SUSPENDED = "Suspended"
    CONTAINER_CREATING = "ContainerCreating"
    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


DISRUPTIONS: frozenset[str] = frozenset({Reason.EVICTED, Reason.PREEMPTED, Reason.NODE_LOST})
"""Failures that are the cluster's doing, not the workload's: ``retryable`` without counting against retries."""

STUCK: frozenset[str] = frozenset({Reason.IMAGE_PULL_BACK_OFF, Reason.ERR_IMAGE_PULL, Reason.CRASH_LOOP_BACK_OFF,
                                   "InvalidImageName", "CreateContainerConfigError", "CreateContainerError",
                                   "RunContainerError"})
"""Waiting reasons a pod does not leave by itself: the executor may give up on them after a grace period."""

_BLOCKED = STUCK | {Reason.UNSCHEDULABLE}
_DISRUPTION_TARGET: dict[str, Reason] = {
    "DeletionByTaintManager": Reason.NODE_LOST,  # the node went NotReady/unreachable (NoExecute taint)
    "DeletionByPodGC": Reason.NODE_LOST,  # the node object is gone
    "TerminationByKubelet": Reason.NODE_LOST,  # graceful node shutdown (node-pressure eviction says Evicted)
    "PreemptionByScheduler": Reason.PREEMPTED,
    "PreemptionByKubeScheduler": Reason.PREEMPTED,  # its name before Kubernetes 1.27
    "EvictionByEvictionAPI": Reason.EVICTED,  # a drain or another API eviction
}
# Lower ranks are more telling when several pods or containers failed.
_RANK: dict[str, int] = {
    Reason.OOM_KILLED: 0, Reason.IMAGE_PULL_BACK_OFF: 1, Reason.ERR_IMAGE_PULL: 1, "InvalidImageName": 1,
    "CreateContainerConfigError": 1, "StartError": 1, "ContainerCannotRun": 1, Reason.CRASH_LOOP_BACK_OFF: 2,
    Reason.NON_ZERO_EXIT: 2, Reason.KILLED: 3, Reason.DEADLINE_EXCEEDED: 3, Reason.EVICTED: 5, Reason.PREEMPTED: 5,
    Reason.NODE_LOST: 5,
}
_OTHER_RANK = 4
_SIGNAL_BASE = 128
_KILL_SIGNALS = frozenset({signal.SIGKILL, signal.SIGTERM})
_EVICTED_CONTAINER = re.compile(r"Container (\S+) was using")
_POLICY_CONTAINER = re.compile(r"Container (\S+) for pod (?:[^/\s]+/)?(\S+) failed with exit code (\d+)")
_POLICY_POD = re.compile(r"Pod (?:[^/\s]+/)?(\S+) has condition")


@dataclass(frozen=True, slots=True)
class WorkloadStatus:
    """A Job's or Pod's state as Capstan names it.

    ``reason`` is a `Reason` code (or the kubelet's own for rarer waiting reasons); ``message`` one line naming the
    pod and container (the scheduler's, kubelet's or Job controller's words included); ``container``, ``pod``,
    ``exit_code`` (the container's, e.g. 137) and ``signal`` (``SIGKILL`` for 128 + 9) when a container is
    involved; ``restarts`` its restart count; ``job_reason`` the Job's own failure reason when a pod's reason was
    more telling; ``retryable`` is true for disruptions (`DISRUPTIONS`), which are not the workload's fault."""

    state: State
    reason: str
    message: str = ""
    container: str | None = None
    pod: str | None = None
    exit_code: int | None = None
    signal: str | None = None
    restarts: int = 0
    job_reason: str = ""
    retryable: bool = False

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"state": self.state, "reason": self.reason, "message": self.message, "container": self.container,
                "pod": self.pod, "exit_code": self.exit_code, "signal": self.signal, "restarts": self.restarts,
                "job_reason": self.job_reason, "retryable": self.retryable}


# -- reading documents ---------------------------------------------------------------------------------------------
def _map(doc: Any, key: str) -> Mapping[str, Any]:
    value = doc.get(key) if isinstance(doc, Mapping) else None
    return value if isinstance(value, Mapping) else {}


def _list(doc: Mapping[str, Any], key: str) -> list[Mapping[str, Any]]:
    value = doc.get(key)
    return [v for v in value if isinstance(v, Mapping)] if isinstance(value, list) else []


def _str(doc: Mapping[str, Any], key: str) -> str:
    value = doc.get(key)
    return value.strip() if isinstance(value, str) else ""


def _int(doc: Mapping[str, Any], key: str) -> int | None:
    value = doc.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _condition(status: Mapping[str, Any], kind: str) -> Mapping[str, Any] | None:
    """The condition of that type whose status is ``True`` (``False`` for ``PodScheduled``), if any."""
    want = "False" if kind == "PodScheduled" else "True"
    for cond in _list(status, "conditions"):
        if cond.get("type") == kind and cond.get("status") == want:
            return cond
    return None


def _signal_name(code: int | None) -> str | None:
    """``SIGKILL`` for exit code 137: a container runtime reports a process killed by signal n as 128 + n."""
    if code is None or not _SIGNAL_BASE < code < _SIGNAL_BASE + 65:
        return None
    try:
        return signal.Signals(code - _SIGNAL_BASE).name
    except ValueError:
        return None


def _with(detail: str, words: str) -> str:
    return f"{detail}: {words}" if words else detail


# -- containers ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class _Seen:
    """One container's telling state, with the time it ended (RFC 3339, which sorts as text) for ordering."""

    status: WorkloadStatus
    at: str

    @property
    def rank(self) -> tuple[int, str]:
        return _RANK.get(self.status.reason, _OTHER_RANK), self.at or "~"


def _terminated(pod: str, name: str, term: Mapping[str, Any], restarts: int, state: State) -> WorkloadStatus | None:
    """A failed termination (``OOMKilled``, ``Killed``, ``NonZeroExit``, ``StartError``...); None for exit 0."""
    code = _int(term, "exitCode")
    kubelet = _str(term, "reason")
    if code == 0 and kubelet in ("", "Completed"):
        return None
    sig = _signal_name(code)
    if kubelet == Reason.OOM_KILLED:
        reason: str = Reason.OOM_KILLED
    elif kubelet in ("", "Error"):
        killed = sig is not None and signal.Signals[sig] in _KILL_SIGNALS
        reason = Reason.KILLED if killed else Reason.NON_ZERO_EXIT
    else:
        reason = kubelet
    how = f"exit code {code}" + (f", {sig}" if sig else "") if code is not None else "no exit code"
    verbs: dict[str, str] = {Reason.OOM_KILLED: "was OOMKilled", Reason.KILLED: "was killed"}
    what = verbs.get(reason, f"failed ({reason})")
    message = _with(f"container {name} in pod {pod} {what} ({how})", _str(term, "message"))
    return WorkloadStatus(state, reason, message, container=name, pod=pod, exit_code=code, signal=sig,
                          restarts=restarts)


def _container(pod: str, cs: Mapping[str, Any], state: State) -> _Seen | None:
    """What one container status says, if it is telling: a failed end, a crash loop or another waiting reason."""
    name = _str(cs, "name") or "?"
    restarts = _int(cs, "restartCount") or 0
    now, last = _map(cs, "state"), _map(cs, "lastState")
    waiting, term, last_term = _map(now, "waiting"), _map(now, "terminated"), _map(last, "terminated")
    if term:
        done = _terminated(pod, name, term, restarts, state)
        return _Seen(done, _str(term, "finishedAt")) if done else None
    why = _str(waiting, "reason")
    if not why or why in ("ContainerCreating", "PodInitializing"):
        return None
    message = _with(f"container {name} in pod {pod} is waiting ({why})", _str(waiting, "message"))
    if why == Reason.CRASH_LOOP_BACK_OFF and last_term:
        before = _terminated(pod, name, last_term, restarts, state)
        if before is not None:
            message = f"container {name} in pod {pod} restarted {restarts} times; last: {before.message}"
            return _Seen(replace(before, reason=Reason.CRASH_LOOP_BACK_OFF, message=message),
                         _str(last_term, "finishedAt"))
    return _Seen(WorkloadStatus(state, why, message, container=name, pod=pod, restarts=restarts), "")


def _containers(status: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return _list(status, "initContainerStatuses") + _list(status, "containerStatuses")


def _most_telling(seen: Iterable[_Seen | None]) -> _Seen | None:
    found = [s for s in seen if s is not None]
    return min(found, key=lambda s: s.rank) if found else None


# -- pods ----------------------------------------------------------------------------------------------------------
def pod_status(pod: Mapping[str, Any]) -> WorkloadStatus:
    """One Pod's state, reason, message and the container involved.

    Failed pods: eviction, node loss and preemption first (status ``reason`` ``Evicted``/``NodeLost`` or a
    ``DisruptionTarget`` condition), then the pod's ``DeadlineExceeded``, then the most telling container
    (``OOMKilled`` before any other failure, init containers included, the first to fail among equals). Pending
    pods: a stuck container (``ImagePullBackOff``, ``ErrImagePull``...), then ``Unschedulable`` with the scheduler's
    message, then ``ContainerCreating``. Running pods: ``CrashLoopBackOff`` with the last termination, else
    ``Running``. A pod without a status yet is ``pending``/``Pending``."""
    name = _str(_map(pod, "metadata"), "name") or None
    label = name or "?"
    status = _map(pod, "status")
    phase = _str(status, "phase") or "Pending"
    if phase == "Succeeded":
        return WorkloadStatus("succeeded", Reason.SUCCEEDED, f"pod {label} succeeded", pod=name)
    disruption = _disruption(label, status)
    if phase == "Failed":
        return _failed_pod(label, status, disruption)
    if disruption is not None:  # the pod is being deleted or evicted and has not ended yet
        return replace(disruption, state="running" if phase == "Running" else "pending", pod=name)
    if phase == "Unknown":
        return WorkloadStatus("running", Reason.NODE_LOST, _with(f"pod {label}'s node stopped reporting",
                              _str(status, "message")), pod=name, retryable=True)
    state: State = "running" if phase == "Running" else "pending"
    stuck = _most_telling(_container(label, cs, state) for cs in _containers(status))
    if stuck is not None:
        return stuck.status
    if state == "running":
        return WorkloadStatus("running", Reason.RUNNING, f"pod {label} is running", pod=name)
    return _pending_pod(label, status, name)


def _disruption(pod: str, status: Mapping[str, Any]) -> WorkloadStatus | None:
    """Eviction, node loss or preemption, from the pod's status reason or its ``DisruptionTarget`` condition."""
    why, words = _str(status, "reason"), _str(status, "message")
    cond = _condition(status, "DisruptionTarget")
    if why == Reason.EVICTED:
        found = _EVICTED_CONTAINER.search(words)
        return WorkloadStatus("failed", Reason.EVICTED, _with(f"pod {pod} was evicted", words),
                              container=found.group(1) if found else None, pod=pod, retryable=True)
    if why == Reason.NODE_LOST:
        return WorkloadStatus("failed", Reason.NODE_LOST, _with(f"pod {pod} lost its node", words), pod=pod,
                              retryable=True)
    if cond is None:
        return None
    reason = _DISRUPTION_TARGET.get(_str(cond, "reason"), Reason.EVICTED)
    what = {Reason.NODE_LOST: "lost its node", Reason.PREEMPTED: "was preempted"}.get(reason, "was evicted")
    detail = f"pod {pod} {what} ({_str(cond, 'reason') or 'DisruptionTarget'})"
    return WorkloadStatus("failed", reason, _with(detail, _str(cond, "message") or words), pod=pod, retryable=True)


def _failed_pod(pod: str, status: Mapping[str, Any], disruption: WorkloadStatus | None) -> WorkloadStatus:
    if disruption is not None:
        return disruption
    why, words = _str(status, "reason"), _str(status, "message")
    if why == Reason.DEADLINE_EXCEEDED:
        return WorkloadStatus("failed", Reason.DEADLINE_EXCEEDED, _with(f"pod {pod} ran past its deadline", words),
                              pod=pod)
    worst = _most_telling(_container(pod, cs, "failed") for cs in _containers(status))
    if worst is not None:
        return worst.status
    # Rejected by the kubelet before any container ran (OutOfnvidia.com/gpu, NodeAffinity...), or no details.
    return WorkloadStatus("failed", why or Reason.FAILED, _with(f"pod {pod} failed", words), pod=pod)


def _pending_pod(pod: str, status: Mapping[str, Any], name: str | None) -> WorkloadStatus:
    unscheduled = _condition(status, "PodScheduled")
    if unscheduled is not None:
        why = _str(unscheduled, "reason") or Reason.UNSCHEDULABLE
        return WorkloadStatus("pending", why, _with(f"pod {pod} cannot be scheduled", _str(unscheduled, "message")),
                              pod=name)
    creating = [_str(cs, "name") for cs in _containers(status)
                if _str(_map(_map(cs, "state"), "waiting"), "reason") in ("ContainerCreating", "PodInitializing")]
    if creating:
        return WorkloadStatus("pending", Reason.CONTAINER_CREATING,
                              f"pod {pod} is starting container {creating[0]}", container=creating[0], pod=name)
    return WorkloadStatus("pending", Reason.PENDING, _with(f"pod {pod} is pending", _str(status, "message")),
                          pod=name)


# -- jobs ----------------------------------------------------------------------------------------------------------
def job_status(job: Mapping[str, Any], pods: Sequence[Mapping[str, Any]] = ()) -> WorkloadStatus:
    """One ``batch/v1`` Job's state, from its conditions and the Pods it owns (``pods``, any order).

    ``Failed`` (or ``FailureTarget``): the most telling failed pod's reason, container and exit code with the
    Job's reason in ``job_reason`` and its message appended; ``DeadlineExceeded`` stays the Job's own reason; with
    no pod to read, a ``PodFailurePolicy`` message still names the container, pod and exit code. ``Complete`` or
    ``SuccessCriteriaMet``: ``succeeded``. ``Suspended`` (or ``spec.suspend`` before the condition appears):
    ``pending``/``Suspended``, queued. Otherwise a stuck pod's reason (``Unschedulable``, ``ImagePullBackOff``...),
    else ``running`` when a pod runs, else ``pending``."""
    name = _str(_map(job, "metadata"), "name") or "?"
    status = _map(job, "status")
    seen = [_Seen(pod_status(p), _ended(p)) for p in pods]
    failed = _condition(status, "Failed") or _condition(status, "FailureTarget")
    if failed is not None:
        return _failed_job(name, failed, seen)
    done = _condition(status, "Complete") or _condition(status, "SuccessCriteriaMet")
    if done is not None:
        return WorkloadStatus("succeeded", Reason.SUCCEEDED, _with(f"job {name} succeeded", _str(done, "message")))
    suspended = _condition(status, "Suspended")
    if suspended is not None or _map(job, "spec").get("suspend") is True:
        words = _str(suspended, "message") if suspended is not None else ""
        return WorkloadStatus("pending", Reason.SUSPENDED, _with(f"job {name} is suspended (queued)", words))
    return _active_job(name, status, seen)


def _ended(pod: Mapping[str, Any]) -> str:
    """When a pod's first container ended (RFC 3339), else when it started; empty when neither is known."""
    status = _map(pod, "status")
    ends = [_str(_map(_map(cs, "state"), "terminated"), "finishedAt") for cs in _containers(status)]
    ends += [_str(_map(_map(cs, "lastState"), "terminated"), "finishedAt") for cs in _containers(status)]
    return min((e for e in ends if e), default=_str(status, "startTime"))


def _failed_job(name: str, cond: Mapping[str, Any], seen: Sequence[_Seen]) -> WorkloadStatus:
    why = _str(cond, "reason") or Reason.FAILED
    words = _str(cond, "message")
    own = _with(f"job {name} failed ({why})", words)
    if why == Reason.DEADLINE_EXCEEDED:
        stuck = _best(seen, lambda s: s.state != "succeeded" and s.reason not in (Reason.RUNNING, Reason.PENDING))
        tail = f"; {stuck.message}" if stuck is not None else ""
        return WorkloadStatus("failed", Reason.DEADLINE_EXCEEDED, own + tail,
                              container=stuck.container if stuck else None, pod=stuck.pod if stuck else None)
    best = _best(seen, lambda s: s.state == "failed")
    if best is not None:
        return replace(best, state="failed", message=f"{best.message}; {own}", job_reason=why, retryable=False)
    policy = _POLICY_CONTAINER.search(words)
    if why == Reason.POD_FAILURE_POLICY and policy is not None:
        code = int(policy.group(3))
        return WorkloadStatus("failed", why, own, container=policy.group(1), pod=policy.group(2), exit_code=code,
                              signal=_signal_name(code), job_reason=why)
    named = _POLICY_POD.search(words)
    return WorkloadStatus("failed", why, own, pod=named.group(1) if named else None, job_reason=why)


def _best(seen: Sequence[_Seen], keep: Callable[[WorkloadStatus], bool]) -> WorkloadStatus | None:
    """The most telling of the pods' statuses that ``keep`` accepts; the first to end among equals."""
    found = _most_telling(s for s in seen if keep(s.status))
    return found.status if found is not None else None


def _active_job(name: str, status: Mapping[str, Any], seen: Sequence[_Seen]) -> WorkloadStatus:
    active, failed = _int(status, "active") or 0, _int(status, "failed") or 0
    stuck = _best(seen, lambda s: s.state in ("pending", "running") and s.reason in _BLOCKED)
    # The pods, when given, are newer news than the Job's counters.
    running = any(s.status.state == "running" for s in seen) if seen else (_int(status, "ready") or 0) > 0
    state: State = "running" if running else "pending"
    if stuck is not None:
        return replace(stuck, state=state)
    counts = f"{active} active, {_int(status, 'succeeded') or 0} succeeded, {failed} failed"
    if running:
        return WorkloadStatus("running", Reason.RUNNING, f"job {name} is running ({counts})")
    waiting = _best(seen, lambda s: s.state == "pending")
    if waiting is not None:
        return waiting
    return WorkloadStatus("pending", Reason.PENDING, f"job {name} is pending ({counts})")
