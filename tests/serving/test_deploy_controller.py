"""The deployment controller with real ``capstan serve`` replica subprocesses of a small scikit-learn model: start,
crash and restart, a model that fails to load, scale to zero and back (cold start), promote and rollback replica
transitions, and a second controller adopting what the first left running."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from capstan.sdk.client import Client
from capstan.services import Services
from capstan.serving.controller import DeploymentController
from capstan.serving.manage import DeploymentManager
from capstan.serving.ports import LoadReport, ReplicaRecord, routing_table
from capstan.serving.replicas import SubprocessLauncher, pid_alive
from capstan.serving.spec import parse_spec
from capstan.settings import Settings

pytestmark = pytest.mark.slow
MODEL = "iris"
PROJECT = "default"
ROW = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP64", "data": [5.1, 3.5, 1.4, 0.2]}]}


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """Two versions of an iris classifier registered as MODEL; returns the home and the run id of version 1."""
    home = tmp_path_factory.mktemp("deploy-home")
    x, y = load_iris(return_X_y=True)
    with Client(Settings.for_home(home)) as client:
        experiment_id = client.create_experiment("deployments")
        run_ids = []
        for c in (1.0, 0.01):
            run = client.create_run(experiment_id)
            client.log_model(run.info.run_id, LogisticRegression(C=c, max_iter=300).fit(x, y), "model",
                             registered_model_name=MODEL)
            client.set_terminated(run.info.run_id)
            run_ids.append(run.info.run_id)
    return home, run_ids[0]


@dataclass
class Plane:
    services: Services
    manager: DeploymentManager
    controllers: list[DeploymentController]

    def controller(self) -> DeploymentController:
        controller = DeploymentController(self.services.deployments, events=self.services.events,
                                          launcher=SubprocessLauncher(self.services.settings),
                                          admission=self.services.admission.get, interval_s=0.1, drain_s=1.0)
        controller.start()
        self.controllers.append(controller)
        return controller

    def apply(self, **spec: Any) -> None:
        self.manager.apply(parse_spec(spec), PROJECT)

    def replicas(self, name: str) -> tuple[ReplicaRecord, ...]:
        return self.services.deployments.replicas(PROJECT, name)

    def ready(self, name: str, version: str | None = None) -> list[ReplicaRecord]:
        return [r for r in self.replicas(name) if r.state == "ready" and version in (None, r.model_version)]

    def reasons(self, name: str) -> list[str]:
        return [e.reason for e in self.services.events.list("deployment", f"{PROJECT}/{name}")]


@pytest.fixture
def plane(home: tuple[Path, str]) -> Iterator[Plane]:
    services = Services.open(Settings.for_home(home[0]))
    plane = Plane(services, services.deployment_manager(), [])
    try:
        yield plane
    finally:
        for controller in plane.controllers:
            controller.stop()
        for record in services.deployments.list():
            services.deployments.delete(record.project, record.name)
        services.close()


def wait_for(what: str, check: Callable[[], Any], timeout: float = 90) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def infer(url: str, name: str) -> int:
    response = httpx.post(f"{url}/v2/models/{name}/infer", json=ROW, timeout=10)
    assert response.status_code == 200, response.text
    return int(response.json()["outputs"][0]["data"][0])


def test_replica_serves_and_a_crash_is_restarted_with_events(plane: Plane) -> None:
    plane.controller()
    plane.apply(name="crashy", model=f"models:/{MODEL}/1")
    first = wait_for("a ready replica", lambda: plane.ready("crashy"))[0]
    assert first.url is not None and first.pid is not None
    assert infer(first.url, "crashy") == 0
    os.kill(first.pid, signal.SIGKILL)
    again = wait_for("the replica back", lambda: [r for r in plane.ready("crashy") if r.pid != first.pid])[0]
    assert again.id == first.id and again.restarts == 1
    assert infer(again.url or "", "crashy") == 0
    reasons = plane.reasons("crashy")
    assert reasons.index("ReplicaCrashed") < reasons.index("ReplicaRestarted")


def test_a_model_that_fails_to_load_fails_its_deployment_only(plane: Plane, home: tuple[Path, str]) -> None:
    plane.controller()
    plane.apply(name="good", model=f"models:/{MODEL}/1")
    plane.apply(name="broken", model=f"runs:/{home[1]}/no-such-model")
    wait_for("ModelLoadFailed", lambda: "ModelLoadFailed" in plane.reasons("broken"))
    event = next(e for e in plane.services.events.list("deployment", f"{PROJECT}/broken")
                 if e.reason == "ModelLoadFailed")
    assert "no-such-model" in event.message or "error" in event.message, event.message
    assert plane.manager.status(PROJECT, "broken")["state"] in ("failed", "starting")
    assert [r.state for r in plane.replicas("broken")] != ["ready"]
    assert wait_for("the good one", lambda: plane.ready("good"))


def test_scale_to_zero_and_back_records_the_cold_start(plane: Plane) -> None:
    plane.controller()
    plane.apply(name="sleepy", model=f"models:/{MODEL}/1", autoscaling={
        "min_replicas": 0, "max_replicas": 2, "target_concurrency": 1, "stabilization_window_seconds": 1})
    assert plane.manager.status(PROJECT, "sleepy")["state"] == "scaled-to-zero"  # min_replicas 0: starts at zero
    assert plane.replicas("sleepy") == ()

    def waiting_until_ready() -> list[ReplicaRecord]:  # a router reports its waiting request until a replica is up
        now = int(time.time() * 1000)
        plane.services.deployments.report_load(LoadReport("w1", "sleepy", PROJECT, 0, 0, 1, now))
        time.sleep(0.2)
        return plane.ready("sleepy")

    wait_for("scale from zero", waiting_until_ready)
    status = wait_for("the cold start", lambda: (s := plane.manager.status(PROJECT, "sleepy"))
                      ["last_cold_start_s"] is not None and s)
    assert status["last_cold_start_s"] > 0
    wait_for("scale to zero again", lambda: not plane.replicas("sleepy"))  # idle for a window: none
    assert "ColdStart" in plane.reasons("sleepy") and "Autoscaled" in plane.reasons("sleepy")


def test_promote_moves_traffic_to_running_canary_replicas_and_rollback_returns(plane: Plane) -> None:
    plane.controller()
    plane.apply(name="ab", model=f"models:/{MODEL}/1", canary={"model": f"models:/{MODEL}/2", "traffic": 20})
    wait_for("both versions", lambda: plane.ready("ab", f"models:/{MODEL}/1")
             and plane.ready("ab", f"models:/{MODEL}/2"))
    canary = plane.ready("ab", f"models:/{MODEL}/2")[0]
    record = plane.manager.promote(PROJECT, "ab")
    table = routing_table(record, plane.replicas("ab"))
    assert [(r.role, r.version, r.urls) for r in table.routes] == [("primary", "2", (canary.url,))]
    for _ in range(5):  # the old primary's replicas drain, the canary's keep serving as the primary
        assert infer(canary.url or "", "ab") in (0, 1, 2)
    wait_for("old version stopped", lambda: not [r for r in plane.replicas("ab")
                                                 if r.model_version.endswith("/1")])
    assert plane.ready("ab", f"models:/{MODEL}/2")[0].id == canary.id
    record = plane.manager.rollback(PROJECT, "ab")  # no canary: the revision before's primary (1), alone
    assert (record.version_of("primary"), record.version_of("canary")) == (f"models:/{MODEL}/1", None)
    assert record.spec.canary is None
    wait_for("version 1 back", lambda: plane.ready("ab", f"models:/{MODEL}/1"))
    wait_for("version 2 gone", lambda: not [r for r in plane.replicas("ab") if r.model_version.endswith("/2")])
    record = plane.manager.rollback(PROJECT, "ab")  # again: back to 2 (two rollbacks toggle)
    assert record.version_of("primary") == f"models:/{MODEL}/2"
    wait_for("version 2 back", lambda: plane.ready("ab", f"models:/{MODEL}/2"))


def test_a_new_controller_adopts_live_replicas_and_restarts_dead_ones(plane: Plane) -> None:
    first = plane.controller()
    plane.apply(name="durable", model=f"models:/{MODEL}/1", replicas=2)
    ready = wait_for("two replicas", lambda: len(plane.ready("durable")) == 2 and plane.ready("durable"))
    first.detach()  # the server process died: its replicas keep running
    plane.controllers.remove(first)
    survivor, victim = ready
    assert victim.pid is not None
    os.kill(victim.pid, signal.SIGKILL)
    wait_for("the victim gone", lambda: not pid_alive(victim.pid or 0))
    second = plane.controller()
    wait_for("two replicas again", lambda: len(plane.ready("durable")) == 2 and victim.id not in
             {r.id for r in plane.ready("durable")})
    ids = {r.id for r in plane.ready("durable")}
    assert survivor.id in ids
    assert "ReplicaAdopted" in plane.reasons("durable")
    pids = [r.pid for r in plane.ready("durable")]
    second.stop()
    plane.controllers.remove(second)
    wait_for("replicas stopped", lambda: not any(pid_alive(p or 0) for p in pids), timeout=15)
    assert plane.replicas("durable") == ()
