"""Capstan's REST API under /api/v1, against a real ``capstan server`` on a loopback port (raw HTTP, no SDK)."""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from capstan.services import Services
from capstan.settings import Settings
from helpers.server import ServerProcess, start_server

API = "/api/v1"
NOW = 1_700_000_000_000
LIMIT = 2 * 1024 * 1024


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """Single-user mode on loopback, with a 2 MB artifact limit."""
    with start_server(tmp_path_factory.mktemp("api"), env={"CAPSTAN_ARTIFACT_MAX_BYTES": str(LIMIT)}) as srv:
        yield srv


@pytest.fixture(scope="module")
def api(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url + API, timeout=30) as client:
        yield client


def error(response: httpx.Response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error_code"] == code, body
    return str(body["message"])


def make_run(api: httpx.Client) -> tuple[str, str]:
    created = api.post("/experiments", json={"name": unique("exp")})
    assert created.status_code == 201, created.text
    experiment_id = created.json()["experiment_id"]
    run = api.post("/runs", json={"experiment_id": experiment_id, "run_name": "r", "start_time": NOW})
    assert run.status_code == 201, run.text
    return experiment_id, run.json()["info"]["run_id"]


def test_openapi_document_describes_the_api(api: httpx.Client) -> None:
    doc = api.get("/openapi.json").json()
    paths = doc["paths"]
    for path in ("/api/v1/experiments", "/api/v1/runs", "/api/v1/runs/search", "/api/v1/runs/{run_id}/batch",
                 "/api/v1/runs/{run_id}/metrics/{key}", "/api/v1/metrics/batch",
                 "/api/v1/runs/{run_id}/artifacts/{path}", "/api/v1/registered-models/{name}/versions",
                 "/api/v1/registered-models/{name}/aliases/{alias}", "/api/v1/logged-models"):
        assert path in paths, path
    schemas = doc["components"]["schemas"]
    assert {"RunCreate", "LogBatch", "MetricIn", "RunOut", "ModelVersionOut"} <= set(schemas)
    assert set(schemas["MetricIn"]["required"]) == {"key", "value", "timestamp"}
    upload = paths["/api/v1/runs/{run_id}/artifacts/{path}"]["put"]
    assert "application/octet-stream" in upload["requestBody"]["content"]


def test_experiment_and_run_flow(api: httpx.Client) -> None:
    experiment_id, run_id = make_run(api)
    batch = {"metrics": [{"key": "loss", "value": 0.5, "timestamp": NOW, "step": 0},
                         {"key": "loss", "value": "NaN", "timestamp": NOW + 1, "step": 1}],
             "params": [{"key": "lr", "value": "0.1"}], "tags": [{"key": "team", "value": "risk"}]}
    assert api.post(f"/runs/{run_id}/batch", json=batch).status_code == 204
    run = api.get(f"/runs/{run_id}").json()
    assert run["info"]["status"] == "RUNNING" and run["data"]["params"] == {"lr": "0.1"}
    assert run["data"]["tags"]["team"] == "risk"
    history = api.get(f"/runs/{run_id}/metrics/loss").json()["metrics"]
    assert [m["value"] for m in history] == [0.5, "NaN"]
    updated = api.patch(f"/runs/{run_id}", json={"status": "FINISHED", "end_time": NOW + 5})
    assert updated.json()["info"]["status"] == "FINISHED"
    found = api.post("/runs/search", json={"experiment_ids": [experiment_id], "filter": "params.lr = '0.1'",
                                           "order_by": ["attributes.start_time DESC"]}).json()
    assert [r["info"]["run_id"] for r in found["runs"]] == [run_id]
    listed = api.get("/experiments", params={"filter": "name LIKE 'exp-%'", "max_results": 1000}).json()
    assert experiment_id in {e["experiment_id"] for e in listed["experiments"]}
    assert api.delete(f"/runs/{run_id}").status_code == 204
    assert api.get(f"/runs/{run_id}").json()["info"]["lifecycle_stage"] == "deleted"
    assert api.post(f"/runs/{run_id}/restore").status_code == 204


def test_metrics_of_several_runs_in_one_call(api: httpx.Client) -> None:
    experiment_id, run_a = make_run(api)
    run_b = api.post("/runs", json={"experiment_id": experiment_id}).json()["info"]["run_id"]
    body = {"runs": {run_a: [{"key": "acc", "value": i / 10, "timestamp": NOW + i, "step": i} for i in range(20)],
                     run_b: [{"key": "acc", "value": "Infinity", "timestamp": NOW}]}}
    assert api.post("/metrics/batch", json=body).status_code == 204
    assert len(api.get(f"/runs/{run_a}/metrics/acc").json()["metrics"]) == 20
    assert api.get(f"/runs/{run_b}/metrics/acc").json()["metrics"][0]["value"] == "Infinity"


def test_bad_input_gets_4xx_naming_the_field(api: httpx.Client) -> None:
    _, run_id = make_run(api)
    assert "not found" in error(api.get(f"/runs/{uuid.uuid4().hex}"), 404, "RESOURCE_DOES_NOT_EXIST").lower()
    error(api.get("/experiments/424242"), 404, "RESOURCE_DOES_NOT_EXIST")
    assert "experiment_id" in error(api.post("/runs", json={}), 400, "INVALID_PARAMETER_VALUE")
    message = error(api.post(f"/runs/{run_id}/batch",
                             json={"metrics": [{"key": "loss", "value": "high", "timestamp": NOW}]}),
                    400, "INVALID_PARAMETER_VALUE")
    assert "metrics.0.value" in message
    assert "unknown" in error(api.post(f"/runs/{run_id}/batch", json={"unknown": []}), 400,
                              "INVALID_PARAMETER_VALUE")
    assert "bad*key" in error(api.post(f"/runs/{run_id}/batch",
                                       json={"params": [{"key": "bad*key", "value": "1"}]}),
                              400, "INVALID_PARAMETER_VALUE")
    long_value = "x" * 10_000
    error(api.post(f"/runs/{run_id}/batch", json={"params": [{"key": "long", "value": long_value}]}),
          400, "INVALID_PARAMETER_VALUE")
    api.post(f"/runs/{run_id}/batch", json={"params": [{"key": "lr", "value": "0.1"}]})
    assert "lr" in error(api.post(f"/runs/{run_id}/batch", json={"params": [{"key": "lr", "value": "0.2"}]}),
                         400, "INVALID_PARAMETER_VALUE")
    assert api.get(f"/runs/{run_id}").json()["data"]["params"] == {"lr": "0.1"}  # nothing lost
    assert "status" in error(api.patch(f"/runs/{run_id}", json={"status": "DONE"}), 400, "INVALID_PARAMETER_VALUE")
    assert "view_type" in error(api.get("/experiments", params={"view_type": "SOME"}), 400,
                                "INVALID_PARAMETER_VALUE")


def test_artifacts_stream_up_and_down(api: httpx.Client) -> None:
    _, run_id = make_run(api)
    payload = os.urandom(LIMIT - 1024)

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(payload), 64 * 1024):
            yield payload[i:i + 64 * 1024]

    put = api.put(f"/runs/{run_id}/artifacts/data/blob.bin", content=chunks())
    assert put.status_code == 204, put.text
    assert api.put(f"/runs/{run_id}/artifacts/notes.txt", content=b"hello").status_code == 204
    listing = api.get(f"/runs/{run_id}/artifacts").json()["files"]
    assert listing == [{"path": "data", "is_dir": True, "size": None},
                       {"path": "notes.txt", "is_dir": False, "size": 5}]
    nested = api.get(f"/runs/{run_id}/artifacts", params={"path": "data"}).json()["files"]
    assert nested == [{"path": "data/blob.bin", "is_dir": False, "size": len(payload)}]
    digest = hashlib.sha256()
    with api.stream("GET", f"/runs/{run_id}/artifacts/data/blob.bin") as response:
        assert response.status_code == 200
        assert int(response.headers["content-length"]) == len(payload)
        for chunk in response.iter_bytes():
            digest.update(chunk)
    assert digest.hexdigest() == hashlib.sha256(payload).hexdigest()
    text = api.get(f"/runs/{run_id}/artifacts/notes.txt")
    assert text.content == b"hello" and text.headers["content-type"].startswith("text/plain")
    # an uploaded page opened in a browser runs sandboxed: no script, no access to this server's origin
    assert api.put(f"/runs/{run_id}/artifacts/page.html", content=b"<script>alert(1)</script>").status_code == 204
    page = api.get(f"/runs/{run_id}/artifacts/page.html")
    assert page.headers["content-security-policy"] == "sandbox" and page.headers["x-content-type-options"] == "nosniff"
    error(api.get(f"/runs/{run_id}/artifacts/missing.txt"), 404, "RESOURCE_DOES_NOT_EXIST")


