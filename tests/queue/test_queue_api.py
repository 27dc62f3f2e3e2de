"""The queue HTTP API (``/api/v1/queue``): a real ``capstan server`` with auth for the flows, the remote CLI and
``/metrics``; the app in-process (TestClient) with an injected clock for the requeue-backoff loop and gauges."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from queue_api_helpers import Api, Q, error, serve_queue

from capstan.server.app import create_app
from capstan.server.queue_api import ServerQueue
from capstan.services import Services
from capstan.settings import Settings
from helpers.clock import FakeClock

CONFIG = """
flavors:
  - name: gpu-a
priorityClasses:
  - {name: low, value: 0}
  - {name: high, value: 1000}
defaultPriorityClass: low
clusterQueues:
  - name: team
    preemption: {withinClusterQueue: LowerPriority}
    resourceGroups:
      - coveredResources: [gpu, cpu]
        flavors: [{name: gpu-a, resources: [{name: gpu, nominalQuota: 4}, {name: cpu, nominalQuota: 16}]}]
  - name: other
    resourceGroups:
      - coveredResources: [gpu]
        flavors: [{name: gpu-a, resources: [{name: gpu, nominalQuota: 2}]}]
localQueues:
  - {name: ml, clusterQueue: team, project: p1}
  - {name: ops, clusterQueue: other, project: p2}
"""

BORROW_WITHOUT_COHORT = """
flavors: [{name: f}]
clusterQueues:
  - name: q
    resourceGroups:
      - coveredResources: [gpu]
        flavors: [{name: f, resources: [{name: gpu, nominalQuota: 1, borrowingLimit: 1}]}]
