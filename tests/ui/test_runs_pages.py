"""The experiments and runs pages in real Chromium against a real server (single-user mode, loopback).

Every page loads with no console error and shows what its JSON twin says; the runs table's columns, sort, filter
(and a malformed filter's message), pages and run selection work; a run's artifacts preview; compare highlights
the differing values and overlays the charts; an unknown run is a 404 page; an MLflow link opens its page.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from uikit import UiPage, api, start_ui_server

from capstan.services import Services
from capstan.tracking.records import Metric, Param, RunTag
from helpers.server import ServerProcess

T0 = 1_700_000_000_000
METRIC_KEYS = [f"m{i:02d}" for i in range(55)]  # the table must stay usable with 50+ metric columns
ACC = [0.61, 0.93, 0.77, 0.88, 0.52, 0.70]
Seeded = dict[str, str]


def _png(width: int = 4, height: int = 3) -> bytes:
    """A tiny opaque RGB PNG."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    rows = b"".join(b"\x00" + bytes([200, 40, 40]) * width for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def _seed(ids: Seeded) -> Callable[[Services], None]:
    def seed(services: Services) -> None:
        tracking = services.tracking
        eid = tracking.create_experiment("fraud-detection", project="default", tags={"team": "risk"})
        tracking.create_experiment("empty-experiment", project="default")
        ids["experiment"] = eid
        for i, acc in enumerate(ACC):
            run = tracking.create_run(eid, user_id="ana", start_time=T0 + i * 60_000, run_name=f"run-{i}")
            metrics = [Metric("acc", acc, T0 + i, 0), Metric("loss", 1 - acc, T0 + i, 0)]
            metrics += [Metric(key, float(n * 10 + i), T0 + i, 0) for n, key in enumerate(METRIC_KEYS)]
            if i == 0:  # a history for the chart, ending (latest step) at the same value
                metrics += [Metric("acc", 0.3 + step / 200, T0 + step * 1000, step) for step in range(1, 40)]
                metrics.append(Metric("acc", acc, T0 + 40_000, 40))
            tracking.log_batch(run.run_id, metrics=metrics,
                               params=[Param("lr", str(0.01 * (i + 1))), Param("model", "rf")],
                               tags=[RunTag("team", "risk" if i % 2 else "ops")])
            if i < 4:
                tracking.update_run(run.run_id, status="FINISHED", end_time=T0 + i * 60_000 + 95_000)
            ids[f"run{i}"] = run.run_id

    return seed


@pytest.fixture(scope="module")
def seeded() -> Seeded:
    return {}


@pytest.fixture(scope="module")
def ui_server(tmp_path_factory: pytest.TempPathFactory, seeded: Seeded) -> Iterator[ServerProcess]:
    with start_ui_server(tmp_path_factory.mktemp("ui-runs"), _seed(seeded)) as server:
        run0 = seeded["run0"]
        for name, body in (("notes.txt", b"hello from run 0\nsecond line\n"),
                           ("data/table.csv", b"name,score\nalpha,1\nbeta,2\n"), ("plot.png", _png())):
            api(server, "PUT", f"/api/v1/runs/{run0}/artifacts/{name}", content=body,
                headers={"Content-Type": "application/octet-stream"})
        yield server


def _twin(server: ServerProcess, experiment_id: str, **query: object) -> Any:
    body = api(server, "GET", f"/api/v1/views/experiments/{experiment_id}/runs?"
                                  + urlencode(query, doseq=True))
    return body


def _names(ui: UiPage) -> list[str]:
    return [row[0] for row in ui.cells("#runs-table")]


def test_experiments_list_matches_the_api(ui: UiPage, ui_server: ServerProcess) -> None:
    ui.visit("/ui/experiments")
    shown = [row[0] for row in ui.cells("#experiments-table")]
    twin = api(ui_server, "GET", "/api/v1/experiments")
    assert sorted(shown) == sorted(e["name"] for e in twin["experiments"])
    assert "fraud-detection" in shown
    assert ui.page.locator("nav.main-nav a.active").inner_text() == "Experiments"


