"""Web UI benchmark (issue 12): Capstan's pages in Debian's headless Chromium, against MLflow's UI on the same data.

Data, in one temporary Capstan home and one MLflow SQLite database:
  - one experiment of --runs runs (10,000; --quick 1,000), each with 50 metrics (one point each), 10 params and
    5 tags, FINISHED; the same values in both stores
  - 3 runs x --points points (1,000,000; --quick 100,000) of one metric, for the chart (bench/ui_charts.py seeds and
    measures it)
  - a finished pipeline run of 500 steps (20 layers of 25 thread steps, each after one or two of the layer before),
    run by Capstan's own runner

Pages and what "interactive" means here. Both servers run side by side and one browser loads the pages in rounds,
each round loading every page once, Capstan's and MLflow's in turn (a warm-up round, then --reps timed rounds;
medians of the timed loads), so both sides share the machine's load. Each load is a new tab of the page's browser
context (Capstan's pages share one, each MLflow view has its own), so the HTTP cache and localStorage persist, as
for a returning user:
  - the time from navigation start (the page's performance.timeOrigin) until, after the load event, (1) the page's
    content is in the DOM (the table's rows, the DAG's nodes), (2) two animation frames have passed since (it has
    been painted), and (3) the main thread is idle: the end of the last long task (>= 50 ms, PerformanceObserver
    'longtask', registered before any page script) if that is later. The main thread counts as idle once no long
    task has started for --quiet-ms (500) after that point. Total blocking time (the sum of each long task's time
    over 50 ms) and the first load (cold layout caches, cold HTTP cache) are reported too.
  - Capstan's runs page /ui/experiments/ID: the default view (50 rows, no chosen columns), 50 metric columns chosen
    (50 rows), and 100 rows with 50 metric columns (what MLflow's page below shows)
  - MLflow's experiment page /#/experiments/ID?workflowType=machine_learning (MLflow 3 opens GenAI pages by
    default; this is the "Model training" switch), until its runs grid shows its first 100 rows: its default
    columns, and with the 50 metric columns chosen (written into the page's persisted state in localStorage, as
    its column picker does). Its assistant side panel is closed so both tables get the same width. A page that
    does not show its rows within --timeout seconds is reported as timed out, with what it had shown.
  - Capstan's chart of 3 runs x 1,000,000 points: bench/ui_charts.py's browser figures (the request to the chart
    drawn, `capstan.charts.render` resolving after Plotly's plotly_afterplot; and the compare page, navigation to
    its chart drawn)
  - Capstan's pipeline run page /ui/pipelines/runs/ID with the 500-step DAG (server-side layout, SVG)

Goals (issue 12): runs page interactive < 1 s with 10,000 runs x 50 metrics; chart of 3 x 1,000,000 points drawn
< 500 ms; 500-step DAG < 1 s.

    python bench/ui.py                      # full sizes (4 to 10 minutes, with the machine's load)
    python bench/ui.py --quick              # 1,000 runs, 100,000 points per chart run (2 to 3 minutes)
    python bench/ui.py --no-mlflow --json ui.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from itertools import zip_longest
from pathlib import Path
from typing import Any

import httpx

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]  # bench/queue.py shadows `queue`


def _load(name: str, file: str) -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, _HERE / file)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_util = _load("capstan_bench_util", "_util.py")
charts = _load("capstan_bench_ui_charts", "ui_charts.py")
free_port, python, start, stop = _util.free_port, _util.python, _util.start, _util.stop
table, wait_healthy = _util.table, _util.wait_healthy

CHROMIUM = Path("/usr/bin/chromium")
T0 = 1_700_000_000_000
METRICS, PARAMS, TAGS = 50, 10, 5
MLFLOW_ROWS = 100  # MLflow's runs grid loads 100 runs, then offers "Load more"
GOALS_MS = {"runs": 1000.0, "chart": 500.0, "dag": 1000.0}
DAG_LAYERS, DAG_WIDTH = 20, 25


# -- the data -----------------------------------------------------------------------------------------------------
def metric_key(j: int) -> str:
    return f"m{j:02d}"


def metric_value(i: int, j: int) -> float:
    return ((i * 7919 + j * 104729) % 100_000) / 1000


def run_fields(i: int) -> tuple[str, int, int, list[tuple[str, str]], list[tuple[str, str]]]:
    """Run ``i``'s name, start and end time, params and tags (the same in both stores)."""
    params = [(f"p{k}", f"v{i % (k + 2)}") for k in range(PARAMS)]
    tags = [(f"t{k}", f"v{i % (k + 3)}") for k in range(TAGS)]
    return f"run-{i:05d}", T0 + i * 1000, T0 + i * 1000 + 900, params, tags


