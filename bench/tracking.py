"""Tracking benchmark: Capstan against MLflow on the same Python, in one run.

Scenarios (each in a fresh worker process so neither side warms the other's caches):
  (a) 10,000 metrics, one call at a time, until durable (run ended)
  (b) 10,000 metrics in batches of 1,000
  (c) 1,000 runs with 5 params and 5 metrics each
  (d) search_runs over those runs with a metric filter and order_by (median of 5 calls; the first is shown too)
  (e) import time of the package
  (f) server start until healthy, idle memory
  (g) bytes on disk per metric point

Targets drivers: the MLflow client against MLflow's SQLite store and against `mlflow server`; Capstan's SDK on its
local store; the MLflow client against `capstan server`; Capstan's SDK against `capstan server`.

    python bench/tracking.py            # full sizes (MLflow through its server takes many minutes)
    python bench/tracking.py --quick    # smaller peer sizes; per-operation ratios
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# Running `python bench/tracking.py` puts bench/ first on sys.path, where bench/queue.py would shadow the standard
# library's `queue`. Drop that entry and load the shared helpers by file path instead.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]


def _load_util() -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location("capstan_bench_util", _HERE / "_util.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_util = _load_util()
free_port, python, start, stop = _util.free_port, _util.python, _util.start, _util.stop
table, tree_memory_mb, wait_healthy = _util.table, _util.tree_memory_mb, _util.wait_healthy

# ---------------------------------------------------------------------------------------------- workers


def _timed_search(search: Any, repeats: int = 5) -> dict[str, float]:
    """(d): the median of ``repeats`` searches (one garbage-collector pause or a cold page cache in a single call
    can double it), plus the first call on its own."""
    times = []
    found: list[Any] = []
    for _ in range(repeats):
        t = time.perf_counter()
        found = list(search())
        times.append(time.perf_counter() - t)
    return {"d": statistics.median(times), "d_first": times[0], "d_rows": float(len(found))}


def _worker_mlflow_client(uri: str, sizes: dict[str, int]) -> dict[str, float]:
    import mlflow
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    mlflow.set_tracking_uri(uri)
    client = MlflowClient()
    exp_id = client.create_experiment(f"bench-{os.getpid()}-{time.time_ns()}")
    out: dict[str, float] = {}
    t = time.perf_counter()
    with mlflow.start_run(experiment_id=exp_id):
        for i in range(sizes["a"]):
            mlflow.log_metric("loss", 1.0 / (i + 1), step=i)
    out["a"] = time.perf_counter() - t

    run = client.create_run(exp_id)
    now = int(time.time() * 1000)
    t = time.perf_counter()
    for k in range(sizes["b"] // 1000):
        client.log_batch(run.info.run_id,
                         metrics=[Metric("loss", 1.0 / (j + 1), now, k * 1000 + j) for j in range(1000)])
    client.set_terminated(run.info.run_id)
    out["b"] = time.perf_counter() - t

    t = time.perf_counter()
    for i in range(sizes["c"]):
        with mlflow.start_run(experiment_id=exp_id):
            mlflow.log_params({f"p{j}": f"v{i % (j + 2)}" for j in range(5)})
            mlflow.log_metrics({f"m{j}": ((i * 7919 + j * 104729) % 1000) / 1000 for j in range(5)})
    out["c"] = time.perf_counter() - t

    out.update(_timed_search(lambda: client.search_runs([exp_id], filter_string="metrics.m0 > 0.5",
                                                        order_by=["metrics.m1 DESC"], max_results=1000)))
    return out


def _worker_capstan_sdk(sizes: dict[str, int]) -> dict[str, float]:
    import capstan
    from capstan.tracking.records import Metric

    client = capstan.Client()
    exp_name = f"bench-{os.getpid()}-{time.time_ns()}"
    exp_id = client.create_experiment(exp_name)
    out: dict[str, float] = {}
    t = time.perf_counter()
    with capstan.start_run(experiment=exp_name):
        for i in range(sizes["a"]):
            capstan.log_metric("loss", 1.0 / (i + 1), step=i)
    out["a"] = time.perf_counter() - t

    run = client.create_run(exp_id)
    now = int(time.time() * 1000)
    t = time.perf_counter()
    for k in range(sizes["b"] // 1000):
        client.log_batch(run.info.run_id,
                         metrics=[Metric("loss", 1.0 / (j + 1), now, k * 1000 + j) for j in range(1000)])
    client.set_terminated(run.info.run_id)
    out["b"] = time.perf_counter() - t

    t = time.perf_counter()
    for i in range(sizes["c"]):
        with capstan.start_run(experiment=exp_name):
            capstan.log_params({f"p{j}": f"v{i % (j + 2)}" for j in range(5)})
            capstan.log_metrics({f"m{j}": ((i * 7919 + j * 104729) % 1000) / 1000 for j in range(5)})
    out["c"] = time.perf_counter() - t

    out.update(_timed_search(lambda: client.search_runs([exp_id], filter_string="metrics.m0 > 0.5",
                                                        order_by=["metrics.m1 DESC"], max_results=1000)))
    return out


def _worker_bytes_per_point(kind: str, db: str, points: int) -> dict[str, float]:
    """Log ``points`` metric points into a fresh SQLite file and return the bytes each one added."""
    import sqlite3

    def size() -> int:
        con = sqlite3.connect(db)
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        con.execute("VACUUM")
        con.close()
        return os.path.getsize(db)

    if kind == "mlflow":
        from mlflow.entities import Metric
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        store = SqlAlchemyStore(f"sqlite:///{db}", tempfile.mkdtemp())
        exp = store.create_experiment("bytes")
        run = store.create_run(exp, "u", int(time.time() * 1000), [], "r")
        empty = size()
        now = int(time.time() * 1000)
        for k in range(points // 1000):
            store.log_batch(run.info.run_id,
                            [Metric("loss", 1.0 / (j + 1), now + j, k * 1000 + j) for j in range(1000)], [], [])
    else:
        from capstan.services import Services
        from capstan.settings import Settings
        from capstan.tracking.records import Metric as CMetric

        services = Services.open(Settings.for_home(Path(db).parent, db_url=f"sqlite:///{db}"))
        exp = services.tracking.create_experiment("bytes", project="default")
        run = services.tracking.create_run(exp)
        empty = size()
        now = int(time.time() * 1000)
        for k in range(points // 1000):
            services.tracking.log_batch(
                run.run_id, metrics=[CMetric("loss", 1.0 / (j + 1), now + j, k * 1000 + j) for j in range(1000)])
        services.close()
    return {"bytes_per_point": (size() - empty) / points}


def _worker_main(args: argparse.Namespace) -> None:
    sizes = json.loads(args.sizes)
    if args.worker == "mlflow-client":
        result = _worker_mlflow_client(args.uri, sizes)
    elif args.worker == "capstan-sdk":
        result = _worker_capstan_sdk(sizes)
    else:
        result = _worker_bytes_per_point(args.kind, args.db, sizes["points"])
    print("RESULT " + json.dumps(result), flush=True)


# ---------------------------------------------------------------------------------------------- driver


def _run_worker(extra: list[str], env: dict[str, str], sizes: dict[str, int], timeout: float) -> dict[str, float]:
    cmd = [python(), __file__, "--sizes", json.dumps(sizes), *extra]
    proc = subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True, timeout=timeout)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return dict(json.loads(line[7:]))
    raise RuntimeError(f"worker {extra} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")


def _import_time(module: str, repeat: int = 5) -> float:
    code = f"import time; t=time.perf_counter(); import {module}; print(time.perf_counter()-t)"
    times = [float(subprocess.run([python(), "-c", code], capture_output=True, text=True, check=True).stdout)
             for _ in range(repeat)]
    return statistics.median(times)


def _server(kind: str, home: Path, workers: int | None,
            settle: bool = True) -> tuple[subprocess.Popen[bytes], str, float, float, float]:
    port = free_port()
    home.mkdir(parents=True, exist_ok=True)
    if kind == "mlflow":
        cmd = [python(), "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
               "--backend-store-uri", f"sqlite:///{home / 'mlflow.db'}",
               "--artifacts-destination", str(home / "mlartifacts")]
        if workers:
            cmd += ["--workers", str(workers)]
        env: dict[str, str] = {}
    else:
        cmd = [python(), "-m", "capstan", "server", "--host", "127.0.0.1", "--port", str(port)]
        if workers:
            cmd += ["--workers", str(workers)]
        env = {"CAPSTAN_HOME": str(home)}
    proc = start(cmd, env, home / "server.log")
    url = f"http://127.0.0.1:{port}"
    healthy = wait_healthy(f"{url}/health", proc)
    if not settle:
        return proc, url, healthy, 0.0, 0.0
    time.sleep(2.0)  # let start-up allocations settle before reading idle memory
    rss, pss = tree_memory_mb(proc.pid)
    return proc, url, healthy, rss, pss


def _startups(kind: str, tmp: Path, repeats: int) -> list[float]:
    """Seconds until healthy for ``repeats`` extra starts, each on a fresh home (migrations included)."""
    times = []
    for i in range(repeats):
        proc, _url, healthy, _rss, _pss = _server(kind, tmp / f"start-{kind}-{i}", None, settle=False)
        stop(proc)
        times.append(healthy)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller peer sizes (per-operation ratios)")
    parser.add_argument("--mlflow-workers", type=int, default=None,
                        help="workers for `mlflow server` (default: its own default)")
    parser.add_argument("--skip-servers", action="store_true", help="only in-process stores, no servers")
    parser.add_argument("--json", action="store_true", help="print the raw results as JSON")
    parser.add_argument("--startups", type=int, default=5,
                        help="extra server starts to time (each side; MLflow gets at most 2)")
    parser.add_argument("--startup-only", action="store_true",
                        help="only (f): time server starts and idle memory, nothing else")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--uri", help=argparse.SUPPRESS)
    parser.add_argument("--kind", help=argparse.SUPPRESS)
    parser.add_argument("--db", help=argparse.SUPPRESS)
    parser.add_argument("--sizes", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker_main(args)
        return

    # Both sides run from compiled bytecode, as installed packages do (pip compiles MLflow's at install time).
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    import compileall

    compileall.compile_dir(str(_HERE.parent / "src"), quiet=1)
    full = {"a": 10_000, "b": 10_000, "c": 1_000}
    # --quick shortens the slow single-call scenario (a) for MLflow only; (c) keeps its 1,000 runs in-process so that
    # (d) searches the same number of runs on both sides. Through servers every driver uses the same sizes.
    peer = {"a": 2_000, "b": 10_000, "c": 1_000} if args.quick else full
    server = {"a": 500, "b": 10_000, "c": 200} if args.quick else full
    tmp = Path(tempfile.mkdtemp(prefix="capstan-bench-"))
    results: dict[str, dict[str, float]] = {}
    sizes_used: dict[str, dict[str, int]] = {}

    if args.startup_only:
        _startup_report(tmp, args.startups, {})
        return

    def record(name: str, res: dict[str, float], sizes: dict[str, int]) -> None:
        results[name] = res
        sizes_used[name] = sizes
        print(f"  {name}: " + ", ".join(f"{k}={v:.3f}" for k, v in res.items()), flush=True)

    print("stores in-process", flush=True)
    record("mlflow/sqlite", _run_worker(["--worker", "mlflow-client", "--uri", f"sqlite:///{tmp / 'ml.db'}"], {},
                                        peer, 3600), peer)
    record("capstan/local", _run_worker(["--worker", "capstan-sdk"], {"CAPSTAN_HOME": str(tmp / "cap-local")},
                                        full, 3600), full)

    servers: dict[str, dict[str, float]] = {}
    if not args.skip_servers:
        print("servers", flush=True)
        ml_proc, ml_url, ml_healthy, ml_rss, ml_pss = _server("mlflow", tmp / "mlsrv", args.mlflow_workers)
        servers["mlflow server"] = {"healthy_s": ml_healthy, "rss_mb": ml_rss, "pss_mb": ml_pss}
        try:
            record("mlflow client -> mlflow server",
                   _run_worker(["--worker", "mlflow-client", "--uri", ml_url], {}, server, 7200), server)
        finally:
            stop(ml_proc)
        cap_proc, cap_url, cap_healthy, cap_rss, cap_pss = _server("capstan", tmp / "capsrv", None)
        servers["capstan server"] = {"healthy_s": cap_healthy, "rss_mb": cap_rss, "pss_mb": cap_pss}
        try:
            record("mlflow client -> capstan server",
                   _run_worker(["--worker", "mlflow-client", "--uri", cap_url], {}, server, 3600), server)
            record("capstan sdk -> capstan server",
                   _run_worker(["--worker", "capstan-sdk"], {"CAPSTAN_URL": cap_url,
                                                             "CAPSTAN_HOME": str(tmp / "cap-client")}, server, 3600),
                   server)
        finally:
            stop(cap_proc)

    print("bytes per point and import time", flush=True)
    points = {"points": 100_000}
    bpp_ml = _run_worker(["--worker", "bytes", "--kind", "mlflow", "--db", str(tmp / "bpp-ml.db")], {}, points, 3600)
    (tmp / "bpp-cap").mkdir()
    bpp_cap = _run_worker(["--worker", "bytes", "--kind", "capstan", "--db", str(tmp / "bpp-cap" / "c.db")], {},
                          points, 3600)
    imp_ml, imp_cap = _import_time("mlflow"), _import_time("capstan")

    def per_op(name: str, key: str) -> float:
        n = sizes_used[name].get(key, 1)
        return results[name][key] / n

    rows = []
    labels = {"a": "(a) 10k single log_metric", "b": "(b) 10k metrics in batches of 1k",
              "c": "(c) 1k runs x 5 params + 5 metrics", "d": "(d) search_runs filter + order_by*",
              "d_first": "(d) the first of those calls"}
    pairs = [("mlflow/sqlite", "capstan/local")]
    if not args.skip_servers:
        pairs += [("mlflow client -> mlflow server", "mlflow client -> capstan server"),
                  ("mlflow client -> mlflow server", "capstan sdk -> capstan server")]
    for key, label in labels.items():
        for base, ours in pairs:
            b_full = per_op(base, key) * full.get(key, 1)
            o_full = per_op(ours, key) * full.get(key, 1)
            rows.append([label, f"{base}: {b_full:.3f}s", f"{ours}: {o_full:.3f}s", f"{b_full / o_full:.1f}x"])
    print()
    print(table(rows, ["scenario (scaled to full size)", "peer", "capstan", "speed-up"]))
    print()
    other = [["(e) import time", f"mlflow {imp_ml * 1000:.0f} ms", f"capstan {imp_cap * 1000:.0f} ms",
              f"{imp_cap / imp_ml:.3f} of mlflow"],
             ["(g) bytes per metric point", f"mlflow {bpp_ml['bytes_per_point']:.1f}",
              f"capstan {bpp_cap['bytes_per_point']:.1f}",
              f"{bpp_cap['bytes_per_point'] / bpp_ml['bytes_per_point']:.3f} of mlflow"]]
    for name, s in servers.items():
        other.append([f"(f) {name}", f"healthy {s['healthy_s']:.2f} s", f"RSS {s['rss_mb']:.0f} MB",
                      f"PSS {s['pss_mb']:.0f} MB"])
    print(table(other, ["measure", "peer / value", "capstan / value", "ratio"]))
    if not args.skip_servers and args.startups > 0:
        print()
        _startup_report(tmp, args.startups, servers)
    print(f"\n* (d) searches the runs (c) created: {peer['c']} in-process, {server['c']} through servers.")
    if args.quick:
        print("--quick: sizes were reduced; (a)-(c) are per-operation times scaled to full size.")
    if args.json:
        print(json.dumps({"results": results, "sizes": sizes_used, "servers": servers, "import_s":
                          {"mlflow": imp_ml, "capstan": imp_cap}, "bytes_per_point":
                          {"mlflow": bpp_ml, "capstan": bpp_cap}}, indent=2))


def _startup_report(tmp: Path, repeats: int, measured: dict[str, dict[str, float]]) -> None:
    """(f) on its own: repeated starts of both servers (fresh homes). The start of the main run, when there was
    one (``measured``, keyed like ``servers``), counts as one more; otherwise one more start reads idle memory."""
    print(f"(f) server start until healthy, {repeats} fresh starts per server", flush=True)
    rows = []
    for kind, n in (("mlflow", min(repeats, 2)), ("capstan", repeats)):
        times = _startups(kind, tmp, n)
        first = measured.get(f"{kind} server")
        if first is None:
            proc, _url, healthy, rss, pss = _server(kind, tmp / f"idle-{kind}", None)
            stop(proc)
            first = {"healthy_s": healthy, "rss_mb": rss, "pss_mb": pss}
        times.append(first["healthy_s"])
        rows.append([f"{kind} server", f"median {statistics.median(times):.2f} s",
                     f"min {min(times):.2f} / max {max(times):.2f} s ({len(times)} starts)",
                     f"RSS {first['rss_mb']:.0f} MB, PSS {first['pss_mb']:.0f} MB"])
    print(table(rows, ["server", "healthy after", "spread", "idle memory"]))
    print(f"load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
