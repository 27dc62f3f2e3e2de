"""The admission port: what a workload asks before it starts, and the verdicts it gets.

A workload's resources become a `ResourceRequest`. Once per scheduling round the caller (the pipeline orchestrator
today; serving replicas and training jobs next) hands the leases of attempts that ended and every queued request to
`Admission.settle`; each request gets a verdict: a `Lease` ("start now"), `Waiting` ("not yet", with the
admission's reason) or `Rejected` ("never": the request can not fit). Adapters: the workload queue
(`capstan.queue.admission.QueueAdmission`) and one machine in memory (`capstan.resources.local.LocalAdmission`);
the composition root (`capstan.services`) picks one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

PREEMPTED = "Preempted"
"""Reason of an attempt stopped because the admission took its resources back (a step event and attempt reason)."""


@dataclass(frozen=True, slots=True)
class ResourceRequest:
    """What one attempt asks for. ``key`` (``run/step#attempt``) is unique per attempt.

    ``labels`` carry scheduling hints: ``run`` and ``step`` (which step the attempt belongs to), ``queue`` (a
    LocalQueue of the workload queue) and ``priority_class``.

    ``count`` makes a gang: ``count`` identical pods, each asking ``cpu``, ``memory`` and ``gpu``, admitted all
    together or not at all (a distributed training job's workers). One lease covers the whole gang. With
    ``min_count`` (partial admission, the queue's ``min_count``) the gang may be granted with fewer pods, down to
    that many, when all of them do not fit; the lease's `Lease.pods` says how many it got.
    """

    key: str
    cpu: float
    memory: int
    gpu: float = 0.0
    gpu_flavor: str | None = None
    project: str = "default"
    labels: tuple[tuple[str, str], ...] = ()
    count: int = 1
    min_count: int | None = None

    @property
    def least(self) -> int:
        """The fewest pods the request may be granted with (``count`` unless it allows a partial admission)."""
        return self.count if self.min_count is None else min(self.count, max(1, self.min_count))

    def label(self, name: str) -> str | None:
        """The value of label ``name``, or None."""
        return next((v for k, v in self.labels if k == name), None)

    @property
    def empty(self) -> bool:
        """True when the request asks for nothing (a thread step's default): it needs no admission."""
        return self.cpu <= 0 and self.memory <= 0 and self.gpu <= 0


@dataclass(frozen=True, slots=True)
class Lease:
    """Granted resources.

    ``devices`` are the GPU indices assigned (exported as ``CUDA_VISIBLE_DEVICES``); ``env`` is further
    environment for the attempt (e.g. ``CUDA_MPS_ACTIVE_THREAD_PERCENTAGE``); ``workload`` names the queue workload
    that holds the quota, when a queue granted it. For a gang (``request.count > 1``) ``pod_devices`` holds each
    pod's GPU indices in pod order (``devices`` is pod 0's); for one pod it is empty or ``(devices,)``.
    ``granted`` is the number of pods of a partial admission (None: the whole ``request.count``); see `pods`.
    """

    key: str
    request: ResourceRequest
    devices: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    workload: str | None = None
    pod_devices: tuple[tuple[str, ...], ...] = ()
    granted: int | None = None

    @property
    def pods(self) -> int:
        """How many pods of the gang were granted: ``request.count``, or fewer after a partial admission."""
        return max(1, self.request.count) if self.granted is None else self.granted

    def devices_of(self, pod: int) -> tuple[str, ...]:
        """The GPU indices of pod ``pod`` (0-based) of the gang."""
        if self.pod_devices:
            return self.pod_devices[pod] if pod < len(self.pod_devices) else ()
        return self.devices if pod == 0 else ()


@dataclass(frozen=True, slots=True)
class Waiting:
    """A request that is not admitted yet: the admission's reason code (``WaitingForQuota``...) and message."""

    key: str
    reason: str = ""
    message: str = ""
    workload: str | None = None


@dataclass(frozen=True, slots=True)
class Rejected:
    """A request that can never be admitted, and why (``requests 2 GPU(s) ...``)."""

    key: str
    message: str


Verdict = Lease | Waiting | Rejected
"""What `Admission.acquire_many` answers for each request."""


class Admission(Protocol):
    """Decides when an attempt may start, and may take its resources back (preemption)."""

    def check(self, request: ResourceRequest) -> str | None:
        """Why ``request`` can never be admitted (e.g. more GPUs than exist), or ``None``."""
        ...

    def try_acquire(self, request: ResourceRequest) -> Lease | None:
        """A lease when the request fits now, else ``None`` (the caller asks again next round)."""
        ...

    def acquire_many(self, requests: Sequence[ResourceRequest]) -> list[Verdict]:
        """A verdict per request, in order. Asking again for the same request is idempotent."""
        ...

    def settle(self, releases: Sequence[tuple[Lease, bool]], requests: Sequence[ResourceRequest]) -> list[Verdict]:
        """One scheduling round: `release` each ``(lease, requeue)``, then `acquire_many` ``requests``."""
        ...

    def reclaim(self, request: ResourceRequest, *, held_only: bool = False) -> Lease | None:
        """The lease of an attempt that was already running when its orchestrator stopped (a resumed run): the one
        it still holds, or a new one when it fits now. With ``held_only`` (the attempt has ended, its result adopted
        or lost) only the one it still holds, so that handling the attempt's end gives its quota back."""
        ...

    def release(self, lease: Lease, *, requeue: bool = False) -> None:
        """The attempt ended: give the lease's resources back. With ``requeue`` the lease had been revoked
        (preempted) and the step waits to be admitted again; otherwise its request is done."""
        ...

    def withdraw(self, key: str) -> None:
        """Forget the requests of the step whose attempt is ``key`` (it was cancelled): pending or held."""
        ...

    def revoked(self, leases: Sequence[Lease]) -> list[tuple[Lease, str]]:
        """Those of ``leases`` whose resources the admission has taken back (preempted), each with the reason; the
        caller stops their attempts and then calls ``release(lease, requeue=True)``."""
        ...
