"""The pipelines pages in real Chromium against a real server (single-user mode, loopback).

Runs are made by really running pipelines (seeded through the composition root before the server starts; the live
one submitted to the server): the runs list matches its twin and filters and pages on the server; a run's DAG shows
every node with the state its twin gives, fan-outs folded with counts, cache and retry marks; a failed step shows
its exit code and log; a run followed in the browser goes to succeeded over server-sent events without a reload,
and a step's log follows while its attempt runs; unknown runs and steps are 404 pages.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import httpx
import pytest
from uikit import UiPage, api, start_ui_server

from capstan.services import Services
from helpers.server import ServerProcess

FLOW = '''
import sys
import time
from pathlib import Path

import capstan.pipelines as cp


@cp.step(isolation="thread")
def listing(n: int) -> list[int]:
    return list(range(n))


@cp.step(isolation="thread")
def square(x: int) -> int:
    return x * x


@cp.step(isolation="thread")
def total(values: list[int]) -> int:
    return sum(values)


@cp.pipeline
def fanout(n: int = 6):
    return total(square.map(listing(n)))


@cp.step
def explode(x: int) -> int:
    print("about to fail with", x)
    sys.exit(3)


@cp.step(isolation="thread")
def after(x: int) -> int:
    return x


@cp.pipeline
def broken(x: int = 2):
    return after(explode(x))


@cp.step(isolation="thread", retries=2, retry_backoff=0.05, cache=False)
def flaky(marks: str) -> str:
    path = Path(marks) / "flaky"
    with open(path, "a") as fh:
        fh.write("x\\n")
    if len(path.read_text().splitlines()) < 2:
        raise RuntimeError("not yet")
    return "second time lucky"


@cp.pipeline
def retried(marks: str = "."):
    return flaky(marks)


@cp.step(cache=False)
def nap(seconds: float, tag: str, previous: str = "") -> str:
    for i in range(3):
        print("napping", previous + tag, i, flush=True)
        time.sleep(seconds / 3)
    return previous + tag


@cp.pipeline
def slow(seconds: float = 1.0):
    first = nap(seconds, "a")
    return nap(seconds, "b", first)
'''
Seeded = dict[str, str]


def _seed(folder: Path, ids: Seeded) -> Callable[[Services], None]:
    def seed(services: Services) -> None:
        from capstan.pipelines.executors import close_pools
        from capstan.pipelines.loader import load_pipeline

        runner = services.pipelines.get()
        try:
            for key, func, params in (("fanout", "fanout", {"n": 6}), ("cached", "fanout", {"n": 6}),
                                      ("broken", "broken", {}), ("retried", "retried", {"marks": str(folder)}),
                                      ("small", "fanout", {"n": 2})):
                pipe, ref = load_pipeline(f"{folder / 'flow.py'}:{func}")
                ids[key] = runner.run(pipe, params, ref=ref).run_id
        finally:
            close_pools()

    return seed


@pytest.fixture(scope="module")
def seeded() -> Seeded:
    return {}


@pytest.fixture(scope="module")
def flow_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("pipeline-flow")
    (folder / "flow.py").write_text(FLOW)
    return folder


@pytest.fixture(scope="module")
def ui_server(tmp_path_factory: pytest.TempPathFactory, flow_dir: Path, seeded: Seeded) -> Iterator[ServerProcess]:
    with start_ui_server(tmp_path_factory.mktemp("ui-pipelines"), _seed(flow_dir, seeded)) as server:
        yield server


def _twin_run(server: ServerProcess, run_id: str) -> Any:
    return api(server, "GET", f"/api/v1/views/pipelines/runs/{run_id}")


def _node_states(ui: UiPage) -> dict[str, str]:
    """Each DAG node's state, as its class says."""
    found = ui.page.locator("svg.dag .node").evaluate_all(
        "els => els.map(e => [e.dataset.step, e.getAttribute('class')])")
    return {step: re.search(r"\bs-([a-z]+)", cls).group(1) for step, cls in found}  # type: ignore[union-attr]  # every node has a state class


