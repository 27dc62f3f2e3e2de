"""Deployment-scoped tokens: the pure policy, the store, and a real auth-enabled server.

A scoped token only narrows its user's rights: ``read`` in the scope's project, on ``/deployments/NAME/...`` only.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from capstan.auth.policy import Principal, TokenScope, allows, authorize, parse_token_scope
from capstan.errors import InvalidParameterValue, PermissionDenied
from capstan.services import Services
from capstan.settings import Settings
from helpers.server import ServerProcess, capstan_command, clean_env, start_server


def test_scope_round_trips_and_bad_scopes_name_the_field() -> None:
    scope = parse_token_scope("deployment:alpha/fraud")
    assert scope == TokenScope("alpha", "fraud")
    assert str(scope) == "deployment:alpha/fraud"
    for bad in ("", "deployment:", "deployment:alpha", "deployment:/x", "project:alpha/x", "deployment:a/b/c"):
        with pytest.raises(InvalidParameterValue, match=r"^deployment: must be"):
            parse_token_scope(bad, field_name="deployment")


def test_scope_matches_only_its_deployment_paths() -> None:
    scope = TokenScope("alpha", "fraud")
    assert scope.allows_path("/deployments/fraud")
    assert scope.allows_path("/deployments/fraud/v2/models/fraud/infer")
    assert not scope.allows_path("/deployments/fraud-2/v2/models/x/infer")
    assert not scope.allows_path("/api/v1/deployments/fraud")
    assert not scope.allows_path("/deployments")


def test_a_scope_narrows_and_never_widens() -> None:
    scope = TokenScope("alpha", "fraud")
    editor = Principal("ann", roles=(("alpha", "editor"), ("beta", "editor")), scope=scope)
    assert allows(editor, "read", "alpha")
    assert not allows(editor, "write", "alpha")
    assert not allows(editor, "read", "beta")
    assert not allows(Principal("root", is_admin=True, scope=scope), "admin", None)
    assert allows(Principal("root", is_admin=True, scope=scope), "read", "alpha")
    assert not allows(Principal("nobody", scope=scope), "read", "alpha")  # no role in alpha: the scope adds none
    with pytest.raises(PermissionDenied, match="scoped to deployment:alpha/fraud"):
        authorize(editor, "write", "alpha")


def test_store_keeps_the_scope(tmp_path: pytest.TempPathFactory) -> None:
    services = Services.open(Settings.for_home(tmp_path / "home"))  # type: ignore[operator]  # tmp_path is a Path
    try:
        services.auth.create_user("ann")
        issued = services.auth.create_token("ann", scope="deployment:alpha/fraud")
        assert issued.token.scope == "deployment:alpha/fraud"
        credential = services.auth.credential(issued.secret)
        assert credential is not None and credential.scope == "deployment:alpha/fraud"
        assert services.auth.find_token(str(issued.token.id)).scope == "deployment:alpha/fraud"
        plain = services.auth.create_token("ann")
        assert plain.token.scope is None and plain.token.to_dict(0)["scope"] is None
        with pytest.raises(InvalidParameterValue, match=r"^scope: must be"):
            services.auth.create_token("ann", scope="alpha/fraud")
        assert len(services.auth.list_tokens("ann")) == 2  # the refused one was not stored
    finally:
        services.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, str]]:
    home = tmp_path_factory.mktemp("scope") / "home"
    services = Services.open(Settings.for_home(home))
    services.auth.create_user("ann")
    services.auth.grant("ann", "alpha", "editor")
    secret = services.auth.create_token("ann").secret
    services.close()
    with start_server(home) as running:
        yield running, secret


def _call(server: ServerProcess, token: str, method: str, path: str, **kwargs: object) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}", "X-Capstan-Project": "alpha"}
    return httpx.request(method, f"{server.url}{path}", headers=headers, timeout=30,
                         **kwargs)  # type: ignore[arg-type]  # json= passes through


def test_a_scoped_token_reaches_only_its_deployment(server: tuple[ServerProcess, str]) -> None:
    running, full = server
    created = _call(running, full, "POST", "/api/v1/tokens", json={"deployment": "fraud", "name": "scorer"})
    assert created.status_code == 200, created.text
    assert created.json()["token"]["scope"] == "deployment:alpha/fraud"
    scoped = created.json()["secret"]

    refused = _call(running, scoped, "GET", "/api/v1/experiments")
    assert refused.status_code == 403
    assert "scoped to deployment:alpha/fraud" in refused.json()["message"]
    assert _call(running, scoped, "GET", "/deployments/other/v2/health/ready").status_code == 403
    assert _call(running, scoped, "POST", "/api/v1/tokens", json={}).status_code == 403
    # On its own deployment's path the token authenticates; what answers there is the deployment router's business.
    own = _call(running, scoped, "GET", "/deployments/fraud/v2/health/ready")
    assert own.status_code not in (401, 403), own.text
    assert _call(running, full, "GET", "/api/v1/experiments").status_code == 200  # the user's own token is untouched


def test_a_bad_deployment_name_is_a_400(server: tuple[ServerProcess, str]) -> None:
    running, full = server
    response = _call(running, full, "POST", "/api/v1/tokens", json={"deployment": "a/b"})
    assert response.status_code == 400, response.text
    assert "deployment" in response.json()["message"]


def test_cli_issues_a_scoped_token(tmp_path: Path) -> None:
    home = tmp_path / "home"
    services = Services.open(Settings.for_home(home))
    services.auth.create_user("ann")
    services.close()

    def capstan(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*capstan_command(), *args], env=clean_env(home), capture_output=True, text=True,
                              timeout=120)

    result = capstan("tokens", "create", "--user", "ann", "--deployment", "fraud", "--project", "alpha")
    assert result.returncode == 0, result.stderr
    assert "scoped to deployment:alpha/fraud" in result.stderr
    bad = capstan("tokens", "create", "--user", "ann", "--deployment", "a/b")
    assert bad.returncode == 1 and bad.stderr.startswith("error: --deployment: must be deployment:PROJECT/NAME")
    lonely = capstan("tokens", "create", "--user", "ann", "--project", "alpha")
    assert lonely.returncode != 0 and "--project" in lonely.stderr and "Traceback" not in lonely.stderr
