"""`capstan.k8s.preflight`: refusing pods that a namespace's ResourceQuota or the largest node can never hold, from
realistic ResourceQuota and Node documents (pure; no cluster, no emulator)."""

from __future__ import annotations

from typing import Any

import pytest

from capstan.errors import InvalidParameterValue
from capstan.k8s.pods import Resources
from capstan.k8s.preflight import check_workload, pod_requests, refusals, snapshot_from
from capstan.k8s.render_pipelines import StepJob, render_step_job

QUOTA = {"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "team-a", "namespace": "capstan-a"},
         "spec": {"hard": {"requests.cpu": "16", "requests.memory": "64Gi", "requests.nvidia.com/gpu": "4",
                           "limits.memory": "64Gi"}},
         "status": {"hard": {"requests.cpu": "16", "requests.memory": "64Gi", "requests.nvidia.com/gpu": "4",
                             "limits.memory": "64Gi"},
                    "used": {"requests.cpu": "15", "requests.memory": "1Gi"}}}


def node(name: str, cpu: str, memory: str, gpus: int = 0, *, cordoned: bool = False) -> dict[str, Any]:
    alloc = {"cpu": cpu, "memory": memory, "pods": "110", "ephemeral-storage": "100Gi"}
    if gpus:
        alloc["nvidia.com/gpu"] = str(gpus)
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
            "spec": {"unschedulable": True} if cordoned else {},
            "status": {"capacity": alloc, "allocatable": alloc}}


NODES = [node("cpu-1", "7910m", "30Gi"), node("gpu-1", "31", "240Gi", 8), node("huge", "96", "1Ti", cordoned=True)]
SNAP = snapshot_from("capstan-a", [QUOTA], NODES)


def job(cpu: float = 1, memory: int = 2**30, gpu: int = 0) -> dict[str, Any]:
    return render_step_job(StepJob(pipeline="p", pipeline_ref="p.py", node="s", step="s",
                                   resources=Resources(cpu=round(cpu * 1000), memory=memory, gpu=gpu * 1000)))


def test_a_pod_that_fits_is_not_refused_even_when_the_quota_is_busy_now() -> None:
    assert refusals(job(cpu=4), SNAP) == []  # 15 of 16 CPUs are in use, but that frees up


def test_a_pod_beyond_the_quota_is_refused_naming_the_quota() -> None:
    reasons = refusals(job(cpu=20), SNAP)
    assert any("ResourceQuota team-a in namespace capstan-a allows (requests.cpu: 16)" in r for r in reasons)
    assert any("20 of cpu" in r for r in reasons)


def test_a_pod_beyond_the_largest_node_is_refused_and_cordoned_nodes_do_not_count() -> None:
    reasons = refusals(job(cpu=12, memory=300 * 2**30), snapshot_from("ns", [], NODES))
    assert len(reasons) == 1
    assert "the largest node has" in reasons[0] and "memory" in reasons[0]


def test_gpus_beyond_the_quota_and_resources_no_single_node_has_together() -> None:
    assert any("nvidia.com/gpu" in r for r in refusals(job(gpu=6), SNAP))
    # 24 CPUs fit only on gpu-1 and 40Gi only on... gpu-1 too: fits.
    assert refusals(job(cpu=24, memory=40 * 2**30), snapshot_from("ns", [], NODES)) == []
    two = [node("a", "32", "8Gi"), node("b", "4", "128Gi")]
    reasons = refusals(job(cpu=16, memory=64 * 2**30), snapshot_from("ns", [], two))
    assert reasons and "no node has all of the pod's requests at once" in reasons[0]


def test_without_nodes_or_quota_nothing_is_refused() -> None:
    assert refusals(job(cpu=500), snapshot_from("ns", [], [])) == []


def test_check_workload_raises_with_the_object_and_every_reason() -> None:
    with pytest.raises(InvalidParameterValue, match=r"Job/p-s can never run: .*ResourceQuota team-a"):
        check_workload([job(cpu=64)], SNAP)
    check_workload([job()], SNAP)


def test_pod_requests_sum_containers_and_take_the_largest_init_container() -> None:
    spec = {"containers": [{"name": "a", "resources": {"requests": {"cpu": "500m"}, "limits": {"memory": "1Gi"}}},
                           {"name": "b", "resources": {"requests": {"cpu": "1", "memory": "512Mi"}}}],
            "initContainers": [{"name": "i", "resources": {"requests": {"cpu": "2"}}}]}
    got = pod_requests(spec)
    assert got["requests"] == {"cpu": 2000, "memory": (2**30 + 512 * 2**20) * 1000}
    assert got["limits"] == {"memory": 2**30 * 1000}