def test_artifact_limits_and_path_checks(api: httpx.Client) -> None:
    _, run_id = make_run(api)
    too_big = api.put(f"/runs/{run_id}/artifacts/big.bin", content=b"x" * (LIMIT + 1))
    assert too_big.status_code == 413 and "size limit" in too_big.json()["message"]

    def streamed() -> Iterator[bytes]:  # no Content-Length: the limit is enforced while streaming
        for _ in range(40):
            yield b"y" * (64 * 1024)

    assert api.put(f"/runs/{run_id}/artifacts/big2.bin", content=streamed()).status_code == 413
    escaped = api.put(f"/runs/{run_id}/artifacts/a/%2E%2E/%2E%2E/evil.txt", content=b"x")
    assert "'..'" in error(escaped, 400, "INVALID_PARAMETER_VALUE")
    assert api.get(f"/runs/{run_id}/artifacts").json()["files"] == []  # nothing was stored


def test_registry_and_logged_models(api: httpx.Client) -> None:
    experiment_id, run_id = make_run(api)
    model = api.post("/logged-models", json={"experiment_id": experiment_id, "name": "model",
                                             "source_run_id": run_id}).json()
    model_id = model["model_id"]
    assert api.put(f"/logged-models/{model_id}/artifacts/MLmodel", content=b"flavors: {}\n").status_code == 204
    assert api.patch(f"/logged-models/{model_id}", json={"status": "READY"}).json()["status"] == "READY"
    error(api.patch(f"/logged-models/{model_id}", json={"status": "DONE"}), 400, "INVALID_PARAMETER_VALUE")
    assert api.post(f"/runs/{run_id}/outputs", json={"models": [{"model_id": model_id, "step": 1}]}).status_code == 204

    name = unique("model")
    assert api.post("/registered-models", json={"name": name, "description": "d"}).status_code == 201
    error(api.post("/registered-models", json={"name": name}), 400, "RESOURCE_ALREADY_EXISTS")
    version = api.post(f"/registered-models/{name}/versions",
                       json={"source": f"models:/{model_id}", "run_id": run_id, "model_id": model_id})
    assert version.status_code == 201 and version.json()["version"] == 1
    assert api.put(f"/registered-models/{name}/aliases/champion", json={"version": 1}).status_code == 204
    assert api.get(f"/registered-models/{name}/aliases/champion").json()["model_id"] == model_id
    files = api.get(f"/registered-models/{name}/versions/1/artifacts").json()["files"]
    assert files == [{"path": "MLmodel", "is_dir": False, "size": 12}]
    assert api.get(f"/registered-models/{name}/versions/1/artifacts/MLmodel").content == b"flavors: {}\n"
    error(api.put(f"/registered-models/{name}/versions/1/artifacts/x", content=b"x"), 405, "BAD_REQUEST")
    got = api.get(f"/registered-models/{name}").json()
    assert got["aliases"] == {"champion": 1} and got["latest_versions"][0]["run_id"] == run_id
    listed = api.get("/model-versions", params={"filter": f"name = '{name}'"}).json()["model_versions"]
    assert [v["version"] for v in listed] == [1]
    error(api.get(f"/registered-models/{name}/versions/notanumber"), 400, "INVALID_PARAMETER_VALUE")
    error(api.get(f"/registered-models/{name}/versions/9"), 404, "RESOURCE_DOES_NOT_EXIST")


