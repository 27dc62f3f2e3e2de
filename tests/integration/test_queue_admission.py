"""`QueueAdmission`, the pipelines' admission port over the workload queue, driven directly: the default queue of
the machine, LocalQueues by project, priority classes, GPU flavors and placements, preemption and withdrawal,
and two admissions (two processes) sharing one SQLite store."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from capstan.errors import InvalidParameterValue
from capstan.queue.admission import DEFAULT_MARKER, QueueAdmission, default_config, machine_capacity
from capstan.queue.manager import Backoff, QueueManager
from capstan.queue.model import PodSet
from capstan.queue.records import ADMITTED, CANCELLED, EVICTING, FINISHED, PENDING
from capstan.queue.sql import SqlQueueStore
from capstan.queue.store import MemoryQueueStore
from capstan.resources.admission import Lease, Rejected, ResourceRequest, Waiting
from capstan.resources.machine import Capacity, detect_gpus, gpu_model_label
from capstan.settings import Settings, parse_gpus
from capstan.store.engine import create_store_engine

GIB = 2**30
MACHINE = Capacity(cpu=8, memory=32 * GIB, gpus=(("0", "NVIDIA A100-SXM4-80GB"), ("1", "NVIDIA A100-SXM4-80GB")))

TEAMS = """
flavors:
  - {name: cpu}
  - {name: a100, gpus: 2, nodeLabels: {gpu: a100}}
  - {name: a100-mps, gpus: 1, nodeLabels: {gpu: a100}, sharing: {slotsPerGpu: 4, strategy: mps}}
priorityClasses: [{name: low, value: 0}, {name: urgent, value: 1000}]
clusterQueues:
  - name: research
    preemption: {withinClusterQueue: LowerPriority}
    resourceGroups:
      - coveredResources: [cpu]
        flavors: [{name: cpu, resources: [{name: cpu, nominalQuota: 8}]}]
      - coveredResources: [gpu]
        flavors:
          - {name: a100, resources: [{name: gpu, nominalQuota: 2}]}
          - {name: a100-mps, resources: [{name: gpu, nominalQuota: 1}]}
localQueues:
  - {name: nlp, clusterQueue: research, project: nlp}
  - {name: vision, clusterQueue: research, project: vision}
