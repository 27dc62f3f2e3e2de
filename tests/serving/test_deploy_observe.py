"""What a managed deployment shows about itself: the replica command line (deployment, project, payload sampling),
``GET /api/v1/deployments/NAME/drift`` and ``capstan deployments drift`` gathered from real replicas, the controller's
metrics on ``capstan server``'s ``/metrics``, and a replica's payload log under ``deployments/NAME/payloads``."""

from __future__ import annotations

import json
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from capstan.sdk.client import Client
from capstan.services import Services
from capstan.serving.drift_monitor import FeatureDriftStatus, VersionDrift
from capstan.serving.manage import merge_drift
from capstan.serving.replicas import serve_command
from capstan.settings import Settings
from helpers.server import ServerProcess, start_server

API = "/api/v1/deployments"
NAME = "watch"


# -- pure pieces ---------------------------------------------------------------------------------------------------
def test_replica_command_names_its_deployment_and_samples_payloads() -> None:
    command = serve_command("models:/iris/3", "fraud", project="risk", max_batch_size=8, max_batch_delay_ms=2.5,
                            payload_sample_rate=0.25)
    assert command[:5] == [sys.executable, "-m", "capstan", "serve", "models:/iris/3"]
    args = command[5:]
    pairs = dict(zip(args[::2], args[1::2], strict=True))
    assert pairs == {"--name": "fraud", "--host": "127.0.0.1", "--port": "0", "--deployment": "fraud",
                     "--project": "risk", "--max-batch-size": "8", "--max-batch-delay-ms": "2.5",
                     "--payload-sample-rate": "0.25"}
    plain = serve_command("models:/iris/3", "fraud", project="default")
    assert "--payload-sample-rate" not in plain and "--max-batch-size" not in plain
    assert plain[plain.index("--deployment") + 1] == "fraud" and plain[plain.index("--project") + 1] == "default"


def _report(rows: int, windows: int, updated_ms: int | None, drifted: bool, version: str = "1") -> VersionDrift:
    feature = FeatureDriftStatus("0", "numeric", "psi", 0.5 if drifted else 0.01, None, 0.2, drifted)
    return VersionDrift("watch", version, "traffic", 1000, rows, windows, updated_ms,
                        (feature,) if windows else ())


def test_merging_replica_reports_sums_rows_and_keeps_the_latest_window() -> None:
    merged = merge_drift([_report(1500, 1, 2_000, drifted=True), _report(700, 0, None, drifted=False),
                          _report(3000, 2, 5_000, drifted=False), _report(10, 0, None, False, version="2")])
    assert [(m.version, m.rows_seen, m.windows, m.updated_ms, m.drifted) for m in merged] == [
        ("1", 5200, 3, 5_000, False), ("2", 10, 0, None, False)]


# -- against a real server and replica ------------------------------------------------------------------------------
def _wait_for(what: str, check: Callable[[], Any], timeout: float = 90) -> Any:
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
    pytest.importorskip("pyarrow")
    home = tmp_path_factory.mktemp("deploy-observe") / "home"
    x, y = load_iris(return_X_y=True)
    with Client(Settings.for_home(home)) as client:
        run = client.create_run(client.create_experiment(f"exp-{uuid.uuid4().hex[:6]}"))
        client.log_model(run.info.run_id, LogisticRegression(max_iter=300).fit(x, y), "model",
                         registered_model_name="iris")
        client.set_terminated(run.info.run_id)
    with start_server(home) as server:
        yield server


def _call(server: ServerProcess, method: str, path: str = "", **kwargs: Any) -> httpx.Response:
    return httpx.request(method, f"{server.url}{API}{path}", timeout=30, **kwargs)


def _infer(server: ServerProcess, rows: np.ndarray) -> None:
    body = {"inputs": [{"name": "x", "shape": list(rows.shape), "datatype": "FP64", "data": rows.ravel().tolist()}]}
    answer = httpx.post(f"{server.url}/deployments/{NAME}/v2/models/{NAME}/infer", json=body, timeout=30)
    assert answer.status_code == 200, answer.text