# -- authentication and authorisation -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, dict[str, str]]]:
    """A server bound to every interface (credentials required) with three users and their tokens."""
    home = tmp_path_factory.mktemp("secured")
    with start_server(home, host="0.0.0.0") as srv:
        services = Services.open(Settings.for_home(home))
        try:
            tokens: dict[str, str] = {}
            for user, project, role in (("viewer", "default", "viewer"), ("editor", "default", "editor"),
                                        ("other", "elsewhere", "editor")):
                services.auth.create_user(user)
                services.auth.grant(user, project, role)
                tokens[user] = services.auth.create_token(user).secret
        finally:
            services.close()
        yield srv, tokens


def call(srv: ServerProcess, method: str, path: str, token: str | None = None, project: str | None = None,
         **kwargs: Any) -> httpx.Response:
    headers = {}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if project:
        headers["X-Capstan-Project"] = project
    return httpx.request(method, srv.url + API + path, headers=headers, timeout=30, **kwargs)


def test_auth_matrix(secured: tuple[ServerProcess, dict[str, str]]) -> None:
    srv, tokens = secured
    error(call(srv, "GET", "/experiments"), 401, "UNAUTHENTICATED")
    error(call(srv, "GET", "/experiments", token="not-a-token"), 401, "UNAUTHENTICATED")
    name = unique("secured")
    error(call(srv, "POST", "/experiments", token=tokens["viewer"], json={"name": name}), 403, "PERMISSION_DENIED")
    created = call(srv, "POST", "/experiments", token=tokens["editor"], json={"name": name})
    assert created.status_code == 201
    experiment_id = created.json()["experiment_id"]
    assert call(srv, "GET", f"/experiments/{experiment_id}", token=tokens["viewer"]).status_code == 200
    run = call(srv, "POST", "/runs", token=tokens["editor"], json={"experiment_id": experiment_id})
    assert run.status_code == 201 and run.json()["info"]["user_id"] == "editor"
    run_id = run.json()["info"]["run_id"]
    batch = {"params": [{"key": "p", "value": "1"}]}
    error(call(srv, "POST", f"/runs/{run_id}/batch", token=tokens["viewer"], json=batch), 403, "PERMISSION_DENIED")
    error(call(srv, "POST", f"/runs/{run_id}/batch", token=tokens["other"], json=batch), 403, "PERMISSION_DENIED")
    error(call(srv, "PUT", f"/runs/{run_id}/artifacts/x.txt", token=tokens["other"], content=b"x"), 403,
          "PERMISSION_DENIED")
    error(call(srv, "GET", f"/runs/{run_id}", token=tokens["other"]), 403, "PERMISSION_DENIED")
    error(call(srv, "POST", "/experiments", token=tokens["editor"], project="elsewhere", json={"name": name}), 403,
          "PERMISSION_DENIED")
    unchanged = call(srv, "GET", f"/runs/{run_id}", token=tokens["viewer"]).json()
    assert unchanged["data"]["params"] == {}
    assert call(srv, "GET", f"/runs/{run_id}/artifacts", token=tokens["viewer"]).json()["files"] == []