def seed_capstan_runs(home: Path, n: int) -> tuple[str, float]:
    """The runs experiment through Capstan's tracking store: a run per call with its tags, the metrics of 200 runs
    per transaction (`log_metrics_for_runs`, the SDK writer's path), params with `log_batch`, then FINISHED."""
    from capstan.services import Services
    from capstan.settings import Settings
    from capstan.tracking.records import Metric, Param, RunTag

    services = Services.open(Settings.for_home(home))
    started = time.perf_counter()
    try:
        tracking = services.tracking
        experiment = tracking.create_experiment("ui-bench", project="default")
        run_ids = []
        for i in range(n):
            name, begin, _end, _params, tags = run_fields(i)
            run_ids.append(tracking.create_run(experiment, run_name=name, start_time=begin, user_id="bench",
                                               tags=[RunTag(k, v) for k, v in tags]).run_id)
        for first in range(0, n, 200):
            tracking.log_metrics_for_runs({run_ids[i]: [
                Metric(metric_key(j), metric_value(i, j), run_fields(i)[1] + 500, 0) for j in range(METRICS)]
                for i in range(first, min(n, first + 200))})
        for i, run_id in enumerate(run_ids):
            _name, _begin, end, params, _tags = run_fields(i)
            tracking.log_batch(run_id, params=[Param(k, v) for k, v in params])
            tracking.update_run(run_id, status="FINISHED", end_time=end)
    finally:
        services.close()
    return experiment, time.perf_counter() - started


def seed_mlflow_runs(db: Path, n: int) -> tuple[str, float]:
    """The same runs in MLflow's SQLite store: its store creates the schema and the experiment; the rows go in with
    SQLAlchemy Core executemany on MLflow's own table models, as its `create_run` and `log_batch` write them
    (through its REST API 10,000 runs take hours)."""
    from mlflow.store.tracking.dbmodels import models
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    started = time.perf_counter()
    store = SqlAlchemyStore(f"sqlite:///{db}", str(db.parent / "mlartifacts"))
    experiment = store.create_experiment("ui-bench")
    store.set_experiment_tag(experiment, _mlflow_tag("mlflow.experimentKind", "custom_model_development"))
    location = store.get_experiment(experiment).artifact_location
    runs, tags, params, metrics = [], [], [], []
    for i in range(n):
        run_id = uuid.uuid4().hex
        name, begin, end, run_params, run_tags = run_fields(i)
        runs.append({"run_uuid": run_id, "name": name, "source_type": "UNKNOWN", "source_name": "",
                     "entry_point_name": "", "user_id": "bench", "status": "FINISHED", "start_time": begin,
                     "end_time": end, "deleted_time": None, "source_version": "", "lifecycle_stage": "active",
                     "artifact_uri": f"{location}/{run_id}/artifacts", "experiment_id": int(experiment)})
        tags += [{"key": k, "value": v, "run_uuid": run_id} for k, v in [("mlflow.runName", name), *run_tags]]
        params += [{"key": k, "value": v, "run_uuid": run_id} for k, v in run_params]
        metrics += [{"key": metric_key(j), "value": metric_value(i, j), "timestamp": begin + 500, "step": 0,
                     "is_nan": False, "run_uuid": run_id} for j in range(METRICS)]
    with store.engine.begin() as conn:
        for model, rows in ((models.SqlRun, runs), (models.SqlTag, tags), (models.SqlParam, params),
                            (models.SqlMetric, metrics), (models.SqlLatestMetric, metrics)):
            conn.execute(model.__table__.insert(), rows)
    store.engine.dispose()
    return experiment, time.perf_counter() - started


