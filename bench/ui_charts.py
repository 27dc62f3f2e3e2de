"""Metric charts benchmark: 3 runs x 1,000,000 points of one metric, overlaid, against MLflow in the same run.

Capstan (`capstan server`, SQLite by default, PostgreSQL with --db-url):
  (a) on a fresh server, the overlay series API for the whole range, 3 runs x 1,000 buckets
      (GET /api/v1/metrics/series): the first call (cold) and the median of --repeats, bytes sent; the same on the
      time axis; a zoom to 10% of the steps
  (b) in Debian's Chromium (Playwright, /usr/bin/chromium): from the request to the chart drawn
      (`capstan.charts.render` resolves after Plotly's plotly_afterplot) on a fresh element of a loaded page, cold
      (the first read of the series since the server started) and again (the server kept the step-axis buckets,
      decision 0520); and the compare page of the 3 runs, navigation start to its chart drawn
  (c) the MLflow REST history of one run (GET /api/2.0/mlflow/metrics/get-history) served by Capstan
MLflow (`mlflow server`, SQLite), the same points:
  (d) get-history of each run, every point (what a client without server-side downsampling fetches)
  (e) get-history-bulk-interval of the 3 runs with max_results=1000 (what MLflow's UI fetches: sampled steps, no
      min/max, so a spike between sampled steps disappears)

Capstan's points are logged through its store (`log_metrics_for_runs`); MLflow's go straight into its SQLite tables
with executemany after its store created the runs (its REST API takes minutes for 3,000,000 points). The goal of
issue 12 is (b) under 500 ms.

    python bench/ui_charts.py                  # 3 x 1,000,000 points (about 5 minutes, most of it logging)
    python bench/ui_charts.py --points 100000  # quicker
    python bench/ui_charts.py --no-mlflow --db-url postgresql+psycopg://postgres@127.0.0.1:5432/test
    python bench/ui_charts.py --keep /tmp/charts   # log once into /tmp/charts, measure again on later runs

`chart_figures(url, run_ids, key)` measures (a) and (b) against any running server, for bench/ui.py to import.
"""

from __future__ import annotations

import argparse
import json
import math
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]  # bench/queue.py shadows `queue`