def test_a_version_cannot_expose_another_projects_run(secured: tuple[ServerProcess, dict[str, str]]) -> None:
    srv, tokens = secured
    experiment_id = call(srv, "POST", "/experiments", token=tokens["editor"],
                         json={"name": unique("private")}).json()["experiment_id"]
    run_id = call(srv, "POST", "/runs", token=tokens["editor"],
                  json={"experiment_id": experiment_id}).json()["info"]["run_id"]
    name = unique("theirs")
    assert call(srv, "POST", "/registered-models", token=tokens["other"], project="elsewhere",
                json={"name": name}).status_code == 201
    error(call(srv, "POST", f"/registered-models/{name}/versions", token=tokens["other"], project="elsewhere",
               json={"source": f"runs:/{run_id}/model"}), 403, "PERMISSION_DENIED")
    error(call(srv, "POST", f"/registered-models/{name}/versions", token=tokens["other"], project="elsewhere",
               json={"source": f"mlflow-artifacts:/{experiment_id}/{run_id}/artifacts"}), 403, "PERMISSION_DENIED")
    listed = call(srv, "GET", "/registered-models", token=tokens["viewer"]).json()["registered_models"]
    assert name not in {m["name"] for m in listed}  # another project's models are not listed


def test_the_sdk_sends_its_token(secured: tuple[ServerProcess, dict[str, str]], tmp_path: Path) -> None:
    import capstan
    from capstan.errors import PermissionDenied, Unauthenticated

    srv, tokens = secured
    with capstan.Client(settings=Settings.for_home(tmp_path, url=srv.url, token=tokens["editor"])) as client:
        experiment_id = client.create_experiment(unique("sdk"))
        assert client.get_experiment(experiment_id).project == "default"
    with capstan.Client(settings=Settings.for_home(tmp_path, url=srv.url, token=tokens["viewer"])) as client, \
            pytest.raises(PermissionDenied):
        client.create_experiment(unique("sdk"))
    with capstan.Client(settings=Settings.for_home(tmp_path, url=srv.url)) as client, \
            pytest.raises(Unauthenticated):
        client.search_experiments()
