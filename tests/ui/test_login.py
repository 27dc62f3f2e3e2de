"""Login, sessions, roles and CSRF in real Chromium against a real server with authentication on.

No session: every page sends the browser to the login page. A bad token is refused there. A viewer's session
loads the pages but shows no edit button, and the server refuses a viewer's write anyway. A request authenticated
by the session cookie that changes something needs the CSRF token; token callers (CLI, SDK) do not. Logging out
revokes the session's token.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from uikit import UiPage, api, start_ui_server

from capstan.services import Services
from helpers.server import ServerProcess

PROJECT = "alpha"
Seeded = dict[str, str]


@pytest.fixture(scope="module")
def seeded() -> Seeded:
    return {}


def _seed(ids: Seeded) -> Callable[[Services], None]:
    def seed(services: Services) -> None:
        auth = services.auth
        auth.create_user("root", admin=True)
        ids["root"] = auth.create_token("root").secret
        for user, role in (("vera", "viewer"), ("ed", "editor")):
            auth.create_user(user)
            auth.grant(user, PROJECT, role)
            ids[user] = auth.create_token(user).secret
        auth.create_user("outsider")
        auth.grant("outsider", "beta", "viewer")
        ids["outsider"] = auth.create_token("outsider").secret
        eid = services.tracking.create_experiment("alpha-models", project=PROJECT)
        ids["experiment"] = eid
        ids["run"] = services.tracking.create_run(eid, user_id="ed", start_time=1_700_000_000_000,
                                                  run_name="baseline").run_id

    return seed


@pytest.fixture(scope="module")
def ui_server(tmp_path_factory: pytest.TempPathFactory, seeded: Seeded) -> Iterator[ServerProcess]:
    with start_ui_server(tmp_path_factory.mktemp("ui-login"), _seed(seeded)) as server:
        yield server


def _login(ui: UiPage, token: str, *, user: str = "", next_path: str = f"/ui/experiments?project={PROJECT}",
           status: int = 200) -> Any:
    ui.visit(next_path)  # no session yet: the login page, coming back here afterwards
    assert "/ui/login?next=" in ui.page.url
    if user:
        ui.page.locator('input[name="user"]').fill(user)
    ui.page.locator('input[name="token"]').fill(token)
    if status >= 400:
        ui.allow_status(status)
    with ui.page.expect_navigation() as navigation:
        ui.page.locator("#login-submit").click()
    ui.settle()
    response = navigation.value
    assert response is not None and response.status == status
    return response


def _session_cookie(ui: UiPage) -> dict[str, Any]:
    cookies = {c["name"]: c for c in ui.page.context.cookies()}
    return dict(cookies["capstan_session"])


def _csrf(ui: UiPage) -> str:
    return str(ui.page.locator('meta[name="csrf-token"]').get_attribute("content"))


def test_without_a_session_pages_lead_to_the_login_page(ui: UiPage, seeded: Seeded) -> None:
    ui.visit(f"/ui/runs/{seeded['run']}")
    assert ui.page.url.endswith(f"/ui/login?next=%2Fui%2Fruns%2F{seeded['run']}")
    assert ui.page.locator("#login-submit").is_visible()
    assert not ui.page.context.cookies()
    # the JSON API still answers 401 to a caller without a credential (no redirect)
    assert httpx.get(f"{ui.base_url}/api/v1/views/runs/{seeded['run']}").status_code == 401


def test_a_bad_token_is_refused(ui: UiPage) -> None:
    _login(ui, "cap_" + "0" * 40, status=401)
    assert "invalid token" in ui.text("#login-error")
    assert not ui.page.context.cookies()


def test_a_viewer_sees_the_pages_but_no_edit_button(ui: UiPage, ui_server: ServerProcess, seeded: Seeded) -> None:
    _login(ui, seeded["vera"])
    assert ui.page.url.endswith(f"/ui/experiments?project={PROJECT}")
    assert ui.text("#current-user") == "vera"
    assert [row[0] for row in ui.cells("#experiments-table")] == ["alpha-models"]
    cookie = _session_cookie(ui)
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and not cookie["secure"]  # plain HTTP here

    ui.visit(f"/ui/runs/{seeded['run']}")
    twin = api(ui_server, "GET", f"/api/v1/views/runs/{seeded['run']}", token=seeded["vera"])
    assert ui.text("#run-id") == twin["run"]["info"]["run_id"]
    assert ui.page.locator("button.edit").count() == 0
    assert ui.page.locator("#run-actions").count() == 0

    # a forged write with the session cookie: refused without the CSRF token, and for the role with it
    restore = f"{ui.base_url}/api/v1/runs/{seeded['run']}/restore"
    forged = ui.page.request.post(restore)
    assert forged.status == 403 and "CSRF" in forged.json()["message"]
    with_token = ui.page.request.post(restore, headers={"X-CSRF-Token": _csrf(ui)})
    assert with_token.status == 403 and "'write' is required" in with_token.json()["message"]
    # another project's pages are refused with a 403 page
    ui.visit("/ui/experiments?project=beta", status=403)
    assert "no role in project 'beta'" in ui.text("#error-message")


def test_an_editor_edits_with_the_csrf_token_only(ui: UiPage, ui_server: ServerProcess, seeded: Seeded) -> None:
    run_id = seeded["run"]
    _login(ui, seeded["ed"], next_path=f"/ui/runs/{run_id}")
    page = ui.page
    assert page.locator("button.edit").inner_text() == "Delete run"
    forged = page.request.delete(f"{ui.base_url}/api/v1/runs/{run_id}")
    assert forged.status == 403 and "CSRF" in forged.json()["message"]
    wrong = page.request.delete(f"{ui.base_url}/api/v1/runs/{run_id}", headers={"X-CSRF-Token": "0" * 64})
    assert wrong.status == 403
    assert api(ui_server, "GET", f"/api/v1/runs/{run_id}", token=seeded["root"])["info"]["lifecycle_stage"] == "active"

    page.once("dialog", lambda dialog: dialog.accept())
    with page.expect_navigation():
        page.locator("button.edit").click()  # the page's script sends the token
    ui.settle()
    assert page.locator("h1 .status.deleted").is_visible()
    assert api(ui_server, "GET", f"/api/v1/runs/{run_id}", token=seeded["root"])["info"]["lifecycle_stage"] == "deleted"
    page.once("dialog", lambda dialog: dialog.accept())
    with page.expect_navigation():
        page.locator("button.edit", has_text="Restore run").click()
    ui.settle()
    assert api(ui_server, "GET", f"/api/v1/runs/{run_id}", token=seeded["root"])["info"]["lifecycle_stage"] == "active"

    # callers with their own token need no CSRF token (the CLI, the SDK, MLflow clients)
    response = httpx.delete(f"{ui.base_url}/api/v1/runs/{run_id}", headers={"Authorization": f"Bearer {seeded['ed']}"})
    assert response.status_code == 204
    response = httpx.post(f"{ui.base_url}/api/v1/runs/{run_id}/restore",
                          headers={"Authorization": f"Bearer {seeded['ed']}"})
    assert response.status_code == 204


def test_basic_credentials_log_in_and_must_name_the_tokens_user(ui_factory: Callable[[str], UiPage],
                                                                 ui_server: ServerProcess, seeded: Seeded) -> None:
    wrong = ui_factory(ui_server.url)
    _login(wrong, seeded["ed"], user="vera", status=401)
    assert "invalid user name or token" in wrong.text("#login-error")
    right = ui_factory(ui_server.url)
    _login(right, seeded["ed"], user="ed")
    assert right.text("#current-user") == "ed"


def test_logout_revokes_the_session(ui: UiPage, ui_server: ServerProcess, seeded: Seeded) -> None:
    _login(ui, seeded["vera"])
    secret = _session_cookie(ui)["value"]
    tokens = api(ui_server, "GET", "/api/v1/tokens?user=vera", token=seeded["root"])["tokens"]
    assert any(t["name"] == "web-ui-session" and t["state"] == "active" for t in tokens)
    # logging out is a form POST: without the CSRF field it is refused
    refused = ui.page.request.post(f"{ui.base_url}/ui/logout", form={"csrf_token": "x"}, max_redirects=0)
    assert refused.status == 403
    with ui.page.expect_navigation():
        ui.page.locator("#logout").click()
    ui.settle()
    assert "/ui/login" in ui.page.url and not ui.page.context.cookies()
    stale = httpx.get(f"{ui.base_url}/ui/experiments", cookies={"capstan_session": secret})
    assert stale.status_code == 303 and stale.headers["location"].startswith("/ui/login")
    assert "capstan_session=;" in stale.headers["set-cookie"]  # the stale cookie is dropped
    assert httpx.get(f"{ui.base_url}/api/v1/whoami", headers={"Authorization": f"Bearer {secret}"}).status_code == 401


def test_an_outsider_gets_a_403_page(ui: UiPage, seeded: Seeded) -> None:
    _login(ui, seeded["outsider"], next_path=f"/ui/runs/{seeded['run']}", status=403)
    assert "no role in project 'alpha'" in ui.text("#error-message")
    assert ui.page.locator("#back-link").is_visible()
