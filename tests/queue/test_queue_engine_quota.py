"""Quota, borrowing and lending limits, table-driven by behaviour."""

from __future__ import annotations

import pytest
from queue_helpers import Cluster, gpu_queues, wl

from capstan.queue.model import Reason

# (case, queues, limits, already admitted [(id, cq, gpus)], new workload (cq, gpus), admitted?)
# Quota cases also say whether the queues share a cohort.
QUOTA_CASES = [
    ("fits within nominal", [("a", 8), ("b", 8)], {}, [], ("a", 8), True, True),
    ("exceeds nominal without cohort", [("a", 8)], {}, [], ("a", 9), False, False),
    ("idle quota of other queues is not borrowable without a cohort", [("a", 4), ("b", 4)], {}, [], ("a", 6),
     False, False),
    ("nominal used up by own queue", [("a", 4), ("b", 0)], {}, [("x", "a", 4)], ("a", 1), True, False),
]

BORROW_CASES = [
    ("borrows idle quota of the cohort", [("a", 4), ("b", 4)], {}, [], ("a", 8), True),
    ("cannot borrow what the cohort uses", [("a", 4), ("b", 4)], {}, [("x", "b", 4)], ("a", 5), False),
    ("borrowing limit caps borrowing", [("a", 4), ("b", 4)], {"a": ", borrowingLimit: 2"}, [], ("a", 7), False),
    ("borrowing limit allows up to it", [("a", 4), ("b", 4)], {"a": ", borrowingLimit: 2"}, [], ("a", 6), True),
    ("zero borrowing limit means nominal only", [("a", 4), ("b", 4)], {"a": ", borrowingLimit: 0"}, [],
     ("a", 5), False),
]

LENDING_CASES = [
    ("lending limit keeps the rest guaranteed", [("a", 4), ("b", 4)], {"b": ", lendingLimit: 1"}, [],
     ("a", 6), False),
    ("lending limit lends up to it", [("a", 4), ("b", 4)], {"b": ", lendingLimit: 1"}, [], ("a", 5), True),
    ("guaranteed part is usable by the lender", [("a", 4), ("b", 4)], {"b": ", lendingLimit: 1"},
     [("x", "a", 5)], ("b", 3), True),
    ("lent part used by borrower is not available", [("a", 4), ("b", 4)], {"b": ", lendingLimit: 1"},
     [("x", "a", 5)], ("b", 4), False),
]


def run_case(queues: list[tuple[str, float]], limits: dict[str, str], existing: list[tuple[str, str, int]],
             new: tuple[str, int], cohort: bool = True) -> tuple[bool, Cluster]:
    cluster = Cluster(gpu_queues(*queues, limits=limits, cohort="research" if cohort else None))
    for wid, cq, gpus in existing:
        cluster.admit_now(wl(wid, cq, gpu=gpus, created=-1))
    cluster.submit(wl("new", new[0], gpu=new[1]))
    result = cluster.cycle()
    return any(a.workload.id == "new" for a in result.admitted), cluster


@pytest.mark.parametrize(("queues", "limits", "existing", "new", "cohort", "admitted"),
                         [pytest.param(*rest, id=case) for case, *rest in QUOTA_CASES])
def test_quota(queues: list[tuple[str, float]], limits: dict[str, str], existing: list[tuple[str, str, int]],
               new: tuple[str, int], cohort: bool, admitted: bool) -> None:
    got, _ = run_case(queues, limits, existing, new, cohort=cohort)
    assert got is admitted


@pytest.mark.parametrize(("case", "queues", "limits", "existing", "new", "admitted"), BORROW_CASES,
                         ids=[c[0] for c in BORROW_CASES])
def test_borrowing(case: str, queues: list[tuple[str, float]], limits: dict[str, str],
                   existing: list[tuple[str, str, int]], new: tuple[str, int], admitted: bool) -> None:
    got, _ = run_case(queues, limits, existing, new)
    assert got is admitted


@pytest.mark.parametrize(("case", "queues", "limits", "existing", "new", "admitted"), LENDING_CASES,
                         ids=[c[0] for c in LENDING_CASES])
def test_lending_limits(case: str, queues: list[tuple[str, float]], limits: dict[str, str],
                        existing: list[tuple[str, str, int]], new: tuple[str, int], admitted: bool) -> None:
    got, _ = run_case(queues, limits, existing, new)
    assert got is admitted


def test_admit_marks_borrowing() -> None:
    cluster = Cluster(gpu_queues(("a", 2), ("b", 2)))
    cluster.submit(wl("w", "a", gpu=3))
    (admit,) = cluster.cycle().admitted
    assert admit.borrowing is True
    assert cluster.state.used("a", ("a100", "gpu")) == 3000
    assert cluster.state.used("research", ("a100", "gpu"), cohort=True) == 3000


def test_hierarchical_cohort_lends_between_subtrees() -> None:
    from queue_helpers import config

    cfg = config("""
flavors: [{name: a100}]
cohorts:
  - {name: org}
  - {name: research, parent: org}
  - {name: prod, parent: org, resourceGroups: [{coveredResources: [gpu], flavors: [{name: a100,
      resources: [{name: gpu, nominalQuota: 4}]}]}]}
clusterQueues:
  - name: a
    cohort: research
    resourceGroups: [{coveredResources: [gpu], flavors: [{name: a100, resources: [{name: gpu, nominalQuota: 2}]}]}]
  - name: b
    cohort: prod
    resourceGroups: [{coveredResources: [gpu], flavors: [{name: a100, resources: [{name: gpu, nominalQuota: 2,
      lendingLimit: 0}]}]}]
""")
    cluster = Cluster(cfg)
    # a may use its own 2, the prod cohort's own 4 (lent up through org), but not b's guaranteed 2.
    cluster.submit(wl("big", "a", gpu=7))
    result = cluster.cycle()
    assert not result.admitted
    assert result.pending[0].reason is Reason.NO_FITTING_FLAVOR  # 7 > 2 + 4: can never fit
    cluster.pending.remove("big")
    cluster.submit(wl("ok", "a", gpu=6))
    assert [a.workload.id for a in cluster.cycle().admitted] == ["ok"]
    cluster.submit(wl("b1", "b", gpu=2))
    assert [a.workload.id for a in cluster.cycle().admitted] == ["b1"]


def test_strict_fifo_head_blocks_and_best_effort_skips() -> None:
    for strategy, expected in (("StrictFIFO", set()), ("BestEffortFIFO", {"small"})):
        cluster = Cluster(gpu_queues(("a", 4), cohort=None, strategy=strategy))
        cluster.submit(wl("big", "a", gpu=8, created=0), wl("small", "a", gpu=1, created=1))
        result = cluster.cycle()
        assert {a.workload.id for a in result.admitted} == expected, strategy
