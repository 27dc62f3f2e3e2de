"""``capstan k8s router``: Capstan's deployment router over fixed version URLs (`capstan.serving.static_routes`), the
process the native serving rendering runs for a canary or shadow.

Real replicas (the serving app with constant models, so each answer tells which version gave it) answer on loopback
ports, standing in for the versions' Kubernetes Services; the router runs under uvicorn, and once as the very
command line the renderer writes. No Kubernetes API server is involved.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt
import pytest

from capstan.cli.main import main
from capstan.errors import InvalidParameterValue, InvalidState
from capstan.k8s.render_serving import ServingRenderOptions, render_serving
from capstan.serving.app import serving_app
from capstan.serving.model import SklearnServedModel
from capstan.serving.ports import LoadReport, Role
from capstan.serving.router import DeploymentRouter, RouterOptions
from capstan.serving.spec import parse_spec
from capstan.serving.static_routes import StaticDeploymentStore, router_app, static_record
from helpers.asgi_server import serve_app

NAME = "fraud"
INFER = f"/v2/models/{NAME}/infer"
ROW = {"inputs": [{"name": "input-0", "shape": [1, 2], "datatype": "FP64", "data": [1.0, 2.0]}]}


class Constant:
    """Predicts ``value`` for every row."""

    def __init__(self, value: float) -> None:
        self.value = value

    def predict(self, x: npt.NDArray[Any]) -> npt.NDArray[Any]:
        return np.full(len(x), self.value)


class Counting:
    """Counts the inference requests an ASGI app receives."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.infers = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == INFER:
            self.infers += 1
        await self.app(scope, receive, send)


@contextmanager
def _replica(version: int, value: float) -> Iterator[tuple[str, Counting]]:
    model = SklearnServedModel(NAME, str(version), Constant(value), 2)
    app = Counting(serving_app({NAME: model}, max_body_bytes=1 << 20, batching=None))
    with serve_app(app) as url:
        yield url, app


@pytest.fixture
def versions() -> Iterator[dict[Role, tuple[str, Counting]]]:
    roles: tuple[tuple[Role, int, float], ...] = (("primary", 6, 0.0), ("canary", 7, 1.0), ("shadow", 8, 2.0))
    with ExitStack() as stack:
        yield {role: stack.enter_context(_replica(version, value)) for role, version, value in roles}


def _spec(canary: float = 30, shadow: float = 50) -> Any:
    return parse_spec({"name": NAME, "model": "models:/fraud/6",
                       "canary": {"model": "models:/fraud/7", "traffic": canary},
                       "shadow": {"model": "models:/fraud/8", "traffic": shadow}})


def _prediction(response: httpx.Response) -> float:
    return float(response.json()["outputs"][0]["data"][0])