"""


def req(step: str, *, gpu: float = 0, cpu: float = 1, project: str = "default", attempt: int = 1,
        flavor: str | None = None, **labels: str) -> ResourceRequest:
    return ResourceRequest(f"run1/{step}#{attempt}", cpu, 0, gpu, flavor, project,
                           (("run", "run1"), ("step", step), *labels.items()))


@pytest.fixture
def queue() -> QueueAdmission:
    return QueueAdmission(MemoryQueueStore(), capacity=MACHINE, backoff=Backoff(base_s=0.0))


def test_the_default_queue_holds_the_machine_and_follows_its_capacity(queue: QueueAdmission) -> None:
    lease = queue.try_acquire(req("a", gpu=1))
    assert lease is not None and lease.workload == "run1/a" and lease.devices == ("0",)
    text = queue.store.load_config()
    assert text is not None and text.startswith(DEFAULT_MARKER) and text == default_config(MACHINE)
    with queue.session() as mgr:
        [cq] = mgr.config.cluster_queues
        [gpu_flavor] = [f for f in mgr.config.flavors if f.gpus]
        assert cq.name == "default" and [q.name for q in mgr.config.local_queues] == ["default"]
        assert gpu_flavor.node_labels == {"gpu": "a100"} and gpu_flavor.sharing is not None
        assert [p.name for p in mgr.config.priority_classes] == ["low", "normal", "high"]
    # Declared GPUs change the capacity: the generated configuration follows, the admitted workload stays.
    bigger = QueueAdmission(queue.store, capacity=MACHINE.with_declared_gpus(4, "h100"))
    with bigger.session() as mgr:
        assert "gpus: 4" in mgr.config_text and mgr.get("run1/a").state == ADMITTED
    assert isinstance(bigger.acquire_many([req("b", gpu=1, flavor="a100")])[0], Rejected)
    assert isinstance(bigger.acquire_many([req("b", gpu=3, flavor="H100")])[0], Lease)


def test_an_applied_configuration_is_never_replaced_and_maps_projects_to_local_queues(
        queue: QueueAdmission) -> None:
    with queue.session() as mgr:
        mgr.apply_config(TEAMS)
    nlp = queue.try_acquire(req("a", gpu=1, project="nlp"))
    assert nlp is not None
    with queue.session() as mgr:
        assert mgr.config_text == TEAMS  # not overwritten by the default
        record = mgr.get("run1/a")
        assert (record.workload.queue, record.workload.project) == ("nlp", "nlp")
    named = queue.try_acquire(req("b", cpu=1, project="nlp", queue="vision"))
    assert named is not None and queue.store.get_workload("run1/b").workload.queue == "vision"  # type: ignore[union-attr]  # present: this test created it
    orphan = queue.acquire_many([req("c", project="finance")])[0]
    assert isinstance(orphan, Rejected)
    assert orphan.message == ("cannot be queued: project 'finance' has no LocalQueue and there is no LocalQueue "
                              "'default' (add one with `capstan queue apply`)")
    assert queue.check(req("c", project="finance")) == orphan.message
    unknown = queue.acquire_many([req("d", project="nlp", queue="nope")])[0]
    assert isinstance(unknown, Rejected) and "LocalQueue 'nope', which does not exist (have: nlp, vision)" in \
        unknown.message
    bad_priority = queue.check(req("e", project="nlp", priority_class="top"))
    assert bad_priority == "asks for priority class 'top', which does not exist (have: low, urgent)"
    assert queue.store.get_workload("run1/c") is None and queue.store.get_workload("run1/d") is None


def test_gpu_flavors_fractions_and_mps_placement(queue: QueueAdmission) -> None:
    with queue.session() as mgr:
        mgr.apply_config(TEAMS)
    h100 = queue.check(req("x", gpu=1, project="nlp", flavor="h100"))
    assert h100 is not None and h100.startswith("requests 1 GPU(s) of flavor 'h100' and 1 CPU, which LocalQueue nlp "
                                                "(ClusterQueue research) can never admit: ")
    assert "flavor a100 has gpu=a100, pod set main selects gpu=h100" in h100
    whole = queue.try_acquire(req("a", gpu=2, project="nlp", flavor="A100"))
    assert whole is not None and whole.devices == ("0", "1")
    quarter = queue.try_acquire(req("b", gpu=0.25, project="nlp"))  # a fraction only fits the shareable flavor
    assert quarter is not None and quarter.devices == ("0",)
    env = dict(quarter.env)
    assert env == {"CAPSTAN_WORKLOAD_ID": "run1/b", "CAPSTAN_RESTART_COUNT": "0",
                   "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": "25"}
    third = queue.acquire_many([req("c", gpu=1, project="nlp")])[0]
    assert isinstance(third, Waiting) and third.reason == "WaitingForQuota" and third.workload == "run1/c"


def test_requests_for_nothing_need_no_queue_and_asking_again_is_idempotent(queue: QueueAdmission) -> None:
    free = queue.acquire_many([req("t", cpu=0)])[0]
    assert isinstance(free, Lease) and free.workload is None
    assert queue.store.load_config() is None  # the queue was not even opened
    first = queue.acquire_many([req("a", gpu=2), req("b", gpu=1)])
    again = queue.acquire_many([req("a", gpu=2), req("b", gpu=1)])
    assert isinstance(first[0], Lease) and isinstance(again[0], Lease) and again[0].workload == "run1/a"
    assert isinstance(first[1], Waiting) and isinstance(again[1], Waiting)
    with queue.session() as mgr:
        assert [r.id for r in mgr.workloads()] == ["run1/a", "run1/b"]
    queue.release(first[0])
    queue.release(first[0])  # idempotent
    after = queue.acquire_many([req("b", gpu=1)])[0]
    assert isinstance(after, Lease) and after.workload == "run1/b"
    # A retry after the step's workload finished gets a new workload of its own.
    queue.release(after)
    retry = queue.try_acquire(req("b", gpu=1, attempt=2))
    assert retry is not None and retry.workload == "run1/b#2"
    assert queue.store.get_workload("run1/b").state == FINISHED  # type: ignore[union-attr]  # present: this test created it


def test_preemption_revokes_the_lease_then_the_step_reuses_its_requeued_workload(queue: QueueAdmission) -> None:
    low = queue.try_acquire(req("train", gpu=2, priority_class="low"))
    assert low is not None and queue.revoked([low]) == []
    with queue.session() as mgr:  # another executor's urgent job arrives
        mgr.submit("job-1", "default", [PodSet("main", 1, {"gpu": 2000})], priority_class="high")
        mgr.cycle()
        assert mgr.get("run1/train").state == EVICTING
    [(revoked, why)] = queue.revoked([low])
    assert revoked is low and why.startswith("preempted by job-1")
    queue.release(low, requeue=True)  # its process stopped: the queue requeues it
    record = queue.store.get_workload("run1/train")
    assert record is not None and (record.state, record.preemptions) == (PENDING, 1)
    again = queue.acquire_many([req("train", gpu=2, attempt=2, priority_class="low")])[0]
    assert isinstance(again, Waiting) and again.workload == "run1/train"  # the same workload, not a new one
    with queue.session() as mgr:
        mgr.finish("job-1")
    resumed = queue.try_acquire(req("train", gpu=2, attempt=2, priority_class="low"))
    assert resumed is not None and resumed.workload == "run1/train"
    assert dict(resumed.env)["CAPSTAN_RESTART_COUNT"] == "1"
    queue.release(resumed)
    assert queue.store.get_workload("run1/train").state == FINISHED  # type: ignore[union-attr]  # present: this test created it


def test_withdraw_reclaim_and_a_step_that_ended_while_being_preempted(queue: QueueAdmission) -> None:
    held = queue.try_acquire(req("a", gpu=2))
    assert held is not None
    waiting = queue.acquire_many([req("b", gpu=2)])[0]
    assert isinstance(waiting, Waiting)
    queue.withdraw("run1/b#1")  # cancelled before admission
    assert queue.store.get_workload("run1/b").state == CANCELLED  # type: ignore[union-attr]  # present: this test created it
    # A resumed orchestrator re-attaches to the running attempt: it gets the lease its step still holds.
    again = queue.reclaim(req("a", gpu=2))
    assert again is not None and again.workload == "run1/a"
    assert queue.reclaim(req("a", gpu=2), held_only=True) == again
    # An attempt that ended while no orchestrator ran (its result adopted) takes only what its step still holds.
    assert queue.reclaim(req("c", gpu=1), held_only=True) is None
    assert queue.store.get_workload("run1/c") is None, "nothing was submitted for it"
    with queue.session() as mgr:
        mgr.submit("job-1", "default", [PodSet("main", 1, {"gpu": 1000})], priority_class="high")
        mgr.cycle()
    # The attempt finished within its grace period: the workload is finished, not requeued.
    queue.release(again)
    assert queue.store.get_workload("run1/a").state == FINISHED  # type: ignore[union-attr]  # present: this test created it
    with queue.session() as mgr:
        assert mgr.get("job-1").state == ADMITTED  # the release ran admission


def test_two_processes_share_the_queue_through_the_store(backend_settings: Settings) -> None:
    settings = replace(backend_settings, declared_gpus=1)  # SQLite and PostgreSQL
    engine = create_store_engine(settings)
    try:
        one, two = (QueueAdmission.open(settings, engine) for _ in range(2))
        lease = one.try_acquire(req("a", gpu=1))
        assert lease is not None
        other = ResourceRequest("run2/b#1", 1, 0, 1, None, "default", (("run", "run2"), ("step", "b")))
        waiting = two.acquire_many([other])[0]
        assert isinstance(waiting, Waiting) and waiting.reason == "WaitingForQuota"
        one.release(lease)  # returns the GPU and runs admission for everyone
        assert SqlQueueStore(engine).get_workload("run2/b").state == ADMITTED  # type: ignore[union-attr]  # present: this test created it
        assert isinstance(two.acquire_many([other])[0], Lease)
        # SQLite serialises sessions with a file in the home; PostgreSQL with an advisory lock in the database.
        assert (Path(settings.home) / "queue.lock").exists() == settings.is_sqlite
        usage = SqlQueueStore(engine).usage_since(0)
        assert [(u.workload_id, u.end is not None) for u in usage] == [("run1/a", True), ("run2/b", False)]
        # The CLI's manager (capstan why, queue status) reads the same generated configuration.
        assert [q.name for q in QueueManager(SqlQueueStore(engine)).status()] == ["default"]
    finally:
        engine.dispose()


def test_gpu_detection_and_declaration(monkeypatch: pytest.MonkeyPatch) -> None:
    smi = "1, NVIDIA H100 80GB HBM3\n0, NVIDIA H100 80GB HBM3\n"
    h100 = "NVIDIA H100 80GB HBM3"
    assert detect_gpus("", runner=lambda _cmd: smi) == []
    assert detect_gpus("1", runner=lambda _cmd: smi) == [("1", h100)]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert detect_gpus(runner=lambda _cmd: smi) == [("0", h100), ("1", h100)]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,-1")
    assert detect_gpus(runner=lambda _cmd: smi) == [("1", h100)]
    no_driver = detect_gpus("0", runner=lambda _cmd: (_ for _ in ()).throw(OSError("no driver")))
    assert no_driver[0][0] == "0"  # a visible device whose model is unknown (procfs may still name it)
    assert [gpu_model_label(m) for m in ("NVIDIA A100-SXM4-80GB", "NVIDIA H200", "NVIDIA GeForce RTX 4090", "")] \
        == ["a100", "h200", "rtx4090", None]
    assert parse_gpus("4") == (4, None) and parse_gpus("2xA100") == (2, "a100") and parse_gpus("0") == (0, None)
    for bad in ("four", "4x", "-1", "x2", "2xa'100"):
        with pytest.raises(InvalidParameterValue, match=r"CAPSTAN_GPUS: .* is not a GPU count such as 4 or 4xa100"):
            parse_gpus(bad)
    env = Settings.from_env({"CAPSTAN_HOME": "/tmp/capstan-x", "CAPSTAN_GPUS": "2xa100"})
    assert (env.declared_gpus, env.declared_gpu_model) == (2, "a100")
    capacity = machine_capacity(env)
    assert capacity.gpus == (("0", "a100"), ("1", "a100"))
    assert "nodeLabels: {gpu: 'a100'}" in default_config(capacity)


@pytest.fixture
def no_gpus() -> Iterator[QueueAdmission]:
    yield QueueAdmission(MemoryQueueStore(), capacity=Capacity(cpu=2, memory=4 * GIB))


def test_a_machine_without_gpus_says_how_to_declare_some(no_gpus: QueueAdmission) -> None:
    why = no_gpus.check(req("a", gpu=0.5))
    assert why == ("requests 0.5 GPU(s) and 1 CPU, which LocalQueue default (ClusterQueue default) can never admit: "
                   "ClusterQueue default has no quota for gpu (this machine has no GPUs; declare some with "
                   "CAPSTAN_GPUS=N to schedule GPU-shaped work)")
    assert no_gpus.check(req("b", cpu=3)) is not None and no_gpus.check(req("b", cpu=2)) is None


def test_the_in_memory_adapter_speaks_the_same_port() -> None:
    from capstan.resources.local import LocalAdmission

    local = LocalAdmission(Capacity(cpu=2, memory=4 * GIB, gpus=(("0", "NVIDIA A100"),)))
    first, second, never = local.settle([], [req("a", gpu=1), req("b", gpu=1), req("c", gpu=2)])
    assert isinstance(first, Lease) and first.devices == ("0",)
    assert isinstance(second, Waiting) and second.reason == ""
    assert isinstance(never, Rejected) and never.message == "requests 2 GPU(s); this machine has 1"
    assert local.revoked([first]) == []
    [again] = local.settle([(first, False)], [req("b", gpu=1)])
    assert isinstance(again, Lease) and local.reclaim(req("b", gpu=1)) == again
    assert local.reclaim(req("b", gpu=1), held_only=True) == again
    assert local.reclaim(req("d", gpu=1), held_only=True) is None
    assert local.reclaim(req("d", cpu=0), held_only=True) == Lease("run1/d#1", req("d", cpu=0))
