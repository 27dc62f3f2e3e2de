"""The deployments pages in real Chromium against a real ``capstan server`` (authentication on) whose controller runs
real ``capstan serve`` replicas of a deployment with a canary, in project ``alpha``.

The list and the deployment page show what their JSON twins say (and the twin's quality is the status route's);
the page refreshes its numbers in place as traffic arrives, and its drift table marks the feature that moved; an
editor promotes the canary, rolls back and scales with the buttons; a viewer sees no button and a forced POST is
refused; an unknown deployment is a 404 page.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from uikit import UiPage, api

from capstan.sdk.client import Client
from capstan.services import Services
from capstan.settings import Settings
from helpers.server import ServerProcess, start_server

pytestmark = pytest.mark.slow
PROJECT = "alpha"
NAME = "iris-live"
SPEC = {"name": NAME, "model": "models:/iris/1", "canary": {"model": "models:/iris/2", "traffic": 30},
        "drift": {"window": 20}}
Seeded = dict[str, str]
ABSENT = "\u2013"  # the en dash the page shows for a missing figure
LIVE_S = 20.0  # the pages below refresh every second; allow a slow machine many rounds


def _register(home: Path) -> None:
    x, y = load_iris(return_X_y=True)
    with Client(Settings.for_home(home, project=PROJECT)) as client:
        experiment_id = client.create_experiment(f"iris-{uuid.uuid4().hex[:6]}")
        for c in (1.0, 0.01):
            run = client.create_run(experiment_id)
            client.log_model(run.info.run_id, LogisticRegression(C=c, max_iter=300).fit(x, y), "model",
                             registered_model_name="iris")
            client.set_terminated(run.info.run_id)


def _seed(ids: Seeded) -> Callable[[Services], None]:
    def seed(services: Services) -> None:
        auth = services.auth
        auth.create_user("root", admin=True)
        ids["root"] = auth.create_token("root").secret
        for user, role in (("vera", "viewer"), ("ed", "editor")):
            auth.create_user(user)
            auth.grant(user, PROJECT, role)
            ids[user] = auth.create_token(user).secret

    return seed


def _wait_for(what: str, check: Callable[[], Any], timeout: float = 90) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def seeded() -> Seeded:
    return {}


@pytest.fixture(scope="module")
def ui_server(tmp_path_factory: pytest.TempPathFactory, seeded: Seeded) -> Iterator[ServerProcess]:
    home = tmp_path_factory.mktemp("ui-deployments")
    services = Services.open(Settings.for_home(home))
    try:
        _seed(seeded)(services)
    finally:
        services.close()
    with ThreadPoolExecutor(1) as pool:  # the models are logged while the server starts
        registered = pool.submit(_register, home)
        with start_server(home) as server:
            registered.result()
            _call(server, seeded, "POST", "/api/v1/deployments", json=SPEC)
            _wait_for("both versions ready", lambda: all(
                t["ready_replicas"] for t in _status(server, seeded)["traffic"]))
            yield server


def _headers(seeded: Seeded, **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {seeded['root']}", "X-Capstan-Project": PROJECT, **extra}


def _call(server: ServerProcess, seeded: Seeded, method: str, path: str, **kwargs: Any) -> Any:
    return api(server, method, path, headers=_headers(seeded), **kwargs)


def _status(server: ServerProcess, seeded: Seeded) -> dict[str, Any]:
    return dict(_call(server, seeded, "GET", f"/api/v1/deployments/{NAME}"))


def _twin(server: ServerProcess, seeded: Seeded) -> dict[str, Any]:
    return dict(_call(server, seeded, "GET", f"/api/v1/views/deployments/{NAME}"))


def _infer(server: ServerProcess, seeded: Seeded, rows: np.ndarray, *, pin: str | None = None,
           request_id: str | None = None) -> None:
    body = {"inputs": [{"name": "x", "shape": list(rows.shape), "datatype": "FP64", "data": rows.ravel().tolist()}]}
    headers = _headers(seeded)
    if pin:
        headers["x-capstan-version"] = pin
    if request_id:
        headers["x-request-id"] = request_id
    answer = httpx.post(f"{server.url}/deployments/{NAME}/v2/models/{NAME}/infer", json=body, headers=headers,
                        timeout=30)
    assert answer.status_code == 200, answer.text


def _login(ui: UiPage, token: str, path: str) -> None:
    ui.visit(path)  # no session yet: the login page, coming back to ``path`` afterwards
    ui.page.locator('input[name="token"]').fill(token)
    with ui.page.expect_navigation():
        ui.page.locator("#login-submit").click()
    ui.settle()
    assert ui.page.url.endswith(path), ui.page.url


def _until(ui: UiPage, what: str, expression: str, timeout_s: float = LIVE_S) -> None:
    """Wait until ``expression`` is true in the page (polled from here: the page's CSP forbids the string evaluation
    that Playwright's own ``wait_for_function`` polling needs)."""
    _wait_for(what, lambda: ui.page.evaluate(expression), timeout=timeout_s)


def _page_path(name: str = NAME, refresh: int | None = None) -> str:
    return f"/ui/deployments/{name}?project={PROJECT}" + ("" if refresh is None else f"&refresh={refresh}")


def _fixed(value: float | None, digits: int = 2) -> str:
    return ABSENT if value is None else f"{value:.{digits}f}"


def _expected_versions(twin: dict[str, Any]) -> list[list[str]]:
    """The versions table as the page must show the twin's ``versions``."""
    rows = []
    for v in twin["versions"]:
        q = v["quality"] or {}
        rows.append([f"v{v['version']}", v["role"], ABSENT if v["weight"] is None else f"{v['weight']:g}%",
                     ABSENT if v["ready_replicas"] is None else f"{v['ready_replicas']}/{v['desired_replicas']}",
                     _fixed(v["rps"]), str(q.get("requests", 0)), str(q.get("errors", 0)),
                     ABSENT if v["error_rate"] is None else f"{v['error_rate'] * 100:.2f}%",
                     _fixed(q.get("latency_p50_ms")), _fixed(q.get("latency_p95_ms")),
                     _fixed(q.get("latency_p99_ms")), str(q.get("labelled", 0)), _fixed(q.get("accuracy"), 4)])
    return rows


def test_deployments_list_shows_what_its_twin_says(ui: UiPage, ui_server: ServerProcess, seeded: Seeded) -> None:
    _login(ui, seeded["vera"], f"/ui/deployments?project={PROJECT}")
    twin = _call(ui_server, seeded, "GET", f"/api/v1/views/deployments?project={PROJECT}")
    [row] = twin["deployments"]
    assert (row["name"], row["state"], row["ready_replicas"], row["desired_replicas"]) == (NAME, "ready", 2, 2)
    assert [(t["role"], t["version"], t["weight"]) for t in row["traffic"]] == [("primary", "1", 70.0),
                                                                                ("canary", "2", 30.0)]
    listed = _call(ui_server, seeded, "GET", "/api/v1/deployments")["deployments"]  # the deployments API agrees
    assert [(d["name"], d["state"], d["ready_replicas"]) for d in listed] == [(NAME, "ready", 2)]
    assert ui.cells("#deployments-table") == [[NAME, "ready", "primary v1 70% canary v2 30%", "2/2", "1",
                                               ui.cells("#deployments-table")[0][5]]]
    ui.page.locator(f"#deployments-table a:text('{NAME}')").click()
    ui.page.wait_for_url(f"**{_page_path()}")
    assert ui.text("#deployment-state") == "ready"


def test_deployment_page_refreshes_in_place_and_marks_drift(ui: UiPage, ui_server: ServerProcess,
                                                            seeded: Seeded) -> None:
    _login(ui, seeded["ed"], _page_path(refresh=1))
    page = ui.page
    assert page.locator("#split-bar .seg").all_inner_texts() == ["primary v1 · 70%", "canary v2 · 30%"]
    assert page.locator("#drift-table").count() == 0  # no traffic yet: each version is filling its first window
    page.evaluate("window.notReloaded = true")

    x, y = load_iris(return_X_y=True)
    rng = np.random.default_rng(3)
    reference = x[rng.integers(0, len(x), 20)]
    _infer(ui_server, seeded, reference, pin="primary")  # the primary's first window: its reference
    _infer(ui_server, seeded, reference + np.array([3.0, 0.0, 0.0, 0.0]), pin="primary")  # feature 0 moved
    picks = rng.integers(0, len(x), 16)
    for i, pick in enumerate(picks):  # one-row requests to either version, with ground truth sent afterwards
        _infer(ui_server, seeded, x[pick:pick + 1], pin="canary" if i % 4 == 0 else None, request_id=f"r{i}")
    recorded = api(ui_server, "POST", f"/deployments/{NAME}/feedback", headers=_headers(seeded),
                   json=[{"request_id": f"r{i}", "truth": int(y[pick])} for i, pick in enumerate(picks)])
    assert recorded == {"recorded": 16, "unknown": []}

    drifted = page.locator("#drift-table tr.drifted")
    drifted.first.wait_for(timeout=LIVE_S * 1000)  # shown by a refresh, not a reload
    _until(ui, "every answer's ground truth in the Labelled column",
           "[...document.querySelectorAll('#versions-table tbody td:nth-child(12)')]"
           ".reduce((sum, cell) => sum + Number(cell.textContent), 0) === 16")
    assert page.evaluate("window.notReloaded") is True
    ui.screenshot()
    twin = _twin(ui_server, seeded)
    assert any(f["feature"] == "0" and f["drifted"] for v in twin["drift"]["versions"] if v["version"] == "1"
               for f in v["features"])
    rows = ui.cells("#drift-table")
    shown = {(r[0], r[1].split()[0], r[3]) for r in rows if r[7] == "yes"}
    assert shown == {(f["feature"], f"v{v['version']}", f["stat"]) for v in twin["drift"]["versions"]
                     for f in v["features"] if f["drifted"]}
    assert {r[0] for r in rows if r[7] == "yes"} == {"0"}  # only the feature that moved
    for version in twin["drift"]["versions"]:
        line = ui.text(f"#drift p.drift-version[data-version='{version['version']}']")
        assert line.startswith(f"v{version['version']}: {version['rows_seen']} row(s) seen, {version['windows']} "
                               f"window(s) of 20 evaluated"), line
    requests = {v["version"]: v["quality"]["requests"] for v in twin["versions"]}
    assert requests["2"] >= 4 and requests["1"] >= 2 and sum(requests.values()) == 18


def test_deployment_viewer_sees_no_buttons_and_is_refused(ui: UiPage, ui_server: ServerProcess,
                                                          seeded: Seeded) -> None:
    _login(ui, seeded["vera"], _page_path())
    page = ui.page
    assert page.locator("#deployment-actions button").count() == 0
    assert page.locator("#scale-form").count() == 0
    csrf = str(page.locator('meta[name="csrf-token"]').get_attribute("content"))
    for action, body in (("promote", None), ("rollback", None), ("scale", {"replicas": 3})):
        forced = page.request.post(f"{ui.base_url}/api/v1/deployments/{NAME}/{action}", data=body,
                                   headers={"X-CSRF-Token": csrf, "X-Capstan-Project": PROJECT})
        assert forced.status == 403 and "'write' is required" in forced.json()["message"], forced.text()
    assert _status(ui_server, seeded)["deployment"]["revision"] == 1


def test_unknown_deployment_is_a_404(ui: UiPage, ui_server: ServerProcess, seeded: Seeded) -> None:
    _login(ui, seeded["vera"], f"/ui/deployments?project={PROJECT}")
    ui.visit(_page_path("no-such-deployment"), status=404)
    assert "no-such-deployment" in ui.text("#error-message")
    assert ui.page.locator("#back-link").get_attribute("href") == "/ui/deployments"
    ui.visit(f"{_page_path()}&refresh=soon", status=400)
    assert "refresh: must be whole seconds" in ui.text("#error-message")
    response = httpx.get(f"{ui_server.url}/api/v1/views/deployments/no-such-deployment",
                         headers=_headers(seeded))
    assert response.status_code == 404 and "no-such-deployment" in response.json()["message"]


def test_deployment_numbers_match_the_twin_and_status_route(ui: UiPage, ui_server: ServerProcess,
                                                         seeded: Seeded) -> None:
    # the rates cover the last 10 s: once the traffic of the previous test is older, nothing moves any more
    _wait_for("the request rates to settle", lambda: all(
        v["rps"] == 0 for v in _twin(ui_server, seeded)["versions"]), timeout=30)
    _login(ui, seeded["vera"], _page_path())
    twin = _twin(ui_server, seeded)
    assert ui.cells("#versions-table") == _expected_versions(twin)
    assert sum(v["quality"]["requests"] for v in twin["versions"]) == twin["sample"]["outcomes"] == 18
    status = _status(ui_server, seeded)  # the same source of truth as `capstan deployments status`
    assert twin["quality"] == status["quality"]
    assert twin["state"] == status["state"] and [(t["role"], t["weight"], t["ready_replicas"]) for t in
                                                 twin["traffic"]] == [(t["role"], t["weight"], t["ready_replicas"])
                                                                      for t in status["traffic"]]
    assert [e["reason"] for e in twin["events"]] == [e["reason"] for e in reversed(status["events"])]
    assert [r["id"] for r in twin["replicas"]] == [r["id"] for r in status["replicas"]]
    replicas = ui.cells("#replicas-table")
    assert sorted((r[0], r[1], r[3]) for r in replicas) == sorted(
        (r["id"], r["serving_as"], r["state"]) for r in status["replicas"])
    assert ui.text("#ab-verdict").endswith(twin["quality"]["comparison"]["verdict"])
    events = ui.cells("#events-table")
    assert [e[2] for e in events] == [e["reason"] for e in twin["events"]]
    timeline = f"/ui/timeline/deployment/{NAME}?project={PROJECT}"
    assert ui.page.locator("#timeline-link").get_attribute("href") == timeline
    ui.visit(timeline)  # the deployment's timeline page opens


def test_deployment_editor_promotes_rolls_back_and_scales(ui: UiPage, ui_server: ServerProcess,
                                                          seeded: Seeded) -> None:
    _login(ui, seeded["ed"], _page_path(refresh=1))
    page = ui.page
    page.evaluate("window.notReloaded = true")
    assert page.locator("#promote").is_visible() and page.locator("#rollback").is_visible()

    page.once("dialog", lambda dialog: dialog.accept())
    page.locator("#promote").click()
    _until(ui, "the promoted split", "document.querySelector('#split-bar').textContent.trim() === 'primary v2 · 100%'")
    assert "Promote canary: done (revision 2)" in ui.text("#action-result")
    assert page.locator("#promote").is_hidden() and page.locator("#rollback").is_visible()
    ui.screenshot()
    assert _status(ui_server, seeded)["deployment"]["versions"] == {"primary": "models:/iris/2"}

    page.once("dialog", lambda dialog: dialog.accept())
    page.locator("#rollback").click()
    _until(ui, "the rolled-back split",
           "document.querySelector('#split-bar').textContent.trim() === 'primary v1 · 100%'")
    assert _status(ui_server, seeded)["deployment"]["versions"] == {"primary": "models:/iris/1"}

    page.locator("#scale-replicas").fill("2")
    page.locator("#scale").click()
    _until(ui, "two desired replicas",
           "document.querySelector('#replica-counts').textContent.includes('of 2 desired')")
    assert _status(ui_server, seeded)["deployment"]["desired_replicas"] == 2
    assert page.evaluate("window.notReloaded") is True
    events = [row[2] for row in ui.cells("#events-table")]
    assert events[:3] == ["Scaled", "RolledBack", "Promoted"]
    ui.screenshot()
