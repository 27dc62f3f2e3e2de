"""Admission of step attempts: the port the orchestrator asks before it starts an attempt, and the in-memory adapter.

A step's ``resources`` become a `ResourceRequest`. Once per scheduling round the orchestrator hands the leases of
attempts that ended and every queued attempt to `Admission.settle`; each queued attempt gets a verdict: a `Lease`
("start now"), `Waiting` ("not yet", with the admission's reason) or `Rejected` ("never": the request can not
fit). The default adapter is the workload queue (`capstan.queue.admission.QueueAdmission`), so every pipeline step
is a queue workload; `LocalAdmission` packs requests into one machine's `Capacity` in memory, for tests and
embedded use.

This module also finds what a machine offers (`Capacity.detect`): CPUs, memory and NVIDIA GPUs through NVML,
``nvidia-smi`` or ``/proc/driver/nvidia``.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

_EPS = 1e-9

PREEMPTED = "Preempted"
"""Reason of an attempt stopped because the admission took its resources back (a step event and attempt reason)."""


@dataclass(frozen=True, slots=True)
class ResourceRequest:
    """What one attempt asks for. ``key`` (``run/step#attempt``) is unique per attempt.

    ``labels`` carry scheduling hints: ``run`` and ``step`` (which step the attempt belongs to), ``queue`` (a
    LocalQueue of the workload queue) and ``priority_class``.
    """

    key: str
    cpu: float
    memory: int
    gpu: float = 0.0
    gpu_flavor: str | None = None
    project: str = "default"
    labels: tuple[tuple[str, str], ...] = ()

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
    that holds the quota, when a queue granted it.
    """

    key: str
    request: ResourceRequest
    devices: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    workload: str | None = None


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
        return cls(cpus, memory, tuple(detect_gpus()))

    def with_declared_gpus(self, count: int, model: str = "") -> Capacity:
        """This capacity with ``count`` declared GPUs (indices ``0..count-1``) instead of the detected ones."""
        return Capacity(self.cpu, self.memory, tuple((str(i), model) for i in range(count)))


_DETECTED: list[Capacity] = []


def detect_gpus(visible: str | None = None, *, runner: Callable[[list[str]], str] | None = None,
                use_nvml: bool = True) -> list[tuple[str, str]]:
    """``(index, model)`` of this machine's NVIDIA GPUs, found through NVML (``pynvml``), else ``nvidia-smi``, else
    ``/proc/driver/nvidia``; restricted to ``visible`` (``CUDA_VISIBLE_DEVICES`` when None) if that is set.

    ``runner`` runs a command and returns its stdout (tests pass a fake ``nvidia-smi``).
    """
    if visible is None:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    models = (_nvml_models() if use_nvml and runner is None else None)
    if models is None:
        models = _smi_models(runner)
    if models is None:
        models = _procfs_models()
    if visible is not None:
        wanted = [v.strip() for v in visible.split(",") if v.strip() and v.strip() != "-1"]
        return [(v, models[int(v)] if v.isdigit() and int(v) < len(models) else "") for v in wanted]
    return [(str(i), model) for i, model in enumerate(models)]


def _nvml_models() -> list[str] | None:
    try:
        nvml: Any = importlib.import_module("pynvml")
    except ImportError:
        return None
    try:
        nvml.nvmlInit()
    except Exception:  # noqa: BLE001  # NVMLError_* (no driver, no permission): fall back to nvidia-smi
        return None
    try:
        names = []
        for i in range(int(nvml.nvmlDeviceGetCount())):
            name = nvml.nvmlDeviceGetName(nvml.nvmlDeviceGetHandleByIndex(i))
            names.append(name.decode() if isinstance(name, bytes) else str(name))
        return names
    except Exception:  # noqa: BLE001  # a device NVML cannot read: fall back to nvidia-smi
        return None
    finally:
        with contextlib.suppress(Exception):  # shutting NVML down is best effort
            nvml.nvmlShutdown()


def _smi_models(runner: Callable[[list[str]], str] | None) -> list[str] | None:
    if runner is None:
        if shutil.which("nvidia-smi") is None:
            return None

        def runner(cmd: list[str]) -> str:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=True).stdout
    try:
        out = runner(["nvidia-smi", "--query-gpu=index,name", "--format=csv,noheader"])
    except (OSError, subprocess.SubprocessError):
        return None
    rows: list[tuple[int, str]] = []
    for line in out.splitlines():
        index, _, name = line.partition(",")
        if index.strip().isdigit():
            rows.append((int(index), name.strip()))
    return [name for _i, name in sorted(rows)]


def _procfs_models() -> list[str]:
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
        return []
    return models


_VENDOR_WORDS = re.compile(r"\b(nvidia|tesla|geforce|quadro)\b", re.IGNORECASE)


def gpu_model_label(model: str) -> str | None:
    """A short, lower-case name for a GPU model, as steps write ``gpu_flavor``: ``NVIDIA A100-SXM4-80GB`` -> ``a100``,
    ``NVIDIA H200`` -> ``h200``, ``NVIDIA GeForce RTX 4090`` -> ``rtx4090``; None when the model is unknown."""
    rest = _VENDOR_WORDS.sub(" ", model).strip()
    if not rest:
        return None
    return re.sub(r"[^a-z0-9._]", "", rest.split("-")[0].lower()) or None


@dataclass(slots=True)
class LocalAdmission:
    """`Admission` over one machine's `Capacity` in memory: first come, first served, GPUs packed per device.

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

    def release(self, lease: Lease, *, requeue: bool = False) -> None:
        """Give a lease back (idempotent); ``requeue`` makes no difference here."""
        del requeue
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

    def revoked(self, leases: Sequence[Lease]) -> list[tuple[Lease, str]]:
        """The local adapter never takes a lease back."""
        del leases
        return []

    def in_use(self) -> Sequence[Lease]:
        """Leases currently held."""
        return list(self.leases.values())
