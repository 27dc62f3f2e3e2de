"""Partial admission (Kueue's ``minCount``): fewer pods when the full count does not fit."""

from __future__ import annotations

from dataclasses import replace

import pytest
from queue_helpers import Cluster, gpu_queues, wl
from test_queue_manager import make

from capstan.errors import InvalidParameterValue
from capstan.queue.engine import never_fits, partial_workload
from capstan.queue.model import PodSet, Workload
from capstan.queue.records import ADMITTED, record_from_json, record_to_json
from capstan.queue.store import MemoryQueueStore


def elastic(wid: str, cq: str, count: int, least: int | None, gpu: int = 1) -> Workload:
    w = wl(wid, cq, gpu=gpu, count=count)
    return replace(w, pod_sets=(replace(w.pod_sets[0], min_count=least),))


def test_the_most_pods_that_fit_are_admitted() -> None:
    cluster = Cluster(gpu_queues(("a", 8), cohort=None))
    cluster.admit_now(wl("run", "a", gpu=3))
    cluster.submit(elastic("job", "a", count=8, least=2))
    (admit,) = cluster.cycle().admitted
    assert admit.workload.id == "job"
    assert [ps.count for ps in admit.pod_sets] == [5]  # 8 wanted, 5 GPUs free
    assert admit.usage == {("a100", "gpu"): 5000}


def test_below_the_minimum_nothing_is_admitted() -> None:
    cluster = Cluster(gpu_queues(("a", 8), cohort=None))
    cluster.admit_now(wl("run", "a", gpu=7))
    cluster.submit(elastic("job", "a", count=8, least=2))
    result = cluster.cycle()
    assert not result.admitted
    assert "job" in {p.workload for p in result.pending}


def test_without_min_count_the_gang_is_all_or_nothing() -> None:
    cluster = Cluster(gpu_queues(("a", 8), cohort=None))
    cluster.admit_now(wl("run", "a", gpu=3))
    cluster.submit(wl("job", "a", gpu=1, count=8))
    assert not cluster.cycle().admitted


def test_a_workload_whose_minimum_fits_is_accepted_and_is_not_refused_cheaply() -> None:
    cluster = Cluster(gpu_queues(("a", 4), cohort=None))
    big = elastic("job", "a", count=8, least=4)
    assert never_fits(cluster.state, big) is None
    assert never_fits(cluster.state, wl("gang", "a", gpu=1, count=8)) is not None
    cluster.submit(big)
    # Simulator-style cycles (no explanations) take the cheap refusal path: it must use the minimum.
    from capstan.queue.engine import schedule

    result = schedule(cluster.state, cluster.pending, 0.0, explain=False)
    assert [ps.count for a in result.admitted for ps in a.pod_sets] == [4]


def test_pods_are_taken_from_pod_sets_in_proportion_to_what_each_may_lose() -> None:
    w = Workload("w", "a", "a", (PodSet("workers", 8, {"gpu": 1000}, min_count=4),
                                 PodSet("driver", 1, {"gpu": 1000}),
                                 PodSet("ps", 4, {"gpu": 1000}, min_count=2)))
    assert [ps.count for ps in partial_workload(w, 3).pod_sets] == [6, 1, 3]
    assert [ps.count for ps in partial_workload(w, 6).pod_sets] == [4, 1, 2]
    assert all(ps.min_count is None for ps in partial_workload(w, 1).pod_sets)


def test_manager_tells_the_workload_how_many_pods_it_got() -> None:
    mgr, _clock, _ = make(MemoryQueueStore())
    mgr.submit("b-run", "b-vision", [PodSet("main", 1, {"gpu": 10_000})])  # 10 of the cohort's 14 a100 GPUs
    mgr.cycle()
    mgr.submit("b-elastic", "b-vision", [PodSet("workers", 8, {"gpu": 1000}, min_count=2)])
    mgr.cycle()
    record = mgr.get("b-elastic")
    assert record.state == ADMITTED
    assert record.admission is not None and record.admission.pod_sets[0].count == 4
    assert "partial admission: 4 of 8 pods in pod set workers (minCount 2)" in record.message
    assert "workers, 4 pods" in mgr.why("b-elastic").render()
    assert record_from_json(record_to_json(record)) == record
    with pytest.raises(InvalidParameterValue, match=r"min_count must be 1\.\.8"):
        mgr.submit("bad", "b-vision", [PodSet("workers", 8, {"gpu": 1000}, min_count=9)])