def test_runs_list_matches_the_api_filters_and_pages(ui: UiPage, ui_server: ServerProcess, seeded: Seeded) -> None:
    ui.visit("/ui/pipelines")
    twin = api(ui_server, "GET", "/api/v1/views/pipelines/runs")
    shown = ui.cells("#runs-table")
    assert [row[0] for row in shown] == [r["id"][:8] for r in twin["runs"]]
    assert [(row[1], row[2]) for row in shown] == [(r["pipeline"], r["status"]) for r in twin["runs"]]
    assert {r["id"] for r in twin["runs"]} == set(seeded.values())
    assert ui.page.locator("nav.main-nav a.active").inner_text() == "Pipelines"

    page = ui.page
    page.locator("#status-filter").select_option("failed")
    page.locator("#apply").click()
    ui.settle()
    assert [row[0] for row in ui.cells("#runs-table")] == [seeded["broken"][:8]]

    page.locator("#status-filter").select_option("")
    page.locator("#pipeline-filter").fill("fanout")
    page.locator('input[name="max_results"]').fill("2")
    page.locator("#apply").click()
    ui.settle()
    seen = [row[0] for row in ui.cells("#runs-table")]
    assert len(seen) == 2
    while page.locator("#next-page").count():
        page.locator("#next-page").click()
        ui.settle()
        seen += [row[0] for row in ui.cells("#runs-table")]
    fanouts = api(ui_server, "GET", "/api/v1/views/pipelines/runs?" + urlencode({"pipeline": "fanout"}))["runs"]
    assert seen == [r["id"][:8] for r in fanouts] and len(seen) == 3
    first = api(ui_server, "GET", "/api/v1/views/pipelines/runs?pipeline=fanout&max_results=2")
    rest = api(ui_server, "GET", "/api/v1/views/pipelines/runs?" + urlencode(
        {"pipeline": "fanout", "max_results": 2, "page_token": first["next_page_token"]}))
    assert [r["id"] for r in first["runs"] + rest["runs"]] == [r["id"] for r in fanouts]
    assert rest["next_page_token"] is None
    bad = httpx.get(f"{ui_server.url}/api/v1/views/pipelines/runs", params={"status": "sleepy"})
    assert bad.status_code == 400 and "status" in bad.json()["message"]


def test_dag_shows_every_node_with_its_state_and_fan_out_counts(ui: UiPage, ui_server: ServerProcess,
                                                                seeded: Seeded) -> None:
    run_id = seeded["fanout"]
    ui.visit(f"/ui/pipelines/runs/{run_id}")
    twin = _twin_run(ui_server, run_id)
    assert _node_states(ui) == {n["id"]: n["state"] for n in twin["nodes"]} == {
        "listing": "succeeded", "square": "succeeded", "total": "succeeded"}
    assert ui.page.locator("svg.dag .edges path").count() == len(twin["edges"]) == 2
    square = ui.page.locator('svg.dag .node[data-step="square"]')
    assert "fan-out" in (square.get_attribute("class") or "")
    assert square.locator("text.detail").text_content() == "6/6 done"
    assert square.locator(".bar .seg.s-succeeded").count() == 1
    fan = next(n for n in twin["nodes"] if n["id"] == "square")
    assert (fan["fan_out"], fan["counts"], fan["total"]) == (True, {"succeeded": 6}, 6)
    # the step list says the same as the drawing
    assert {row[0].split()[0]: row[1] for row in ui.cells("#steps-table")} == _node_states(ui)
    assert ui.page.locator("#live").count() == 0  # a finished run opens no stream

    square.click()
    ui.page.wait_for_url("**/steps/square")
    ui.settle()
    assert ui.text("#instances h2").startswith("Instances 6 in all")
    assert [row[0] for row in ui.cells("#instances-table")] == [f"square[{i}]" for i in range(6)]
    step = api(ui_server, "GET", f"/api/v1/views/pipelines/runs/{run_id}/steps/square")
    assert step["fan_out"] and step["instance_counts"] == {"succeeded": 6} and step["attempts"] == []


def test_cache_and_retry_marks(ui: UiPage, ui_server: ServerProcess, seeded: Seeded) -> None:
    ui.visit(f"/ui/pipelines/runs/{seeded['cached']}")
    # the second run of the same pipeline with the same params: every step is a cache hit (the fan-out node itself
    # succeeds once its instances, all cached, are done)
    assert _node_states(ui) == {"listing": "cached", "square": "succeeded", "total": "cached"}
    for step in ("listing", "square", "total"):
        assert "⚡" in (ui.page.locator(f'svg.dag .node[data-step="{step}"] text.mark').text_content() or "")
    nodes = _twin_run(ui_server, seeded["cached"])["nodes"]
    assert all(n["cached"] for n in nodes) and nodes[1]["counts"] == {"cached": 6}
    assert ui.page.locator('svg.dag .node[data-step="square"] .bar .seg.s-cached').count() == 1

    ui.visit(f"/ui/pipelines/runs/{seeded['retried']}")
    node = ui.page.locator('svg.dag .node[data-step="flaky"]')
    assert node.locator("text.mark").text_content() == "↻1"
    assert _twin_run(ui_server, seeded["retried"])["nodes"][0]["retries"] == 1
    node.click()
    ui.page.wait_for_url("**/steps/flaky")
    ui.settle()
    rows = ui.cells("#attempts-table")
    assert [(r[0], r[1]) for r in rows] == [("1", "failed"), ("2", "succeeded")]
    assert "not yet" in rows[0][6]


