"""Local admission: packing CPU, memory and (fractional) GPUs; requests that can never fit."""

from __future__ import annotations

from capstan.resources.admission import ResourceRequest
from capstan.resources.local import LocalAdmission
from capstan.resources.machine import Capacity

GIB = 2**30


def req(key: str, cpu: float = 1, memory: int = 0, gpu: float = 0, flavor: str | None = None) -> ResourceRequest:
    return ResourceRequest(key, cpu, memory, gpu, flavor)


def test_cpu_and_memory_are_packed() -> None:
    adm = LocalAdmission(Capacity(cpu=2, memory=4 * GIB))
    a = adm.try_acquire(req("a", 1, GIB))
    b = adm.try_acquire(req("b", 1, GIB))
    assert a and b and adm.try_acquire(req("c", 0.5)) is None
    assert adm.try_acquire(req("t", 0)) is not None  # zero-CPU (thread) steps always fit
    adm.release(a)
    adm.release(a)  # idempotent
    assert adm.try_acquire(req("c", 0.5, int(3.5 * GIB))) is None  # memory: 1 + 3.5 > 4 GiB
    assert adm.try_acquire(req("c", 0.5, 2 * GIB)) is not None
    assert adm.try_acquire(req("c", 0.5, 2 * GIB)).key == "c"  # type: ignore[union-attr]  # same key: same lease


def test_a_request_bigger_than_the_machine_runs_alone_or_is_rejected() -> None:
    adm = LocalAdmission(Capacity(cpu=2, memory=4 * GIB))
    assert adm.check(req("x", 3)) == "requests 3 CPUs; this machine has 2"
    assert "GiB of memory" in (adm.check(req("x", 1, 8 * GIB)) or "")
    assert adm.check(req("x", 2, 4 * GIB)) is None
    assert adm.try_acquire(req("big", 2)) is not None
    assert adm.try_acquire(req("small", 1)) is None


def test_fractional_gpus_share_devices_best_fit() -> None:
    adm = LocalAdmission(Capacity(cpu=64, memory=0, gpus=(("0", "NVIDIA H100"), ("1", "NVIDIA H100"))))
    half = adm.try_acquire(req("a", gpu=0.5))
    quarter = adm.try_acquire(req("b", gpu=0.25))
    assert half and quarter and half.devices == quarter.devices  # packed onto the same device
    whole = adm.try_acquire(req("c", gpu=1))
    assert whole and whole.devices != half.devices
    assert adm.try_acquire(req("d", gpu=0.5)) is None  # 0.25 left on one device, none on the other
    assert adm.try_acquire(req("e", gpu=0.25)) is not None
    adm.release(whole)
    two = adm.try_acquire(req("f", gpu=2))
    assert two is None
    assert adm.try_acquire(req("g", gpu=1)) is not None


def test_gpu_counts_and_flavors() -> None:
    adm = LocalAdmission(Capacity(cpu=8, memory=0, gpus=(("0", "NVIDIA H200"),)))
    assert adm.check(req("a", gpu=2)) == "requests 2 GPU(s); this machine has 1"
    assert adm.check(req("a", gpu=1, flavor="a100")) == "requests 1 GPU(s) of flavor 'a100'; this machine has 0"
    assert adm.check(req("a", gpu=1, flavor="h200")) is None
    none = LocalAdmission(Capacity(cpu=8, memory=0))
    assert none.check(req("a", gpu=0.5)) == "requests 0.5 GPU(s); this machine has 0"


def test_detected_capacity_is_plausible() -> None:
    cap = Capacity.detect()
    assert cap.cpu >= 1 and cap.memory > 0