def _mlflow_tag(key: str, value: str) -> Any:
    from mlflow.entities import ExperimentTag

    return ExperimentTag(key, value)


DAG_PIPELINE = '''
import capstan.pipelines as cp


@cp.step(isolation="thread")
def work(layer: int, index: int, *after: int) -> int:
    return layer * 1000 + index


@cp.pipeline
def dag500(layers: int = {layers}, width: int = {width}):
    previous = []
    for layer in range(layers):
        current = []
        for i in range(width):
            after = [previous[k] for k in sorted({{i, min(i + 1, width - 1)}})] if previous else []
            current.append(work.with_options(name=f"l{{layer:02d}}-{{i:02d}}")(layer, i, *after))
        previous = current
    return previous[0]
'''


def seed_pipeline(home: Path, folder: Path) -> tuple[str, int, float]:
    """A real 500-step pipeline run, orchestrated to the end by Capstan's runner (thread steps)."""
    from capstan.pipelines.executors import close_pools
    from capstan.pipelines.loader import load_pipeline
    from capstan.services import Services
    from capstan.settings import Settings

    code = folder / "dag500.py"
    code.write_text(textwrap.dedent(DAG_PIPELINE.format(layers=DAG_LAYERS, width=DAG_WIDTH)))
    pipe, ref = load_pipeline(f"{code}:dag500")
    services = Services.open(Settings.for_home(home))
    started = time.perf_counter()
    try:
        runner = services.pipelines.get()
        result = runner.run(pipe, {}, ref=ref)
        runner.close()
        close_pools()
    finally:
        services.close()
    if not result.ok:
        raise RuntimeError(f"the 500-step pipeline failed: {result.run.message}")
    return result.run_id, len(result.steps), time.perf_counter() - started


# -- servers ------------------------------------------------------------------------------------------------------
@contextmanager
def serving(kind: str, home: Path) -> Iterator[str]:
    """``capstan server`` or ``mlflow server`` over ``home``, on a loopback port, stopped on exit."""
    port = free_port()
    if kind == "mlflow":
        cmd = [python(), "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
               "--backend-store-uri", f"sqlite:///{home / 'mlflow.db'}", "--artifacts-destination",
               str(home / "mlartifacts")]
        env: dict[str, str] = {}
    else:
        cmd = [python(), "-m", "capstan", "server", "--host", "127.0.0.1", "--port", str(port)]
        env = {"CAPSTAN_HOME": str(home)}
    proc = start(cmd, env, home / f"{kind}-server.log")
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(f"{url}/health", proc, timeout=300)
        yield url
    finally:
        stop(proc)


# -- the browser --------------------------------------------------------------------------------------------------
LONG_TASKS = """
window.__bench = {longtasks: []};
try {
  new PerformanceObserver(list => {
    for (const e of list.getEntries()) { window.__bench.longtasks.push([e.startTime, e.startTime + e.duration]); }
  }).observe({type: 'longtask', buffered: true});
} catch (e) { window.__bench.unsupported = String(e); }
"""