def test_runs_table_columns_sort_and_pages(ui: UiPage, ui_server: ServerProcess, seeded: Seeded) -> None:
    eid = seeded["experiment"]
    ui.visit(f"/ui/experiments/{eid}")
    assert sorted(_names(ui)) == [f"run-{i}" for i in range(6)]
    assert ui.page.locator("#runs-table thead th").count() == 5  # no params/metrics/tags until chosen

    # choose columns: only those are loaded
    page = ui.page
    for name in ("metrics.acc", "params.lr", "tags.team"):
        page.locator(f'input[name="column"][value="{name}"]').check()
    page.locator("#apply-columns").click()
    ui.settle()
    headers = [h.strip() for h in page.locator("#runs-table thead th").all_inner_texts()]
    assert headers[-3:] == ["acc", "lr", "team"]
    twin = _twin(ui_server, eid, column=["metrics.acc", "params.lr", "tags.team"])
    assert twin["columns"] == ["metrics.acc", "params.lr", "tags.team"]
    expected = {r["run_name"]: [f"{r['values']['metrics.acc']:.6g}", r["values"]["params.lr"], r["values"]["tags.team"]]
                for r in twin["runs"]}
    assert {row[0]: row[-3:] for row in ui.cells("#runs-table")} == expected

    # sort by the metric: best first, then the other way
    page.locator('#runs-table th a.sort[data-column="metrics.acc"]').click()
    ui.settle()
    by_acc = [f"run-{i}" for i, _ in sorted(enumerate(ACC), key=lambda p: -p[1])]
    assert _names(ui) == by_acc
    assert [r["run_name"] for r in _twin(ui_server, eid, column="metrics.acc",
                                          order_by="metrics.acc DESC")["runs"]] == by_acc
    page.locator('#runs-table th a.sort[data-column="metrics.acc"]').click()
    ui.settle()
    assert _names(ui) == by_acc[::-1]

    # server-side pages of two runs, keeping the sort and the columns
    page.locator('input[name="max_results"]').fill("2")
    page.locator("#apply").click()
    ui.settle()
    seen = _names(ui)
    while page.locator("#next-page").count():
        page.locator("#next-page").click()
        ui.settle()
        assert len(_names(ui)) <= 2
        seen += _names(ui)
    assert seen == by_acc[::-1]
    assert ui.page.locator("#runs-table thead th").count() == 8


def test_runs_table_with_fifty_metric_columns_scrolls(ui: UiPage, seeded: Seeded) -> None:
    query = urlencode([("column", f"metrics.{k}") for k in METRIC_KEYS])
    ui.visit(f"/ui/experiments/{seeded['experiment']}?{query}")
    assert ui.page.locator("#runs-table thead th").count() == 5 + len(METRIC_KEYS)
    wrap = ui.page.locator(".table-wrap").first
    assert wrap.evaluate("el => el.scrollWidth > el.clientWidth")  # scrolls sideways inside the page
    wrap.evaluate("el => { el.scrollLeft = el.scrollWidth; }")
    first = ui.page.locator("#runs-table tbody tr td").first
    # the first column (run name) sticks to the left edge while the rest scrolls under it
    assert first.evaluate("el => getComputedStyle(el).position") == "sticky"
    assert abs(first.bounding_box()["x"] - wrap.bounding_box()["x"]) < 3
    ui.screenshot()


def test_filter_and_a_malformed_filter(ui: UiPage, ui_server: ServerProcess, seeded: Seeded) -> None:
    eid = seeded["experiment"]
    ui.visit(f"/ui/experiments/{eid}")
    page = ui.page
    page.locator("#filter").fill("metrics.acc > 0.75 AND params.model = 'rf'")
    page.locator("#apply").click()
    ui.settle()
    expected = sorted(r["run_name"] for r in _twin(ui_server, eid, filter="metrics.acc > 0.75 AND params.model = 'rf'")
                      ["runs"])
    assert sorted(_names(ui)) == expected == ["run-1", "run-2", "run-3"]

    page.locator("#filter").fill("metrics.acc >> 1")
    with page.expect_response(lambda r: "filter=" in r.url) as answer:
        page.locator("#apply").click()
    assert answer.value.status == 200  # the page answers; the message sits next to the filter box
    ui.settle()
    message = ui.text("#filter-error")
    import httpx

    twin = httpx.get(f"{ui_server.url}/api/v1/views/experiments/{eid}/runs", params={"filter": "metrics.acc >> 1"})
    assert twin.status_code == 400 and twin.json()["message"] == message
    assert "position" in message and ">>" in message
    assert page.locator("#filter").input_value() == "metrics.acc >> 1"
    assert "Traceback" not in page.content()


