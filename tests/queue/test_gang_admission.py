"""Gang admission through the `Admission` port: a request of ``count`` identical pods (a distributed training job's
workers) is one workload, admitted whole or not at all, refused before anything starts when it can never fit,
placed pod by pod on GPUs of its own, and preempted like any other workload. Both adapters: the workload queue
(`QueueAdmission`) and one machine in memory (`LocalAdmission`)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from capstan.queue.admission import QueueAdmission, describe
from capstan.queue.manager import Backoff
from capstan.queue.records import EVICTING, FINISHED, PENDING
from capstan.queue.store import MemoryQueueStore
from capstan.resources.admission import Admission, Lease, Rejected, ResourceRequest, Waiting
from capstan.resources.local import LocalAdmission
from capstan.resources.machine import Capacity
from capstan.settings import Settings
from capstan.store.engine import create_store_engine

GIB = 2**30
MACHINE = Capacity(cpu=8, memory=32 * GIB).with_declared_gpus(4)  # what CAPSTAN_GPUS=4 gives

COHORT = """
flavors: [{name: cpu}]
cohorts: [{name: lab}]
clusterQueues:
  - name: train
    cohort: lab
    resourceGroups:
      - coveredResources: [cpu]
        flavors: [{name: cpu, resources: [{name: cpu, nominalQuota: 4, borrowingLimit: 2}]}]
  - name: other
    cohort: lab
    resourceGroups:
      - coveredResources: [cpu]
        flavors: [{name: cpu, resources: [{name: cpu, nominalQuota: 4}]}]
localQueues: [{name: train, clusterQueue: train, project: ml}, {name: other, clusterQueue: other, project: etl}]
"""


def job(name: str, count: int, *, gpu: float = 0, cpu: float = 1, memory: int = 0, project: str = "default",
        **labels: str) -> ResourceRequest:
    """A training job's request: ``count`` workers, each asking ``cpu``/``memory``/``gpu``."""
    return ResourceRequest(f"{name}/train#1", cpu, memory, gpu, None, project,
                           (("run", name), ("step", "train"), *labels.items()), count)


def queue_admission() -> QueueAdmission:
    return QueueAdmission(MemoryQueueStore(), capacity=MACHINE, backoff=Backoff(base_s=0.0))


@pytest.fixture(params=["queue", "local"])
def admission(request: pytest.FixtureRequest) -> Admission:
    """Each adapter of the port on the same machine (4 declared GPUs)."""
    return queue_admission() if request.param == "queue" else LocalAdmission(MACHINE)


# -- the port's contract, on both adapters ----------------------------------------------------------------------------
def test_a_gang_is_admitted_whole_with_distinct_devices_per_pod(admission: Admission) -> None:
    holder = admission.try_acquire(job("holder", 1, gpu=3))
    assert holder is not None and len(holder.devices) == 3
    first = admission.acquire_many([job("ddp", 2, gpu=1)])[0]
    assert isinstance(first, Waiting), "only one of the two workers fits: none of them starts"
    small = admission.try_acquire(job("small", 1, gpu=1))
    assert small is not None, "the gang held nothing while it waited"
    admission.release(small)
    admission.release(holder)
    gang = admission.acquire_many([job("ddp", 2, gpu=1)])[0]
    assert isinstance(gang, Lease)
    assert len(gang.pod_devices) == 2 and all(len(d) == 1 for d in gang.pod_devices)
    assert gang.pod_devices[0] != gang.pod_devices[1], "each worker gets a GPU of its own"
    assert gang.devices == gang.devices_of(0) == gang.pod_devices[0] and gang.devices_of(1) == gang.pod_devices[1]
    assert gang.devices_of(2) == ()
    # Asking again is idempotent: the same placement, not a second gang.
    again = admission.acquire_many([job("ddp", 2, gpu=1)])[0]
    assert isinstance(again, Lease) and again.pod_devices == gang.pod_devices
    assert admission.try_acquire(job("rest", 1, gpu=2)) is not None  # 2 of 4 GPUs were left
    assert admission.try_acquire(job("more", 1, gpu=1)) is None
    admission.release(gang)
    assert admission.try_acquire(job("more", 1, gpu=1)) is not None, "the release gave back every pod's GPU"


def test_whole_gpus_per_pod_and_fractions_packed_per_pod(admission: Admission) -> None:
    wide = admission.try_acquire(job("wide", 2, gpu=2))
    assert wide is not None
    assert sorted(d for pod in wide.pod_devices for d in pod) == ["0", "1", "2", "3"]
    assert [len(pod) for pod in wide.pod_devices] == [2, 2]
    admission.release(wide)
    halves = admission.try_acquire(job("halves", 2, gpu=0.5))
    assert halves is not None and halves.pod_devices[0] == halves.pod_devices[1], \
        "two half-GPU pods are packed onto one device (best fit), keeping whole devices free"
    whole = admission.try_acquire(job("whole", 3, gpu=1))
    assert whole is not None and halves.devices[0] not in {d for pod in whole.pod_devices for d in pod}


