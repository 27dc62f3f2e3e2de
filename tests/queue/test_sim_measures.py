"""The simulator's measures on hand-computed cases, the pool sizing of the ITP scenarios, and the CLI's output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from queue_helpers import gpu_queues

from capstan.errors import InvalidParameterValue
from capstan.queue.config import load_config, load_yaml
from capstan.queue.sim_measures import (
    JobOutcome,
    OfferedLoad,
    bounded_slowdown,
    measures,
    offered_load,
    pool_for_load,
    proportional_quotas,
    wasted_fraction,
)
from capstan.queue.simulate import POLICIES, SimSettings, replay, sim_settings
from capstan.queue.trace import TraceJob, read_trace

ROOT = Path(__file__).parents[2]
REAL_TRACE = ROOT.parent / "shared" / "data" / "traces" / "msft-itp-2021-jobs.csv"
EXAMPLES = ROOT / "examples" / "queues"


def test_bounded_slowdown_floors_the_duration_and_never_goes_below_one() -> None:
    assert bounded_slowdown(jct=3600, duration=1200) == 3.0  # 3600 / 1200
    assert bounded_slowdown(jct=1200, duration=60) == 2.0  # 1200 / max(60, 600)
    assert bounded_slowdown(jct=100, duration=60) == 1.0  # 100 / 600 < 1, bounded to 1
    assert bounded_slowdown(jct=10, duration=2, floor_s=1) == 5.0
    assert bounded_slowdown(jct=5, duration=0, floor_s=0) == 1.0


def test_measures_of_four_jobs_by_hand() -> None:
    jobs = [
        JobOutcome(submit=0, duration=1000, finish=1000, gpus=1),  # wait 0, slowdown 1
        JobOutcome(submit=0, duration=1000, finish=3000, gpus=2),  # wait 2000, slowdown 3
        JobOutcome(submit=100, duration=300, finish=1300, gpus=4),  # wait 900, slowdown 1200 / 600 = 2
        JobOutcome(submit=200, duration=2000, finish=6200, gpus=1, wasted_gpu_s=1800),  # wait 4000, slowdown 3
    ]
    m = measures(jobs)
    assert m.jobs == 4
    assert m.avg_jct_s == (1000 + 3000 + 1200 + 6000) / 4
    assert m.avg_wait_s == (0 + 2000 + 900 + 4000) / 4
    assert m.max_wait_s == 4000
    assert m.p99_wait_s == 4000 and m.p50_wait_s == 900  # nearest rank: ceil(0.5 * 4) = 2nd of 0, 900, 2000, 4000
    assert m.p99_jct_s == 6000 and m.p50_jct_s == 1200
    assert m.avg_slowdown == (1 + 3 + 2 + 3) / 4
    # Work asked for: 1000 + 2000 + 1200 + 2000 = 6200 GPU-seconds; 1800 of it was lost.
    assert m.gpu_hours == pytest.approx(6200 / 3600)
    assert m.wasted_gpu_hours == pytest.approx(0.5)
    assert m.wasted_fraction == pytest.approx(1800 / 6200)
    assert m.as_dict()["jobs"] == 4.0


def test_measures_of_nothing_are_zero() -> None:
    m = measures([])
    assert (m.jobs, m.avg_jct_s, m.max_wait_s, m.avg_slowdown, m.wasted_fraction) == (0, 0.0, 0.0, 0.0, 0.0)
    assert wasted_fraction(5, 0) == 0.0


def test_replay_reports_wasted_work_per_queue() -> None:
    # Team a borrows the whole pool with 2 jobs of 4 GPUs; team b's job reclaims 4 GPUs after 1,000 s. Without a
    # checkpoint before then, the victim loses 1,000 s x 4 GPUs.
    cfg = gpu_queues(("a", 4), ("b", 4))
    jobs = [TraceJob("a0", 0, 5000, 4, "a"), TraceJob("a1", 0, 5000, 4, "a"), TraceJob("b0", 1000, 600, 4, "b")]
    settings = SimSettings(checkpoint_interval_s=3000, restart_overhead_s=0, requeue_backoff_s=0, min_run_s=0)
    r = replay(cfg, jobs, POLICIES["capstan-las"], settings)
    assert r.preemptions == 1
    assert r.wasted_gpu_hours == pytest.approx(4000 / 3600)
    total = (5000 * 4 * 2 + 600 * 4) / 3600
    assert r.wasted_fraction == pytest.approx((4000 / 3600) / total)
    assert r.per_queue["a"]["wasted_gpu_hours"] == pytest.approx(4000 / 3600)
    assert r.per_queue["b"]["wasted_fraction"] == 0.0
    assert r.per_queue["b"]["max_wait_s"] == 0.0  # b0 reclaimed its quota at once
    assert r.admission_order == ["a0", "a1", "b0"]
    assert r.max_wait_s == r.per_queue["a"]["max_wait_s"] > 0
    summary = r.summary()
    for key in ("avg_slowdown", "p99_wait_s", "max_wait_s", "wasted_gpu_hours", "wasted_fraction",
                "requested_gpu_hours"):
        assert key in summary and key in summary["per_queue"]["a"]


def test_slowdown_floor_is_a_simulation_setting() -> None:
    assert sim_settings({"slowdownFloorSeconds": 1}).slowdown_floor_s == 1.0
    assert sim_settings(None).slowdown_floor_s == 600.0
    with pytest.raises(InvalidParameterValue, match="slowdownFloorSeconds"):
        sim_settings({"slowdownFloorSeconds": -1})


def test_pool_sizing_by_hand() -> None:
    load = offered_load([(0, 3600, 2), (3600, 7200, 1), (7200, 3600, 4)])  # 2 + 2 + 4 GPU-hours over 2 hours
    assert load == OfferedLoad(gpu_hours=8.0, span_hours=2.0) and load.mean_gpus == 4.0
    assert pool_for_load(load, 1.0) == 4 and pool_for_load(load, 0.5) == 8 and pool_for_load(load, 0.85) == 5
    with pytest.raises(InvalidParameterValue):
        pool_for_load(load, 0)


def test_proportional_quotas_keep_floors_and_split_the_rest_by_largest_remainder() -> None:
    # 10 GPUs over 6:3:1 GPU-hours; c's floor is 2, so a and b share 8 as 6:3 = 5.33, 2.67 -> 5 + 3.
    assert proportional_quotas({"a": 6, "b": 3, "c": 1}, {"c": 2}, 10) == {"a": 5, "b": 3, "c": 2}
    # Without floors: 6, 3, 1 exactly.
    assert proportional_quotas({"a": 6, "b": 3, "c": 1}, {}, 10) == {"a": 6, "b": 3, "c": 1}
    # c's floor (4) leaves 6 for a and b, 4 : 2, which puts b under its floor of 3; then a gets what is left.
    assert proportional_quotas({"a": 6, "b": 3, "c": 1}, {"b": 3, "c": 4}, 10) == {"a": 3, "b": 3, "c": 4}
    with pytest.raises(InvalidParameterValue, match="cannot hold"):
        proportional_quotas({"a": 1, "b": 1}, {"a": 8, "b": 8}, 10)


def _quotas(path: Path) -> dict[str, int]:
    raw = load_yaml(path.read_text())
    return {cq["name"]: int(cq["resourceGroups"][0]["flavors"][0]["resources"][0]["nominalQuota"])
            for cq in raw["clusterQueues"]}


@pytest.mark.skipif(not REAL_TRACE.exists(), reason=f"shared ITP trace not found at {REAL_TRACE}")
def test_itp_scenarios_follow_from_the_trace() -> None:
    jobs = read_trace(REAL_TRACE)
    load = offered_load((j.submit, j.duration, j.gpus) for j in jobs)
    assert round(load.gpu_hours) == 1_632_720 and round(load.mean_gpus) == 1136
    gpu_hours: dict[str, float] = {}
    floors: dict[str, int] = {}
    for j in jobs:
        gpu_hours[j.queue] = gpu_hours.get(j.queue, 0.0) + j.duration * j.gpus / 3600
        floors[j.queue] = max(floors.get(j.queue, 0), j.gpus)
    for name, fraction, pool in (("itp-cluster.yaml", 0.85, 1337), ("itp-cluster-high.yaml", 1.0, 1136)):
        assert pool_for_load(load, fraction) == pool
        quotas = _quotas(EXAMPLES / name)
        assert quotas == proportional_quotas(gpu_hours, floors, pool), name
        assert sum(quotas.values()) == pool
        assert all(quotas[t] >= floors[t] for t in quotas)
    assert load_config(EXAMPLES / "itp-cluster-high.yaml").cluster_queues


@pytest.mark.skipif(not REAL_TRACE.exists(), reason=f"shared ITP trace not found at {REAL_TRACE}")
def test_cli_json_and_text_show_the_new_measures(tmp_path: Path) -> None:
    from capstan.cli.main import cli

    args = ["simulate", "--trace", str(REAL_TRACE), "--cluster", str(EXAMPLES / "itp-cluster-high.yaml"),
            "--policy", "best-effort-fifo", "--policy", "capstan-las", "--limit", "800"]
    result = CliRunner().invoke(cli, [*args, "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    for row in rows:
        assert row["capacity_gpus"] == 1136
        assert row["max_wait_s"] >= row["p99_wait_s"] >= 0 and row["avg_slowdown"] >= 1
        assert 0 <= row["wasted_fraction"] < 1
        for queue in row["per_queue"].values():
            for key in ("avg_slowdown", "p99_wait_s", "max_wait_s", "wasted_gpu_hours", "wasted_fraction",
                "requested_gpu_hours"):
                assert key in queue
    text = CliRunner().invoke(cli, [*args, "--per-queue"])
    assert text.exit_code == 0, text.output
    for header in ("P99 WAIT", "MAX WAIT", "SLOWDOWN", "WASTED", "CLUSTER QUEUE", "cluster04"):
        assert header in text.output