"""



def workload(wid: str, queue: str = "ml", gpu: object = 1, **extra: Any) -> dict[str, Any]:
    return {"id": wid, "queue": queue, "pod_sets": [{"count": 1, "requests": {"gpu": gpu}}], **extra}


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    yield from serve_queue(tmp_path_factory, "queue-api", CONFIG)


def test_status_and_config_are_readable(api: Api) -> None:
    status = api.ok("GET", f"{Q}/status", who="vera")["cluster_queues"]
    assert [s["cluster_queue"] for s in status] == ["team", "other"]
    team = status[0]
    assert team["pending"] == 0 and team["admitted"] == 0 and team["head"] is None
    gpu = next(q for q in team["quota"] if q["resource"] == "gpu")
    assert gpu == {"flavor": "gpu-a", "resource": "gpu", "nominal": 4.0, "used": 0.0, "borrowed": 0.0, "lent": 0.0}
    config = api.ok("GET", f"{Q}/config", who="vera")
    assert config["yaml"] == CONFIG and config["cluster_queues"] == 2 and config["local_queues"] == 2
    error(api.call("GET", f"{Q}/status", who=None), 401, "UNAUTHENTICATED")
    error(api.call("GET", f"{Q}/status", who="vera", project="p2"), 403, "PERMISSION_DENIED")


def test_apply_config_needs_a_server_admin_and_names_errors(api: Api) -> None:
    yaml_header = {"Content-Type": "application/yaml"}
    error(api.call("POST", f"{Q}/config", who=None, content=CONFIG, headers=yaml_header), 401, "UNAUTHENTICATED")
    message = error(api.call("POST", f"{Q}/config", who="ed", content=CONFIG, headers=yaml_header),
                    403, "PERMISSION_DENIED")
    assert "server admin" in message
    message = error(api.call("POST", f"{Q}/config", who="root", content="flavors: [{name: a}\nx: 1\n",
                             headers=yaml_header), 400, "INVALID_PARAMETER_VALUE")
    assert message.startswith("config:2:") and "invalid YAML" in message
    message = error(api.call("POST", f"{Q}/config", who="root", content=BORROW_WITHOUT_COHORT,
                             headers=yaml_header), 400, "INVALID_PARAMETER_VALUE")
    assert "clusterQueues[0].resourceGroups[0].flavors[0]" in message and "cohort" in message
    error(api.call("POST", f"{Q}/config", who="root", content=""), 400, "INVALID_PARAMETER_VALUE")
    # The failed attempts changed nothing; re-applying the same configuration keeps everything.
    assert api.ok("GET", f"{Q}/config", who="vera")["yaml"] == CONFIG
    applied = api.ok("POST", f"{Q}/config", who="root", content=CONFIG, headers=yaml_header)
    assert applied["cluster_queues"] == 2 and applied["evicted"] == [] and applied["orphaned"] == []


def test_submit_why_finish_cancel(api: Api) -> None:
    body = api.ok("POST", f"{Q}/workloads", who="ed", status=201, json=workload("r1/train", gpu=4))
    train = body["workload"]
    assert train["id"] == "r1/train" and train["state"] == "Admitted" and body["admitted"] == ["r1/train"]
    assert train["workload"]["project"] == "p1" and train["workload"]["user"] == "ed"
    assert train["admission"]["cluster_queue"] == "team"
    evaluate = api.ok("POST", f"{Q}/workloads", who="ed", status=201, json=workload("r1/eval", gpu="2"))
    assert evaluate["workload"]["state"] == "Pending" and evaluate["admitted"] == []

    why = api.ok("GET", f"{Q}/workloads/r1/eval/why", who="vera")
    assert why["workload"] == "r1/eval" and why["state"] == "Pending" and why["reason"] == "WaitingForQuota"
    assert why["position"] == 1 and why["queue_length"] == 1
    assert "needs 2" in why["message"] and "4/4" in why["message"]
    assert why["blocking"][0]["requested"] == 2.0 and why["blocking"][0]["cluster_queue_used"] == 4.0
    assert any(h.startswith("r1/train") for h in why["holders"]) and why["hint"]
    assert "Reason:    WaitingForQuota" in why["text"] and "Held by:   r1/train" in why["text"]
    # An encoded slash reaches the same workload.
    assert api.ok("GET", f"{Q}/workloads/r1%2Feval", who="vera")["workload"]["state"] == "Pending"

    listed = api.ok("GET", f"{Q}/workloads", who="vera", params={"state": "Pending", "queue": "ml"})["workloads"]
    assert [w["id"] for w in listed] == ["r1/eval"]
    assert [w["id"] for w in api.ok("GET", f"{Q}/workloads", who="vera", params={"queue": "team"})["workloads"]] \
        == ["r1/train", "r1/eval"]
    assert api.ok("GET", f"{Q}/workloads", who="olga", project="p2")["workloads"] == []
    error(api.call("GET", f"{Q}/workloads/r1/eval/why", who="olga", project="p2"), 403, "PERMISSION_DENIED")
    error(api.call("GET", f"{Q}/workloads", who="vera", params={"state": "Finished"}), 400,
          "INVALID_PARAMETER_VALUE")

    error(api.call("POST", f"{Q}/workloads/r1/train/finish", who="vera"), 403, "PERMISSION_DENIED")
    finished = api.ok("POST", f"{Q}/workloads/r1/train/finish", who="ed")
    assert finished["workload"]["state"] == "Finished" and finished["admitted"] == ["r1/eval"]
    error(api.call("POST", f"{Q}/workloads/r1/train/finish", who="ed"), 400, "INVALID_STATE")
    cancelled = api.ok("POST", f"{Q}/workloads/r1/eval/cancel", who="ed")
    assert cancelled["workload"]["state"] == "Cancelled"
    assert api.ok("GET", f"{Q}/workloads/r1/eval", who="vera")["workload"]["state"] == "Cancelled"
    error(api.call("GET", f"{Q}/workloads/nope/why", who="vera"), 404, "RESOURCE_DOES_NOT_EXIST")
    error(api.call("POST", f"{Q}/workloads/nope/cancel", who="ed"), 404, "RESOURCE_DOES_NOT_EXIST")


def test_submit_is_checked(api: Api) -> None:
    error(api.call("POST", f"{Q}/workloads", who=None, json=workload("v1")), 401, "UNAUTHENTICATED")
    message = error(api.call("POST", f"{Q}/workloads", who="vera", json=workload("v1")), 403, "PERMISSION_DENIED")
    assert "'vera'" in message and "'p1'" in message
    error(api.call("POST", f"{Q}/workloads", who="ed", json=workload("v2", queue="ops")), 403, "PERMISSION_DENIED")
    message = error(api.call("POST", f"{Q}/workloads", who="ed", json=workload("v3", user="ann")),
                    403, "PERMISSION_DENIED")
    assert message.startswith("user:")
    message = error(api.call("POST", f"{Q}/workloads", who="ed", json=workload("v4", gpu=5)),
                    400, "INVALID_PARAMETER_VALUE")
    assert "can never be admitted" in message
    message = error(api.call("POST", f"{Q}/workloads", who="ed", json=workload("v5", gpu="two")),
                    400, "INVALID_PARAMETER_VALUE")
    assert message.startswith("pod_sets[0].requests.gpu:")
    message = error(api.call("POST", f"{Q}/workloads", who="ed", json=workload("v6/why")),
                    400, "INVALID_PARAMETER_VALUE")
    assert message.startswith("id:")
    message = error(api.call("POST", f"{Q}/workloads", who="ed", json={"id": "v7", "queue": "ml", "pod_sets": []}),
                    400, "INVALID_PARAMETER_VALUE")
    assert "pod_sets" in message
    error(api.call("POST", f"{Q}/workloads", who="ed", json=workload("v8", queue="nope")),
          404, "RESOURCE_DOES_NOT_EXIST")
    error(api.call("POST", f"{Q}/workloads", who="ed", json=workload("v9", priority_class="nope")),
          400, "INVALID_PARAMETER_VALUE")
    assert api.ok("GET", f"{Q}/workloads", who="root")["workloads"] == []


def test_preemption_and_metrics(api: Api) -> None:
    low = api.ok("POST", f"{Q}/workloads", who="ed", status=201, json=workload("low-1", gpu=4))
    assert low["workload"]["state"] == "Admitted"
    high = api.ok("POST", f"{Q}/workloads", who="ed", status=201,
                  json=workload("high-1", gpu=4, priority_class="high"))
    assert high["preempting"] == ["low-1"] and high["workload"]["state"] == "Pending"
    assert api.ok("GET", f"{Q}/workloads/low-1", who="ed")["workload"]["state"] == "Evicting"
    stopped = api.ok("POST", f"{Q}/workloads/low-1/evicted", who="ed")
    assert stopped["admitted"] == ["high-1"]
    assert stopped["workload"]["state"] == "Pending" and stopped["workload"]["requeue_at"] is not None
    error(api.call("POST", f"{Q}/workloads/low-1/evicted", who="ed"), 400, "INVALID_STATE")

    response = api.call("GET", "/metrics", who="vera")
    assert response.status_code == 200, response.text
    text = response.text
    for line in ('capstan_queue_pending_workloads{cluster_queue="team"} 1.0',
                 'capstan_queue_admitted_workloads{cluster_queue="team"} 1.0',
                 'capstan_queue_pending_workloads{cluster_queue="other"} 0.0',
                 'capstan_queue_quota_used{cluster_queue="team",flavor="gpu-a",resource="gpu"} 4.0',
                 'capstan_queue_quota_nominal{cluster_queue="team",flavor="gpu-a",resource="gpu"} 4.0',
                 'capstan_queue_preemptions_total{cluster_queue="team"} 1.0',
                 'capstan_queue_admission_wait_seconds_bucket{cluster_queue="team",le="+Inf"}'):
        assert line in text, line
    assert "# TYPE capstan_queue_admission_wait_seconds histogram" in text
    assert "capstan_http_requests_total" in text  # the server's own metrics are still there
    api.ok("POST", f"{Q}/workloads/high-1/finish", who="ed")
    api.ok("POST", f"{Q}/workloads/low-1/cancel", who="ed")


def test_usage_and_remote_cli(api: Api) -> None:
    api.ok("POST", f"{Q}/workloads", who="olga", status=201, project="p2", json=workload("ops-1", queue="ops"))
    time.sleep(0.01)  # let the open admission record cover some time
    rows = api.ok("GET", f"{Q}/usage", who="root", params={"by": "project", "since": "1d", "price": "gpu=2.5"})
    assert {r["key"] for r in rows["rows"]} == {"p1", "p2"} and rows["prices"] == {"gpu": 2.5}
    assert all(r["gpu_hours"] > 0 and r["cost"] == pytest.approx(2.5 * r["gpu_hours"]) for r in rows["rows"])
    mine = api.ok("GET", f"{Q}/usage", who="vera", params={"by": "user"})["rows"]
    assert [r["key"] for r in mine] == ["ed"] and mine[0]["workloads"] >= 2 and mine[0]["cost"] is None
    assert api.ok("GET", f"{Q}/usage", who="olga", project="p2", params={"by": "queue"})["rows"][0]["key"] == "ops"
    assert error(api.call("GET", f"{Q}/usage", who="vera", params={"since": "soon"}), 400,
                 "INVALID_PARAMETER_VALUE").startswith("since:")
    assert error(api.call("GET", f"{Q}/usage", who="vera", params={"price": "gpu=free"}), 400,
                 "INVALID_PARAMETER_VALUE").startswith("price:")
    assert "by" in error(api.call("GET", f"{Q}/usage", who="vera", params={"by": "team"}), 400,
                         "INVALID_PARAMETER_VALUE")

    # The CLI goes through the API when CAPSTAN_URL is set (the server's home holds no token for it to use).
    why = api.cli("why", "ops-1", who="olga", project="p2")
    assert "Workload:  ops-1" in why.stdout and "Reason:    Admitted" in why.stdout
    data = json.loads(api.cli("why", "ops-1", "--json", who="olga", project="p2").stdout)
    assert data["reason"] == "Admitted" and "text" not in data
    status = api.cli("queue", "status", who="vera")
    assert "team" in status.stdout and "other" in status.stdout and "gpu-a" in status.stdout
    assert json.loads(api.cli("queue", "status", "--json", who="vera").stdout)[1]["admitted"] == 1
    usage = json.loads(api.cli("usage", "--by", "project", "--json", who="root").stdout)
    assert {r["key"] for r in usage} == {"p1", "p2"}
    assert "COST" in api.cli("usage", "--price", "gpu=1", who="vera").stdout
    denied = api.cli("why", "ops-1", who="vera", check=False)
    assert denied.returncode == 1 and denied.stderr.startswith("error: ") and "Traceback" not in denied.stderr
    assert "'p2'" in denied.stderr


def test_concurrent_submits_never_overcommit(api: Api) -> None:
    from concurrent.futures import ThreadPoolExecutor

    ids = [f"burst/{i}" for i in range(10)]
    with ThreadPoolExecutor(max_workers=10) as pool:
        bodies = list(pool.map(lambda wid: api.ok("POST", f"{Q}/workloads", who="ed", status=201,
                                                  json=workload(wid, gpu=1)), ids))
    states = {b["workload"]["id"]: b["workload"]["state"] for b in bodies}
    assert sorted(states.values()).count("Admitted") == 4, states
    team = api.ok("GET", f"{Q}/status", who="vera")["cluster_queues"][0]
    assert team["admitted"] == 4 and team["pending"] == 6
    assert next(q for q in team["quota"] if q["resource"] == "gpu")["used"] == 4.0
    for wid in ids:
        api.ok("POST", f"{Q}/workloads/{wid}/cancel", who="ed")


# -- in-process: the backoff loop and gauges after a configuration change -----------------------------------------
def test_backoff_loop_and_gauges_in_process(tmp_path: Path) -> None:
    clock = FakeClock(1_800_000_000_000)
    settings = Settings.for_home(tmp_path / "home")
    services = Services.open(settings, clock=clock)
    app = create_app(settings, services=services)
    queue: ServerQueue = app.state.queue
    queue.interval_s = 0  # no background thread: the test calls tick() itself
    try:
        with TestClient(app) as client:  # single-user mode: a loopback app with no users
            assert client.post(f"{Q}/config", content=CONFIG).status_code == 200
            assert client.post(f"{Q}/workloads", json=workload("w/low", gpu=2)).status_code == 201
            high = client.post(f"{Q}/workloads", json=workload("w/high", gpu=3, priority_class="high")).json()
            assert high["preempting"] == ["w/low"]
            requeued = client.post(f"{Q}/workloads/w/low/evicted").json()
            assert requeued["admitted"] == ["w/high"] and requeued["workload"]["workload"]["user"] == "local"
            clock.advance(1000)
            assert client.post(f"{Q}/workloads/w/high/finish").json()["admitted"] == []  # still in its backoff
            why = client.get(f"{Q}/workloads/w/low/why").json()
            assert why["reason"] == "Preempted" and "backoff" in why["hint"]
            assert queue.tick() == []
            clock.advance(60_000)
            reports = queue.tick()
            assert [r.id for report in reports for r in report.admitted] == ["w/low"]
            assert queue.tick() == []

            before = client.get("/metrics").text
            assert 'capstan_queue_pending_workloads{cluster_queue="other"} 0.0' in before
            assert 'capstan_queue_quota_used{cluster_queue="team",flavor="gpu-a",resource="gpu"} 2.0' in before
            only_team = CONFIG.replace("  - {name: ops, clusterQueue: other, project: p2}\n", "")
            only_team = only_team[:only_team.index("  - name: other")] + only_team[only_team.index("localQueues:"):]
            applied = client.post(f"{Q}/config", content=only_team).json()
            assert applied["cluster_queues"] == 1 and applied["kept"] == 1
            after = client.get("/metrics").text
            assert 'cluster_queue="other"' not in after
            assert 'capstan_queue_admitted_workloads{cluster_queue="team"} 1.0' in after
            paths = client.get("/api/v1/openapi.json").json()["paths"]
            assert "/api/v1/queue/workloads/{workload_id}/why" in paths

            # A queue session excludes other calls of this process and other workers (a file lock) until it ends.
            answers: list[int] = []
            other_worker = ServerQueue(services)
            entered: list[bool] = []

            def other() -> None:
                with other_worker.session():
                    entered.append(True)

            with queue.session():
                caller = threading.Thread(target=lambda: answers.append(client.get(f"{Q}/status").status_code))
                worker = threading.Thread(target=other)
                caller.start()
                worker.start()
                caller.join(0.5)
                worker.join(0.1)
                assert caller.is_alive() and worker.is_alive() and not answers and not entered
            caller.join(10)
            worker.join(10)
            assert answers == [200] and entered == [True]
    finally:
        services.close()