def test_select_runs_and_compare(ui: UiPage, ui_server: ServerProcess, seeded: Seeded) -> None:
    ui.visit(f"/ui/experiments/{seeded['experiment']}")
    page = ui.page
    assert page.locator("#compare").is_disabled()
    for i in (0, 1, 2):
        page.locator(f'tr[data-run-id="{seeded[f"run{i}"]}"] input[type="checkbox"]').check()
    assert page.locator("#compare").is_enabled() and "3 selected" in ui.text("#selected-count")
    page.locator("#compare").click()
    page.wait_for_url("**/ui/compare?**")
    ui.settle()
    ids = parse_qs(urlsplit(page.url).query)["run_id"]  # in the table's order
    assert sorted(ids) == sorted(seeded[f"run{i}"] for i in (0, 1, 2))
    twin = api(ui_server, "GET", "/api/v1/views/compare?" + urlencode([("run_id", r) for r in ids]))
    assert [h.strip() for h in page.locator("#params-table thead th").all_inner_texts()][1:] == [
        r["run_name"] for r in twin["runs"]]
    for section in ("params", "metrics", "tags"):
        differs = {r["key"] for r in twin[section] if r["differs"]}
        shown = set(page.locator(f"#{section}-table tr.differs").evaluate_all("rows => rows.map(r => r.dataset.key)"))
        assert shown == differs, section
    assert page.locator('#params-table tr[data-key="lr"]').get_attribute("class") == "differs"
    assert page.locator('#params-table tr[data-key="model"]').get_attribute("class") is None  # same for all
    shown_params = {row[0]: row[1:] for row in ui.cells("#params-table")}
    assert shown_params == {r["key"]: r["values"] for r in twin["params"]}
    # the overlaid chart: one line per run
    page.locator(".chart-panel .chart-key").select_option("acc")
    page.wait_for_function("() => document.querySelectorAll('.chart-panel .scatterlayer .trace').length === 3")
    page.locator("#only-differences").check()
    assert page.locator('#params-table tr[data-key="model"]').is_hidden()
    ui.screenshot()


def test_run_page_shows_the_run_and_its_artifacts(ui: UiPage, ui_server: ServerProcess, seeded: Seeded) -> None:
    run_id = seeded["run0"]
    ui.visit(f"/ui/runs/{run_id}")
    twin = api(ui_server, "GET", f"/api/v1/views/runs/{run_id}")
    data = twin["run"]["data"]
    assert ui.text("#run-id") == run_id
    metrics = {row[0]: row[1] for row in ui.cells("#metrics-table")}
    assert metrics == {m["key"]: f"{m['value']:.6g}" for m in data["metrics"]}
    assert {row[0]: row[1] for row in ui.cells("#params-table")} == data["params"]
    assert {row[0]: row[1] for row in ui.cells("#tags-table")} == data["tags"]
    assert ui.page.locator("button.edit").count() == 1  # single-user mode: the local user may edit
    # the chart of the selected metric
    ui.page.wait_for_function("() => document.querySelectorAll('.chart-panel .scatterlayer .trace').length === 1")

    browser = ui.page.locator(".artifact-browser")
    browser.locator('a[data-path="notes.txt"]').click()
    ui.page.wait_for_selector("pre.text-preview")
    assert "hello from run 0" in browser.locator("pre.text-preview").inner_text()
    browser.locator('a[data-path="plot.png"]').click()
    image = browser.locator(".preview-body img")
    image.wait_for()
    ui.page.wait_for_function("() => document.querySelector('.preview-body img')?.naturalWidth === 4")
    browser.locator('a[data-path="data"]').click()
    browser.locator('a[data-path="data/table.csv"]').click()
    ui.page.wait_for_selector("table.csv-preview")
    assert ui.cells("table.csv-preview") == [["alpha", "1"], ["beta", "2"]]
    ui.screenshot()


def test_unknown_pages_are_404_pages_with_a_link_back(ui: UiPage) -> None:
    ui.visit("/ui/runs/0123456789abcdef0123456789abcdef", status=404)
    assert ui.page.locator("h1").inner_text() == "Not found"
    assert "0123456789abcdef0123456789abcdef" in ui.text("#error-message")
    assert ui.page.locator("#back-link").get_attribute("href") == "/ui/experiments"
    assert "Traceback" not in ui.page.content()
    ui.visit("/ui/experiments/999999", status=404)
    ui.visit("/ui/no/such/page", status=404)
    ui.page.locator("#back-link").click()
    ui.page.wait_for_url("**/ui/experiments")


def test_mlflow_links_open_their_pages(ui: UiPage, seeded: Seeded) -> None:
    eid, run_id = seeded["experiment"], seeded["run1"]
    ui.page.goto(f"{ui.base_url}/#/experiments/{eid}/runs/{run_id}")
    ui.page.wait_for_url(f"**/ui/runs/{run_id}")
    ui.settle()
    ui.page.goto(f"{ui.base_url}/#/experiments/{eid}")
    ui.page.wait_for_url(f"**/ui/experiments/{eid}")
    ui.page.goto(f"{ui.base_url}/")
    ui.page.wait_for_url("**/ui/experiments")