INTERACTIVE = """async ({wants, quiet, timeout}) => {
  const frame = () => new Promise(resolve => requestAnimationFrame(() => resolve()));
  const counts = () => wants.map(([selector]) => document.querySelectorAll(selector).length);
  const met = () => counts().every((n, i) => n >= wants[i][1]);
  const nav = performance.getEntriesByType('navigation')[0];
  const facts = () => ({
    ttfb: nav ? nav.responseStart : null, dom_content_loaded: nav ? nav.domContentLoadedEventEnd : null,
    load: nav ? nav.loadEventEnd : null, html_bytes: nav ? nav.encodedBodySize : null, counts: counts(),
    longtasks: window.__bench.longtasks.length,
    blocking: window.__bench.longtasks.reduce((s, [a, b]) => s + Math.max(0, b - a - 50), 0),
  });
  while (!met()) {
    if (performance.now() > timeout) { return {timed_out: true, at: performance.now(), ...facts()}; }
    await frame();
  }
  const ready = performance.now();
  await frame();
  await frame();
  const painted = performance.now();
  for (;;) {
    const last = Math.max(painted, ...window.__bench.longtasks.map(t => t[1]));
    if (performance.now() - last >= quiet) { return {timed_out: false, ready, painted, interactive: last, ...facts()}; }
    if (performance.now() > timeout) { return {timed_out: true, at: performance.now(), ...facts()}; }
    await new Promise(resolve => setTimeout(resolve, 25));
  }
}"""


@dataclass(frozen=True)
class View:
    """One page to load: its name in the report, the browser context it opens in (``capstan``, or one per MLflow
    view: their persisted state differs), its URL, and what must be on it (CSS selector, at least how many)."""

    name: str
    context: str
    url: str
    wants: list[tuple[str, int]]


def load_once(context: Any, view: View, quiet_ms: float, timeout_s: float, shot: Path | None) -> dict[str, Any]:
    """One load of ``view`` in a new tab of ``context``; figures in ms from navigation start."""
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error).splitlines()[0][:300]))
    load_average = os.getloadavg()[0]
    try:
        page.goto(view.url, wait_until="load", timeout=timeout_s * 1000)
        figures = page.evaluate(INTERACTIVE, {"wants": view.wants, "quiet": quiet_ms, "timeout": timeout_s * 1000})
        if shot is not None:
            page.screenshot(path=str(shot))
    except Exception as error:  # noqa: BLE001  # a page that fails to load is a result, reported as such
        figures = {"timed_out": True, "error": str(error).splitlines()[0][:300]}
    finally:
        page.close()
    return {**figures, "page_errors": errors, "load_average": load_average}


def summary(view: View, loads: list[dict[str, Any]]) -> dict[str, Any]:
    """The median of the timed loads (all but the first) of a view, or the failure that stopped it."""
    failures = sum(bool(load.get("timed_out")) for load in loads)
    averages = [load["load_average"] for load in loads]
    out: dict[str, Any] = {"url": view.url, "wants": view.wants, "loads": loads, "first": loads[0],
                           "failed_loads": failures, "load_average": [min(averages), max(averages)]}
    timed = [load for load in loads[1:] if not load.get("timed_out")]
    if timed:
        for key in ("ttfb", "load", "ready", "painted", "interactive", "blocking"):
            out[f"{key}_ms"] = statistics.median(load[key] for load in timed)
        out["html_bytes"] = statistics.median(load["html_bytes"] for load in timed)
    else:
        out["timed_out"] = next((load for load in reversed(loads) if load.get("timed_out")), loads[-1])
    return out


def measure(views: list[View], inits: dict[str, list[str]], args: argparse.Namespace,
            shots: Path) -> dict[str, Any]:
    """Rounds of one load of every view in turn (a warm-up round, then ``args.reps``), so that Capstan's and
    MLflow's pages share the machine's load; a view whose loads failed twice (timed out, or the page broke) is
    not loaded again."""
    from playwright.sync_api import sync_playwright

    loads: dict[str, list[dict[str, Any]]] = {view.name: [] for view in views}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                             args=["--no-sandbox", "--disable-dev-shm-usage"])
        try:
            contexts = {}
            for key, init in inits.items():
                contexts[key] = browser.new_context(viewport={"width": 1360, "height": 900})
                for script in (LONG_TASKS, *init):
                    contexts[key].add_init_script(script)
            for rep in range(args.reps + 1):
                print(f"  round {rep + 1} of {args.reps + 1}" + (" (warm-up)" if rep == 0 else ""), flush=True)
                for index, view in enumerate(views):
                    done = loads[view.name]
                    if sum(bool(load.get("timed_out")) for load in done) >= 2:
                        continue
                    shot = shots / f"{index}-{view.context}.png" if rep == 0 else None
                    done.append(load_once(contexts[view.context], view, args.quiet_ms, args.timeout, shot))
        finally:
            browser.close()
    return {view.name: summary(view, loads[view.name]) for view in views}


