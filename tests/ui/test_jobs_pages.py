"""The training jobs pages in real Chromium against a real server with authentication on, its jobs run by the
server's own job runner (project ``alpha``: every link carries the project).

The list and a job's page show what ``GET /api/v1/jobs`` and ``GET /api/v1/jobs/ID`` say (states, restarts,
attempts with the failing rank and exit code), the state filter and pages work, the worker selector shows each
worker's output, a running job's log grows on the page as the job writes it and the page follows the job to its
end, an editor cancels a job with the Cancel button while a viewer gets no button (and a 403 from the API), and an
unknown job or a job of another project is a 404 page.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from uikit import UiPage, api, start_ui_server

from capstan.services import Services
from helpers.server import ServerProcess

PROJECT = "alpha"
SCRIPTS = Path(__file__).resolve().parent / "job_scripts"
TERMINAL = ("Succeeded", "Failed", "Cancelled")
TIMES = "\N{MULTIPLICATION SIGN}"  # the list's gang column: workers x processes
Seeded = dict[str, Any]


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


def submit(server: ServerProcess, token: str, name: str, entry: str, *args: str, **fields: Any) -> str:
    """Submit a job of project alpha running ``entry`` from the scripts folder; its id."""
    spec = {"name": name, "entry": entry, "args": list(args), "working_dir": str(SCRIPTS), "cpu": 0.25,
            "restart_backoff_s": 0.05, "grace_s": 2.0, **fields}
    body = api(server, "POST", "/api/v1/jobs", token=token, json=spec, headers={"X-Capstan-Project": PROJECT})
    return str(body["job"]["id"])


def show(server: ServerProcess, token: str, job_id: str) -> Any:
    return api(server, "GET", f"/api/v1/jobs/{job_id}", token=token, headers={"X-Capstan-Project": PROJECT})


def wait_for_state(server: ServerProcess, token: str, job_id: str, states: tuple[str, ...]) -> Any:
    deadline = time.monotonic() + 60
    while True:
        body = show(server, token, job_id)
        if body["job"]["state"] in states:
            return body
        assert time.monotonic() < deadline, f"job {job_id} stayed {body['job']['state']}"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def seeded() -> Seeded:
    return {}


@pytest.fixture(scope="module")
def ui_server(tmp_path_factory: pytest.TempPathFactory, seeded: Seeded) -> Iterator[ServerProcess]:
    with start_ui_server(tmp_path_factory.mktemp("ui-jobs"), _seed(seeded)) as server:
        root = seeded["root"]
        seeded["failed"] = submit(server, root, "flaky", "fails.py", workers=2, max_restarts=1)
        seeded["broken"] = submit(server, root, "broken", "missing_module.py")
        for key in ("failed", "broken"):
            wait_for_state(server, root, seeded[key], TERMINAL)
        yield server


def login(ui: UiPage, token: str, next_path: str) -> None:
    ui.visit(next_path)  # no session yet: the login page, coming back here afterwards
    assert "/ui/login?next=" in ui.page.url
    ui.page.locator('input[name="token"]').fill(token)
    with ui.page.expect_navigation():
        ui.page.locator("#login-submit").click()
    ui.settle()


def test_the_list_shows_what_the_api_says_with_filter_and_pages(ui: UiPage, ui_server: ServerProcess,
                                                                 seeded: Seeded) -> None:
    login(ui, seeded["vera"], f"/ui/jobs?project={PROJECT}")
    twin = api(ui_server, "GET", "/api/v1/jobs", token=seeded["vera"], headers={"X-Capstan-Project": PROJECT})
    rows = ui.cells("#jobs-table")
    assert [r[0] for r in rows] == [j["id"] for j in twin["jobs"]]
    for row, job in zip(rows, twin["jobs"], strict=True):
        spec = job["spec"]
        assert row[1] == job["state"] and row[2] == job["reason"]
        assert row[3] == f"{spec['workers']}{TIMES}{spec['nproc_per_worker']}"
        assert row[4] == f"{job['restarts']}/{spec['max_restarts']}" and row[5] == str(job["attempt"])
    flaky = next(r for r in rows if r[0] == seeded["failed"])
    assert flaky[1:6] == ["Failed", "WorkerFailed", f"2{TIMES}1", "1/1", "2"]

    ui.page.locator('input[name="state"][value="Failed"]').check()
    with ui.page.expect_navigation():
        ui.page.locator("#apply").click()
    ui.settle()
    failed = api(ui_server, "GET", "/api/v1/jobs?state=Failed", token=seeded["vera"],
                 headers={"X-Capstan-Project": PROJECT})
    assert [r[0] for r in ui.cells("#jobs-table")] == [j["id"] for j in failed["jobs"]]
    assert {r[1] for r in ui.cells("#jobs-table")} == {"Failed"}

    ui.visit(f"/ui/jobs?project={PROJECT}&max_results=1")
    first = [r[0] for r in ui.cells("#jobs-table")]
    with ui.page.expect_navigation():
        ui.page.locator("#next-page").click()
    ui.settle()
    assert "project=alpha" in ui.page.url
    second = [r[0] for r in ui.cells("#jobs-table")]
    assert first + second == [j["id"] for j in twin["jobs"]][:2]
    link = ui.page.locator("#jobs-table tbody a", has_text=second[0]).first
    assert link.get_attribute("href") == f"/ui/jobs/{second[0]}?project={PROJECT}"
    ui.visit(f"/ui/jobs?project={PROJECT}&state=Bogus", status=400)
    assert "state: must be one of" in ui.text("#error-message")


def test_a_job_page_shows_its_attempts_workers_and_links(ui: UiPage, ui_server: ServerProcess,
                                                         seeded: Seeded) -> None:
    job_id = seeded["failed"]
    login(ui, seeded["vera"], f"/ui/jobs/{job_id}?project={PROJECT}")
    twin = show(ui_server, seeded["vera"], job_id)
    job = twin["job"]
    assert ui.text("#job-state") == job["state"] == "Failed"
    assert ui.text("#job-restarts") == "1 of 1 allowed"
    assert "rank 1 exited with code 3" in ui.text("#job-reason")
    rows = ui.cells("#attempts-table")
    assert [(r[0], r[4], r[5], r[6]) for r in rows] == [
        (str(a["number"]), a["reason"], str(a["rank"]), str(a["exit_code"])) for a in twin["attempts"]]
    assert [r[7] for r in rows] == [a["summary"] for a in twin["attempts"]]
    assert ui.page.locator("#run-link").get_attribute("href") == f"/ui/runs/{job['run_id']}"
    assert ui.page.locator("#timeline-link").get_attribute("href") == f"/ui/timeline/job/{job_id}?project={PROJECT}"
    assert "Gang" in ui.text("#job-spec") and "2 worker(s) x 1 process(es)" in ui.text("#job-spec")
    assert ui.page.locator("#cancel-job").count() == 0  # it has ended (and vera is a viewer)

    log = ui.page.locator("#log-text")
    log.filter(has_text="rank 0 attempt 2: loading the data").wait_for()
    ui.page.locator("#log-status").filter(has_text="all output").wait_for()
    assert "ValueError" not in log.inner_text()
    ui.page.locator("#log-worker").select_option("1")
    log.filter(has_text="ValueError: batch 7 has no labels").wait_for()
    assert "rank 1 attempt 2" in log.inner_text()
    ui.page.locator("#log-attempt").select_option("1")
    log.filter(has_text="rank 1 attempt 1: loading the data").wait_for()
    assert "attempt 2" not in log.inner_text()
    ui.screenshot()

    with ui.page.expect_navigation():
        ui.page.locator("#timeline-link").click()
    ui.settle()
    assert ui.text("#diagnosis-cause") == "NonZeroExit"


def test_a_running_jobs_log_follows_live_to_its_end(ui: UiPage, ui_server: ServerProcess, seeded: Seeded,
                                                    tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    job_id = submit(ui_server, seeded["root"], "gated", "gated.py", str(gate))
    login(ui, seeded["vera"], f"/ui/jobs/{job_id}?project={PROJECT}")
    log = ui.page.locator("#log-text")
    log.filter(has_text="rank 0: started").wait_for()
    assert ui.text("#job-state") == "Running"
    ui.page.locator("#log-status").filter(has_text="Following worker 0").wait_for()
    assert "after the gate" not in log.inner_text()
    ui.screenshot()

    gate.write_text("go")  # the job writes its last lines and ends; the page was not reloaded
    log.filter(has_text="rank 0: finished").wait_for()
    ui.page.locator("#job-state").filter(has_text="Succeeded").wait_for()
    ui.page.locator("#log-status").filter(has_text="all output").wait_for()
    text = log.inner_text()
    assert [f"rank 0: step {i} after the gate" in text for i in range(3)] == [True] * 3
    assert wait_for_state(ui_server, seeded["root"], job_id, TERMINAL)["job"]["state"] == "Succeeded"
    rows = ui.cells("#attempts-table")
    assert [r[4] for r in rows] == ["Succeeded"]
    ui.screenshot()


def test_an_editor_cancels_a_job_and_a_viewer_cannot(ui_factory: Callable[[str], UiPage], ui_server: ServerProcess,
                                                     seeded: Seeded, tmp_path: Path) -> None:
    job_id = submit(ui_server, seeded["root"], "endless", "gated.py", str(tmp_path / "never"), "--forever")
    wait_for_state(ui_server, seeded["root"], job_id, ("Running",))
    path = f"/ui/jobs/{job_id}?project={PROJECT}"

    viewer = ui_factory(ui_server.url)
    login(viewer, seeded["vera"], path)
    assert viewer.page.locator("#cancel-job").count() == 0
    csrf = str(viewer.page.locator('meta[name="csrf-token"]').get_attribute("content"))
    refused = viewer.page.request.post(f"{ui_server.url}/api/v1/jobs/{job_id}/cancel",
                                       headers={"X-CSRF-Token": csrf, "X-Capstan-Project": PROJECT})
    assert refused.status == 403 and "'write' is required" in refused.json()["message"]

    editor = ui_factory(ui_server.url)
    login(editor, seeded["ed"], path)
    editor.page.locator("#log-text").filter(has_text="rank 0: started").wait_for()
    editor.page.once("dialog", lambda dialog: dialog.accept())
    with editor.page.expect_navigation():
        editor.page.locator("#cancel-job").click()
    editor.settle()
    editor.page.locator("#job-state").filter(has_text="Cancelled").wait_for()
    assert show(ui_server, seeded["root"], job_id)["job"]["state"] == "Cancelled"
    assert editor.page.locator("#cancel-job").count() == 0  # the job has ended: no button
    editor.screenshot()


def test_unknown_jobs_and_other_projects_jobs_are_404_pages(ui: UiPage, seeded: Seeded) -> None:
    login(ui, seeded["root"], f"/ui/jobs?project={PROJECT}")
    ui.visit(f"/ui/jobs/no-such-job-000000?project={PROJECT}", status=404)
    assert "job 'no-such-job-000000' does not exist" in ui.text("#error-message")
    assert ui.page.locator("#back-link").get_attribute("href") == "/ui/jobs"
    ui.visit(f"/ui/jobs/{seeded['failed']}", status=404)  # asked in project default: it is alpha's
    assert "does not exist in project 'default'" in ui.text("#error-message")
