"""A running workload reports its checkpoints to the queue over HTTP: ``POST /api/v1/queue/workloads/{id}/checkpoint``
on a real ``capstan server`` with auth (input checks, permissions, a deployment-scoped token), a client process whose
`capstan.checkpoint.save` reports through it, ``capstan queue checkpoint`` against the server, and what ``capstan
why`` then says about a preemption."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from queue_api_helpers import Api, Q, error, serve_queue

from helpers.server import clean_env

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
      - coveredResources: [gpu]
        flavors: [{name: gpu-a, resources: [{name: gpu, nominalQuota: 4}]}]
localQueues:
  - {name: ml, clusterQueue: team, project: p1}
"""
TRAIN = "run-1/train#2"  # a pipeline step's retry: '/' and '#' in the id
TRAIN_PATH = "run-1/train%232"


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    yield from serve_queue(tmp_path_factory, "queue-ckpt", CONFIG, {"ed-scoped": ("ed", "deployment:p1/serve")})


def submit(api: Api, wid: str, gpu: int, priority: str = "low") -> dict[str, Any]:
    body = {"id": wid, "queue": "ml", "priority_class": priority, "pod_sets": [{"count": 1, "requests": {"gpu": gpu}}]}
    return api.ok("POST", f"{Q}/workloads", who="ed", status=201, json=body)


def test_the_route_records_a_save_checks_its_input_and_its_caller(api: Api) -> None:
    assert submit(api, TRAIN, 2)["workload"]["state"] == "Admitted"
    url = f"{Q}/workloads/{TRAIN_PATH}/checkpoint"
    saved = api.ok("POST", url, who="ed", json={"step": 300})["workload"]
    assert saved["id"] == TRAIN and saved["checkpoint_step"] == 300 and saved["checkpointed_at"] is not None
    again = api.ok("POST", url, who="ed")["workload"]  # no body: a save without a step
    assert again["checkpoint_step"] is None and again["checkpointed_at"] >= saved["checkpointed_at"]

    for body in ({"step": -1}, {"step": "3"}, {"step": 1.5}, {"step": True}, {"step": 2**63}):
        assert "step" in error(api.call("POST", url, who="ed", json=body), 400, "INVALID_PARAMETER_VALUE"), body
    assert "stepp" in error(api.call("POST", url, who="ed", json={"stepp": 1}), 400, "INVALID_PARAMETER_VALUE")
    error(api.call("POST", url, who="ed", content=b"{not json", headers={"Content-Type": "application/json"}),
          400, "INVALID_PARAMETER_VALUE")
    assert "nope" in error(api.call("POST", f"{Q}/workloads/nope/checkpoint", who="ed", json={"step": 1}),
                           404, "RESOURCE_DOES_NOT_EXIST")
    submit(api, "waiting", 4)  # no quota left: pending, so nothing runs that could have saved
    assert "not running" in error(api.call("POST", f"{Q}/workloads/waiting/checkpoint", who="ed"),
                                  400, "INVALID_STATE")

    error(api.call("POST", url, who=None, json={"step": 1}), 401, "UNAUTHENTICATED")
    for who in ("vera", "olga", "ed-scoped"):  # a viewer, an editor of another project, a deployment's token
        error(api.call("POST", url, who=who, json={"step": 1}), 403, "PERMISSION_DENIED")
    assert api.ok("GET", f"{Q}/workloads/{TRAIN_PATH}", who="vera")["workload"]["checkpoint_step"] is None
    api.ok("POST", f"{Q}/workloads/waiting/cancel", who="ed")
    api.ok("POST", f"{Q}/workloads/{TRAIN_PATH}/finish", who="ed")


def test_a_client_process_reports_its_saves_and_why_tells_what_a_preemption_lost(api: Api, tmp_path: Path) -> None:
    assert submit(api, "job/sweep", 4)["workload"]["state"] == "Admitted"
    script = ("import capstan, capstan.checkpoint as c\n"
              "with capstan.start_run():\n"
              "    for step in (100, 200):\n"
              "        assert c.save({'w': step}, step)\n")
    env = clean_env(tmp_path / "client-home", {**api.client_env("ed"), "CAPSTAN_WORKLOAD_ID": "job/sweep"})
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "not told" not in done.stderr
    record = api.ok("GET", f"{Q}/workloads/job/sweep", who="ed")["workload"]
    assert record["checkpoint_step"] == 200 and record["checkpointed_at"] is not None

    cli = api.server.cli("queue", "checkpoint", "job/sweep", "--step", "300", env=api.client_env("ed"))
    assert cli.stdout.strip() == "job/sweep: checkpoint at step 300 recorded"
    denied = api.server.cli("queue", "checkpoint", "job/sweep", env=api.client_env("vera"), check=False)
    assert denied.returncode == 1 and denied.stderr.startswith("error: ") and "Traceback" not in denied.stderr
    bad = api.server.cli("queue", "checkpoint", "job/sweep", "--step", "-3", env=api.client_env("ed"), check=False)
    assert bad.returncode == 2 and "--step" in bad.stderr and "Traceback" not in bad.stderr

    urgent = submit(api, "urgent", 4, priority="high")
    assert urgent["preempting"] == ["job/sweep"]
    why = api.server.cli("why", "job/sweep", env=api.client_env("vera")).stdout
    assert "Reason:    Preempted" in why
    assert re.search(r"preempted by urgent \(InClusterQueue\); lost 0\.0\d GPU-hours: \d+ s since its last "
                     r"checkpoint at step 300 on 4 GPUs", why), why
    late = api.server.cli("queue", "checkpoint", "job/sweep", env=api.client_env("ed"), check=False)
    assert late.returncode == 1 and "Evicting, not running" in late.stderr
    stopped = api.ok("POST", f"{Q}/workloads/job/sweep/evicted", who="ed")["workload"]
    assert "at step 300 on 4 GPUs; requeued after" in stopped["message"]
    api.ok("POST", f"{Q}/workloads/urgent/finish", who="ed")
    api.ok("POST", f"{Q}/workloads/job/sweep/cancel", who="ed")
