"""The studies pages in real Chromium against a real server (single-user mode), over studies that really ran
(`capstan.tuning.sdk.run_study` with the median pruner: trials COMPLETE, PRUNED and FAILED).

The list and a study's page show what ``GET /api/v1/studies`` and its twin ``GET /api/v1/views/studies/NAME``
say: trial table, best trial highlighted, counts; the optimisation-history chart draws every trial with a value
and the best-so-far line; the trials table pages on the server; a trial's timeline opens from its row; an unknown
study or one of another project is a 404 page.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from uikit import UiPage, api, start_ui_server

from capstan.settings import Settings
from capstan.tuning.sdk import run_study
from capstan.tuning.spec import parse_study_spec
from helpers.server import ServerProcess

HERE = Path(__file__).resolve().parent


def _study(name: str, max_trials: int) -> Any:
    return parse_study_spec({
        "name": name, "objective": {"metric": "score", "goal": "maximize"},
        "parameters": {"x": {"type": "float", "min": 0.0, "max": 4.0},
                       "kind": {"type": "categorical", "values": ["a", "b"]}},
        "trial": {"function": "ui_objectives:rising"}, "algorithm": "random", "max_trials": max_trials, "seed": 3,
        "early_stopping": {"kind": "median", "startup_trials": 2, "warmup_steps": 1}, "working_dir": str(HERE)})


def _seed(settings: Settings) -> None:
    run_study(_study("tiny", 1), settings=settings)
    result = run_study(_study("search", 12), settings=settings)
    states = {t.state for t in result.trials}
    assert {"COMPLETE", "PRUNED", "FAILED"} <= states, [(t.number, t.state) for t in result.trials]


@pytest.fixture(scope="module")
def ui_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    home = tmp_path_factory.mktemp("ui-studies")
    _seed(Settings.for_home(home))  # before the server starts, on its stores
    with start_ui_server(home) as server:
        yield server


def _num(value: float | None) -> str:
    return "" if value is None else f"{value:.6g}"


def test_the_list_shows_what_the_api_says(ui: UiPage, ui_server: ServerProcess) -> None:
    ui.visit("/ui/studies")
    twin = api(ui_server, "GET", "/api/v1/studies")["studies"]
    rows = ui.cells("#studies-table")
    assert [r[0] for r in rows] == [s["name"] for s in twin] == ["search", "tiny"]
    for row, study in zip(rows, twin, strict=True):
        counts, best = study["counts"], study["best_trial"]
        assert row[1] == study["state"] == "Succeeded"
        assert row[4:8] == [str(counts[s]) for s in ("COMPLETE", "PRUNED", "FAILED", "RUNNING")]
        assert row[8] == _num(best["value"]) and row[9] == f"#{best['number']}"
    ui.visit("/ui/studies?max_results=1")
    assert [r[0] for r in ui.cells("#studies-table")] == ["search"]
    with ui.page.expect_navigation():
        ui.page.locator("#next-page").click()
    ui.settle()
    assert [r[0] for r in ui.cells("#studies-table")] == ["tiny"]


def test_a_study_page_shows_trials_best_trial_and_history(ui: UiPage, ui_server: ServerProcess) -> None:
    ui.visit("/ui/studies/search")
    twin = api(ui_server, "GET", "/api/v1/views/studies/search")
    study, trials = twin["study"], twin["trials"]
    best = study["best_trial"]
    assert best == max((t for t in trials if t["state"] == "COMPLETE"), key=lambda t: t["value"])
    rows = ui.cells("#trials-table")
    assert [r[0].lstrip("★ ") for r in rows] == [str(t["number"]) for t in trials]
    assert [r[1] for r in rows] == [t["state"] for t in trials]
    assert [r[2] for r in rows] == [_num(t["value"]) for t in trials]
    assert [r[3] for r in rows] == [_num(t["params"]["x"]) for t in trials]
    assert "PRUNED" in [r[1] for r in rows] and "FAILED" in [r[1] for r in rows]
    links = ui.page.locator("#trials-table tbody a", has_text="timeline")
    assert [links.nth(i).get_attribute("href") for i in range(links.count())] == [
        f"/ui/timeline/trial/search/{t['number']}" for t in trials]
    failed = next(r for r, t in zip(rows, trials, strict=True) if t["state"] == "FAILED")
    assert "diverged with x=" in failed[-1]
    highlighted = ui.page.locator("#trials-table tbody tr.best")
    assert highlighted.count() == 1 and highlighted.get_attribute("data-trial") == str(best["number"])
    assert ui.text("#best-number") == f"#{best['number']}" and ui.text("#best-value") == _num(best["value"])
    counts = study["counts"]
    assert ui.text("#trial-counts").startswith(f"{counts['COMPLETE']} complete, {counts['PRUNED']} pruned, "
                                                f"{counts['FAILED']} failed")

    chart = ui.page.locator("#history-chart")
    ui.page.locator("#history-chart[data-drawn]").wait_for()
    history = twin["history"]
    assert history["best_trial"] == best["number"]
    points = chart.locator(".scatterlayer .trace .points path")
    best_line = [y for y in history["best_so_far"]["y"]]
    assert best_line == sorted(best_line) and best_line[-1] == best["value"]  # maximised: never goes down
    # each complete and pruned trial is a point, plus the best trial's star
    assert points.count() == len(history["complete"]["x"]) + len(history["pruned"]["x"]) + 1
    assert len(history["pruned"]["x"]) == counts["PRUNED"]
    assert chart.locator(".legendtext").all_text_contents() == [
        "complete", "pruned (last value)", "best so far", f"best trial #{best['number']}"]
    ui.screenshot()


def test_the_trials_table_pages_on_the_server(ui: UiPage, ui_server: ServerProcess) -> None:
    ui.visit("/ui/studies/search?max_results=5")
    first = api(ui_server, "GET", "/api/v1/views/studies/search?max_results=5")
    assert [r[0].lstrip("★ ") for r in ui.cells("#trials-table")] == [str(t["number"]) for t in first["trials"]]
    with ui.page.expect_navigation():
        ui.page.locator("#next-page").click()
    ui.settle()
    second = api(ui_server, "GET", f"/api/v1/views/studies/search?max_results=5&page_token={first['next_page_token']}")
    assert [r[0].lstrip("★ ") for r in ui.cells("#trials-table")] == [str(t["number"]) for t in second["trials"]]
    assert [t["number"] for t in first["trials"] + second["trials"]] == list(range(10))
    ui.page.locator("#history-chart[data-drawn]").wait_for()  # the chart still shows every trial


def test_a_trials_timeline_shows_its_diagnosis(ui: UiPage, ui_server: ServerProcess) -> None:
    trials = api(ui_server, "GET", "/api/v1/views/studies/search")["trials"]
    for state, cause in (("PRUNED", "Pruned"), ("FAILED", "Error")):
        number = next(t["number"] for t in trials if t["state"] == state)
        ui.visit(f"/ui/timeline/trial/search/{number}")  # the link of the trial's row
        twin = api(ui_server, "GET", f"/api/v1/timeline/trial/search/{number}")
        assert ui.text("#diagnosis-cause") == twin["diagnosis"]["cause"] == cause
        assert ui.text("#diagnosis-summary") == twin["diagnosis"]["summary"]
        assert ui.page.locator("#object-page").get_attribute("href") == "/ui/studies/search"
    assert "diverged with x=" in ui.text("#diagnosis-summary")


def test_unknown_studies_and_other_projects_are_404_pages(ui: UiPage) -> None:
    ui.visit("/ui/studies/no-such-study", status=404)
    assert "study 'no-such-study' does not exist in project 'default'" in ui.text("#error-message")
    assert ui.page.locator("#back-link").get_attribute("href") == "/ui/studies"
    ui.visit("/ui/studies/search?project=elsewhere", status=404)
    ui.visit("/ui/studies/search?max_results=0", status=400)
    assert "max_results" in ui.text("#error-message")