def test_a_gang_that_can_never_fit_is_rejected_before_anything_starts(admission: Admission) -> None:
    too_many = job("huge", 3, gpu=2)  # 3 workers x 2 GPUs on a 4-GPU machine
    why = admission.check(too_many)
    assert why is not None
    [verdict] = admission.acquire_many([too_many])
    assert isinstance(verdict, Rejected) and verdict.message == why
    assert admission.try_acquire(job("all", 1, gpu=4)) is not None, "the rejected gang holds nothing"
    assert admission.check(job("fits", 2, gpu=2)) is None
    zero = admission.check(job("none", 0, gpu=1))
    assert zero == "asks for 0 pods; a workload needs at least 1"


# -- the workload queue -----------------------------------------------------------------------------------------------
def test_the_queue_holds_a_gang_as_one_workload_and_names_it_in_its_reasons() -> None:
    queue = queue_admission()
    holder = queue.try_acquire(job("holder", 1, gpu=3))
    assert holder is not None
    waiting = queue.acquire_many([job("ddp", 2, gpu=1)])[0]
    assert isinstance(waiting, Waiting) and waiting.workload == "ddp/train"
    assert waiting.reason == "GangIncomplete"
    assert "only 1 of 2 pods fit; the gang is admitted whole" in waiting.message
    with queue.session() as mgr:
        record = mgr.get("ddp/train")
        [pod_set] = record.workload.pod_sets
        assert (record.state, pod_set.name, pod_set.count, pod_set.requests) == (
            PENDING, "main", 2, {"cpu": 1000, "gpu": 1000})
        assert mgr.state.used("default", ("local-gpu", "gpu")) == 3000, "nothing of the gang is charged"
        why = mgr.why("ddp/train")
        assert why.holders == ("holder/train (default, 3 gpu, priority 100)",)
        assert why.hint == "fits now in flavor local-gpu at 0.5 GPU per pod"  # two halves fit the one free GPU
        assert "Reason:    GangIncomplete" in why.render() and "only 1 of 2 pods fit" in why.render()
    queue.release(holder)
    gang = queue.acquire_many([job("ddp", 2, gpu=1)])[0]
    assert isinstance(gang, Lease) and gang.workload == "ddp/train"
    assert gang.pod_devices == (("0",), ("1",))
    with queue.session() as mgr:
        assert mgr.state.used("default", ("local-gpu", "gpu")) == 2000
        placement = mgr.why("ddp/train").placement
    assert placement[0].startswith("main, 2 pods (a gang, admitted together): ")
    assert placement[1:] == ("  pod 0: CUDA_VISIBLE_DEVICES=0 (1 GPU)", "  pod 1: CUDA_VISIBLE_DEVICES=1 (1 GPU)")
    queue.release(gang)
    assert queue.store.get_workload("ddp/train").state == FINISHED  # type: ignore[union-attr]  # present: submitted above


def test_the_queue_rejects_a_gang_over_its_quota_naming_the_pods_and_the_quota() -> None:
    queue = queue_admission()
    gpus = queue.check(job("huge", 3, gpu=2))
    assert gpus == ("requests 3 pods of 2 GPU(s) and 1 CPU each, which LocalQueue default (ClusterQueue default) "
                    "can never admit: needs 6 gpu in flavor local-gpu, at most 4 can ever be available")
    assert describe(job("x", 2, gpu=1, memory=GIB)) == "2 pods of 1 GPU(s), 1 CPU and 1.0 GiB of memory each"
    assert describe(job("x", 1, gpu=1)) == "1 GPU(s) and 1 CPU"
    with queue.session() as mgr:
        mgr.apply_config(COHORT)
    # ClusterQueue train: 4 CPUs of its own plus at most 2 borrowed from its cohort.
    over = queue.acquire_many([job("cpus", 4, cpu=2, project="ml")])[0]
    assert isinstance(over, Rejected)
    assert over.message == ("requests 4 pods of 2 CPU each, which LocalQueue train (ClusterQueue train) can never "
                            "admit: needs 8 cpu in flavor cpu, at most 6 can ever be available")
    assert queue.store.get_workload("cpus/train") is None, "nothing was submitted"
    borrowing = queue.acquire_many([job("cpus", 3, cpu=2, project="ml")])[0]
    assert isinstance(borrowing, Lease) and borrowing.pod_devices == ((), (), ())


def test_the_queue_rejects_a_gang_of_fractions_its_devices_can_never_hold() -> None:
    two = QueueAdmission(MemoryQueueStore(), capacity=Capacity(cpu=8, memory=0).with_declared_gpus(2))
    # 1.8 GPUs of quota fit in 2, but a 0.6 share takes slots on one device: only one such pod per device.
    assert two.check(job("frac", 3, gpu=0.6, cpu=0)) == (
        "requests 3 pods of 0.6 GPU(s) each, which LocalQueue default (ClusterQueue default) can never admit: pod "
        "set main (3 pods of 0.6 GPU each) does not fit on the 2 devices of flavor local-gpu")
    pair = two.try_acquire(job("frac", 2, gpu=0.6, cpu=0))
    assert pair is not None and pair.pod_devices == (("0",), ("1",))
    assert LocalAdmission(two.capacity).check(job("frac", 3, gpu=0.6, cpu=0)) == (
        "requests 3 pods of 0.6 GPU(s) each; 1 such pods fit on each of this machine's 2 GPU(s)")