def capstan_views(url: str, experiment: str, n: int, dag: tuple[str, int] | None) -> list[View]:
    """Capstan's runs page in three views and the pipeline run page (``dag``: its run id and node count)."""
    rows = "#runs-table tbody tr[data-run-id]"
    metric_columns = "&".join(f"column=metrics.{metric_key(j)}" for j in range(METRICS))
    cells = "#runs-table tbody td[data-column^='metrics.']"
    page = f"{url}/ui/experiments/{experiment}"
    views = [
        View("capstan runs page, default (50 rows)", "capstan", page, [(rows, min(n, 50))]),
        View("capstan runs page, 50 metric columns (50 rows)", "capstan", f"{page}?{metric_columns}",
             [(rows, min(n, 50)), (cells, min(n, 50) * METRICS)]),
        View("capstan runs page, 50 metric columns (100 rows)", "capstan",
             f"{page}?{metric_columns}&max_results=100", [(rows, min(n, 100)), (cells, min(n, 100) * METRICS)]),
    ]
    if dag is not None:
        views.append(View("capstan pipeline run page, 500-step DAG", "capstan", f"{url}/ui/pipelines/runs/{dag[0]}",
                          [("svg#dag .node[data-step]", dag[1])]))
    return views


def mlflow_views(url: str, experiment: str, n: int) -> tuple[list[View], dict[str, list[str]]]:
    """MLflow's experiment page with its default columns and with the 50 metric columns chosen, and the init
    scripts of their browser contexts."""
    state_key = f'MLflowLocalStorage-1.1-ExperimentPage-["{experiment}"]-ReactComponentState'
    chosen = ["attributes.`Source`", "attributes.`Models`", "attributes.`Dataset`",
              *(f"metrics.`{metric_key(j)}`" for j in range(METRICS))]
    panel = ("localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true');"
             "localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false');")
    columns = f"localStorage.setItem({json.dumps(state_key)}, {json.dumps(json.dumps({'selectedColumns': chosen}))});"
    page = f"{url}/#/experiments/{experiment}?workflowType=machine_learning"
    rows = (".ag-center-cols-container .ag-row", min(n, MLFLOW_ROWS))
    metric_cell = (".ag-center-cols-container .ag-row[row-index='0'] .ag-cell[col-id^='metrics.']", 1)
    views = [View("mlflow experiment page, default (100 rows)", "mlflow-default", page, [rows]),
             View("mlflow experiment page, 50 metric columns (100 rows)", "mlflow-columns", page,
                  [rows, metric_cell])]
    return views, {"mlflow-default": [panel], "mlflow-columns": [panel, columns]}


def machine() -> dict[str, Any]:
    """What the figures depend on: CPUs, load, Chromium's and MLflow's versions."""
    import subprocess
    from importlib.metadata import version

    chromium = subprocess.run([str(CHROMIUM), "--version"], capture_output=True, text=True, check=False).stdout
    return {"cpus": os.cpu_count(), "load_average_before": os.getloadavg(), "chromium": chromium.strip(),
            "mlflow": version("mlflow"), "playwright": version("playwright")}


# -- the report ---------------------------------------------------------------------------------------------------
def _ms(value: float | None) -> str:
    return "" if value is None else f"{value:,.0f}"


