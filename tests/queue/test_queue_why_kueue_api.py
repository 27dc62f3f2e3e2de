"""``GET /api/v1/queue/workloads/RUN/STEP/why`` in Kueue mode, on a real server with auth: a pipeline step's attempt
that Kueue admits is no workload of Capstan's queue, so the route answers with what Kueue last said about its Job
(as the Kubernetes executor records it in the step's events), to readers of the step's project only; and
``capstan why`` against the server (``CAPSTAN_URL``) prints it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from queue_api_helpers import Api, Q, error, serve_queue

from capstan.events.records import WARNING
from capstan.k8s.kueue_status import kueue_status
from capstan.services import Services
from capstan.settings import Settings

CONFIG = """
flavors: [{name: gpu-a}]
clusterQueues:
  - name: team
    resourceGroups:
      - coveredResources: [gpu]
        flavors: [{name: gpu-a, resources: [{name: gpu, nominalQuota: 4}]}]
localQueues:
  - {name: ml, clusterQueue: team, project: p1}
"""
SHORT = ("couldn't assign flavors to pod set main: insufficient unused quota for nvidia.com/gpu in flavor a100, "
         "2 more needed")
PENDING = [{"type": "QuotaReserved", "status": "False", "reason": "Pending", "message": SHORT,
            "lastTransitionTime": "2026-12-07T10:00:00Z", "observedGeneration": 1}]


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    for served in serve_queue(tmp_path_factory, "queue-why-kueue", CONFIG):
        status = kueue_status({"metadata": {"name": "job-capstan-run0123-prep-a1-9d8c7"},
                               "spec": {"queueName": "ml"}, "status": {"conditions": PENDING}})
        assert status is not None
        services = Services.open(Settings.for_home(served.server.home))
        try:  # as the Kubernetes executor records it for a step of a run in project p1
            services.events.append("step", "run0123/prep", "KueuePending", f"workload x: {SHORT}", type=WARNING,
                                   project="p1", data={"kueue": status.to_dict()})
        finally:
            services.close()
        yield served


def test_the_route_answers_with_kueues_reason_for_readers_of_the_steps_project(api: Api) -> None:
    data = api.ok("GET", f"{Q}/workloads/run0123/prep%231/why", who="vera")
    assert data["workload"] == "run0123/prep#1" and data["project"] == "p1"
    assert data["kueue"]["shortfalls"][0]["more"] == "2"
    assert "Missing:   pod set main needs 2 more nvidia.com/gpu in flavor a100 than is free" in data["text"]
    assert "p1" in error(api.call("GET", f"{Q}/workloads/run0123/prep/why", who="olga", project="p2"),
                         403, "PERMISSION_DENIED")
    error(api.call("GET", f"{Q}/workloads/run0123/other/why", who="vera"), 404, "RESOURCE_DOES_NOT_EXIST")


def test_capstan_why_against_the_server_prints_it(api: Api) -> None:
    shown = api.cli("why", "run0123/prep", who="vera")
    assert "Workload:  step run0123/prep (Kueue workload job-capstan-run0123-prep-a1-9d8c7)" in shown.stdout
    missing = api.cli("why", "run0123/other", who="vera", check=False)
    assert missing.returncode != 0 and len(missing.stderr.splitlines()) == 1
