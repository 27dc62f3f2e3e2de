"""Metric charts in real Chromium against a real server: the compare page overlays two runs' downsampled series
with min/max bands and NaN marks, zooming refetches the visible window at full detail, autoscale goes back to the
whole series, the smoothing slider moves the lines but not the bands, and the x axis switches to time."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from typing import Any

import pytest
from uikit import UiPage, start_ui_server

from capstan.services import Services
from capstan.tracking.records import Metric
from helpers.server import ServerProcess

T0 = 1_700_000_000_000
N = 30_000
SPIKE_AT = 12_345
NAN_AT = 20_000
LINES = "document.querySelector('.chart-panel .chart').data"


@pytest.fixture(scope="module")
def runs() -> list[str]:
    return []


@pytest.fixture(scope="module")
def ui_server(tmp_path_factory: pytest.TempPathFactory, runs: list[str]) -> Iterator[ServerProcess]:
    def seed(services: Services) -> None:
        tracking = services.tracking
        experiment = tracking.create_experiment("charts", project="default")
        for index in range(2):
            run_id = tracking.create_run(experiment, run_name=f"run-{index}", start_time=T0).run_id
            values = [math.sin(step / 500) + index for step in range(N)]
            if index == 0:
                values[SPIKE_AT] = 1000.0
                values[NAN_AT] = math.nan
            tracking.log_metrics_for_runs({run_id: [Metric("loss", v, T0 + 100 * s, s)
                                                    for s, v in enumerate(values)]})
            runs.append(run_id)

    with start_ui_server(tmp_path_factory.mktemp("ui-charts"), seed) as server:
        yield server


def _traces(ui: UiPage) -> list[dict[str, Any]]:
    data = ui.page.evaluate(f"{LINES}.map(t => ({{name: t.name || '', fill: t.fill || '', mode: t.mode, "
                            f"x: Array.from(t.x), y: Array.from(t.y)}}))")
    return list(data)


def _lines(ui: UiPage) -> list[dict[str, Any]]:
    return [t for t in _traces(ui) if t["name"].startswith("run-") and "NaN" not in t["name"]]


def _until(ui: UiPage, function: str, timeout: float = 20.0) -> None:
    """Poll ``function`` (JavaScript, no arguments) in the page until it returns true. Playwright's own
    wait_for_function evaluates its predicate with eval, which the UI's Content-Security-Policy refuses."""
    deadline = time.monotonic() + timeout
    while not ui.page.evaluate(function):
        assert time.monotonic() < deadline, f"the page never satisfied: {function}"
        time.sleep(0.05)


def _wait_lines(ui: UiPage, condition: str) -> None:
    _until(ui, f"() => {{ const d = {LINES}; if (!d) return false; "
               f"const lines = d.filter(t => (t.name || '').startsWith('run-') && !t.name.includes('NaN')); "
               f"return lines.length === 2 && ({condition}); }}")


def test_overlay_zoom_smoothing_and_time_axis(ui: UiPage, runs: list[str]) -> None:
    ui.visit(f"/ui/compare?run_id={runs[0]}&run_id={runs[1]}")
    ui.page.locator(".chart-panel .chart-key").select_option("loss")
    _wait_lines(ui, "true")
    traces = _traces(ui)
    lines = _lines(ui)
    bands = [t for t in traces if t["fill"] == "toself"]
    assert len(bands) == 2
    assert all(200 <= len(t["x"]) <= 2000 for t in lines)  # downsampled on the server, about a pixel a bucket
    assert max(bands[0]["y"]) == 1000.0  # the spike survives in its run's band
    assert any("NaN" in t["name"] for t in traces)  # the NaN is marked
    assert "Downsampled" in ui.text(".chart-panel .chart-note")
    ui.screenshot()

    # zoom into steps 12,300..12,400: the window comes back point by point, spike included
    ui.page.evaluate("Plotly.relayout(document.querySelector('.chart-panel .chart'), "
                     "{'xaxis.range': [12300, 12400]})")
    _wait_lines(ui, "lines.every(t => t.x.length === 101 && t.x[0] === 12300)")
    zoomed = _lines(ui)[0]
    assert zoomed["y"][SPIKE_AT - 12300] == 1000.0
    ui.screenshot()

    # autoscale (what a double click does): the whole series again
    ui.page.evaluate("Plotly.relayout(document.querySelector('.chart-panel .chart'), {'xaxis.autorange': true})")
    _wait_lines(ui, "lines.every(t => t.x[t.x.length - 1] > 29000)")
    before = _traces(ui)
    ui.page.evaluate(f"window.beforeSmoothing = JSON.stringify({LINES}.map(t => t.y))")
    slider = ui.page.locator(".chart-panel .chart-smoothing")
    slider.evaluate("(el) => { el.value = '0.95'; el.dispatchEvent(new Event('input')); }")
    _until(ui, f"() => JSON.stringify({LINES}.map(t => t.y)) !== window.beforeSmoothing")
    after = _traces(ui)
    assert [t["y"] for t in after if t["fill"]] == [t["y"] for t in before if t["fill"]]  # bands unchanged
    assert [t["y"] for t in after if t["name"] == "run-0"] != [t["y"] for t in before if t["name"] == "run-0"]

    ui.page.locator(".chart-panel .chart-x").select_option("time")
    _until(ui, "() => document.querySelector('.chart-panel .chart').layout.xaxis.type === 'date'")
    _wait_lines(ui, f"lines.every(t => t.x[0] >= {T0})")
    ui.screenshot()