def _metric(text: str, name: str, **labels: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(f"{name}{{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


def _scrape_if(server: ServerProcess, check: Callable[[str], bool]) -> str | None:
    """The server's ``/metrics`` text when ``check`` accepts it, else None."""
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    return text if check(text) else None


def _payload_rows(home: Path) -> int:
    """Rows of the Parquet files under ``deployments/NAME/payloads`` in the home's artifact store."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    services = Services.open(Settings.for_home(home))
    try:
        files = [f.path for f in services.artifacts.list(f"deployments/{NAME}/payloads", recursive=True)
                 if f.path.endswith(".parquet")]
        return sum(pq.read_table(pa.BufferReader(services.artifacts.read_bytes(f))).num_rows for f in files)
    finally:
        services.close()


def _drift(server: ServerProcess) -> dict[str, Any]:
    response = _call(server, "GET", f"/{NAME}/drift")
    assert response.status_code == 200, response.text
    return dict(response.json())


@pytest.mark.slow
def test_drift_metrics_and_payloads_of_a_running_deployment(server: ServerProcess) -> None:
    created = _call(server, "POST", json={"name": NAME, "model": "models:/iris/1",
                                          "payload_logging": {"sample_rate": 1}, "drift": {"window": 500}})
    assert created.status_code == 201, created.text
    status = _wait_for("a ready replica", lambda: (s := _call(server, "GET", f"/{NAME}").json())["state"] == "ready"
                       and s)
    assert status["state"] == "ready"

    metrics = _wait_for("replica metrics", lambda: _scrape_if(
        server, lambda t: _metric(t, "capstan_serving_replicas", model=f"default/{NAME}", state="ready") == 1))
    assert _metric(metrics, "capstan_serving_desired_replicas", model=f"default/{NAME}", version="1") == 1
    assert _metric(metrics, "capstan_serving_replicas", model=f"default/{NAME}", version="1", state="failed") == 0

    before = _drift(server)
    assert [r["available"] for r in before["replicas"]] == [True]
    assert [(v["version"], v["rows_seen"], v["features"]) for v in before["versions"]] == [("1", 0, [])]

    x, _ = load_iris(return_X_y=True)
    rng = np.random.default_rng(7)
    reference = x[rng.integers(0, len(x), 1000)]
    _infer(server, reference)  # the first window of traffic becomes the reference (the model has no profile)
    _infer(server, reference + np.array([3.0, 0.0, 0.0, 0.0]))  # the second: the first feature moved
    # the spec's 500-row window: the first 500 rows are the reference, then three windows are compared with it
    after = _wait_for("three drift windows", lambda: (d := _drift(server))["versions"][0]["windows"] >= 3 and d)
    version = after["versions"][0]
    assert version["window_rows"] == 500
    assert version["rows_seen"] == 2000 and version["windows"] == 3 and version["drifted"]
    assert {f["feature"] for f in version["features"] if f["drifted"]} == {"0"}

    services = Services.open(Settings.for_home(server.home))
    try:  # the replica files its DriftDetected event under the deployment, beside the controller's events
        drift_events = services.events.list("deployment", f"default/{NAME}", reason="DriftDetected")
    finally:
        services.close()
    assert drift_events and "0" in drift_events[0].message

    remote = server.remote_cli("deployments", "drift", NAME)
    local = server.cli("deployments", "drift", NAME)
    for out in (remote.stdout, local.stdout):
        lines = out.splitlines()
        assert lines[0].split()[:4] == ["MODEL", "VERSION", "FEATURE", "STAT"]
        assert any(line.split()[2] == "0" and line.split()[-1] == "yes" for line in lines[1:]), out
    assert json.loads(server.remote_cli("deployments", "drift", NAME, "--json").stdout)["versions"][0]["drifted"]

    assert _call(server, "DELETE", f"/{NAME}").status_code == 204  # the replica writes its payloads as it stops
    assert _wait_for("2000 payload rows", lambda: _payload_rows(server.home) == 2000, timeout=30)
    gone = _wait_for("the series of a deleted deployment to go", lambda: _scrape_if(
        server, lambda t: _metric(t, "capstan_serving_desired_replicas", model=f"default/{NAME}") is None))
    assert f'model="default/{NAME}"' not in gone


@pytest.mark.slow
def test_drift_of_an_unknown_deployment(server: ServerProcess) -> None:
    response = _call(server, "GET", "/missing/drift")
    assert response.status_code == 404 and "missing" in response.json()["message"]
    for result in (server.remote_cli("deployments", "drift", "missing", check=False),
                   server.cli("deployments", "drift", "missing", check=False)):
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 1 and len(lines) == 1 and lines[0].startswith("error:"), result.stderr
        assert "does not exist" in lines[0]
