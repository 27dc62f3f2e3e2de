"""Admission of step attempts: the port the orchestrator asks before it starts an attempt, and the local adapter.

A step's ``resources`` become a `ResourceRequest`. The orchestrator calls `Admission.try_acquire` once per
scheduling round for each queued attempt; a `Lease` means "start now", ``None`` means "keep waiting". The local
adapter (`LocalAdmission`) packs requests into the machine's CPUs, memory and GPUs; the workload queue can
implement the same port to admit pipeline steps with its quotas.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

_EPS = 1e-9


@dataclass(frozen=True, slots=True)
class ResourceRequest:
    """What one attempt asks for. ``key`` (``run/step#attempt``) is unique per attempt."""

    key: str
    cpu: float
    memory: int
    gpu: float = 0.0
    gpu_flavor: str | None = None
    project: str = "default"
    labels: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Lease:
    """Granted resources; ``devices`` are the GPU indices assigned (exported as ``CUDA_VISIBLE_DEVICES``)."""

    key: str
    request: ResourceRequest
    devices: tuple[str, ...] = ()


class Admission(Protocol):
    """Decides when an attempt may start."""

    def check(self, request: ResourceRequest) -> str | None:
        """Why ``request`` can never be admitted (e.g. more GPUs than exist), or ``None``."""
        ...

    def try_acquire(self, request: ResourceRequest) -> Lease | None:
        """A lease when the request fits now, else ``None`` (the caller asks again next round)."""
        ...

    def release(self, lease: Lease) -> None:
        """Give the lease's resources back."""
        ...

    def withdraw(self, key: str) -> None:
        """Forget a request that is no longer waiting (its step was cancelled before admission)."""
        ...


@dataclass(frozen=True, slots=True)
class Capacity:
    """What a machine offers: CPUs, memory in bytes and GPUs (index -> model name, empty when unknown)."""

    cpu: float
    memory: int
    gpus: tuple[tuple[str, str], ...] = ()

    @classmethod
    def cached(cls) -> Capacity:
        """`detect` once per process."""
        if not _DETECTED:
            _DETECTED.append(cls.detect())
        return _DETECTED[0]

    @classmethod
    def detect(cls) -> Capacity:
        """This machine's CPUs (affinity-aware), total memory and NVIDIA GPUs (honouring CUDA_VISIBLE_DEVICES)."""
        try:
            cpus = float(len(os.sched_getaffinity(0)))
        except (AttributeError, OSError):
            cpus = float(os.cpu_count() or 1)
        try:
            import psutil

            memory = int(psutil.virtual_memory().total)
        except (ImportError, OSError):
            memory = 0
        return cls(cpus, memory, tuple(_detect_gpus(os.environ.get("CUDA_VISIBLE_DEVICES"))))


_DETECTED: list[Capacity] = []


def _detect_gpus(visible: str | None) -> list[tuple[str, str]]:
    base = "/proc/driver/nvidia/gpus"
    models: list[str] = []
    try:
        for entry in sorted(os.listdir(base)):
            model = ""
            try:
                with open(os.path.join(base, entry, "information")) as fh:
                    for line in fh:
                        if line.startswith("Model:"):
                            model = line.split(":", 1)[1].strip()
            except OSError:
                pass
            models.append(model)
    except OSError:
        models = []
    indices = [str(i) for i in range(len(models))]
    if visible is not None:
        wanted = [v.strip() for v in visible.split(",") if v.strip() and v.strip() != "-1"]
        return [(v, models[int(v)] if v.isdigit() and int(v) < len(models) else "") for v in wanted]
    return list(zip(indices, models, strict=True))


@dataclass(slots=True)
class LocalAdmission:
    """`Admission` over one machine's `Capacity`: first come, first served, GPUs packed per device."""

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
        """Why the request exceeds the whole machine, if it does."""
        cap = self.capacity
        if request.cpu > cap.cpu + _EPS:
            return f"requests {request.cpu:g} CPUs; this machine has {cap.cpu:g}"
        if cap.memory and request.memory > cap.memory:
            return (f"requests {request.memory / 2**30:.1f} GiB of memory; this machine has "
                    f"{cap.memory / 2**30:.1f} GiB")
        if request.gpu > 0:
            devices = self._devices_for(request)
            flavor = f" of flavor {request.gpu_flavor!r}" if request.gpu_flavor else ""
            if request.gpu > len(devices) + _EPS:
                return f"requests {request.gpu:g} GPU(s){flavor}; this machine has {len(devices)}"
        return None

    def try_acquire(self, request: ResourceRequest) -> Lease | None:
        """A lease when the request fits in what is free now (thread-safe: runs in one server share it)."""
        with self.lock:
            return self._acquire(request)

    def _acquire(self, request: ResourceRequest) -> Lease | None:
        if request.key in self.leases:
            return self.leases[request.key]
        cap = self.capacity
        if self.used_cpu + request.cpu > cap.cpu + _EPS and self.used_cpu > 0:
            return None
        if cap.memory and self.used_memory + request.memory > cap.memory and self.used_memory > 0:
            return None
        devices: list[str] = []
        if request.gpu > 0:
            candidates = self._devices_for(request)
            if request.gpu < 1:
                fitting = [d for d in candidates if self.gpu_free.get(d, 0) + _EPS >= request.gpu]
                if not fitting:
                    return None
                # Best fit: the device with the least free share that still fits keeps whole devices free.
                devices = [min(fitting, key=lambda d: self.gpu_free[d])]
            else:
                whole = [d for d in candidates if self.gpu_free.get(d, 0) >= 1 - _EPS]
                if len(whole) < int(request.gpu):
                    return None
                devices = whole[: int(request.gpu)]
        share = request.gpu if request.gpu < 1 else 1.0
        for d in devices:
            self.gpu_free[d] -= share
        self.used_cpu += request.cpu
        self.used_memory += request.memory
        lease = Lease(request.key, request, tuple(devices))
        self.leases[request.key] = lease
        return lease

    def release(self, lease: Lease) -> None:
        """Give a lease back (idempotent)."""
        with self.lock:
            self._release(lease)

    def _release(self, lease: Lease) -> None:
        if self.leases.pop(lease.key, None) is None:
            return
        request = lease.request
        self.used_cpu = max(0.0, self.used_cpu - request.cpu)
        self.used_memory = max(0, self.used_memory - request.memory)
        share = request.gpu if request.gpu < 1 else 1.0
        for d in lease.devices:
            self.gpu_free[d] = min(1.0, self.gpu_free.get(d, 0) + share)

    def withdraw(self, key: str) -> None:
        """Nothing waits inside the local adapter; a held lease under ``key`` is released."""
        with self.lock:
            lease = self.leases.get(key)
            if lease is not None:
                self._release(lease)

    def in_use(self) -> Sequence[Lease]:
        """Leases currently held."""
        return list(self.leases.values())