def test_the_queue_preempts_a_gang_for_a_higher_priority_workload() -> None:
    queue = queue_admission()
    gang = queue.try_acquire(job("ddp", 2, gpu=2, priority_class="low"))
    assert gang is not None and gang.pod_devices == (("0", "1"), ("2", "3"))
    assert queue.revoked([gang]) == []
    urgent = queue.acquire_many([job("urgent", 1, gpu=1, priority_class="high")])[0]
    assert isinstance(urgent, Waiting) and urgent.reason == "WaitingForPreemption"
    assert queue.store.get_workload("ddp/train").state == EVICTING  # type: ignore[union-attr]  # present: admitted above
    [(revoked, why)] = queue.revoked([gang])
    assert revoked is gang and why.startswith("preempted by urgent/train")
    queue.release(gang, requeue=True)  # every worker has stopped: the queue requeues the whole gang
    record = queue.store.get_workload("ddp/train")
    assert record is not None and (record.state, record.preemptions) == (PENDING, 1)
    admitted = queue.acquire_many([job("urgent", 1, gpu=1, priority_class="high"),
                                   job("ddp", 2, gpu=2, priority_class="low")])
    assert isinstance(admitted[0], Lease) and isinstance(admitted[1], Waiting), \
        "three GPUs are free: the gang of two 2-GPU workers must not start partially"
    queue.release(admitted[0])
    back = queue.acquire_many([job("ddp", 2, gpu=2, priority_class="low")])[0]
    assert isinstance(back, Lease) and back.workload == "ddp/train" and dict(back.env)["CAPSTAN_RESTART_COUNT"] == "1"
    assert sorted(back.pod_devices) == [("0", "1"), ("2", "3")]


def test_a_gang_placement_survives_the_store_and_another_process(backend_settings: Settings) -> None:
    settings = replace(backend_settings, declared_gpus=4)  # SQLite and PostgreSQL
    engine = create_store_engine(settings)
    try:
        one, two = (QueueAdmission.open(settings, engine) for _ in range(2))
        gang = one.try_acquire(job("ddp", 2, gpu=1, cpu=0))  # no CPUs asked: this machine may have only a few
        assert gang is not None and gang.pod_devices == (("0",), ("1",))
        # A resumed orchestrator (another process) re-attaches to the gang's workload and its placement.
        assert two.reclaim(job("ddp", 2, gpu=1, cpu=0), held_only=True) == gang
        other = two.acquire_many([job("next", 3, gpu=1, cpu=0)])[0]
        assert isinstance(other, Waiting) and other.reason == "GangIncomplete"
        one.release(gang)
        assert isinstance(two.acquire_many([job("next", 3, gpu=1, cpu=0)])[0], Lease)
    finally:
        engine.dispose()


# -- one machine in memory --------------------------------------------------------------------------------------------
def test_local_admission_counts_every_pod_of_a_gang() -> None:
    local = LocalAdmission(MACHINE)
    assert local.check(job("cpu", 3, cpu=3)) == "requests 3 pods of 3 CPUs each (9 in all); this machine has 8"
    assert local.check(job("mem", 2, memory=20 * GIB)) == (
        "requests 2 pods of 20.0 GiB of memory each (40.0 GiB in all); this machine has 32.0 GiB")
    assert local.check(job("gpu", 3, gpu=2)) == "requests 3 pods of 2 GPU(s) each (6 in all); this machine has 4"
    assert local.check(job("frac", 9, gpu=0.5, cpu=0)) == (
        "requests 9 pods of 0.5 GPU(s) each; 2 such pods fit on each of this machine's 4 GPU(s)")
    assert local.check(job("frac", 8, gpu=0.5, cpu=0)) is None
    gang = local.try_acquire(job("ddp", 4, cpu=1.5, memory=4 * GIB, gpu=1))
    assert gang is not None and gang.pod_devices == (("0",), ("1",), ("2",), ("3",))
    assert (local.used_cpu, local.used_memory) == (6.0, 16 * GIB)
    assert local.try_acquire(job("cpu", 2, cpu=1.5)) is None, "2 x 1.5 CPUs more than the 2 left"
    assert local.try_acquire(job("cpu", 1, cpu=1.5)) is not None
    local.withdraw(gang.key)  # a cancelled job gives every pod back
    assert (local.used_cpu, local.used_memory) == (1.5, 0) and all(v == 1.0 for v in local.gpu_free.values())
    assert local.in_use() == [local.leases["cpu/train#1"]]
    single = local.try_acquire(job("one", 1, gpu=1))
    assert single is not None and single.pod_devices == () and single.devices_of(0) == single.devices
