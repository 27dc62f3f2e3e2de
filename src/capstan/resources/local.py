"""`LocalAdmission`: the `Admission` port over one machine's `Capacity`, in memory."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

from capstan.resources.admission import Lease, Rejected, ResourceRequest, Verdict, Waiting
from capstan.resources.machine import Capacity

_EPS = 1e-9
"""Slack for comparing fractional CPU and GPU amounts."""


@dataclass(slots=True)
class LocalAdmission:
    """`Admission` over one machine's `Capacity` in memory: first come, first served, GPUs packed per device.

    A gang (``request.count`` pods) is granted whole or not at all: every pod's CPU, memory and GPUs, each pod its
    own devices when it asks for whole GPUs; the lease's ``pod_devices`` lists them in pod order. A gang with a
    ``min_count`` gets the most pods that fit now, down to that many (``Lease.granted``).

    It never revokes a lease. Runs that share a `LocalAdmission` object share the machine; separate processes do
    not see each other (the workload queue does).
    """

    capacity: Capacity
    used_cpu: float = 0.0
    used_memory: int = 0
    gpu_free: dict[str, float] = field(default_factory=dict)
    leases: dict[str, Lease] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.gpu_free:
            self.gpu_free = {index: 1.0 for index, _model in self.capacity.gpus}

    def _devices_for(self, request: ResourceRequest) -> list[str]:
        return [i for i, model in self.capacity.gpus
                if not request.gpu_flavor or not model or request.gpu_flavor.lower() in model.lower()]

    def check(self, request: ResourceRequest) -> str | None:
        """Why the request exceeds the whole machine, if it does (a gang: all its pods together, or its
        ``min_count`` pods when it allows a partial admission)."""
        cap = self.capacity
        n = request.least
        if n < 1:
            return f"asks for {n} pods; a workload needs at least 1"
        pods, each = (f"{n} pods of ", " each") if n > 1 else ("", "")
        if n * request.cpu > cap.cpu + _EPS:
            total = f" ({n * request.cpu:g} in all)" if n > 1 else ""
            return f"requests {pods}{request.cpu:g} CPUs{each}{total}; this machine has {cap.cpu:g}"
        if cap.memory and n * request.memory > cap.memory:
            total = f" ({n * request.memory / 2**30:.1f} GiB in all)" if n > 1 else ""
            return (f"requests {pods}{request.memory / 2**30:.1f} GiB of memory{each}{total}; this machine has "
                    f"{cap.memory / 2**30:.1f} GiB")
        if request.gpu > 0:
            devices = self._devices_for(request)
            flavor = f" of flavor {request.gpu_flavor!r}" if request.gpu_flavor else ""
            if max(n * request.gpu if request.gpu >= 1 else 0, request.gpu) > len(devices) + _EPS:
                total = f" ({n * request.gpu:g} in all)" if n > 1 and request.gpu >= 1 else ""
                return f"requests {pods}{request.gpu:g} GPU(s){flavor}{each}{total}; this machine has {len(devices)}"
            per_device = int(1 / request.gpu + _EPS)  # pods of this fraction one device holds
            if request.gpu < 1 and n > per_device * len(devices):
                return (f"requests {pods}{request.gpu:g} GPU(s){flavor}{each}; {per_device} such pods fit on each "
                        f"of this machine's {len(devices)} GPU(s)")
        return None

    def try_acquire(self, request: ResourceRequest) -> Lease | None:
        """A lease when the request fits in what is free now (thread-safe: runs in one server share it)."""
        with self.lock:
            return self._acquire(request)

    def acquire_many(self, requests: Sequence[ResourceRequest]) -> list[Verdict]:
        """`check`, then `try_acquire`, for each request in order."""
        out: list[Verdict] = []
        for request in requests:
            why = self.check(request)
            if why is not None:
                out.append(Rejected(request.key, why))
                continue
            lease = self.try_acquire(request)
            out.append(lease if lease is not None else Waiting(request.key))
        return out

    def settle(self, releases: Sequence[tuple[Lease, bool]], requests: Sequence[ResourceRequest]) -> list[Verdict]:
        """`release` each lease, then `acquire_many`."""
        for lease, _requeue in releases:
            self.release(lease)
        return self.acquire_many(requests)

    def reclaim(self, request: ResourceRequest, *, held_only: bool = False) -> Lease | None:
        """Nothing survives the process here: the lease this process holds for the request, else a new one if it
        fits now (none with ``held_only``)."""
        if held_only:
            held = self.leases.get(request.key)
            if held is None and request.empty:
                held = Lease(request.key, request)  # asks for nothing: granted without holding anything
            return held
        return self.try_acquire(request)

    def _acquire(self, request: ResourceRequest) -> Lease | None:
        """Grant every pod of the request or none; with a ``min_count``, the most pods that fit, down to it."""
        if request.key in self.leases:
            return self.leases[request.key]
        for n in range(max(1, request.count), request.least - 1, -1):
            lease = self._acquire_pods(request, n)
            if lease is not None:
                return lease
        return None

    def _acquire_pods(self, request: ResourceRequest, n: int) -> Lease | None:
        """Grant ``n`` pods of the request or none: CPU and memory for all of them, then GPUs pod by pod on a trial
        copy of the free shares, committed only when the last pod is placed."""
        cap = self.capacity
        if self.used_cpu + n * request.cpu > cap.cpu + _EPS and self.used_cpu > 0:
            return None
        if cap.memory and self.used_memory + n * request.memory > cap.memory and self.used_memory > 0:
            return None
        free = dict(self.gpu_free)
        pods: list[tuple[str, ...]] = []
        for _pod in range(n):
            placed = self._place(request, free)
            if placed is None:
                return None
            pods.append(placed)
        self.gpu_free = free
        self.used_cpu += n * request.cpu
        self.used_memory += n * request.memory
        lease = Lease(request.key, request, pods[0], pod_devices=tuple(pods) if n > 1 else (),
                      granted=n if n < max(1, request.count) else None)
        self.leases[request.key] = lease
        return lease

    def _place(self, request: ResourceRequest, free: dict[str, float]) -> tuple[str, ...] | None:
        """One pod's GPU devices, taken from ``free`` (None when they don't fit). A fraction goes best-fit onto the
        device with the least free share that still holds it, which keeps whole devices free; whole GPUs take
        entirely free devices, so each pod of a gang gets devices of its own."""
        if request.gpu <= 0:
            return ()
        candidates = self._devices_for(request)
        if request.gpu < 1:
            fitting = [d for d in candidates if free.get(d, 0) + _EPS >= request.gpu]
            if not fitting:
                return None
            best = min(fitting, key=lambda d: free[d])
            free[best] -= request.gpu
            return (best,)
        whole = [d for d in candidates if free.get(d, 0) >= 1 - _EPS][: int(request.gpu)]
        if len(whole) < int(request.gpu):
            return None
        for d in whole:
            free[d] -= 1.0
        return tuple(whole)

    def release(self, lease: Lease, *, requeue: bool = False) -> None:
        """Give a lease back (idempotent); ``requeue`` makes no difference here."""
        del requeue
        with self.lock:
            self._release(lease)

    def _release(self, lease: Lease) -> None:
        if self.leases.pop(lease.key, None) is None:
            return
        request = lease.request
        n = lease.pods
        self.used_cpu = max(0.0, self.used_cpu - n * request.cpu)
        self.used_memory = max(0, self.used_memory - n * request.memory)
        share = request.gpu if request.gpu < 1 else 1.0
        for devices in lease.pod_devices or (lease.devices,):
            for d in devices:
                self.gpu_free[d] = min(1.0, self.gpu_free.get(d, 0) + share)

    def withdraw(self, key: str) -> None:
        """Nothing waits inside the local adapter; a held lease under ``key`` is released."""
        with self.lock:
            lease = self.leases.get(key)
            if lease is not None:
                self._release(lease)

    def revoked(self, leases: Sequence[Lease]) -> list[tuple[Lease, str]]:
        """The local adapter never takes a lease back."""
        del leases
        return []

    def in_use(self) -> Sequence[Lease]:
        """Leases currently held."""
        return list(self.leases.values())
