"""Prometheus metrics on a dedicated registry, and usage-report parsing."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from capstan.errors import InvalidParameterValue
from capstan.queue.manager import QueueManager
from capstan.queue.metrics import QueueMetrics
from capstan.queue.model import PodSet
from capstan.queue.records import UsageRecord
from capstan.queue.store import MemoryQueueStore
from capstan.queue.usage import parse_prices, parse_since, usage_report
from helpers.clock import FakeClock

CONFIG = """
flavors: [{name: a100}]
priorityClasses: [{name: low, value: 0}, {name: high, value: 10}]
clusterQueues:
  - name: team
    preemption: {withinClusterQueue: LowerPriority}
    resourceGroups: [{coveredResources: [gpu], flavors: [{name: a100, resources: [{name: gpu, nominalQuota: 2}]}]}]
localQueues: [{name: team, clusterQueue: team}]
"""


def test_metrics_per_queue() -> None:
    registry = CollectorRegistry()
    metrics = QueueMetrics(registry)
    clock = FakeClock(1_000_000)
    mgr = QueueManager(MemoryQueueStore(), clock=clock, metrics=metrics)
    mgr.apply_config(CONFIG)
    mgr.submit("low", "team", [PodSet("main", 1, {"gpu": 2000})], priority_class="low")
    clock.advance(30_000)
    mgr.cycle()
    mgr.submit("high", "team", [PodSet("main", 1, {"gpu": 2000})], priority_class="high")
    mgr.cycle()
    metrics.refresh(mgr)

    def value(name: str, **labels: str) -> float:
        got = registry.get_sample_value(name, labels)
        assert got is not None, name
        return got

    assert value("capstan_queue_pending_workloads", cluster_queue="team") == 1
    assert value("capstan_queue_admitted_workloads", cluster_queue="team") == 1
    assert value("capstan_queue_quota_used", cluster_queue="team", flavor="a100", resource="gpu") == 2
    assert value("capstan_queue_quota_nominal", cluster_queue="team", flavor="a100", resource="gpu") == 2
    assert value("capstan_queue_preemptions_total", cluster_queue="team") == 1
    assert value("capstan_queue_admission_wait_seconds_count", cluster_queue="team") == 1
    assert value("capstan_queue_admission_wait_seconds_sum", cluster_queue="team") == 30


def test_usage_window_and_grouping() -> None:
    hour = 3_600_000
    records = [UsageRecord("w1", "p1", "ann", "q1", "cq", {("a100", "gpu"): 2000, ("cpu", "cpu"): 4000,
                                                           ("cpu", "memory"): 2**30 * 1000 * 8}, 0, 2 * hour),
               UsageRecord("w2", "p2", "bob", "q1", "cq", {("a100", "gpu"): 1000}, hour, None)]
    rows = usage_report(records, by="queue", since_ms=hour, now_ms=3 * hour, prices={"gpu": 1.0})
    assert [(r.key, r.workloads, r.gpu_hours, r.cpu_hours, r.memory_gb_hours, r.cost) for r in rows] == [
        ("q1", 2, 4.0, 4.0, 8.0, 4.0)]
    assert [r.key for r in usage_report(records, by="project", since_ms=0, now_ms=3 * hour)] == ["p1", "p2"]


@pytest.mark.parametrize(("text", "ms"), [("7d", 7 * 86_400_000), ("12h", 12 * 3_600_000), ("30m", 1_800_000),
                                          ("90s", 90_000), ("2w", 14 * 86_400_000)])
def test_parse_since(text: str, ms: int) -> None:
    assert parse_since(text, now_ms=10**12) == 10**12 - ms


@pytest.mark.parametrize("bad", ["7 days", "", "-1d", "d"])
def test_parse_since_rejects(bad: str) -> None:
    with pytest.raises(InvalidParameterValue, match="--since"):
        parse_since(bad, now_ms=0)


def test_parse_prices() -> None:
    assert parse_prices("gpu=2.5,cpu=0.05,memory=0.01") == {"gpu": 2.5, "cpu": 0.05, "memory": 0.01}
    for bad in ("tpu=1", "gpu", "gpu=-1"):
        with pytest.raises(InvalidParameterValue, match="--price"):
            parse_prices(bad)
