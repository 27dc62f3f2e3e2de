"""The workload timeline page in real Chromium against a real server (single-user mode), over training jobs that
really failed in the server's job runner: a script whose rank exits with status 3, and one that imports a module
that is not installed.

The page shows what its twin ``GET /api/v1/timeline/KIND/ID`` says: the diagnosis naming the cause (the exit code
and the last error line; the missing module), every item as a point of the time axis and a row of the list, the
memory limit as a peak bar, the log tail and the related workloads, whose timelines open from their links. An
unknown workload is a 404 page; an unknown kind, a malformed id or a bad ``tail`` a 400 page naming it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from uikit import UiPage, api, start_ui_server

from helpers.server import ServerProcess

SCRIPTS = Path(__file__).resolve().parent / "job_scripts"
Seeded = dict[str, str]


def _run_job(server: ServerProcess, name: str, entry: str, **fields: Any) -> str:
    spec = {"name": name, "entry": entry, "working_dir": str(SCRIPTS), "cpu": 0.25, "grace_s": 2.0, **fields}
    job_id = str(api(server, "POST", "/api/v1/jobs", json=spec)["job"]["id"])
    deadline = time.monotonic() + 60
    while api(server, "GET", f"/api/v1/jobs/{job_id}")["job"]["state"] not in ("Succeeded", "Failed", "Cancelled"):
        assert time.monotonic() < deadline, f"job {job_id} did not end"
        time.sleep(0.1)
    return job_id


@pytest.fixture(scope="module")
def seeded() -> Seeded:
    return {}


@pytest.fixture(scope="module")
def ui_server(tmp_path_factory: pytest.TempPathFactory, seeded: Seeded) -> Iterator[ServerProcess]:
    with start_ui_server(tmp_path_factory.mktemp("ui-timeline")) as server:
        seeded["exit3"] = _run_job(server, "exits", "fails.py", workers=2, memory="256Mi")
        seeded["import"] = _run_job(server, "imports", "missing_module.py")
        yield server


def test_a_failed_jobs_timeline_names_the_exit_code_and_the_error_line(ui: UiPage, ui_server: ServerProcess,
                                                                       seeded: Seeded) -> None:
    job_id = seeded["exit3"]
    ui.visit(f"/ui/timeline/job/{job_id}")
    twin = api(ui_server, "GET", f"/api/v1/timeline/job/{job_id}")
    diagnosis = twin["diagnosis"]
    assert ui.text("#diagnosis-cause") == diagnosis["cause"] == "NonZeroExit"
    assert ui.text("#diagnosis-summary") == diagnosis["summary"]
    assert diagnosis["summary"] == "exited with code 3: ValueError: batch 7 has no labels"
    assert ui.page.locator("#diagnosis-evidence li").all_inner_texts() == diagnosis["evidence"]
    assert ui.text("#diagnosis-hint") == f"Hint: {diagnosis['hint']}"
    assert ui.page.locator("#diagnosis.bad").count() == 1
    assert ui.text("#timeline-state") == twin["state"] == "Failed"

    # every item is a point on the axis (linking to its row) and a row of the list, in time order
    items = twin["items"]
    markers = ui.page.locator("#timeline-chart circle.marker")
    assert markers.count() == len(items) > 0
    assert [markers.nth(i).get_attribute("data-index") for i in range(len(items))] == [
        str(i) for i in range(len(items))]
    rows = ui.cells("#timeline-items")
    assert [(r[2], r[4], r[5]) for r in rows] == [(i["kind"], i["reason"], i["text"]) for i in items]
    xs = [float(markers.nth(i).get_attribute("cx") or 0) for i in range(len(items))]
    assert xs == sorted(xs)
    errors = [i for i, item in enumerate(items) if item["level"] == "error"]
    assert errors and all("lv-error" in (markers.nth(i).get_attribute("class") or "") for i in errors)
    assert any(i["kind"] == "log" and "ValueError: batch 7 has no labels" in i["text"] for i in items)
    lanes = ui.page.locator("#timeline-chart text.lane-label").all_text_contents()
    assert lanes[0] == "State" and {"Queue", "Attempts", "Logs"} <= set(lanes)
    markers.nth(errors[0]).click()  # a point leads to its row
    assert ui.page.url.endswith(f"#item-{errors[0]}")

    assert ui.text("#log-tail").splitlines() == twin["log_tail"]
    peak = twin["peaks"][0]
    # Measured (decision 0515); null only for a worker smaller than the runner that ended before a sample.
    assert peak["resource"] == "memory" and (peak["used"] is None or peak["used"] > 0)
    assert peak["limit"] == 256 * 2**20
    assert ui.text("#peaks .peak-label") == peak["text"]
    related = ui.page.locator("#related-list a", has_text="/")
    assert related.all_inner_texts() == [f"{r['kind']}/{r['id']}" for r in twin["related"]]
    ui.screenshot()

    run_id = next(r["id"] for r in twin["related"] if r["kind"] == "run")
    with ui.page.expect_navigation():
        related.filter(has_text=f"run/{run_id}").click()
    ui.settle()
    run_twin = api(ui_server, "GET", f"/api/v1/timeline/run/{run_id}")
    assert ui.text("#diagnosis-cause") == run_twin["diagnosis"]["cause"]
    assert ui.page.locator("#object-page").get_attribute("href") == f"/ui/runs/{run_id}"


def test_an_import_error_names_the_missing_module(ui: UiPage, ui_server: ServerProcess, seeded: Seeded) -> None:
    job_id = seeded["import"]
    ui.visit(f"/ui/timeline/job/{job_id}")
    twin = api(ui_server, "GET", f"/api/v1/timeline/job/{job_id}")
    assert ui.text("#diagnosis-cause") == twin["diagnosis"]["cause"] == "ImportError"
    assert "capstan_ui_no_such_module" in ui.text("#diagnosis-summary")
    assert "pip install capstan_ui_no_such_module" in ui.text("#diagnosis-hint")
    assert "No module named 'capstan_ui_no_such_module'" in ui.text("#log-tail")
    # No memory limit: a peak shows only when one was measured (decision 0515), against no limit.
    assert ui.page.locator("#peaks").count() == len(twin["peaks"])
    assert all("(no limit)" in p["text"] for p in twin["peaks"])
    workload = next(r["id"] for r in twin["related"] if r["kind"] == "workload")
    ui.visit(f"/ui/timeline/workload/{workload}")  # a queue workload's id holds a slash
    assert ui.text("h1").startswith(f"Timeline of workload/{workload}")
    assert ui.page.locator("#timeline-chart circle.marker").count() == len(
        api(ui_server, "GET", f"/api/v1/timeline/workload/{workload}")["items"])
    ui.screenshot()


def test_unknown_workloads_kinds_and_bad_parameters(ui: UiPage, seeded: Seeded) -> None:
    ui.visit("/ui/timeline/job/no-such-job-000000", status=404)
    assert "job 'no-such-job-000000' does not exist" in ui.text("#error-message")
    assert ui.page.locator("#back-link").is_visible()
    ui.visit(f"/ui/timeline/job/{seeded['exit3']}?project=elsewhere", status=404)  # another project's job
    ui.visit("/ui/timeline/gizmo/x", status=400)
    assert "kind: unknown kind 'gizmo'" in ui.text("#error-message")
    ui.visit("/ui/timeline/trial/no-number", status=400)
    assert "STUDY/NUMBER" in ui.text("#error-message")
    ui.visit(f"/ui/timeline/job/{seeded['exit3']}?tail=5000", status=400)
    assert "tail: must be between 0 and 1000" in ui.text("#error-message")
