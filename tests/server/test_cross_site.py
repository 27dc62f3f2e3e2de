"""A web page in the user's browser cannot drive a local server: Host, Origin, Sec-Fetch-Site, CORS, JSON bodies.

Against a real single-user (loopback, no users) ``capstan server``, the setup in which any page the user opens
could otherwise reach http://127.0.0.1:PORT with no credential at all.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from capstan.errors import InvalidParameterValue
from capstan.server.security import BrowserPolicy
from capstan.settings import Settings
from helpers.server import ServerProcess, start_server

UI = "http://ui.example:3000"
EVIL = "http://evil.example"
MLFLOW = "/api/2.0/mlflow"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with start_server(tmp_path_factory.mktemp("xsite"), args=["--allowed-origin", UI]) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


def _experiment(client: httpx.Client) -> str:
    created = client.post(f"{MLFLOW}/experiments/create", json={"name": f"x-{uuid.uuid4().hex[:8]}"})
    assert created.status_code == 200, created.text
    return str(created.json()["experiment_id"])


def _stage(client: httpx.Client, experiment_id: str) -> str:
    got = client.get(f"{MLFLOW}/experiments/get", params={"experiment_id": experiment_id})
    assert got.status_code == 200, got.text
    return str(got.json()["experiment"]["lifecycle_stage"])


def _error(response: httpx.Response, status: int, code: str, field: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error_code"] == code and field in body["message"], body


@pytest.mark.parametrize("content_type, body", [
    ("text/plain", '{"experiment_id": "%s"}'),
    ("application/x-www-form-urlencoded", "experiment_id=%s"),
    ("multipart/form-data; boundary=x",
     '--x\r\nContent-Disposition: form-data; name="experiment_id"\r\n\r\n%s\r\n--x--'),
])
def test_json_routes_refuse_other_content_types(client: httpx.Client, content_type: str, body: str) -> None:
    experiment_id = _experiment(client)
    response = client.post(f"{MLFLOW}/experiments/delete", content=body % experiment_id,
                           headers={"Content-Type": content_type})
    _error(response, 400, "INVALID_PARAMETER_VALUE", "Content-Type must be one of ['application/json']")
    assert _stage(client, experiment_id) == "active"
    native = client.post("/api/v1/experiments", content=b'{"name": "n"}', headers={"Content-Type": content_type})
    _error(native, 415, "BAD_REQUEST", "Content-Type")


def test_json_body_without_content_type_is_refused(client: httpx.Client) -> None:
    experiment_id = _experiment(client)
    response = client.post(f"{MLFLOW}/experiments/delete", content=f'{{"experiment_id": "{experiment_id}"}}')
    _error(response, 400, "INVALID_PARAMETER_VALUE", "Content-Type header is missing")
    assert _stage(client, experiment_id) == "active"
    native = client.post("/api/v1/experiments", content=b'{"name": "n"}')
    _error(native, 415, "BAD_REQUEST", "application/json")


def test_cross_origin_request_is_refused_before_it_acts(client: httpx.Client) -> None:
    experiment_id = _experiment(client)
    for headers in ({"Origin": EVIL}, {"Origin": "null"}, {"Origin": "http://localhost:1"},
                    {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "cors"},
                    {"Sec-Fetch-Site": "same-site", "Sec-Fetch-Mode": "no-cors"}):
        response = client.post(f"{MLFLOW}/experiments/delete", json={"experiment_id": experiment_id},
                               headers=headers)
        _error(response, 403, "PERMISSION_DENIED", next(iter(headers)))
    assert _stage(client, experiment_id) == "active"
    # a read from a foreign page is refused too (a no-cors GET could otherwise probe the server)
    _error(client.get(f"{MLFLOW}/experiments/search", headers={"Origin": EVIL}), 403, "PERMISSION_DENIED", "Origin")


def test_same_origin_and_non_browser_requests_pass(server: ServerProcess, client: httpx.Client) -> None:
    experiment_id = _experiment(client)
    host = server.url.removeprefix("http://")
    same = client.post(f"{MLFLOW}/experiments/update", json={"experiment_id": experiment_id, "new_name": "renamed-"
                       + experiment_id}, headers={"Origin": server.url, "Sec-Fetch-Site": "same-origin"})
    assert same.status_code == 200, same.text
    assert "access-control-allow-origin" not in same.headers
    navigate = client.get("/api/v1/whoami", headers={"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate"})
    assert navigate.status_code == 200, navigate.text
    assert client.get("/api/v1/whoami", headers={"Host": host}).status_code == 200


def test_unknown_host_is_refused_on_loopback(server: ServerProcess, client: httpx.Client) -> None:
    port = server.url.rsplit(":", 1)[1]
    for host in (f"evil.example:{port}", "attacker.test", f"127.0.0.1.nip.io:{port}"):
        _error(client.get("/api/v1/whoami", headers={"Host": host}), 400, "INVALID_PARAMETER_VALUE", "Host")
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", "localhost"):
        assert client.get("/api/v1/whoami", headers={"Host": host}).status_code == 200, host
    assert client.get("/health", headers={"Host": "probe.internal"}).status_code == 200


def test_preflight_from_an_allowed_origin(client: httpx.Client) -> None:
    response = client.options(f"{MLFLOW}/runs/log-metric", headers={
        "Origin": UI, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type, x-capstan-project"})
    assert response.status_code == 204, response.text
    assert response.headers["access-control-allow-origin"] == UI
    assert "POST" in response.headers["access-control-allow-methods"]
    assert set(response.headers["access-control-allow-headers"].split(", ")) == {
        "authorization", "content-type", "x-capstan-project"}
    assert response.headers["vary"] == "Origin"
    actual = client.get(f"{MLFLOW}/experiments/search", params={"max_results": 1}, headers={"Origin": UI})
    assert actual.status_code == 200
    assert actual.headers["access-control-allow-origin"] == UI and "Origin" in actual.headers["vary"]


def test_preflight_from_a_foreign_origin_is_refused(client: httpx.Client) -> None:
    response = client.options("/api/v1/experiments", headers={"Origin": EVIL, "Access-Control-Request-Method": "POST"})
    _error(response, 403, "PERMISSION_DENIED", "Origin")
    assert "access-control-allow-origin" not in response.headers


def test_raw_bodies_still_upload(client: httpx.Client, tmp_path: Path) -> None:
    experiment_id = _experiment(client)
    run = client.post(f"{MLFLOW}/runs/create", json={"experiment_id": experiment_id}).json()["run"]["info"]
    run_id = run["run_id"]
    raw = client.put(f"/api/v1/runs/{run_id}/artifacts/model.bin", content=b"\x00\x01binary",
                     headers={"Content-Type": "application/octet-stream"})
    assert raw.status_code == 204, raw.text
    proxied = client.put(f"/api/2.0/mlflow-artifacts/artifacts/{experiment_id}/{run_id}/artifacts/notes.txt",
                         content=b"hello", headers={"Content-Type": "text/plain"})
    assert proxied.status_code == 200, proxied.text


def test_mlflow_client_keeps_working(server: ServerProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=server.url)
    experiment_id = client.create_experiment(f"mlflow-{uuid.uuid4().hex[:8]}")
    run = client.create_run(experiment_id)
    client.log_metric(run.info.run_id, "loss", 0.5)
    client.log_param(run.info.run_id, "lr", "0.1")
    client.set_tag(run.info.run_id, "t", "v")
    (tmp_path / "a.txt").write_text("artifact")
    client.log_artifact(run.info.run_id, str(tmp_path / "a.txt"))
    assert [f.path for f in client.list_artifacts(run.info.run_id)] == ["a.txt"]
    client.delete_run(run.info.run_id)
    client.delete_experiment(experiment_id)
    assert client.get_experiment(experiment_id).lifecycle_stage == "deleted"


def test_allowed_origins_and_hosts_settings() -> None:
    settings = Settings.from_env({"CAPSTAN_HOME": "/tmp/x",
                                  "CAPSTAN_ALLOWED_ORIGINS": "https://UI.example:443/, http://localhost:3000",
                                  "CAPSTAN_ALLOWED_HOSTS": "capstan.example.com,10.0.0.5:8080"})
    assert settings.allowed_origins == ("https://ui.example", "http://localhost:3000")
    assert settings.allowed_hosts == ("capstan.example.com", "10.0.0.5:8080")
    with pytest.raises(InvalidParameterValue, match="CAPSTAN_ALLOWED_ORIGINS"):
        Settings.from_env({"CAPSTAN_HOME": "/tmp/x", "CAPSTAN_ALLOWED_ORIGINS": "ui.example/path"})
    with pytest.raises(InvalidParameterValue, match="CAPSTAN_ALLOWED_HOSTS"):
        Settings.from_env({"CAPSTAN_HOME": "/tmp/x", "CAPSTAN_ALLOWED_HOSTS": "bad host"})


def test_host_policy_off_loopback() -> None:
    anything = BrowserPolicy(loopback=False)
    assert anything.host_allowed("whatever.example:8080", "10.0.0.5")
    pinned = BrowserPolicy(loopback=False, allowed_hosts=("capstan.example.com", "10.0.0.5:8080"))
    assert pinned.host_allowed("capstan.example.com:443", "10.0.0.5")
    assert pinned.host_allowed("10.0.0.5:8080", "10.0.0.9") and not pinned.host_allowed("10.0.0.5:9090", "10.0.0.9")
    assert not pinned.host_allowed("rebound.example", "10.0.0.9")
    assert BrowserPolicy(loopback=True, allowed_hosts=("*",)).host_allowed("any.example", "127.0.0.1")


def test_bad_allowed_origin_flag_is_one_line(tmp_path: Path) -> None:
    import subprocess

    from helpers.server import capstan_command, clean_env

    result = subprocess.run([*capstan_command(), "server", "--port", "0", "--allowed-origin", "not an origin"],
                            env=clean_env(tmp_path), capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert result.stderr.strip().startswith("error:") and "--allowed-origin" in result.stderr
    assert "Traceback" not in result.stderr


def test_worker_processes_get_the_same_lists(tmp_path: Path) -> None:
    from capstan.server.runner import settings_environment

    settings = Settings.for_home(tmp_path, allowed_origins=("https://ui.example",), allowed_hosts=("a.example",))
    rebuilt = Settings.from_env(settings_environment(settings, "0.0.0.0"))
    assert (rebuilt.allowed_origins, rebuilt.allowed_hosts) == (("https://ui.example",), ("a.example",))
