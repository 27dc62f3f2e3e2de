"""Partial admission (``min_count``) at the edges: the HTTP API, ``capstan queue submit --min-count`` and the
listing and ``why`` output that say how many pods each pod set got; and the simulator's partial-admission model."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from queue_helpers import gpu_queues
from test_queue_cli import capstan

from capstan.errors import InvalidParameterValue
from capstan.queue.simulate import POLICIES, SimSettings, pod_shape, replay, sim_settings
from capstan.queue.trace import TraceJob
from capstan.server.app import create_app
from capstan.services import Services
from capstan.settings import Settings

CONFIG = """
flavors: [{name: gpu-a}]
clusterQueues:
  - name: team
    resourceGroups:
      - coveredResources: [gpu]
        flavors: [{name: gpu-a, resources: [{name: gpu, nominalQuota: 8}]}]
localQueues:
  - {name: ml, clusterQueue: team, project: default}
"""
Q = "/api/v1/queue"


def _workload(wid: str, count: int, **pod_set: Any) -> dict[str, Any]:
    return {"id": wid, "queue": "ml", "pod_sets": [{"name": "workers", "count": count, "requests": {"gpu": 1},
                                                    **pod_set}]}


def test_api_accepts_min_count_and_answers_the_admitted_count(tmp_path: Path) -> None:
    settings = Settings.for_home(tmp_path / "home")
    services = Services.open(settings)
    app = create_app(settings, services=services)
    try:
        with TestClient(app) as client:
            assert client.post(f"{Q}/config", content=CONFIG).status_code == 200
            assert client.post(f"{Q}/workloads", json=_workload("run", 3)).status_code == 201
            created = client.post(f"{Q}/workloads", json=_workload("elastic", 8, min_count=2))
            assert created.status_code == 201, created.text
            record = created.json()["workload"]
            assert record["state"] == "Admitted"
            assert record["pod_sets"] == [{"name": "workers", "count": 8, "min_count": 2, "admitted_count": 5}]
            assert record["admission"]["pod_sets"][0]["count"] == 5
            assert "partial admission: 5 of 8 pods in pod set workers (minCount 2)" in record["message"]
            why = client.get(f"{Q}/workloads/elastic/why").json()
            assert why["pod_sets"][0]["admitted_count"] == 5
            assert "workers, 5 pods of 8 asked (partial admission, minCount 2)" in why["text"]
            listed = client.get(f"{Q}/workloads").json()["workloads"]
            assert [w["pod_sets"][0]["admitted_count"] for w in listed] == [3, 5]
            for bad, words in ((9, "pod_sets[0].min_count: must be between 1 and the pod set's count (8), got 9"),
                               (0, "min_count"), ("2", "min_count"), (1.5, "min_count")):
                answer = client.post(f"{Q}/workloads", json=_workload("bad", 8, min_count=bad))
                assert answer.status_code == 400, answer.text
                assert words in answer.json()["message"]
            assert client.post(f"{Q}/workloads", json=_workload("whole", 8, min_count=8.0)).status_code == 201
    finally:
        services.close()


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("capstan-home")
    config = home / "queues.yaml"
    config.write_text(CONFIG, encoding="utf-8")
    r = capstan(home, "queue", "apply", "-f", str(config))
    assert r.returncode == 0, r.stderr
    return home


def test_cli_submit_min_count_list_and_why(home: Path) -> None:
    assert capstan(home, "queue", "submit", "run", "-q", "ml", "--gpu", "6").returncode == 0
    r = capstan(home, "queue", "submit", "elastic", "-q", "ml", "--gpu", "1", "--count", "4", "--min-count", "2",
                "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["pod_sets"] == [{"name": "main", "count": 4, "min_count": 2, "admitted_count": 2}]
    r = capstan(home, "queue", "list")
    assert r.returncode == 0, r.stderr
    row = next(line for line in r.stdout.splitlines() if line.startswith("elastic"))
    assert "2/4" in row
    r = capstan(home, "why", "elastic")
    assert "Placement: main, 2 pods of 4 asked (partial admission, minCount 2)" in r.stdout
    assert "partial admission: 2 of 4 pods in pod set main (minCount 2)" in r.stdout
    r = capstan(home, "queue", "submit", "wait", "-q", "ml", "--gpu", "1", "--count", "4", "--min-count", "3")
    assert "wait: Pending" in r.stdout
    assert "4 (min 3)" in next(line for line in capstan(home, "queue", "list").stdout.splitlines()
                               if line.startswith("wait"))
    r = capstan(home, "queue", "submit", "bad", "-q", "ml", "--gpu", "1", "--count", "4", "--min-count", "5")
    assert r.returncode != 0 and r.stderr.strip() == "error: --min-count: must be between 1 and --count (4), got 5"


# -- the simulator --------------------------------------------------------------------------------------------------
def test_pod_shape_only_splits_jobs_over_a_pod_when_the_model_is_on() -> None:
    on = SimSettings(partial_min_fraction=0.5, gpus_per_pod=8)
    assert pod_shape(64, SimSettings()) == (1, 64, None)
    assert pod_shape(64, on) == (8, 8, 4)
    assert pod_shape(24, on) == (3, 8, 2)  # ceil(0.5 x 3)
    assert pod_shape(8, on) == (1, 8, None) and pod_shape(12, on) == (1, 12, None)
    assert pod_shape(16, SimSettings(partial_min_fraction=1.0)) == (2, 8, None)
    assert sim_settings({"partialAdmission": {"minFraction": 0.25, "gpusPerPod": 4}}).partial_min_fraction == 0.25
    for bad, field in (({"minFraction": 0}, "minFraction"), ({"minFraction": 1.5}, "minFraction"),
                       ({"minFraction": 0.5, "gpusPerPod": 0}, "gpusPerPod"), ({"fraction": 0.5}, "fraction"),
                       (0.5, "partialAdmission")):
        with pytest.raises(InvalidParameterValue, match=field):
            sim_settings({"partialAdmission": bad})


def test_a_partially_admitted_trace_job_runs_longer_in_proportion() -> None:
    cfg = gpu_queues(("a", 8), cohort=None)
    jobs = [TraceJob("small", 0.0, 1000.0, 4, "a"), TraceJob("big", 10.0, 600.0, 8, "a")]
    policy = POLICIES["best-effort-fifo"]
    off = replay(cfg, jobs, policy, SimSettings())
    assert off.partial_admissions == 0 and off.summary()["partial_admissions"] == 0
    assert off.jct_by_job["big"] == pytest.approx(990.0 + 600.0)  # waits for the small job
    on = replay(cfg, jobs, policy, SimSettings(partial_min_fraction=0.5, gpus_per_pod=2))
    assert on.partial_admissions == 1 and on.summary()["partial_admissions"] == 1
    assert on.jct_by_job["big"] == pytest.approx(600.0 * 4 / 2)  # 2 of 4 pods at once: twice as long
    assert on.jct_by_job["small"] == off.jct_by_job["small"] == 1000.0
    # Work is conserved: the GPU-seconds the pool delivered are the same either way.
    assert on.gpu_utilization * on.makespan_s == pytest.approx(off.gpu_utilization * off.makespan_s)
    assert math.isclose(on.makespan_s, 10.0 + 1200.0)


SIM_CLUSTER = """
flavors: [{name: a100}]
clusterQueues:
  - name: a
    resourceGroups:
      - coveredResources: [gpu]
        flavors: [{name: a100, resources: [{name: gpu, nominalQuota: 8}]}]
localQueues:
  - {name: a, clusterQueue: a}
simulation:
  partialAdmission: {minFraction: 0.5, gpusPerPod: 2}
"""


def test_cli_simulate_reports_partial_admissions(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from capstan.cli.main import cli

    trace = tmp_path / "trace.csv"
    trace.write_text("job_id,submit_time_s,duration_s,num_gpus,cluster\nsmall,0,1000,4,a\nbig,10,600,8,a\n",
                     encoding="utf-8")
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text(SIM_CLUSTER, encoding="utf-8")
    args = ["simulate", "--trace", str(trace), "--cluster", str(cluster), "--policy", "best-effort-fifo"]
    result = CliRunner().invoke(cli, [*args, "--json"])
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)
    assert row["partial_admissions"] == 1
    text = CliRunner().invoke(cli, args)
    assert text.exit_code == 0 and "partial admissions: best-effort-fifo 1" in text.output
    cluster.write_text(SIM_CLUSTER.replace("minFraction: 0.5", "minFraction: 2"), encoding="utf-8")
    bad = CliRunner().invoke(cli, args)
    assert bad.exit_code != 0 and "simulation.partialAdmission.minFraction" in bad.output
