"""A real ``capstan server`` subprocess: the auth matrix, basic auth, the MLflow client's credential forms, audit,
metrics, health, single-user mode and non-loopback binding."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import httpx
import pytest

from capstan.services import Services
from capstan.settings import Settings
from helpers.server import ServerProcess, start_server

T = TypeVar("T")
CREATE = "/api/2.0/mlflow/experiments/create"
GET_BY_NAME = "/api/2.0/mlflow/experiments/get-by-name"


@dataclass
class Secured:
    server: ServerProcess
    tokens: dict[str, str]

    def call(self, method: str, path: str, *, who: str | None = None, project: str = "p1",
             **kwargs: object) -> httpx.Response:
        headers = {"X-Capstan-Project": project}
        if who is not None:
            headers["Authorization"] = f"Bearer {self.tokens.get(who, who)}"
        return httpx.request(method, f"{self.server.url}{path}", headers=headers, timeout=30,
                             **kwargs)  # type: ignore[arg-type]  # json=/params= pass through

    def experiment_exists(self, name: str, project: str) -> bool:
        response = self.call("GET", GET_BY_NAME, who="root", project=project, params={"experiment_name": name})
        assert response.status_code in (200, 404), response.text
        return response.status_code == 200


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    home = tmp_path_factory.mktemp("secured") / "home"
    services = Services.open(Settings.for_home(home))
    auth = services.auth
    auth.create_user("root", admin=True)
    for name, role in (("vera", "viewer"), ("ed", "editor"), ("gone", "editor"), ("off", "editor")):
        auth.create_user(name)
        auth.grant(name, "p1", role)
    tokens = {name: auth.create_token(name).secret for name in ("root", "vera", "ed", "gone", "off")}
    tokens["short"] = auth.create_token("ed", expires_in_ms=1500).secret
    services.close()
    with start_server(home) as server:
        yield Secured(server, tokens)


def _assert_error(response: httpx.Response, status: int, code: str) -> dict[str, str]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body: dict[str, str] = response.json()
    assert body["error_code"] == code and body["message"]
    return body


def test_startup_line_and_health(secured: Secured) -> None:
    text = secured.server.startup_text
    assert f"listening on {secured.server.url}" in text
    assert "auth:           required (Authorization: Bearer <token>" in text
    assert "metadata store: sqlite:///" in text and "artifacts:" in text
    assert httpx.get(f"{secured.server.url}/health").json() == {"status": "ok"}


def test_missing_and_bad_credentials_get_401(secured: Secured) -> None:
    body = _assert_error(secured.call("POST", CREATE, json={"name": "anon"}), 401, "UNAUTHENTICATED")
    assert "Authorization: Bearer" in body["message"]
    _assert_error(secured.call("POST", CREATE, who="cap_not_a_real_token", json={"name": "anon"}),
                  401, "UNAUTHENTICATED")
    _assert_error(secured.call("GET", "/api/v1/whoami", who="garbage"), 401, "UNAUTHENTICATED")
    _assert_error(secured.call("POST", "/api/v1/experiments", json={"name": "anon"}), 401, "UNAUTHENTICATED")
    assert not secured.experiment_exists("anon", "p1")


def test_expired_token_gets_401(secured: Secured) -> None:
    deadline = time.monotonic() + 10
    while secured.call("GET", "/api/v1/whoami", who="short").status_code == 200:
        assert time.monotonic() < deadline, "the 1.5 s token never expired"
        time.sleep(0.2)
    body = _assert_error(secured.call("POST", CREATE, who="short", json={"name": "late"}), 401, "UNAUTHENTICATED")
    assert "expired" in body["message"]
    assert not secured.experiment_exists("late", "p1")


def test_viewer_cannot_write(secured: Secured) -> None:
    assert secured.call("POST", "/api/2.0/mlflow/experiments/search", who="vera", json={}).status_code == 200
    body = _assert_error(secured.call("POST", CREATE, who="vera", json={"name": "by-vera"}), 403,
                         "PERMISSION_DENIED")
    assert "viewer" in body["message"] and "p1" in body["message"]
    _assert_error(secured.call("POST", "/api/v1/experiments", who="vera", json={"name": "by-vera"}), 403,
                  "PERMISSION_DENIED")
    assert not secured.experiment_exists("by-vera", "p1")


def test_editor_writes_in_its_project_only(secured: Secured) -> None:
    assert secured.call("POST", CREATE, who="ed", json={"name": "mine"}).status_code == 200
    assert secured.experiment_exists("mine", "p1")
    body = _assert_error(secured.call("POST", CREATE, who="ed", project="p2", json={"name": "theirs"}), 403,
                         "PERMISSION_DENIED")
    assert "p2" in body["message"]
    _assert_error(secured.call("POST", "/api/2.0/mlflow/experiments/search", who="ed", project="p2", json={}),
                  403, "PERMISSION_DENIED")
    assert not secured.experiment_exists("theirs", "p2")
    _assert_error(secured.call("GET", "/api/v1/users", who="ed"), 403, "PERMISSION_DENIED")


def test_basic_auth_with_user_and_token(secured: Secured) -> None:
    url = f"{secured.server.url}/api/v1/whoami"
    assert httpx.get(url, auth=("ed", secured.tokens["ed"])).json()["name"] == "ed"
    _assert_error(httpx.get(url, auth=("vera", secured.tokens["ed"])), 401, "UNAUTHENTICATED")
    _assert_error(httpx.get(url, auth=("ed", "wrong")), 401, "UNAUTHENTICATED")


def test_revocation_from_another_process_applies_within_seconds(secured: Secured) -> None:
    assert secured.call("GET", "/api/v1/whoami", who="gone").status_code == 200
    prefix = secured.tokens["gone"][:12]
    assert "revoked token" in secured.server.cli("tokens", "revoke", prefix).stdout
    started = time.monotonic()
    while secured.call("GET", "/api/v1/whoami", who="gone").status_code == 200:
        assert time.monotonic() - started < 5, "revocation did not reach the server"
        time.sleep(0.1)
    body = _assert_error(secured.call("POST", CREATE, who="gone", json={"name": "ghost"}), 401, "UNAUTHENTICATED")
    assert "revoked" in body["message"]
    assert not secured.experiment_exists("ghost", "p1")


def test_disabled_user_gets_401(secured: Secured) -> None:
    assert secured.call("GET", "/api/v1/whoami", who="off").status_code == 200
    secured.server.cli("users", "disable", "off")
    started = time.monotonic()
    while secured.call("GET", "/api/v1/whoami", who="off").status_code == 200:
        assert time.monotonic() - started < 5
        time.sleep(0.1)
    assert "disabled" in secured.call("GET", "/api/v1/whoami", who="off").json()["message"]


def test_mlflow_client_credentials(secured: Secured, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", secured.tokens["root"])
    client = MlflowClient(tracking_uri=secured.server.url)
    assert client.create_experiment("via-token")
    monkeypatch.delenv("MLFLOW_TRACKING_TOKEN")
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "root")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", secured.tokens["root"])
    assert client.get_experiment_by_name("via-token") is not None
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "wrong")
    with pytest.raises(Exception, match=r"UNAUTHENTICATED|401"):
        client.create_experiment("via-bad-password")


def test_metrics_need_a_token_and_use_templates(secured: Secured) -> None:
    _assert_error(secured.call("GET", "/metrics"), 401, "UNAUTHENTICATED")
    secured.call("GET", "/api/v1/users/root", who="root")
    text = secured.call("GET", "/metrics", who="vera").text
    assert 'route="/api/v1/users/{name}",status="200"}' in text
    assert 'capstan_http_requests_total{method="POST",route="/api/2.0/mlflow/experiments/create"' in text
    assert "capstan_store_operation_duration_seconds_bucket" in text


def test_audit_records_writes_and_denials(secured: Secured) -> None:
    secured.call("POST", CREATE, who="ed", json={"name": "audited"})
    secured.call("POST", CREATE, who="vera", json={"name": "denied"})
    services = Services.open(Settings.for_home(secured.server.home))
    entries: list[dict[str, object]] = []
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # the server writes audit entries in the background
        entries = [e.to_dict() for e in services.auth.list_audit()]
        if any(e["target"] == "experiment/denied" for e in entries):
            break
        time.sleep(0.1)
    services.close()
    create = "POST /api/2.0/mlflow/experiments/create"
    rows = {(e["user"], e["action"], e["project"], e["status"]) for e in entries}
    assert ("ed", create, "p1", 200) in rows
    assert ("vera", create, "p1", 403) in rows
    assert ("anonymous", "POST <unmatched>", "", 401) in rows
    assert not any(e["action"] == "POST /api/2.0/mlflow/experiments/search" and e["status"] == 200
                   for e in entries)  # read-only searches are not audited
    table = secured.server.cli("audit", "--user", "ed").stdout.splitlines()
    assert table[0].split() == ["TIME", "USER", "ACTION", "TARGET", "PROJECT", "STATUS"]
    assert all(line.index("ed") == table[0].index("USER") for line in table[1:])


def test_remote_cli_goes_through_the_api(secured: Secured) -> None:
    listed = json.loads(secured.server.remote_cli("users", "list", "--json", token=secured.tokens["root"]).stdout)
    assert {u["name"] for u in listed} >= {"root", "vera", "ed"}
    denied = secured.server.remote_cli("users", "list", token=secured.tokens["vera"], check=False)
    assert denied.returncode == 1 and denied.stderr.startswith("error: user 'vera' is not a server admin")
    assert "Traceback" not in denied.stderr
    created = json.loads(secured.server.remote_cli("tokens", "create", "--user", "vera", "--json",
                                                   token=secured.tokens["root"]).stdout)
    secret = created["secret"]
    assert secured.call("GET", "/api/v1/whoami", who=secret).json()["name"] == "vera"
    revoked = secured.server.remote_cli("tokens", "revoke", str(created["token"]["id"]), token=secret)
    assert "revoked token" in revoked.stdout
    assert secured.call("GET", "/api/v1/whoami", who=secret).status_code == 401  # same process: at once

    _store_call(secured.server.home, lambda s: (s.events.append("run", "r1", "RunCreated", "in p1", project="p1"),
                                                s.events.append("run", "r1", "RunFailed", "in p9", project="p9")))
    events = json.loads(secured.server.remote_cli("events", "run/r1", "--json", token=secured.tokens["vera"]).stdout)
    assert [(e["reason"], e["project"]) for e in events] == [("RunCreated", "p1")]  # p9 is not vera's to read


# -- single-user mode and binding -----------------------------------------------------------------------------
def _store_call(home: Path, work: Callable[[Services], T]) -> T:
    services = Services.open(Settings.for_home(home))
    try:
        return work(services)
    finally:
        services.close()


def test_single_user_mode_on_loopback_without_users(tmp_path: Path) -> None:
    with start_server(tmp_path / "home") as server:
        assert "single-user mode" in server.startup_text
        me = httpx.get(f"{server.url}/api/v1/whoami").json()
        assert me["name"] == "local" and me["single_user"] is True
        assert httpx.post(f"{server.url}{CREATE}", json={"name": "free"}).status_code == 200
        assert httpx.get(f"{server.url}/metrics").status_code == 200
        _store_call(server.home, lambda s: s.auth.create_user("alice", admin=True))  # as another process would
        started = time.monotonic()
        while httpx.get(f"{server.url}/api/v1/whoami").status_code == 200:
            assert time.monotonic() - started < 5, "creating a user did not end single-user mode"
            time.sleep(0.1)
        _assert_error(httpx.post(f"{server.url}{CREATE}", json={"name": "after"}), 401, "UNAUTHENTICATED")


def test_non_loopback_bind_requires_credentials(tmp_path: Path) -> None:
    with start_server(tmp_path / "home", host="0.0.0.0") as server:
        assert "auth:           required, but no users exist yet" in server.startup_text
        assert "single-user" not in server.startup_text
        _assert_error(httpx.get(f"{server.url}/api/v1/whoami"), 401, "UNAUTHENTICATED")
        _assert_error(httpx.post(f"{server.url}{CREATE}", json={"name": "x"}), 401, "UNAUTHENTICATED")
        assert httpx.get(f"{server.url}/health").status_code == 200
        _store_call(server.home, lambda s: s.auth.create_user("admin", admin=True))
        secret = _store_call(server.home, lambda s: s.auth.create_token("admin").secret)
        headers = {"Authorization": f"Bearer {secret}"}
        assert httpx.post(f"{server.url}{CREATE}", json={"name": "x"}, headers=headers).status_code == 200
