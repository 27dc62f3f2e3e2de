"""Configuration validation: every error names its location."""

from __future__ import annotations

from pathlib import Path

import pytest
from queue_helpers import config

from capstan.errors import InvalidParameterValue
from capstan.queue.config import load_config
from capstan.queue.model import PreemptWithin, QueueingStrategy

GOOD = """
flavors:
  - {name: cpu}
  - {name: a100, nodeLabels: {gpu: a100}, taints: [{key: gpu, value: "true", effect: NoSchedule}]}
cohorts: [{name: research}]
clusterQueues:
  - name: team-a
    cohort: research
    queueingStrategy: StrictFIFO
    preemption: {withinClusterQueue: LowerPriority, reclaimWithinCohort: Any,
                 borrowWithinCohort: {policy: LowerPriority, maxPriorityThreshold: 100}}
    resourceGroups:
      - coveredResources: [cpu, memory]
        flavors: [{name: cpu, resources: [{name: cpu, nominalQuota: 500m}, {name: memory, nominalQuota: 16Gi}]}]
      - coveredResources: [gpu]
        flavors: [{name: a100, resources: [{name: gpu, nominalQuota: 8, borrowingLimit: 2, lendingLimit: 4}]}]
localQueues: [{name: ml, clusterQueue: team-a, project: ml}]
priorityClasses: [{name: high, value: 1000}]
"""


def test_good_config_parses() -> None:
    cfg = config(GOOD)
    cq = cfg.cluster_queues[0]
    assert cq.queueing_strategy is QueueingStrategy.STRICT_FIFO
    assert cq.preemption.reclaim_within_cohort is PreemptWithin.ANY
    assert cq.preemption.borrow_max_priority_threshold == 100
    cpu_group, gpu_group = cq.resource_groups
    assert [r.nominal for r in cpu_group.flavors[0].resources] == [500, 16 * 2**30 * 1000]
    gpu = gpu_group.flavors[0].resources[0]
    assert (gpu.nominal, gpu.borrowing_limit, gpu.lending_limit) == (8000, 2000, 4000)
    assert cfg.local_queues[0].project == "ml"


BAD = [
    ("borrowing limit without cohort", GOOD.replace("    cohort: research\n", ""),
     r"clusterQueues\[0\]\.resourceGroups\[1\]\.flavors\[0\]: borrowingLimit needs a cohort"),
    ("unknown flavor", GOOD.replace("flavors: [{name: a100, resources", "flavors: [{name: h100, resources"),
     r"clusterQueues\[0\]\.resourceGroups\[1\]\.flavors\[0\]: unknown flavor 'h100'"),
    ("negative quantity", GOOD.replace("nominalQuota: 500m", "nominalQuota: -1"),
     r"clusterQueues\[0\]\.resourceGroups\[0\]\.flavors\[0\]\.resources\[0\]\.nominalQuota: .*must not be negative"),
    ("non-numeric quantity", GOOD.replace("nominalQuota: 16Gi", "nominalQuota: lots"),
     r"resources\[1\]\.nominalQuota: 'lots' is not a quantity"),
    ("missing cohort", GOOD.replace("cohort: research", "cohort: nowhere"),
     r"clusterQueues\[0\]\.cohort: cohort 'nowhere' does not exist"),
    ("local queue to missing cluster queue", GOOD.replace("clusterQueue: team-a", "clusterQueue: team-z"),
     r"localQueues\[0\]\.clusterQueue: ClusterQueue 'team-z' does not exist"),
    ("bad strategy", GOOD.replace("StrictFIFO", "Random"), r"queueingStrategy: 'Random' is not one of"),
    ("typo field", GOOD.replace("queueingStrategy", "queueingStrategyy"), r"clusterQueues\[0\]: unknown field"),
    ("lending above nominal", GOOD.replace("lendingLimit: 4", "lendingLimit: 9"),
     r"lendingLimit: must not exceed nominalQuota"),
    ("resource not covered", GOOD.replace("{name: memory, nominalQuota: 16Gi}", "{name: disk, nominalQuota: 1}"),
     r"resources\[1\]: resource 'disk' is not in coveredResources"),
    ("duplicate queue", GOOD + "  - {name: team-a, resourceGroups: []}\n".replace("  - ", "  - ", 1),
     r"(duplicate ClusterQueue|unknown field|expected)"),
    ("priority not int", GOOD.replace("value: 1000", "value: high"),
     r"priorityClasses\[0\]\.value: expected an integer"),
    ("shareable flavor without gpus", GOOD.replace("  - {name: cpu}", "  - {name: cpu, sharing: {slotsPerGpu: 4}}"),
     r"flavors\[0\]: a shareable flavor needs gpus"),
]


@pytest.mark.parametrize(("case", "text", "error"), BAD, ids=[c[0] for c in BAD])
def test_bad_config_names_the_location(case: str, text: str, error: str) -> None:
    with pytest.raises(InvalidParameterValue, match=error):
        config(text)


def test_cohort_cycles_are_rejected() -> None:
    with pytest.raises(InvalidParameterValue, match=r"cohorts\[0\]: cohort 'a' is part of a parent cycle"):
        config("cohorts: [{name: a, parent: b}, {name: b, parent: a}]")


def test_bad_yaml_names_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "q.yaml"
    path.write_text("flavors:\n  - name: [unclosed\n")
    with pytest.raises(InvalidParameterValue, match=r"q\.yaml:\d+:\d+: invalid YAML"):
        load_config(path)


@pytest.mark.parametrize("example", ["teams.yaml", "itp-cluster.yaml"])
def test_shipped_examples_are_valid(example: str) -> None:
    cfg = load_config(Path(__file__).parents[2] / "examples" / "queues" / example)
    assert cfg.cluster_queues and cfg.local_queues