def page_rows(pages: dict[str, Any], goal_of: Callable[[str], float | None], note: str) -> list[list[str]]:
    rows = []
    for name, figures in pages.items():
        goal = goal_of(name)
        if "timed_out" in figures:
            seen = figures["timed_out"]
            what = seen.get("error") or f"after {seen.get('at', 0) / 1000:.0f} s it showed {seen.get('counts')} of " \
                f"{[w[1] for w in figures['wants']]}"
            if seen.get("page_errors"):
                what += f"; page error: {seen['page_errors'][0]}"
            rows.append([name, "failed", "", "", "", "", "", "", f"< {goal:,.0f}: NOT met ({what})" if goal else what])
            continue
        first = figures["first"]
        met = goal is not None and figures["interactive_ms"] < goal
        verdict = "" if goal is None else f"< {goal:,.0f}: " + ("met" if met else "NOT met")
        if figures["failed_loads"]:
            verdict += f" ({figures['failed_loads']} of {len(figures['loads'])} loads failed)"
        if goal is not None and note and "runs page" in name:
            verdict += f" ({note})"
        low, high = figures["load_average"]
        rows.append([name, _ms(figures["interactive_ms"]), _ms(first.get("interactive")), _ms(figures["ttfb_ms"]),
                     _ms(figures["load_ms"]), _ms(figures["blocking_ms"]), f"{figures['html_bytes'] / 1024:,.0f}",
                     f"{low:.1f}-{high:.1f}", verdict])
    return rows


