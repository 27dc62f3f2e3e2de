"""``/api/v1/deployments`` against a real ``capstan server`` on a loopback port, whose controller starts real
``capstan serve`` replicas; bad input; indirect access to another project's model; a server restart bringing a
running deployment back."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from capstan.sdk.client import Client
from capstan.services import Services
from capstan.settings import Settings
from helpers.server import ServerProcess, start_server

pytestmark = pytest.mark.slow
API = "/api/v1/deployments"
ROW = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP64", "data": [5.1, 3.5, 1.4, 0.2]}]}


def register(home: Path, name: str, project: str = "default", versions: int = 1) -> None:
    x, y = load_iris(return_X_y=True)
    with Client(Settings.for_home(home, project=project)) as client:
        experiment_id = client.create_experiment(f"exp-{uuid.uuid4().hex[:6]}")
        for c in (1.0, 0.01)[:versions]:
            run = client.create_run(experiment_id)
            client.log_model(run.info.run_id, LogisticRegression(C=c, max_iter=300).fit(x, y), "model",
                             registered_model_name=name)
            client.set_terminated(run.info.run_id)


def wait_for(what: str, check: Callable[[], Any], timeout: float = 90) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    home = tmp_path_factory.mktemp("deploy-api") / "home"
    register(home, "iris", versions=2)
    with start_server(home) as server:
        yield server


def call(server: ServerProcess, method: str, path: str = "", **kwargs: Any) -> httpx.Response:
    return httpx.request(method, f"{server.url}{API}{path}", timeout=30, **kwargs)


def ready_urls(server: ServerProcess, name: str) -> list[str]:
    status = call(server, "GET", f"/{name}").json()
    return [r["url"] for r in status["replicas"] if r["state"] == "ready"]


def test_create_serve_change_and_delete(server: ServerProcess) -> None:
    created = call(server, "POST", json={"name": "flow", "model": "models:/iris/1"})
    assert created.status_code == 201, created.text
    assert created.json()["deployment"]["versions"] == {"primary": "models:/iris/1"}
    again = call(server, "POST", params={"create": "true"}, json={"name": "flow", "model": "models:/iris/1"})
    assert (again.status_code, again.json()["error_code"]) == (400, "RESOURCE_ALREADY_EXISTS"), again.text
    url = wait_for("a ready replica", lambda: ready_urls(server, "flow"))[0]
    answer = httpx.post(f"{url}/v2/models/flow/infer", json=ROW, timeout=10)
    assert answer.status_code == 200, answer.text
    routed = httpx.post(f"{server.url}/deployments/flow/v2/models/flow/infer", json=ROW, timeout=30)
    assert routed.status_code == 200 and routed.json()["outputs"][0]["data"] == answer.json()["outputs"][0]["data"]
    status = call(server, "GET", "/flow").json()
    assert status["state"] == "ready" and status["traffic"][0]["ready_replicas"] == 1
    assert "Created" in [e["reason"] for e in status["events"]]
    listed = call(server, "GET").json()["deployments"]
    assert [(d["name"], d["state"]) for d in listed] == [("flow", "ready")]
    changed = call(server, "POST", json={"name": "flow", "model": "models:/iris/1",
                                         "canary": {"model": "models:/iris/2", "traffic": 25}})
    assert changed.status_code == 200 and changed.json()["deployment"]["revision"] == 2
    assert call(server, "POST", "/flow/rollback").json()["deployment"]["versions"] == {"primary": "models:/iris/1"}
    scaled = call(server, "POST", "/flow/scale", json={"replicas": 2})
    assert scaled.status_code == 200 and scaled.json()["deployment"]["desired_replicas"] == 2
    assert call(server, "DELETE", "/flow").status_code == 204
    assert call(server, "GET", "/flow").status_code == 404
    wait_for("replicas stopped", lambda: not _ready(url), timeout=30)


def _answers(url: str) -> bool:
    """Whether anything answers at ``url`` (a stopped replica does not)."""
    try:
        httpx.get(f"{url}/v2/health/ready", timeout=1)
    except httpx.HTTPError:
        return False
    return True


def _ready(url: str) -> bool:
    """Whether the replica at ``url`` answers ready (one request: a replica that stops between two requests must
    not fail the check)."""
    try:
        return httpx.get(f"{url}/v2/health/ready", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.mark.parametrize(("body", "status", "needle"), [
    ({"name": "Bad", "model": "models:/iris/1"}, 400, "spec.name"),
    ({"name": "x", "model": "models:/iris/1", "replicas": 0}, 400, "spec.replicas"),
    ({"name": "x", "model": "models:/iris/1", "canary": {"model": "models:/iris/2", "traffic": 120}}, 400,
     "spec.canary.traffic"),
    ({"name": "x", "model": "models:/iris/1", "resources": {"queue": "nope"}}, 400, "spec.resources"),
    ({"name": "x", "model": "models:/nope/1"}, 404, "nope"),
    ({"name": "x", "model": "models:/iris/9"}, 404, "spec.model"),
    ({"name": "x"}, 400, "spec.model"),
])
def test_bad_specs_are_4xx_naming_the_field(server: ServerProcess, body: dict[str, Any], status: int,
                                             needle: str) -> None:
    response = call(server, "POST", json=body)
    assert response.status_code == status, response.text
    assert needle in response.json()["message"]


def test_bad_actions(server: ServerProcess) -> None:
    call(server, "POST", json={"name": "idle", "model": "models:/iris/1",
                               "autoscaling": {"min_replicas": 0, "max_replicas": 1, "target_concurrency": 1}})
    promoted = call(server, "POST", "/idle/promote")
    assert (promoted.status_code, promoted.json()["error_code"]) == (400, "INVALID_STATE"), promoted.text
    assert call(server, "POST", "/idle/scale", json={"replicas": 0}).status_code == 400
    assert call(server, "POST", "/idle/scale", json={"replicas": "2"}).status_code == 400
    assert call(server, "POST", "/nothing/rollback").status_code == 404
    status = call(server, "GET", "/idle").json()
    assert status["state"] == "scaled-to-zero" and status["replicas"] == []
    assert call(server, "DELETE", "/idle").status_code == 204


def test_a_request_wakes_a_deployment_scaled_to_zero(server: ServerProcess) -> None:
    call(server, "POST", json={"name": "sleepy", "model": "models:/iris/1", "autoscaling": {
        "min_replicas": 0, "max_replicas": 1, "target_concurrency": 1, "stabilization_window_seconds": 1}})
    assert call(server, "GET", "/sleepy").json()["state"] == "scaled-to-zero"
    woken = httpx.post(f"{server.url}/deployments/sleepy/v2/models/sleepy/infer", json=ROW, timeout=90)
    assert woken.status_code == 200, woken.text
    status = wait_for("the cold start", lambda: (s := call(server, "GET", "/sleepy").json())
                      ["last_cold_start_s"] is not None and s)
    assert status["last_cold_start_s"] > 0 and status["state"] == "ready"
    wait_for("back to zero", lambda: call(server, "GET", "/sleepy").json()["state"] == "scaled-to-zero", 60)
    assert call(server, "DELETE", "/sleepy").status_code == 204


def test_a_model_of_another_project_needs_read_access_there(tmp_path: Path) -> None:
    home = tmp_path / "home"
    register(home, "secret", project="beta")
    services = Services.open(Settings.for_home(home))
    try:
        services.auth.create_user("root", admin=True)
        root = services.auth.create_token("root").secret
        services.auth.create_user("ed")
        services.auth.grant("ed", "alpha", "editor")
        editor = services.auth.create_token("ed").secret
    finally:
        services.close()
    spec = {"name": "leak", "model": "models:/secret/1",
            "autoscaling": {"min_replicas": 0, "max_replicas": 1, "target_concurrency": 1}}
    with start_server(home) as server:
        def post(token: str) -> httpx.Response:
            return call(server, "POST", json=spec, headers={"Authorization": f"Bearer {token}",
                                                            "X-Capstan-Project": "alpha"})

        refused = post(editor)
        assert refused.status_code == 403 and refused.json()["error_code"] == "PERMISSION_DENIED", refused.text
        assert post(root).status_code == 201


def test_a_running_deployment_comes_back_after_a_server_restart(tmp_path: Path) -> None:
    home = tmp_path / "home"
    register(home, "iris")
    with start_server(home) as server:
        call(server, "POST", json={"name": "durable", "model": "models:/iris/1"})
        first = wait_for("a ready replica", lambda: ready_urls(server, "durable"))[0]
    assert not _answers(first)  # a clean shutdown stops the replicas
    with start_server(home) as server:
        second = wait_for("a ready replica again", lambda: ready_urls(server, "durable"))[0]
        assert httpx.post(f"{second}/v2/models/durable/infer", json=ROW, timeout=10).status_code == 200
