"""The app in-process (TestClient): JSON errors, metrics by route template, auth caching, audit rules, admin API.

Routes added here with ``app.add_api_route`` exist only in these tests; they exercise `require` and the error
handlers from a handler's point of view.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient

from capstan.auth.policy import LOCAL_PRINCIPAL
from capstan.errors import InvalidState, Unauthenticated
from capstan.server.app import create_app
from capstan.server.security import Authenticator, require
from capstan.services import Services
from capstan.settings import Settings
from helpers.clock import FakeClock


def _read_only_search(request: Request) -> dict[str, str]:
    require(request, "read", "default")
    return {"ok": "read"}


def _write(request: Request) -> dict[str, str]:
    require(request, "write", request.headers.get("x-capstan-project", "default"), target="thing/7")
    return {"ok": "write"}


def _boom(_request: Request) -> dict[str, str]:
    raise RuntimeError("kaboom")


def _bad_state(_request: Request) -> dict[str, str]:
    raise InvalidState("run 'x' is deleted")


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Services]:
    svc = Services.open(Settings.for_home(tmp_path / "home"))
    yield svc
    svc.close()


def _app(services: Services, bind_host: str = "127.0.0.1") -> FastAPI:
    app = create_app(services.settings, services=services, bind_host=bind_host)
    for path, handler, methods in (("/test/search", _read_only_search, ["POST"]), ("/test/write", _write, ["POST"]),
                                   ("/test/boom", _boom, ["GET", "POST"]), ("/test/state", _bad_state, ["GET"])):
        app.add_api_route(path, handler, methods=methods, include_in_schema=False)
    return app


@pytest.fixture
def client(services: Services) -> Iterator[TestClient]:
    with TestClient(_app(services), raise_server_exceptions=False) as test_client:
        yield test_client


def _bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def _audit(client: TestClient) -> list[dict[str, object]]:
    app: FastAPI = client.app  # type: ignore[assignment]  # TestClient keeps the ASGI app we gave it
    app.state.audit_writer.flush()
    return [e.to_dict() for e in app.state.services.auth.list_audit()]


# -- errors -------------------------------------------------------------------------------------------------
def test_errors_are_mlflow_json(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="capstan.server"):
        response = client.get("/test/boom")
    assert response.status_code == 500
    assert response.json() == {"error_code": "INTERNAL_ERROR",
                               "message": "internal server error; the server log has the details"}
    assert "kaboom" in caplog.text and caplog.text.count("unexpected error") == 1

    response = client.get("/test/state")
    assert (response.status_code, response.json()["error_code"]) == (400, "INVALID_STATE")

    response = client.post("/api/v1/users", json={"admin": True})
    assert response.status_code == 400
    assert response.json() == {"error_code": "INVALID_PARAMETER_VALUE", "message": "name: Field required"}

    response = client.post("/api/v1/users", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 400 and response.json()["error_code"] == "INVALID_PARAMETER_VALUE"

    response = client.get("/api/v1/events", params={"since_id": -1})
    assert response.status_code == 400 and response.json()["message"].startswith("since_id:")

    response = client.get("/no/such/route")
    assert response.status_code == 404 and response.json()["error_code"] == "ENDPOINT_NOT_FOUND"

    response = client.delete("/health")
    assert response.status_code == 405 and response.json()["error_code"] == "BAD_REQUEST"


def test_health_and_openapi(client: TestClient) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    document = client.get("/api/v1/openapi.json").json()
    assert "/api/v1/events" in document["paths"] and "/api/v1/users" in document["paths"]
    assert client.get("/api/v1/docs").status_code == 200


# -- metrics ------------------------------------------------------------------------------------------------
def test_metrics_use_route_templates(client: TestClient, services: Services) -> None:
    services.auth  # noqa: B018  # (single-user mode: no credentials needed)
    for name in ("alice", "bob", "carol"):
        client.get(f"/api/v1/users/{name}")
    client.post("/api/2.0/mlflow/experiments/create", json={"name": "e1"})
    client.post("/ajax-api/2.0/mlflow/experiments/create", json={"name": "e2"})
    client.get("/nowhere")
    text = client.get("/metrics").text
    assert 'capstan_http_requests_total{method="GET",route="/api/v1/users/{name}",status="404"} 3.0' in text
    assert "/api/v1/users/alice" not in text
    assert 'route="/api/2.0/mlflow/experiments/create",status="200"} 1.0' in text
    assert 'route="/ajax-api/2.0/mlflow/experiments/create",status="200"} 1.0' in text
    assert 'capstan_http_requests_total{method="GET",route="<unmatched>",status="404"} 1.0' in text
    assert 'capstan_http_request_duration_seconds_bucket{le="0.005",method="GET",route="/api/v1/users/{name}"' \
        in text
    assert 'capstan_store_operation_duration_seconds_count{operation="select"}' in text
    assert 'capstan_store_operation_duration_seconds_count{operation="insert"}' in text


def test_each_app_has_its_own_registry(services: Services) -> None:
    with TestClient(_app(services)) as first, TestClient(_app(services)) as second:
        first.get("/health")
        first.get("/health")
        second.get("/health")
        assert 'route="/health",status="200"} 2.0' in first.get("/metrics").text
        assert 'route="/health",status="200"} 1.0' in second.get("/metrics").text


# -- auth ---------------------------------------------------------------------------------------------------
def test_single_user_mode_until_a_user_exists(client: TestClient, services: Services) -> None:
    me = client.get("/api/v1/whoami").json()
    assert me == {"name": "local", "is_admin": True, "single_user": True, "roles": {}, "auth_required": False}
    assert client.post("/api/v1/users", json={"name": "alice", "admin": True}).status_code == 200
    # Created through this process: the cached "no users" answer is dropped at once.
    response = client.get("/api/v1/whoami")
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    secret = services.auth.create_token("alice").secret
    assert client.get("/api/v1/whoami", headers=_bearer(secret)).json()["name"] == "alice"
    assert client.get("/health").status_code == 200  # never needs a credential


def test_non_loopback_bind_requires_auth_without_users(services: Services) -> None:
    with TestClient(_app(services, bind_host="0.0.0.0")) as client:
        response = client.get("/api/v1/whoami")
        assert response.status_code == 401 and response.json()["error_code"] == "UNAUTHENTICATED"
        assert client.get("/metrics").status_code == 401
        assert client.get("/api/v1/openapi.json").status_code == 401
        assert client.get("/health").json() == {"status": "ok"}


def test_authenticator_cache_expiry_and_revocation(services: Services) -> None:
    fake = FakeClock(services.clock())
    services.auth.create_user("alice")
    auth = Authenticator(services.auth, bind_host="127.0.0.1", clock=fake, monotonic=fake.monotonic)
    issued = services.auth.create_token("alice", expires_in_ms=60_000)
    header = f"Bearer {issued.secret}"
    assert auth.fast(header) is None  # nothing cached yet
    assert auth.authenticate(header).name == "alice"
    assert auth.fast(header) is not None  # answered from memory now

    services.auth.revoke_token(str(issued.token.id))
    assert auth.fast(header) is not None  # still cached ...
    fake.mono += 1.01  # ... for at most one second
    assert auth.fast(header) is None
    with pytest.raises(Unauthenticated, match="revoked"):
        auth.authenticate(header)

    second = services.auth.create_token("alice", expires_in_ms=60_000)
    header = f"Bearer {second.secret}"
    assert auth.authenticate(header).name == "alice"
    assert second.token.expires_at is not None
    fake.now = second.token.expires_at  # expiry is checked on every request, even from the cache
    with pytest.raises(Unauthenticated, match="expired"):
        auth.fast(header)

    third = services.auth.create_token("alice")
    header = f"Bearer {third.secret}"
    auth.authenticate(header)
    services.auth.set_disabled("alice", True)
    auth.invalidate()
    with pytest.raises(Unauthenticated, match="disabled"):
        auth.authenticate(header)


def test_authenticator_rejects_malformed_credentials(services: Services) -> None:
    services.auth.create_user("alice")
    auth = Authenticator(services.auth, bind_host="127.0.0.1", clock=lambda: 0)
    for header in (None, "", "Token abc", "Bearer", "Basic !!!", "Basic " + "YWxpY2U=", "Bearer cap_nope"):
        with pytest.raises(Unauthenticated):
            auth.authenticate(header)
    assert Authenticator(services.auth, bind_host="::1", clock=lambda: 0).auth_required()


def test_loopback_without_users_is_local(services: Services) -> None:
    auth = Authenticator(services.auth, bind_host="localhost", clock=lambda: 0)
    assert auth.authenticate(None) == LOCAL_PRINCIPAL
    assert auth.fast("Bearer whatever") == LOCAL_PRINCIPAL


def test_audit_rules(client: TestClient, services: Services) -> None:
    services.auth.create_user("root", admin=True)
    services.auth.create_user("vera")
    services.auth.grant("vera", "default", "viewer")
    root = _bearer(services.auth.create_token("root").secret)
    vera = _bearer(services.auth.create_token("vera").secret)

    assert client.post("/test/search", headers=vera).status_code == 200  # read-only POST: not audited
    assert client.post("/test/write", headers=root).status_code == 200
    assert client.post("/test/write", headers=vera).status_code == 403
    assert client.post("/test/write").status_code == 401
    assert client.get("/api/v1/whoami", headers=vera).status_code == 200  # GETs are never audited
    assert client.post("/test/boom", headers=root).status_code == 500
    entries = _audit(client)
    assert [(e["user"], e["action"], e["target"], e["project"], e["status"]) for e in entries] == [
        ("root", "POST /test/write", "thing/7", "default", 200),
        ("vera", "POST /test/write", "thing/7", "default", 403),
        ("anonymous", "POST <unmatched>", "/test/write", "", 401),
        ("root", "POST /test/boom", "/test/boom", "", 500),
    ]
    assert entries[2]["detail"]["error"].startswith("authentication required")  # type: ignore[index]  # untyped JSON or driver value


# -- admin API ----------------------------------------------------------------------------------------------
def test_admin_routes_need_the_right_role(client: TestClient, services: Services) -> None:
    services.auth.create_user("root", admin=True)
    services.auth.create_user("pat")
    services.auth.create_user("ed")
    services.auth.grant("pat", "p1", "admin")
    root = _bearer(services.auth.create_token("root").secret)
    pat = _bearer(services.auth.create_token("pat").secret)
    ed_token = services.auth.create_token("ed")
    ed = _bearer(ed_token.secret)

    assert client.get("/api/v1/users", headers=ed).status_code == 403
    assert client.post("/api/v1/users", headers=pat, json={"name": "x"}).status_code == 403
    assert client.get("/api/v1/audit", headers=pat).status_code == 403
    assert client.get("/api/v1/users/ed", headers=ed).json()["user"]["name"] == "ed"  # itself
    assert client.get("/api/v1/users/pat", headers=ed).status_code == 403

    # a project admin manages its own project only
    response = client.put("/api/v1/projects/p1/members/ed", headers=pat, json={"role": "editor"})
    assert response.status_code == 200 and response.json()["member"] == {"project": "p1", "user": "ed",
                                                                          "role": "editor"}
    assert client.put("/api/v1/projects/p2/members/ed", headers=pat, json={"role": "editor"}).status_code == 403
    assert client.put("/api/v1/projects/p1/members/ed", headers=pat, json={"role": "boss"}).status_code == 400
    members = client.get("/api/v1/projects/p1/members", headers=pat).json()["members"]
    assert [(m["user"], m["role"]) for m in members] == [("ed", "editor"), ("pat", "admin")]
    assert client.get("/api/v1/whoami", headers=ed).json()["roles"] == {"p1": "editor"}  # applied at once
    assert client.delete("/api/v1/projects/p1/members/ed", headers=pat).status_code == 200
    assert services.auth.get_user("ed").roles == ()

    # tokens: own ones freely, other users' only as a server admin
    mine = client.post("/api/v1/tokens", headers=ed, json={"name": "ci", "expires": "1d"}).json()
    assert mine["secret"].startswith("cap_") and mine["token"]["user"] == "ed"
    assert client.post("/api/v1/tokens", headers=ed, json={"user": "pat"}).status_code == 403
    assert client.post("/api/v1/tokens", headers=ed, json={"expires": "soon"}).status_code == 400
    assert [t["user"] for t in client.get("/api/v1/tokens", headers=ed).json()["tokens"]] == ["ed", "ed"]
    assert client.get("/api/v1/tokens", headers=ed, params={"user": "pat"}).status_code == 403
    assert len(client.get("/api/v1/tokens", headers=root, params={"all": "true"}).json()["tokens"]) == 4
    assert client.delete(f"/api/v1/tokens/{mine['token']['id']}", headers=pat).status_code == 403
    assert client.delete(f"/api/v1/tokens/{ed_token.token.prefix}", headers=ed).json()["token"]["state"] == \
        "revoked"
    assert client.get("/api/v1/whoami", headers=ed).status_code == 401  # revoked through this process: at once

    # server admins: users
    assert client.post("/api/v1/users", headers=root, json={"name": "zed"}).json()["user"]["name"] == "zed"
    assert client.post("/api/v1/users", headers=root, json={"name": "zed"}).status_code == 400
    assert client.patch("/api/v1/users/zed", headers=root, json={"admin": True}).json()["user"]["is_admin"]
    assert client.patch("/api/v1/users/nobody", headers=root, json={"admin": True}).status_code == 404
    names = [u["name"] for u in client.get("/api/v1/users", headers=root).json()["users"]]
    assert names == ["ed", "pat", "root", "zed"]
    entries = client.get("/api/v1/audit", headers=root, params={"user": "root", "since": "1h"}).json()["entries"]
    assert [e["action"] for e in entries] == ["POST /api/v1/users", "POST /api/v1/users",
                                              "PATCH /api/v1/users/{name}", "PATCH /api/v1/users/{name}"]
    assert [e["status"] for e in entries] == [200, 400, 200, 404]
    p1_entries = client.get("/api/v1/audit", headers=pat, params={"project": "p1"}).json()["entries"]
    assert {e["project"] for e in p1_entries} == {"p1"}


def test_events_api_filters_by_project(client: TestClient, services: Services) -> None:
    services.events.append("run", "r1", "RunCreated", "created", project="p1")
    services.events.append("run", "r1", "RunFinished", "done", project="p1")
    services.events.append("run", "r2", "RunCreated", "created", project="p2")
    services.events.append("node", "n1", "NodeReady", "up")  # no project: visible to everyone
    services.auth.create_user("ed")
    services.auth.grant("ed", "p1", "editor")
    ed = _bearer(services.auth.create_token("ed").secret)

    body = client.get("/api/v1/events", headers=ed, params={"kind": "run", "object_id": "r1"}).json()
    assert [e["reason"] for e in body["events"]] == ["RunCreated", "RunFinished"]
    assert body["events"][0]["project"] == "p1" and body["events"][0]["message"] == "created"
    body = client.get("/api/v1/events", headers=ed).json()
    assert [(e["kind"], e["object_id"]) for e in body["events"]] == [("run", "r1"), ("run", "r1"), ("node", "n1")]
    assert body["next_since_id"] == 4  # continues after what was scanned, visible or not
    assert client.get("/api/v1/events", headers=ed, params={"since_id": 4}).json() == {"events": [],
                                                                                       "next_since_id": 4}
    assert client.get("/api/v1/events", headers=ed, params={"project": "p2"}).status_code == 403
    assert client.get("/api/v1/events", headers=ed, params={"object_id": "r1"}).status_code == 400
    assert client.get("/api/v1/events", params={"kind": "run"}).status_code == 401


def test_route_templates_of_nested_routers() -> None:
    from fastapi import APIRouter

    from capstan.server.metrics import MetricsMiddleware, RouteTemplates, ServerMetrics

    inner = APIRouter(prefix="/things")
    inner.add_api_route("/{thing_id}", lambda thing_id: {"id": thing_id}, methods=["GET"])
    outer = APIRouter()
    outer.include_router(inner)
    twice = APIRouter()
    twice.add_api_route("/ping/{n}", lambda n: {"n": n}, methods=["GET"])
    app = FastAPI()
    templates = RouteTemplates()
    for router, prefix in ((outer, "/api/v9"), (twice, "/a"), (twice, "/b")):
        app.include_router(router, prefix=prefix)
        templates.add_router(router.routes, prefix)
    metrics = ServerMetrics()
    app.add_middleware(MetricsMiddleware, metrics=metrics, templates=templates)
    with TestClient(app) as client:
        assert client.get("/api/v9/things/42").json() == {"id": "42"}
        client.get("/a/ping/1")
        client.get("/b/ping/2")
        client.get("/b/ping/3")
    text = metrics.render().decode()
    assert 'route="/api/v9/things/{thing_id}",status="200"} 1.0' in text
    assert 'route="/a/ping/{n}",status="200"} 1.0' in text
    assert 'route="/b/ping/{n}",status="200"} 2.0' in text