def report(results: dict[str, Any]) -> None:
    pages = {**results["capstan"], **results.get("mlflow", {})}

    def goal_of(name: str) -> float | None:
        if name.startswith("capstan runs page"):
            return GOALS_MS["runs"]
        return GOALS_MS["dag"] if "DAG" in name else None

    print()
    print(f"{results['runs']:,} runs x {METRICS} metrics; medians of {results['reps']} loads after a warm-up (ms "
          "from navigation start; the pages loaded in turn, round by round; load avg: the machine's during them)")
    note = "" if results["runs"] >= 10_000 else f"{results['runs']:,} runs"
    print(table(page_rows(pages, goal_of, note),
                ["page", "interactive", "first load", "TTFB", "load event", "blocking", "HTML KiB", "load avg",
                 "goal (ms)"]))
    for ours, theirs in (("capstan runs page, default (50 rows)", "mlflow experiment page, default (100 rows)"),
                         ("capstan runs page, 50 metric columns (100 rows)",
                          "mlflow experiment page, 50 metric columns (100 rows)")):
        if theirs in pages and "interactive_ms" in pages[ours]:
            if "interactive_ms" in pages[theirs]:
                ratio = pages[theirs]["interactive_ms"] / pages[ours]["interactive_ms"]
                print(f"{theirs} / {ours}: {ratio:.1f}x")
            else:
                print(f"{theirs}: did not show its rows within {results['timeout_s']:.0f} s in "
                      f"{pages[theirs]['failed_loads']} loads")
    if results["dag"]["page_status"] != 200:
        print(f"DAG page: /api/v1/views/pipelines/runs/ID answered {results['dag']['page_status']}; not measured")
    chart = results["chart"].get("browser", {})
    points = results["points"]
    if "skipped" in chart:
        print(f"chart: skipped ({chart['skipped']})")
    else:
        verdict = "met" if chart["render_median_ms"] < GOALS_MS["chart"] else "NOT met"
        print(f"chart, 3 runs x {points:,} points: request to chart drawn (plotly_afterplot) "
              f"{chart['render_median_ms']:.0f} ms median (first {chart['render_first_ms']:.0f}"
              + (f"; the request {chart['fetch_median_ms']:.0f}" if "fetch_median_ms" in chart else "") + "), "
              f"{chart['points_drawn']} points drawn; compare page, navigation to chart drawn "
              f"{chart['page_median_ms']:.0f} ms (first {chart['page_first_ms']:.0f}); goal < "
              f"{GOALS_MS['chart']:.0f} ms: {verdict}" + ("" if points >= 1_000_000 else " (fewer points)"))
    facts = results["machine"]
    print(f"{facts['cpus']} CPUs, load average {facts['load_average_before'][0]:.1f} before and "
          f"{facts['load_average_after'][0]:.1f} after; {facts['chromium']}; MLflow {facts['mlflow']}")
    seeds = results["seed_s"]
    print("writing the data: " + ", ".join(f"{k} {v:.1f} s" for k, v in seeds.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, help="runs in the experiment (default 10,000; --quick 1,000)")
    parser.add_argument("--points", type=int, help="points per chart run (default 1,000,000; --quick 100,000)")
    parser.add_argument("--reps", type=int, help="timed loads per page after a warm-up (default 5; --quick 3)")
    parser.add_argument("--quiet-ms", type=float, default=500.0, help="main-thread quiet window (default 500)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds a page may take (default 60)")
    parser.add_argument("--quick", action="store_true", help="smaller data and fewer loads (2 to 3 minutes)")
    parser.add_argument("--no-mlflow", action="store_true", help="skip MLflow's UI")
    parser.add_argument("--json", type=Path, help="also write the raw figures to this file")
    parser.add_argument("--keep", action="store_true", help="keep both stores (by default only screenshots stay)")
    args = parser.parse_args()
    n = args.runs or (1_000 if args.quick else 10_000)
    points = args.points or (100_000 if args.quick else 1_000_000)
    args.reps = args.reps or (3 if args.quick else 5)
    if not CHROMIUM.exists():
        sys.exit(f"error: {CHROMIUM} is missing (apt-get install chromium)")
    tmp = Path(tempfile.mkdtemp(prefix="capstan-bench-ui-"))
    home, mlflow_home, shots = tmp / "capstan", tmp / "mlflow", tmp / "screenshots"
    for folder in (home, mlflow_home, shots):
        folder.mkdir()
    results: dict[str, Any] = {"runs": n, "metrics": METRICS, "points": points, "reps": args.reps,
                               "quiet_ms": args.quiet_ms, "timeout_s": args.timeout, "seed_s": {},
                               "folder": str(tmp), "machine": machine()}

    print(f"writing {n:,} runs x {METRICS} metrics into Capstan", flush=True)
    experiment, results["seed_s"]["capstan runs"] = seed_capstan_runs(home, n)
    print(f"writing 3 x {points:,} points into Capstan", flush=True)
    chart_runs, results["seed_s"]["capstan chart points"] = charts.seed_capstan(home, None, points, 3)
    print(f"running a {DAG_LAYERS * DAG_WIDTH}-step pipeline", flush=True)
    dag_run, steps, results["seed_s"]["capstan 500-step pipeline run"] = seed_pipeline(home, tmp)
    results["dag"] = {"run_id": dag_run, "steps": steps}

    if not args.no_mlflow:
        print(f"writing {n:,} runs x {METRICS} metrics into MLflow", flush=True)
        ml_experiment, results["seed_s"]["mlflow runs"] = seed_mlflow_runs(mlflow_home / "mlflow.db", n)
    with serving("capstan", home) as url:
        twin = httpx.get(f"{url}/api/v1/views/pipelines/runs/{dag_run}", timeout=60)
        results["dag"]["page_status"] = twin.status_code
        dag = (dag_run, len(twin.json()["nodes"])) if twin.status_code == 200 else None
        views = capstan_views(url, experiment, n, dag)
        inits: dict[str, list[str]] = {"capstan": []}
        with ExitStack() as peer:  # MLflow's server (and its job workers) stop before the chart is measured
            if not args.no_mlflow:
                ml_views, ml_inits = mlflow_views(peer.enter_context(serving("mlflow", mlflow_home)), ml_experiment, n)
                views = [view for pair in zip_longest(views, ml_views) for view in pair if view is not None]
                inits.update(ml_inits)
            print("pages: " + "; ".join(view.name for view in views), flush=True)
            pages = measure(views, inits, args, shots)
        results["capstan"] = {k: v for k, v in pages.items() if k.startswith("capstan")}
        results["mlflow"] = {k: v for k, v in pages.items() if k.startswith("mlflow")}
        print("capstan chart (bench/ui_charts.py)", flush=True)
        results["chart"] = charts.chart_figures(url, chart_runs, points=points, repeats=args.reps)

    results["machine"]["load_average_after"] = os.getloadavg()
    report(results)
    print(f"screenshots of the first loads: {shots}")
    if not args.keep:
        shutil.rmtree(home)
        shutil.rmtree(mlflow_home)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
