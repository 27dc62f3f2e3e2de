"""The metric series routes of /api/v1 against a real ``capstan server`` on a loopback port (raw HTTP)."""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from helpers.server import ServerProcess, start_server

API = "/api/v1"
NOW = 1_700_000_000_000
N = 3_000
SPIKE_AT = 1_234


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with start_server(tmp_path_factory.mktemp("series")) as srv:
        yield srv


@pytest.fixture(scope="module")
def api(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url + API, timeout=30) as client:
        yield client


def _run(api: httpx.Client) -> str:
    experiment = api.post("/experiments", json={"name": f"series-{uuid.uuid4().hex[:8]}"})
    assert experiment.status_code == 201, experiment.text
    run = api.post("/runs", json={"experiment_id": experiment.json()["experiment_id"], "start_time": NOW})
    assert run.status_code == 201, run.text
    return str(run.json()["info"]["run_id"])


def _log(api: httpx.Client, run_id: str, key: str, values: list[float | str]) -> None:
    points = [{"key": key, "value": v, "timestamp": NOW + 10 * i, "step": i} for i, v in enumerate(values)]
    answer = api.post("/metrics/batch", json={"runs": {run_id: points}})
    assert answer.status_code == 204, answer.text


@pytest.fixture(scope="module")
def runs(api: httpx.Client) -> tuple[str, str]:
    """Two runs with ``train/loss``: N points of a sawtooth, one spike in the first, a NaN in the second."""
    first, second = _run(api), _run(api)
    _log(api, first, "train/loss", [1000.0 if i == SPIKE_AT else (i % 10) / 10 for i in range(N)])
    _log(api, second, "train/loss", ["NaN" if i == 7 else 0.5 for i in range(N)])
    return first, second


def _error(answer: httpx.Response, status: int, field: str) -> None:
    assert answer.status_code == status, answer.text
    body = answer.json()
    assert set(body) == {"error_code", "message"}
    assert field in body["message"], body


def test_one_run_downsampled_with_its_spike(api: httpx.Client, runs: tuple[str, str]) -> None:
    answer = api.get(f"/runs/{runs[0]}/metric-series/train/loss", params={"max_points": 100})
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    assert {k: body[k] for k in ("run_id", "key", "x", "points", "origin")} == {
        "run_id": runs[0], "key": "train/loss", "x": "step", "points": N, "origin": None}
    assert body["columns"] == ["x", "y", "min", "max", "count", "nonfinite"]
    buckets = body["buckets"]
    assert len(buckets) == 100 and sum(b[4] for b in buckets) == N
    spike = max(buckets, key=lambda b: b[3])
    assert spike[3] == 1000.0 and spike[2] == 0.0 and spike[0] - 30 < SPIKE_AT < spike[0] + 30
    assert all(b[2] <= b[1] <= b[3] for b in buckets)


def test_window_time_axes_and_smoothing(api: httpx.Client, runs: tuple[str, str]) -> None:
    url = f"/runs/{runs[0]}/metric-series/train/loss"
    window = api.get(url, params={"x_min": 100, "x_max": 119.5}).json()
    assert window["points"] == 20 and [b[0] for b in window["buckets"]] == list(range(100, 120))
    relative = api.get(url, params={"x": "relative", "x_min": 0, "x_max": 95}).json()
    assert (relative["origin"], [b[0] for b in relative["buckets"]]) == (NOW, [10 * i for i in range(10)])
    time_axis = api.get(url, params={"x": "time", "max_points": 1}).json()
    assert len(time_axis["buckets"]) == 1 and time_axis["buckets"][0][4] == N
    raw = api.get(url, params={"x_max": 50}).json()["buckets"]
    smoothed = api.get(url, params={"x_max": 50, "smoothing": 0.9}).json()["buckets"]
    assert [b[2:] for b in smoothed] == [b[2:] for b in raw]  # the band stays raw
    assert smoothed[0][1] == raw[0][1] and smoothed[5][1] != raw[5][1]
    assert max(b[1] for b in smoothed) < max(b[1] for b in raw)


def test_overlay_keeps_the_order_and_marks_nan(api: httpx.Client, runs: tuple[str, str]) -> None:
    answer = api.get("/metrics/series", params={"run_id": [runs[1], runs[0]], "key": "train/loss",
                                                "max_points": 50})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["key"], body["x"]) == ("train/loss", "step")
    assert [s["run_id"] for s in body["series"]] == [runs[1], runs[0]]
    for series in body["series"]:
        assert len(series["buckets"]) <= 50 and series["points"] == N
    nan_bucket = body["series"][0]["buckets"][0]
    assert nan_bucket[5] == 1 and nan_bucket[1] == 0.5  # NaN counted, not averaged
    assert all(not math.isnan(v) for b in body["series"][0]["buckets"] for v in b if v is not None)


def test_unknown_run_or_key_is_404(api: httpx.Client, runs: tuple[str, str]) -> None:
    _error(api.get(f"/runs/{'0' * 32}/metric-series/train/loss"), 404, "0" * 32)
    _error(api.get(f"/runs/{runs[0]}/metric-series/no-such-key"), 404, "no-such-key")
    _error(api.get("/metrics/series", params={"run_id": [runs[0], "f" * 32], "key": "train/loss"}), 404, "f" * 32)


@pytest.mark.parametrize(("params", "field"), [
    ({"x": "foo"}, "x"),
    ({"max_points": 0}, "max_points"),
    ({"max_points": 5001}, "max_points"),
    ({"max_points": "many"}, "max_points"),
    ({"x_min": 10, "x_max": 5}, "x_min"),
    ({"x_min": "nan"}, "x_min"),
    ({"x_max": "inf"}, "x_max"),
    ({"smoothing": 1}, "smoothing"),
    ({"smoothing": -0.5}, "smoothing"),
])
def test_bad_input_is_400_naming_the_field(api: httpx.Client, runs: tuple[str, str], params: dict[str, Any],
                                           field: str) -> None:
    _error(api.get(f"/runs/{runs[0]}/metric-series/train/loss", params=params), 400, field)
    _error(api.get("/metrics/series", params={"run_id": runs[0], "key": "train/loss", **params}), 400, field)


def test_overlay_needs_runs_and_a_key(api: httpx.Client, runs: tuple[str, str]) -> None:
    _error(api.get("/metrics/series", params={"key": "train/loss"}), 400, "run_id")
    _error(api.get("/metrics/series", params={"run_id": runs[0]}), 400, "key")
    _error(api.get("/metrics/series", params={"run_id": [runs[0]] * 21, "key": "train/loss"}), 400, "run_id")