def test_a_failed_step_shows_its_exit_code_and_log(ui: UiPage, ui_server: ServerProcess, seeded: Seeded) -> None:
    run_id = seeded["broken"]
    ui.visit(f"/ui/pipelines/runs/{run_id}")
    assert _node_states(ui) == {"explode": "failed", "after": "skipped"}
    assert ui.page.locator("#run-status").inner_text() == "failed"
    ui.page.locator('svg.dag .node[data-step="explode"]').click()
    ui.page.wait_for_url("**/steps/explode")
    ui.settle()
    (attempt,) = ui.cells("#attempts-table")
    twin = api(ui_server, "GET", f"/api/v1/views/pipelines/runs/{run_id}/steps/explode")["attempts"]
    assert attempt[2] == str(twin[0]["exit_code"]) == "3"
    assert attempt[5] == twin[0]["reason"] == "NonZeroExit"
    assert attempt[4].endswith("MiB")  # peak memory of the worker process
    log = ui.text("#log")
    assert "about to fail with 2" in log
    assert log == httpx.get(f"{ui_server.url}/api/v1/pipelines/runs/{run_id}/steps/explode/logs").text
    assert ui.page.locator("#timeline-link").get_attribute("href") == f"/ui/timeline/step/{run_id}/explode"


def test_follow_a_live_run_to_completion(ui_factory: Callable[[str], UiPage], ui_server: ServerProcess,
                                         flow_dir: Path) -> None:
    created = api(ui_server, "POST", "/api/v1/pipelines/runs",
                  json={"pipeline": f"{flow_dir / 'flow.py'}:slow", "params": {"seconds": 3}})
    run_id = created["run"]["id"]

    # the run page, opened while the run goes on (each step takes 3 s), will follow it to the end
    ui = ui_factory(ui_server.url)
    page = ui.page
    page.goto(f"{ui_server.url}/ui/pipelines/runs/{run_id}")
    before = _node_states(ui)
    assert before["nap-2"] != "succeeded" and page.locator("#live").count() == 1
    page.evaluate("window.__notReloaded = true")

    # the second step's page: it waits, reloads once its attempt started, then follows the log as it is written
    step_ui = ui_factory(ui_server.url)
    step_page = step_ui.page
    step_page.goto(f"{ui_server.url}/ui/pipelines/runs/{run_id}/steps/nap-2")
    step_page.wait_for_selector("pre.log[data-follow-url]", timeout=60_000)
    step_page.wait_for_selector('#log:has-text("napping ab 0")', timeout=60_000)
    assert step_page.locator("#log-live").count() == 1  # still running while its first line is shown
    step_ui.screenshot()
    # the run page has moved on meanwhile
    page.wait_for_selector('svg.dag .node.s-succeeded[data-step="nap"]', timeout=60_000)
    ui.screenshot()

    page.wait_for_selector('#run-status[data-status="succeeded"]', timeout=90_000)
    assert page.evaluate("window.__notReloaded") is True
    assert _node_states(ui) == {"nap": "succeeded", "nap-2": "succeeded"}
    assert page.locator("#live").count() == 0
    rows = ui.cells("#steps-table")
    assert [row[1] for row in rows] == ["succeeded", "succeeded"]
    assert all(row[4] and row[5].endswith("s") for row in rows)  # start times and durations filled in live
    assert ui.text("#run-duration").endswith("s")
    assert "2 succeeded" in ui.text("#dag-summary")
    ui.settle()

    # the step page reloaded when its attempt ended: exit code and the whole log
    step_page.wait_for_selector("pre.log:not([data-follow-url])", timeout=60_000)
    step_ui.settle()
    (attempt,) = step_ui.cells("#attempts-table")
    assert attempt[1:3] == ["succeeded", "0"]
    assert [line for line in step_ui.text("#log").splitlines() if line] == [f"napping ab {i}" for i in range(3)]


def test_unknown_runs_and_steps_are_404_pages(ui: UiPage, ui_server: ServerProcess, seeded: Seeded) -> None:
    for path in ("/ui/pipelines/runs/0123abcd", "/ui/pipelines/runs/not-a-run",
                 f"/ui/pipelines/runs/{seeded['fanout']}/steps/nope",
                 f"/ui/pipelines/runs/{seeded['fanout']}/steps/{quote('square[99]')}",
                 f"/ui/pipelines/runs/{seeded['broken']}/steps/explode?attempt=7"):
        ui.visit(path, status=404)
        assert ui.page.locator("#back-link").get_attribute("href") == "/ui/pipelines"
        assert "Traceback" not in ui.page.content()
    for path in ("/api/v1/views/pipelines/runs/0123abcd", "/api/v1/views/pipelines/runs/0123abcd/events",
                 f"/api/v1/views/pipelines/runs/{seeded['fanout']}/steps/nope",
                 f"/api/v1/views/pipelines/runs/{seeded['fanout']}/steps/nope/log"):
        answer = httpx.get(ui_server.url + path)
        assert answer.status_code == 404 and answer.json()["error_code"] == "RESOURCE_DOES_NOT_EXIST", path


def test_event_stream_of_a_finished_run_sends_the_states_and_ends(ui_server: ServerProcess, seeded: Seeded) -> None:
    with httpx.stream("GET", f"{ui_server.url}/api/v1/views/pipelines/runs/{seeded['broken']}/events?step=after",
                      timeout=30) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        text = "".join(stream.iter_text())
    events = [block for block in text.split("\n\n") if block.startswith("event:")]
    assert [e.split("\n")[0] for e in events] == ["event: state", "event: end"]
    assert '"state":"skipped"' in events[0] and '"status":"failed"' in events[1]
