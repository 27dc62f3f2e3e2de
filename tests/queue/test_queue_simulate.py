"""The trace simulator on a small synthetic trace, and `capstan simulate` on a slice of the real trace."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from queue_helpers import gpu_queues

from capstan.errors import InvalidParameterValue
from capstan.queue.simulate import POLICIES, SimSettings, jain, percentile, replay
from capstan.queue.trace import TraceJob, read_trace

ROOT = Path(__file__).parents[2]
# The project's shared material sits beside the checkout (../shared), in development and in CI.
REAL_TRACE = ROOT.parent / "shared" / "data" / "traces" / "msft-itp-2021-jobs.csv"


def synthetic() -> list[TraceJob]:
    jobs = []
    # Team a floods the pool with long jobs; team b then submits short ones.
    for i in range(6):
        jobs.append(TraceJob(f"a{i}", 0.0, 40_000.0, 2, "a"))
    for i in range(6):
        jobs.append(TraceJob(f"b{i}", 100.0 + i, 2_000.0, 1, "b"))
    return jobs


def test_policies_on_a_synthetic_trace() -> None:
    cfg = gpu_queues(("a", 4), ("b", 4))
    results = {name: replay(cfg, synthetic(), POLICIES[name], SimSettings(las_thresholds_gpu_hours=(1.0,)))
               for name in ("strict-fifo", "best-effort-fifo", "capstan-las", "sjf-oracle")}
    for r in results.values():
        assert r.jobs == 12
        assert 0 < r.gpu_utilization <= 1
        assert 0 < r.jain_fairness <= 1
    # Nominal-only: team b waits for nothing (its 4 GPUs are free); team a runs 2 jobs at a time.
    assert results["strict-fifo"].makespan_s > results["best-effort-fifo"].makespan_s
    # Borrowing lets team a fill the pool, so team b waits; reclaim + LAS gives b its quota back at once.
    assert results["capstan-las"].preemptions > 0
    assert results["capstan-las"].avg_wait_s < results["best-effort-fifo"].avg_wait_s
    assert results["sjf-oracle"].oracle and not results["capstan-las"].oracle


def test_metrics_helpers() -> None:
    assert percentile([1, 2, 3, 4], 50) == 2 and percentile([1, 2, 3, 4], 99) == 4
    assert jain([1, 1, 1]) == 1.0
    assert jain([1, 0]) == 0.5


def test_trace_with_missing_column_names_it(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("job_id,submit_time_s,duration_s,cluster\nx,1,2,c\n")
    with pytest.raises(InvalidParameterValue, match="missing column 'num_gpus'"):
        read_trace(path)


def test_unknown_queue_in_trace_is_an_error() -> None:
    with pytest.raises(InvalidParameterValue, match="cluster 'zz' is not a LocalQueue"):
        replay(gpu_queues(("a", 4)), [TraceJob("x", 0, 10, 1, "zz")], POLICIES["strict-fifo"])


@pytest.mark.skipif(not REAL_TRACE.exists(), reason=f"shared ITP trace not found at {REAL_TRACE}")
def test_cli_simulate_on_a_slice_of_the_real_trace(tmp_path: Path) -> None:
    from capstan.cli.main import cli

    runner = CliRunner()
    result = runner.invoke(cli, ["simulate", "--trace", str(REAL_TRACE), "--cluster",
                                 str(ROOT / "examples" / "queues" / "itp-cluster.yaml"), "--policy", "all",
                                 "--limit", "1500", "--json", "--plot", str(tmp_path / "plots")])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [r["policy"] for r in rows] == list(POLICIES)
    for r in rows:
        assert r["jobs"] == 1500
        for key in ("avg_jct_s", "p50_jct_s", "p99_jct_s", "avg_wait_s", "makespan_s", "gpu_utilization",
                    "jain_fairness", "preemptions", "oracle"):
            assert key in r
        assert 0 <= r["gpu_utilization"] <= 1 and 0 <= r["jain_fairness"] <= 1
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["jct_cdf.png", "measures.png",
                                                                      "queue_length.png", "utilization.png"]


def test_cli_simulate_errors_are_one_line(tmp_path: Path) -> None:
    from capstan.cli.main import cli

    bad = tmp_path / "bad.csv"
    bad.write_text("job_id,submit_time_s\n")
    result = CliRunner().invoke(cli, ["simulate", "--trace", str(bad), "--cluster",
                                      str(ROOT / "examples" / "queues" / "teams.yaml")])
    assert result.exit_code != 0
    assert "missing column 'duration_s'" in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(cli, ["simulate", "--trace", str(bad), "--cluster", str(bad), "--policy", "nope"])
    assert result.exit_code != 0 and "unknown policy 'nope'" in result.output
