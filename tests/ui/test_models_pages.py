"""The model registry pages in real Chromium against a real server with authentication on.

The models list shows what ``GET /api/v1/registered-models`` answers (filters as ``capstan models list``, a
malformed filter's message, server pages); a model page lists its versions with their stages, aliases and lineage
back to the run, training job, datasets and pipeline step; an editor logged in through the form sets and deletes
an alias (through the API route, with the CSRF token); a viewer sees no button and is refused anyway; the link the
MLflow client prints opens the version page; unknown models and versions are 404 pages.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from uikit import UiPage, api, start_ui_server

from capstan.services import Services
from capstan.tracking.records import DatasetInput, RunTag
from helpers.server import ServerProcess

PROJECT = "alpha"
T0 = 1_700_000_000_000
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
        tracking, registry = services.tracking, services.registry
        eid = tracking.create_experiment("fraud-training", project=PROJECT)
        ids["experiment"] = eid
        runs = []
        for i in range(3):
            run = tracking.create_run(eid, user_id="ed", start_time=T0 + i, run_name=f"train-{i}")
            runs.append(run.run_id)
            ids[f"run{i}"] = run.run_id
        tracking.log_batch(runs[0], tags=[RunTag("capstan.job.id", "job-7")])
        tracking.log_inputs(runs[0], datasets=[DatasetInput("transactions", "d1g35t", "local")])
        tracking.log_batch(runs[2], tags=[RunTag("capstan.pipeline.run_id", "pr-42"),
                                          RunTag("capstan.pipeline.step", "train")])
        registry.create_registered_model("fraud-detector", project=PROJECT, description="Flags fraud",
                                         tags={"team": "risk"})
        for i, run_id in enumerate(runs):
            registry.create_model_version("fraud-detector", source=f"runs:/{run_id}/model", run_id=run_id,
                                          tags={"val_auc": f"0.9{i}"}, user_id="ed")
        registry.transition_model_version_stage("fraud-detector", 2, "Production")
        registry.set_alias("fraud-detector", "champion", 2)
        registry.create_registered_model("fraud-rules", project=PROJECT, tags={"team": "risk"})
        registry.create_registered_model("churn-model", project=PROJECT, tags={"team": "growth"})
        registry.create_model_version("churn-model", source="mlflow-artifacts:/elsewhere/model")
        registry.create_registered_model("beta-model", project="beta")

    return seed


@pytest.fixture(scope="module")
def ui_server(tmp_path_factory: pytest.TempPathFactory, seeded: Seeded) -> Iterator[ServerProcess]:
    with start_ui_server(tmp_path_factory.mktemp("ui-models"), _seed(seeded)) as server:
        yield server


def _twin(server: ServerProcess, token: str, path: str, **query: Any) -> Any:
    suffix = f"?{urlencode(query, doseq=True)}" if query else ""
    return api(server, "GET", path + suffix, token=token, headers={"X-Capstan-Project": PROJECT})


def _login(ui: UiPage, token: str, path: str) -> None:
    """Log in through the form (a session cookie, as a person would) and come back to ``path``."""
    ui.visit(path)
    assert "/ui/login?next=" in ui.page.url
    ui.page.locator('input[name="token"]').fill(token)
    with ui.page.expect_navigation():
        ui.page.locator("#login-submit").click()
    ui.settle()
    assert ui.page.url.endswith(path)


def _bearer(ui: UiPage, token: str) -> UiPage:
    ui.page.set_extra_http_headers({"Authorization": f"Bearer {token}"})
    return ui


def _names(ui: UiPage) -> list[str]:
    return [row[0] for row in ui.cells("#models-table")]


def test_models_list_and_filters_match_the_api(ui: UiPage, ui_server: ServerProcess, seeded: Seeded) -> None:
    root = seeded["root"]
    _bearer(ui, root).visit(f"/ui/models?project={PROJECT}")
    assert ui.page.locator("nav.main-nav a.active").inner_text() == "Models"
    twin = _twin(ui_server, root, "/api/v1/registered-models")
    assert _names(ui) == [m["name"] for m in twin["registered_models"]] == ["churn-model", "fraud-detector",
                                                                           "fraud-rules"]
    rows = {row[0]: row for row in ui.cells("#models-table")}
    assert rows["fraud-detector"][1:3] == ["v3", "@champion=v2"]
    assert rows["fraud-rules"][1] == ""

    page = ui.page
    for expression, expected in (("name LIKE 'fraud%'", ["fraud-detector", "fraud-rules"]),
                                 ("tags.team = 'growth'", ["churn-model"])):
        page.locator("#filter").fill(expression)
        page.locator("#apply").click()
        ui.settle()
        found = _twin(ui_server, root, "/api/v1/registered-models", filter=expression)
        assert _names(ui) == [m["name"] for m in found["registered_models"]] == expected

    page.locator("#filter").fill("name LIKE")
    page.locator("#apply").click()
    ui.settle()
    answer = httpx.get(f"{ui_server.url}/api/v1/registered-models", params={"filter": "name LIKE"},
                       headers={"Authorization": f"Bearer {root}", "X-Capstan-Project": PROJECT})
    assert answer.status_code == 400 and ui.text("#filter-error") == answer.json()["message"]
    assert page.locator("#filter").input_value() == "name LIKE"

    # server pages of one model; the name header (the default order) reverses it
    ui.visit(f"/ui/models?project={PROJECT}&max_results=1")
    seen = _names(ui)
    while page.locator("#next-page").count():
        page.locator("#next-page").click()
        ui.settle()
        seen += _names(ui)
    assert seen == ["churn-model", "fraud-detector", "fraud-rules"]
    page.locator("#models-table th a.sort", has_text="Name").click()
    ui.settle()
    assert _names(ui) == ["fraud-rules"]  # descending now, one per page
    assert ui.page.locator("#models-table th[aria-sort]").inner_text().strip() == "Name ▼"
    ui.visit(f"/ui/models?project={PROJECT}&order_by=last_updated_timestamp+DESC")
    by_update = _twin(ui_server, root, "/api/v1/registered-models", order_by="last_updated_timestamp DESC")
    assert _names(ui) == [m["name"] for m in by_update["registered_models"]]


def test_model_page_lists_versions_with_lineage(ui: UiPage, ui_server: ServerProcess, seeded: Seeded) -> None:
    root = seeded["root"]
    _bearer(ui, root).visit("/ui/models/fraud-detector")
    twin = _twin(ui_server, root, "/api/v1/views/models/fraud-detector")
    versions = twin["versions"]
    rows = ui.cells("#versions-table")
    assert [r[0] for r in rows] == [f"v{v['version']}" for v in versions] == ["v3", "v2", "v1"]
    assert [r[1] for r in rows] == [v["current_stage"] for v in versions] == ["None", "Production", "None"]
    assert rows[1][3] == "@champion" and versions[1]["aliases"] == ["champion"]
    assert {r[0]: r[0] for r in ui.cells("#aliases-table")} == {"@champion": "@champion"}
    assert twin["registered_model"]["aliases"] == {"champion": 2}
    assert ui.text("#latest-version") == "v3"

    v1 = ui.page.locator('#versions-table tr[data-version="1"]')
    assert v1.locator(".lineage-run a").first.get_attribute("href") == f"/ui/runs/{seeded['run0']}"
    assert versions[2]["lineage"]["run"]["run_name"] == "train-0" and versions[2]["lineage"]["job_id"] == "job-7"
    v3 = ui.page.locator('#versions-table tr[data-version="3"] .lineage-pipeline a')
    assert [v3.nth(i).get_attribute("href") for i in range(v3.count())] == [
        "/ui/pipelines/runs/pr-42", "/ui/pipelines/runs/pr-42/steps/train"]
    assert versions[0]["lineage"]["pipeline_run_id"] == "pr-42"
    assert ui.page.locator("button.edit").count() == 1  # a server admin may delete the alias

    # the version page: lineage in full
    ui.page.locator('#versions-table tr[data-version="1"] td a').first.click()
    ui.page.wait_for_url("**/ui/models/fraud-detector/versions/1")
    ui.settle()
    version = _twin(ui_server, root, "/api/v1/views/models/fraud-detector/versions/1")["version"]
    assert ui.text("#version-source") == version["source"] == f"runs:/{seeded['run0']}/model"
    lineage = ui.text("#lineage-list")
    assert "train-0" in lineage and "fraud-training" in lineage and "job-7" in lineage and "transactions" in lineage
    assert ui.page.locator('#lineage-list a[href="/ui/jobs/job-7?project=alpha"]').count() == 1
    assert {r[0]: r[1] for r in ui.cells("#tags-table")} == version["tags"] == {"val_auc": "0.90"}

    churn = _twin(ui_server, root, "/api/v1/views/models/churn-model/versions/1")["version"]["lineage"]
    assert churn["run_state"] == "none"
    ui.visit("/ui/models/churn-model/versions/1")
    assert "Nothing recorded" in ui.text("#lineage-list")


def test_mlflow_version_link_opens_the_version_page(ui: UiPage, seeded: Seeded) -> None:
    _bearer(ui, seeded["root"])
    ui.page.goto(f"{ui.base_url}/#/models/fraud-detector/versions/2")
    ui.page.wait_for_url("**/ui/models/fraud-detector/versions/2")
    ui.settle()
    assert "fraud-detector version 2" in ui.text("h1") and "@champion" in ui.text("h1")
    ui.page.goto(f"{ui.base_url}/#/models/fraud-detector")
    ui.page.wait_for_url("**/ui/models/fraud-detector")


def test_an_editor_sets_and_deletes_an_alias(ui: UiPage, ui_server: ServerProcess, seeded: Seeded) -> None:
    _login(ui, seeded["ed"], "/ui/models/fraud-detector")
    page = ui.page
    page.on("dialog", lambda dialog: dialog.accept())
    page.locator("#alias-name").fill("challenger")
    page.locator("#alias-version").fill("3")
    with page.expect_navigation():
        page.locator("#alias-set").click()
    ui.settle()
    assert [r[:2] for r in ui.cells("#aliases-table")] == [["@challenger", "v3"], ["@champion", "v2"]]
    got = api(ui_server, "GET", "/api/v1/registered-models/fraud-detector/aliases/challenger", token=seeded["ed"])
    assert got["version"] == 3
    assert "@challenger" in ui.page.locator('#versions-table tr[data-version="3"]').inner_text()

    # a version that does not exist: the server's message next to the button, nothing changes
    page.locator("#alias-name").fill("ghost")
    page.locator("#alias-version").fill("99")
    ui.allow_status(404)
    page.locator("#alias-set").click()
    page.wait_for_selector("#alias-form .action-result.error")
    assert "99" in ui.text("#alias-form .action-result")

    # delete it from the version page
    ui.visit("/ui/models/fraud-detector/versions/3")
    with page.expect_navigation():
        page.locator('#aliases-table tr[data-alias="challenger"] button.edit').click()
    ui.settle()
    assert ui.cells("#aliases-table") == [["No aliases point here."]]
    answer = httpx.get(f"{ui_server.url}/api/v1/registered-models/fraud-detector/aliases/challenger",
                       headers={"Authorization": f"Bearer {seeded['ed']}"})
    assert answer.status_code == 404


def test_a_viewer_sees_no_buttons_and_is_refused(ui: UiPage, ui_server: ServerProcess, seeded: Seeded) -> None:
    _login(ui, seeded["vera"], "/ui/models/fraud-detector")
    assert ui.page.locator("button.edit").count() == 0 and ui.page.locator("#alias-form").count() == 0
    ui.visit("/ui/models/fraud-detector/versions/2")
    assert ui.page.locator("button.edit").count() == 0 and ui.page.locator("#alias-form").count() == 0
    csrf = ui.page.locator('meta[name="csrf-token"]').get_attribute("content")
    forced = ui.page.request.put(f"{ui.base_url}/api/v1/registered-models/fraud-detector/aliases/mine",
                                 data={"version": 1}, headers={"X-CSRF-Token": str(csrf)})
    assert forced.status == 403 and "'write' is required" in forced.json()["message"]
    ui.visit("/ui/models/beta-model", status=403)  # another project's model
    ui.visit("/ui/models?project=beta", status=403)


def test_unknown_models_and_versions_are_404_pages(ui: UiPage, ui_server: ServerProcess, seeded: Seeded) -> None:
    root = seeded["root"]
    _bearer(ui, root).visit("/ui/models/no-such-model", status=404)
    assert "no-such-model" in ui.text("#error-message")
    assert ui.page.locator("#back-link").get_attribute("href") == "/ui/models"
    assert "Traceback" not in ui.page.content()
    ui.visit("/ui/models/fraud-detector/versions/99", status=404)
    ui.visit("/ui/models/fraud-detector/versions/latest", status=404)
    for path in ("/api/v1/views/models/no-such-model", "/api/v1/views/models/fraud-detector/versions/99"):
        answer = httpx.get(f"{ui_server.url}{path}", headers={"Authorization": f"Bearer {root}"})
        assert answer.status_code == 404 and answer.json()["error_code"] == "RESOURCE_DOES_NOT_EXIST"