def _load_util() -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location("capstan_bench_util", _HERE / "_util.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_util = _load_util()
free_port, python, start, stop = _util.free_port, _util.python, _util.start, _util.stop
table, wait_healthy = _util.table, _util.wait_healthy

KEY = "loss"
T0 = 1_700_000_000_000
CHROMIUM = Path("/usr/bin/chromium")
GOAL_MS = 500.0


def series_values(n: int, seed: int) -> np.ndarray:
    """A training-loss-like curve with noise and a few one-point spikes (which must stay visible)."""
    rng = np.random.default_rng(seed)
    steps = np.arange(n)
    values = 2.0 * np.exp(-steps / (n / 5)) + 0.1 + 0.05 * rng.standard_normal(n)
    for at in rng.choice(n, size=5, replace=False):
        values[at] = 25.0 + seed
    return values


# -- seeding ------------------------------------------------------------------------------------------------------
def seed_capstan(home: Path, db_url: str | None, n: int, runs: int) -> tuple[list[str], float]:
    from capstan.services import Services
    from capstan.settings import Settings
    from capstan.tracking.records import Metric

    settings = Settings.for_home(home, db_url=db_url) if db_url else Settings.for_home(home)
    services = Services.open(settings)
    started = time.perf_counter()
    try:
        tracking = services.tracking
        experiment = tracking.create_experiment(f"charts-{int(time.time())}", project="default")
        run_ids = []
        for index in range(runs):
            run_id = tracking.create_run(experiment, run_name=f"run-{index}", start_time=T0).run_id
            values = series_values(n, index).tolist()
            for first in range(0, n, 100_000):
                tracking.log_metrics_for_runs({run_id: [
                    Metric(KEY, values[i], T0 + 10 * i, i) for i in range(first, min(n, first + 100_000))]})
            run_ids.append(run_id)
    finally:
        services.close()
    return run_ids, time.perf_counter() - started


def seed_mlflow(db: Path, n: int, runs: int) -> tuple[list[str], float]:
    from mlflow.entities import Metric as MlMetric
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    store = SqlAlchemyStore(f"sqlite:///{db}", str(db.parent / "mlartifacts"))
    started = time.perf_counter()
    experiment = store.create_experiment("charts")
    run_ids = [store.create_run(experiment, "bench", T0, [], f"run-{i}").info.run_id for i in range(runs)]
    with sqlite3.connect(db) as conn:
        for index, run_id in enumerate(run_ids):
            values = series_values(n, index).tolist()
            conn.executemany("INSERT INTO metrics (key, value, timestamp, run_uuid, step, is_nan) "
                             "VALUES (?, ?, ?, ?, ?, 0)",
                             ((KEY, values[i], T0 + 10 * i, run_id, i) for i in range(n - 1)))
    for index, run_id in enumerate(run_ids):  # the last point through the store sets latest_metrics
        last = float(series_values(n, index)[-1])
        store.log_batch(run_id, metrics=[MlMetric(KEY, last, T0 + 10 * (n - 1), n - 1)], params=[], tags=[])
    store.engine.dispose()
    return run_ids, time.perf_counter() - started


# -- measuring ----------------------------------------------------------------------------------------------------
def timed(call: Callable[[], httpx.Response], repeats: int) -> dict[str, float]:
    """The first call, the median of ``repeats`` more, and the bytes of the body."""
    figures = []
    size = 0
    for _ in range(repeats + 1):
        started = time.perf_counter()
        answer = call()
        figures.append(time.perf_counter() - started)
        answer.raise_for_status()
        size = len(answer.content)
    return {"first_ms": figures[0] * 1000, "median_ms": statistics.median(figures[1:]) * 1000, "bytes": size}


def api_figures(url: str, run_ids: list[str], key: str, n: int, repeats: int) -> dict[str, dict[str, float]]:
    """(a): the overlay series API on the whole range, the time axis and a 10% zoom."""
    with httpx.Client(base_url=url, timeout=600) as client:
        def overlay(**extra: object) -> Callable[[], httpx.Response]:
            params = {"run_id": run_ids, "key": key, "max_points": 1000, **extra}
            return lambda: client.get("/api/v1/metrics/series", params=params)

        for run_id in run_ids:  # the server's first requests (imports, caches) are not the series' cost
            client.get(f"/api/v1/runs/{run_id}").raise_for_status()
        answers: list[httpx.Response] = []
        step = overlay()

        def kept() -> httpx.Response:
            answers.append(step())
            return answers[-1]

        figures = {"capstan series, 3 runs, step": timed(kept, repeats),  # the first call is the cold one
                   "capstan series, 3 runs, time": timed(overlay(x="time"), repeats),
                   "capstan series, 3 runs, 10% zoom": timed(overlay(x_min=n // 2, x_max=n // 2 + n // 10),
                                                             repeats)}
        series = answers[0].json()["series"]
        spikes = [max(b[3] for b in s["buckets"] if b[3] is not None) for s in series]
        figures["capstan series, 3 runs, step"]["spikes_seen"] = float(sum(spike >= 25.0 for spike in spikes))
        return figures


_RENDER = """async ({runs, key}) => {
  const el = document.createElement('div');
  el.style.width = '1200px';
  document.body.appendChild(el);
  await window.Plotly.newPlot(el, [], {});  // an empty chart, so its plotly_afterplot can be listened to
  let afterplot = null;
  const started = performance.now();
  el.on('plotly_afterplot', () => { afterplot = performance.now(); });
  performance.clearResourceTimings();
  await window.capstan.charts.render(el, {runs: runs, key: key, x: 'step'});
  const drawn = performance.now();
  const fetched = performance.getEntriesByType('resource').filter(e => e.name.includes('/api/v1/metrics/series'));
  const answered = fetched.length ? Math.max(...fetched.map(e => e.responseEnd)) - started : null;
  const lines = el.data.filter(t => (t.name || '').startsWith('run-') && !t.name.includes('NaN'));
  window.Plotly.purge(el);
  el.remove();
  return {ms: drawn - started, afterplot_ms: afterplot === null ? null : afterplot - started, fetch_ms: answered,
          lines: lines.length, points: lines.reduce((n, t) => n + t.x.length, 0)};
}"""

_DRAWN = """() => new Promise(resolve => {
  const check = () => {
    const el = document.querySelector('.chart-panel .chart');
    const lines = el && el.data ? el.data.filter(t => (t.name || '').startsWith('run-')) : [];
    if (lines.length >= 3) { resolve(performance.now()); } else { requestAnimationFrame(check); }
  };
  check();
})"""


def _page_run(url: str) -> str:
    """A run with one point, whose page loads plotly.js and charts.js without touching the measured series."""
    with httpx.Client(base_url=url + "/api/v1", timeout=60) as client:
        experiment = client.post("/experiments", json={"name": f"chart-page-{time.time_ns()}"})
        experiment.raise_for_status()
        run = client.post("/runs", json={"experiment_id": experiment.json()["experiment_id"]})
        run.raise_for_status()
        run_id = str(run.json()["info"]["run_id"])
        client.post(f"/runs/{run_id}/batch", json={"metrics": [{"key": "x", "value": 1, "timestamp": T0,
                                                                 "step": 0}]}).raise_for_status()
        return run_id


def browser_figures(url: str, run_ids: list[str], key: str, repeats: int) -> dict[str, Any]:
    """(b): chart render and compare page in Chromium; empty when Chromium or Playwright is missing. The first
    render is cold when nothing read these series since the server started."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return {"skipped": "playwright is not installed (pip install -e '.[test]')"}
    if not CHROMIUM.exists():
        return {"skipped": f"{CHROMIUM} is missing (apt-get install chromium)"}
    compare_url = f"{url}/ui/compare?" + "&".join(f"run_id={r}" for r in run_ids)
    runs = [{"run_id": r, "name": f"run-{i}"} for i, r in enumerate(run_ids)]
    page_run = _page_run(url)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                             args=["--no-sandbox", "--disable-dev-shm-usage"])
        try:
            page = browser.new_context(viewport={"width": 1360, "height": 900}).new_page()
            page.goto(f"{url}/ui/runs/{page_run}")
            page.wait_for_load_state("networkidle")
            renders = [page.evaluate(_RENDER, {"runs": runs, "key": key}) for _ in range(repeats + 1)]
            loads = []
            for _ in range(repeats + 1):
                page.goto(compare_url)
                loads.append(page.evaluate(_DRAWN))
        finally:
            browser.close()
    return {
        "render_first_ms": renders[0]["ms"], "render_first_fetch_ms": renders[0]["fetch_ms"],
        "render_median_ms": statistics.median(r["ms"] for r in renders[1:]),
        "afterplot_median_ms": statistics.median(r["afterplot_ms"] or math.nan for r in renders[1:]),
        "fetch_median_ms": statistics.median(r["fetch_ms"] or math.nan for r in renders[1:]),
        "lines": renders[-1]["lines"], "points_drawn": renders[-1]["points"],
        "page_first_ms": loads[0], "page_median_ms": statistics.median(loads[1:]),
    }


def chart_figures(url: str, run_ids: list[str], key: str = KEY, *, points: int,
                  repeats: int = 5) -> dict[str, Any]:
    """(b) then (a) against a running server whose ``run_ids`` logged ``points`` points of ``key`` at steps 0..n-1
    (the API figures then find the step-axis buckets kept by the server: their first call is warm)."""
    return {"browser": browser_figures(url, run_ids, key, repeats),
            "api": api_figures(url, run_ids, key, points, repeats)}


def _guarded(measure: Callable[[], dict[str, float]]) -> dict[str, Any]:
    """A measurement, or what stopped it (MLflow may drop the connection of a very large answer)."""
    started = time.perf_counter()
    try:
        return measure()
    except httpx.HTTPError as exc:
        return {"error": f"{type(exc).__name__}: {exc} after {time.perf_counter() - started:.0f} s"}


def mlflow_figures(url: str, run_ids: list[str], repeats: int) -> dict[str, dict[str, Any]]:
    """(d) and (e) against `mlflow server`."""
    with httpx.Client(base_url=url, timeout=1200) as client:
        def history(run_id: str) -> httpx.Response:
            return client.get("/api/2.0/mlflow/metrics/get-history", params={"run_id": run_id, "metric_key": KEY})

        sizes: list[int] = []

        def every_run() -> httpx.Response:
            sizes.clear()
            for run_id in run_ids[:-1]:
                answer = history(run_id)
                answer.raise_for_status()
                sizes.append(len(answer.content))
            return history(run_ids[-1])

        bulk = {"run_ids": run_ids, "metric_key": KEY, "max_results": 1000}

        def interval() -> httpx.Response:
            return client.get("/ajax-api/2.0/mlflow/metrics/get-history-bulk-interval", params=bulk)

        def sampled_figures() -> dict[str, float]:
            sampled = interval().json()["metrics"]
            return {**timed(interval, repeats), "spikes_seen": float(sum(1 for run_id in run_ids if any(
                m["value"] >= 25.0 for m in sampled if m["run_id"] == run_id)))}

        def full_figures() -> dict[str, float]:
            full = timed(every_run, 1)  # a million points a call: one more after the first is enough
            full["bytes"] += sum(sizes)
            return full

        return {"mlflow get-history-bulk-interval, 3 runs x 1000": _guarded(sampled_figures),
                "mlflow get-history, 3 runs, every point": _guarded(full_figures)}


def capstan_history(url: str, run_id: str, repeats: int) -> dict[str, float]:
    """(c): the MLflow REST history of one run, every point, from Capstan."""
    with httpx.Client(base_url=url, timeout=1200) as client:
        return timed(lambda: client.get("/api/2.0/mlflow/metrics/get-history",
                                        params={"run_id": run_id, "metric_key": KEY}), repeats)


# -- the run ------------------------------------------------------------------------------------------------------
def _serve(kind: str, home: Path, db_url: str | None) -> tuple[Any, str]:
    port = free_port()
    if kind == "mlflow":
        cmd = [python(), "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
               "--backend-store-uri", f"sqlite:///{home / 'mlflow.db'}", "--artifacts-destination",
               str(home / "mlartifacts")]  # its own defaults
        env: dict[str, str] = {}
    else:
        cmd = [python(), "-m", "capstan", "server", "--host", "127.0.0.1", "--port", str(port)]
        env = {"CAPSTAN_HOME": str(home), **({"CAPSTAN_DB_URL": db_url} if db_url else {})}
    proc = start(cmd, env, home / "server.log")
    url = f"http://127.0.0.1:{port}"
    wait_healthy(f"{url}/health", proc, timeout=300)
    return proc, url


def _seeded(record: Path, n: int, seed: Callable[[], tuple[list[str], float]]) -> tuple[list[str], float]:
    """Seed once per --keep folder: later runs reuse the runs (and the logging time) recorded in ``record``."""
    if record.exists():
        kept = json.loads(record.read_text())
        if kept["points"] == n:
            return list(kept["run_ids"]), float(kept["seconds"])
    run_ids, seconds = seed()
    record.write_text(json.dumps({"points": n, "run_ids": run_ids, "seconds": seconds}))
    return run_ids, seconds


def _row(name: str, figures: dict[str, Any]) -> list[str]:
    if "error" in figures:
        return [name, "failed", figures["error"][:60], "", ""]
    return [name, f"{figures['first_ms']:.0f}", f"{figures['median_ms']:.0f}", f"{figures['bytes'] / 1e6:.2f}",
            "" if "spikes_seen" not in figures else f"{figures['spikes_seen']:.0f}/3"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", type=int, default=1_000_000, help="points per run (default 1,000,000)")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls after the first (median)")
    parser.add_argument("--db-url", help="Capstan's metadata store (default: SQLite in a temporary home)")
    parser.add_argument("--no-mlflow", action="store_true", help="skip MLflow")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--keep", type=Path, help="work in this folder and reuse the data logged there before")
    args = parser.parse_args()
    tmp = args.keep or Path(tempfile.mkdtemp(prefix="capstan-bench-charts-"))
    tmp.mkdir(parents=True, exist_ok=True)
    n, runs = args.points, 3
    results: dict[str, Any] = {"points_per_run": n, "runs": runs, "db": "postgresql" if args.db_url else "sqlite"}

    print(f"logging {runs} x {n:,} points into Capstan", flush=True)
    cap_runs, results["capstan_seed_s"] = _seeded(tmp / "capstan-runs.json", n, lambda: seed_capstan(
        tmp / "capstan", args.db_url, n, runs))
    # A fresh server for each part, so that each part's first figure is a cold read.
    proc, url = _serve("capstan", tmp / "capstan", args.db_url)
    try:
        print("capstan: the chart in Chromium", flush=True)
        results["browser"] = browser_figures(url, cap_runs, KEY, args.repeats)
    finally:
        stop(proc)
    proc, url = _serve("capstan", tmp / "capstan", args.db_url)
    try:
        print("capstan: series API, MLflow-compatible history", flush=True)
        results["api"] = api_figures(url, cap_runs, KEY, n, args.repeats)
        results["api"]["capstan get-history (MLflow REST), 1 run, every point"] = capstan_history(
            url, cap_runs[0], max(1, args.repeats // 2))
    finally:
        stop(proc)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))

    if not args.no_mlflow:
        print(f"logging {runs} x {n:,} points into MLflow's SQLite store", flush=True)
        (tmp / "mlflow").mkdir(exist_ok=True)
        ml_runs, results["mlflow_seed_s"] = _seeded(tmp / "mlflow-runs.json", n, lambda: seed_mlflow(
            tmp / "mlflow" / "mlflow.db", n, runs))
        proc, url = _serve("mlflow", tmp / "mlflow", None)
        try:
            print("mlflow: get-history and get-history-bulk-interval", flush=True)
            results["api"].update(mlflow_figures(url, ml_runs, args.repeats))
        finally:
            stop(proc)

    api = results["api"]
    print()
    print(table([_row(name, figures) for name, figures in api.items()],
                ["request", "first ms", "median ms", "MB", "spikes seen"]))
    ours = api["capstan series, 3 runs, step"]
    for peer in ("mlflow get-history, 3 runs, every point", "mlflow get-history-bulk-interval, 3 runs x 1000"):
        if peer in api and "error" not in api[peer]:
            print(f"{peer} / capstan series: {api[peer]['first_ms'] / ours['first_ms']:.1f}x the time of the "
                  f"first call, {api[peer]['median_ms'] / ours['median_ms']:.1f}x the median, "
                  f"{api[peer]['bytes'] / ours['bytes']:.1f}x the bytes")
    browser = results["browser"]
    if "skipped" in browser:
        print(f"Chromium: skipped ({browser['skipped']})")
    else:
        print(f"Chromium, 3 runs x {n:,} points overlaid, request to chart drawn: cold (first read since the "
              f"server started) {browser['render_first_ms']:.0f} ms, of which the series request "
              f"{browser['render_first_fetch_ms']:.0f} ms; again {browser['render_median_ms']:.0f} ms (median; "
              f"plotly_afterplot at {browser['afterplot_median_ms']:.0f} ms, the request "
              f"{browser['fetch_median_ms']:.0f} ms); {browser['points_drawn']} points drawn. Compare page, "
              f"navigation to chart: {browser['page_median_ms']:.0f} ms (first {browser['page_first_ms']:.0f} ms)")
        for label, figure in (("cold", browser["render_first_ms"]), ("again", browser["render_median_ms"])):
            verdict = "met" if figure < GOAL_MS else "NOT met"
            print(f"goal: a chart of 3 runs x 1,000,000 points renders in under {GOAL_MS:.0f} ms ({label}): {verdict}"
                  + ("" if n >= 1_000_000 else f" (measured with {n:,} points per run)"))
    print(f"logging: capstan {results['capstan_seed_s']:.1f} s through its store"
          + (f", mlflow {results['mlflow_seed_s']:.1f} s by direct SQL" if "mlflow_seed_s" in results else ""))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
