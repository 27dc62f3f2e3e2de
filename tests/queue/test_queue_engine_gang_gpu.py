"""Gang admission and fractional-GPU packing."""

from __future__ import annotations

import pytest
from queue_helpers import Cluster, config, wl

from capstan.queue.model import PodSet, Reason, Workload
from capstan.resources.quantity import parse_quantity

SHARED = """
flavors:
  - {name: a100, gpus: 2}
  - name: a100-shared
    gpus: 2
    sharing: {slotsPerGpu: 4, strategy: mps}
clusterQueues:
  - name: team
    resourceGroups:
      - coveredResources: [gpu]
        flavors:
          - {name: a100, resources: [{name: gpu, nominalQuota: 2}]}
          - {name: a100-shared, resources: [{name: gpu, nominalQuota: 2}]}
localQueues: [{name: team, clusterQueue: team}]
"""


# (case, pods, gpus per pod, already admitted gpus, admitted?, reason)
GANG_CASES = [
    ("whole gang fits", 4, 1, 0, True, None),
    ("gang waits for all pods", 4, 1, 1, False, Reason.GANG_INCOMPLETE),
    ("single pod short of quota", 1, 4, 1, False, Reason.WAITING_FOR_QUOTA),
]


@pytest.mark.parametrize(("case", "pods", "per_pod", "busy", "admitted", "reason"), GANG_CASES,
                         ids=[c[0] for c in GANG_CASES])
def test_gang_admission(case: str, pods: int, per_pod: int, busy: int, admitted: bool,
                        reason: Reason | None) -> None:
    cluster = Cluster(config("""
flavors: [{name: a100}]
clusterQueues:
  - name: team
    resourceGroups: [{coveredResources: [gpu], flavors: [{name: a100, resources: [{name: gpu, nominalQuota: 4}]}]}]
"""))
    if busy:
        cluster.admit_now(wl("busy", "team", gpu=busy, created=-1))
    cluster.submit(wl("gang", "team", gpu=per_pod, count=pods))
    result = cluster.cycle()
    assert bool(result.admitted) is admitted
    if reason is not None:
        assert result.pending[0].reason is reason
        if reason is Reason.GANG_INCOMPLETE:
            assert "only 3 of 4 pods fit" in result.pending[0].message


def test_multi_pod_set_workload_is_all_or_nothing() -> None:
    cluster = Cluster(config("""
flavors: [{name: cpu}, {name: a100}]
clusterQueues:
  - name: team
    resourceGroups:
      - {coveredResources: [cpu], flavors: [{name: cpu, resources: [{name: cpu, nominalQuota: 8}]}]}
      - {coveredResources: [gpu], flavors: [{name: a100, resources: [{name: gpu, nominalQuota: 2}]}]}
"""))
    def job(wid: str, gpus: int) -> Workload:
        return Workload(wid, "team", "team", (
            PodSet("launcher", 1, {"cpu": parse_quantity("2")}),
            PodSet("workers", 2, {"cpu": parse_quantity("2"), "gpu": parse_quantity(gpus)})))
    cluster.submit(job("too-big", 2))
    assert not cluster.cycle().admitted
    assert cluster.state.used("team", ("cpu", "cpu")) == 0  # nothing partially charged
    cluster.pending.remove("too-big")
    cluster.submit(job("fits", 1))
    (admit,) = cluster.cycle().admitted
    assert admit.usage == {("cpu", "cpu"): 6000, ("a100", "gpu"): 2000}


def test_fractions_only_on_shareable_flavors_and_packed_best_fit() -> None:
    cluster = Cluster(config(SHARED))
    cluster.submit(wl("q1", "team", gpu="0.25", created=0), wl("half", "team", gpu="0.5", created=1),
                   wl("q2", "team", gpu="0.25", created=2))
    result = cluster.cycle()
    placed = {a.workload.id: (a.pod_sets[0].flavors["gpu"], a.pod_sets[0].gpus) for a in result.admitted}
    assert {f for f, _ in placed.values()} == {"a100-shared"}
    # Best fit: everything packs onto device 0 (0.25 + 0.5 + 0.25), device 1 stays whole.
    assert [p[1][0].devices for p in placed.values()] == [(0,), (0,), (0,)]
    assert placed["half"][1][0].mps_thread_percentage == 50
    assert cluster.state.devices["a100-shared"] == [0, 4]
    cluster.submit(wl("whole", "team", gpu=1, created=3))
    result = cluster.cycle()
    assert result.admitted[0].pod_sets[0].flavors["gpu"] == "a100"  # first flavor in order


def test_fraction_above_one_is_never_admitted() -> None:
    cluster = Cluster(config(SHARED))
    cluster.submit(wl("odd", "team", gpu="1.5"))
    result = cluster.cycle()
    assert result.pending[0].reason is Reason.NO_FITTING_FLAVOR
    assert "must be below 1" in result.pending[0].message


def test_fragmented_devices_refuse_a_fraction_even_with_quota() -> None:
    cluster = Cluster(config(SHARED.replace("slotsPerGpu: 4", "slotsPerGpu: 2")))
    # Two 0.5 on separate... best fit packs them on device 0; then 0.75 (2 slots) goes to device 1.
    cluster.submit(wl("h1", "team", gpu="0.5", created=0), wl("big", "team", gpu="0.75", created=1),
                   wl("h2", "team", gpu="0.5", created=2))
    cluster.cycle()
    assert cluster.state.devices["a100-shared"] == [0, 0]
    assert cluster.admitted_ids() == {"h1", "h2", "big"}
    # 1.75 GPUs of quota are used, 0.25 is left, but no device has a free slot.
    cluster.submit(wl("tiny", "team", gpu="0.25", created=3))
    result = cluster.cycle()
    assert result.pending[0].reason is Reason.NO_FITTING_FLAVOR
    assert "fragmented" in result.pending[0].message


def test_node_labels_and_taints_select_flavors() -> None:
    from capstan.queue.model import Toleration

    cluster = Cluster(config("""
flavors:
  - {name: spot, nodeLabels: {tier: spot}, taints: [{key: spot, value: "true", effect: NoSchedule}]}
  - {name: ondemand, nodeLabels: {tier: ondemand}}
clusterQueues:
  - name: team
    resourceGroups:
      - coveredResources: [gpu]
        flavors:
          - {name: spot, resources: [{name: gpu, nominalQuota: 8}]}
          - {name: ondemand, resources: [{name: gpu, nominalQuota: 8}]}
"""))
    tolerant = (Toleration("spot", "Equal", "true", "NoSchedule"),)
    cluster.submit(wl("plain", "team", created=0), wl("tolerant", "team", created=1, tolerations=tolerant),
                   wl("pinned", "team", created=2, tolerations=tolerant, selector={"tier": "ondemand"}))
    flavors = {a.workload.id: a.pod_sets[0].flavors["gpu"] for a in cluster.cycle().admitted}
    assert flavors == {"plain": "ondemand", "tolerant": "spot", "pinned": "ondemand"}