def _eventually(check: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def test_split_pins_and_shadow_through_the_static_router(versions: dict[Role, tuple[str, Counting]]) -> None:
    store = StaticDeploymentStore(static_record(_spec(), "default"),
                                  {role: url for role, (url, _) in versions.items()})
    router = DeploymentRouter(store, options=RouterOptions(report_interval_s=0.05))
    n = 300
    with serve_app(router_app(router, "default", NAME)) as url, httpx.Client(base_url=url, timeout=30) as client:
        assert client.get("/v2/health/live").json() == {"live": True}
        assert client.get("/v2/health/ready").json() == {"ready": True}
        answers = [client.post(INFER, json=ROW) for _ in range(n)]
        assert all(a.status_code == 200 for a in answers)
        canary = sum(_prediction(a) == 1.0 for a in answers)
        assert {_prediction(a) for a in answers} == {0.0, 1.0}  # the shadow's answers never reach the client
        # 30 % canary: within five standard deviations of the binomial draw.
        assert abs(canary - 0.3 * n) < 5 * (n * 0.3 * 0.7) ** 0.5
        assert {a.headers["x-capstan-version"] for a in answers} == {"6", "7"}
        pinned = client.post(INFER, json=ROW, headers={"x-capstan-version": "canary"})
        assert _prediction(pinned) == 1.0 and pinned.headers["x-capstan-version"] == "7"
        unknown = client.post(INFER, json=ROW, headers={"x-capstan-version": "9"})
        assert unknown.status_code == 404 and "versions" in unknown.json()
        # Half the requests are mirrored to the shadow, in the background after the live answer.
        _eventually(lambda: versions["shadow"][1].infers >= 0.3 * n)
        assert versions["shadow"][1].infers < 0.7 * n
        _eventually(lambda: any(r.completed for r in store.load("default", NAME, since_ms=0)))


def test_the_static_store_is_read_only_and_needs_every_url() -> None:
    record = static_record(_spec(), "default")
    with pytest.raises(InvalidParameterValue, match=r"^upstream: no URL for the shadow version"):
        StaticDeploymentStore(record, {"primary": "http://a", "canary": "http://b"})
    with pytest.raises(InvalidParameterValue, match=r"^upstream: a URL for canary, which the deployment"):
        StaticDeploymentStore(static_record(parse_spec({"name": NAME, "model": "models:/fraud/6"}), "default"),
                              {"primary": "http://a", "canary": "http://b"})
    store = StaticDeploymentStore(record, {"primary": "http://a", "canary": "http://b", "shadow": "http://c"})
    assert store.get("default", NAME) == record and store.get("other", NAME) is None
    assert [(r.role, r.url, r.state) for r in store.replicas(deployment=NAME)] == [
        ("primary", "http://a", "ready"), ("canary", "http://b", "ready"), ("shadow", "http://c", "ready")]
    with pytest.raises(InvalidState):
        store.put(record)
    with pytest.raises(InvalidState):
        store.delete("default", NAME)
    for i in range(100):
        store.report_load(LoadReport(f"w{i}", NAME, "default", 0, 1, 0, i))
    assert len(store.load("default", NAME, since_ms=0)) == 64  # the newest workers' reports are kept


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_the_rendered_router_command_runs(versions: dict[Role, tuple[str, Counting]], tmp_path: Path) -> None:
    """The router Deployment's command line, as rendered, with the Service URLs replaced by the loopback replicas."""
    [router] = [o for o in render_serving(_spec(canary=50, shadow=0), ServingRenderOptions(image="i"))
                if o["kind"] == "Deployment" and o["metadata"]["name"] == "fraud-router"]
    command = list(router["spec"]["template"]["spec"]["containers"][0]["command"])
    for role, (url, _) in versions.items():
        flag = "--upstream" if role == "primary" else f"--{role}-upstream"
        command[command.index(flag) + 1] = url
    port = _free_port()
    command[command.index("--host") + 1] = "127.0.0.1"
    command[command.index("--port") + 1] = str(port)
    assert command[0] == "capstan"
    env = {**os.environ, "CAPSTAN_HOME": str(tmp_path)}
    process = subprocess.Popen([sys.executable, "-m", *command], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    try:
        base = f"http://127.0.0.1:{port}"

        def up() -> bool:
            assert process.poll() is None, process.stdout.read() if process.stdout else ""
            try:
                return httpx.get(f"{base}/v2/health/ready", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        _eventually(up, timeout=60)
        with httpx.Client(base_url=base, timeout=30) as client:
            predictions = {_prediction(client.post(INFER, json=ROW)) for _ in range(40)}
        assert predictions == {0.0, 1.0}
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.mark.parametrize(("args", "message"), [
    (["--canary", "models:/fraud/7"], "error: --canary-upstream: required with --canary"),
    (["--canary", "models:/fraud/7", "--canary-upstream", "http://c", "--canary-traffic", "120"],
     "error: spec.canary.traffic: must be between 0 and 100, got 120"),
    (["--upstream", "fraud-primary:8080"], "error: --upstream: 'fraud-primary:8080' is not an http:// or https:// URL"),
])
def test_router_cli_bad_input_is_one_line(args: list[str], message: str,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    base = ["k8s", "router", NAME, "--model", "models:/fraud/6"]
    if "--upstream" not in args:
        base += ["--upstream", "http://fraud-primary:8080"]
    with pytest.raises(SystemExit) as exited:
        main([*base, *args])
    assert exited.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1, err
