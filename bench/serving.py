"""Serving benchmark: `capstan serve` against its peers, each a server process on a loopback port, in one run.

Setup (issue 10): a scikit-learn RandomForestClassifier, 50 trees on 20 features (fixed seed); single-row requests;
Debian's `wrk` as the load generator (its own process, bench/serving_wrk.lua for the POST body) at concurrency
1, 16 and 64 for 20 s each. Servers, all given the same estimator and the same row:

  capstan             capstan serve, batching off            OIP v2 JSON   /v2/models/rf/infer
  capstan-batch       capstan serve --max-batch-size 32 --max-batch-delay-ms 2
  capstan-batch-mlflow  the same, MLflow scoring payload     /invocations {"inputs": [[...]]}
  capstan-batch-w2    the same with --workers 2 (when `capstan serve` has --workers)
  mlflow              mlflow models serve --env-manager local  /invocations {"inputs": [[...]]}
  mlserver            Seldon MLServer + mlserver-sklearn     OIP v2 JSON   (its own venv)
  bentoml             a BentoML 1.4 service (bench/peers/bentoml_service.py)  (its own venv)
  fastapi             a minimal FastAPI-on-uvicorn app (bench/peers/fastapi_app.py)

MLServer and BentoML pin libraries that clash with Capstan's, so each gets a virtualenv of its own under
--venv-dir, created on first use (or by --setup) with the same scikit-learn version as this interpreter. A peer
that cannot be installed, started or answer correctly is skipped with the reason printed.

Also measured: the in-process predict cost for 1 and 64 rows (the compute floor), cold start (process start to the
first 200 from the ready endpoint), RSS and PSS of each server's process tree, and the server's CPU time per request
(psutil, the whole process tree, before and after each level). The report ends with the issue's goals, met or not.

    python bench/serving.py                           # the full run (about 10 minutes)
    python bench/serving.py --duration 2 --concurrency 1,64 --servers capstan-batch,fastapi   # a smoke run
    python bench/serving.py --setup                   # only create the peer virtualenvs
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

# Running `python bench/serving.py` puts bench/ first on sys.path, where bench/queue.py would shadow the standard
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
free_port, start, stop = _util.free_port, _util.start, _util.stop
table, tree_memory_mb, wait_healthy = _util.table, _util.tree_memory_mb, _util.wait_healthy

N_FEATURES = 20
N_TREES = 50
SEED = 0
MODEL_NAME = "rf"
WRK_SCRIPT = _HERE / "serving_wrk.lua"
PEERS = _HERE / "peers"
ALL_SERVERS = ("capstan", "capstan-batch", "capstan-batch-mlflow", "capstan-batch-w2",
               "mlflow", "mlserver", "bentoml", "fastapi")
MLSERVER_VERSION = "1.7.1"
BENTOML_VERSION = "1.4.40"

# ---------------------------------------------------------------------------------------------- the model


@dataclass(frozen=True)
class ModelFiles:
    """The one estimator, saved for every server: an MLmodel folder (mlflow, capstan) and a joblib file (the rest);
    the row every request sends and the prediction each server must answer for it."""

    mlmodel_dir: Path
    joblib_path: Path
    row: list[float]
    expected: float
    floor_ms: dict[int, float]


def build_model(work: Path) -> ModelFiles:
    """Fit the forest, save it both ways and time ``predict`` in process for 1 and 64 rows."""
    import logging

    import joblib
    import mlflow.sklearn
    from sklearn.datasets import make_classification
    from sklearn.ensemble import RandomForestClassifier

    x, y = make_classification(n_samples=2000, n_features=N_FEATURES, n_informative=10, random_state=SEED)
    model = RandomForestClassifier(n_estimators=N_TREES, random_state=SEED).fit(x, y)
    joblib_path = work / "model.joblib"
    joblib.dump(model, joblib_path)
    mlmodel_dir = work / MODEL_NAME
    logging.getLogger("mlflow").setLevel(logging.ERROR)  # its warning about pickle: the benchmark made this file
    mlflow.sklearn.save_model(model, str(mlmodel_dir), serialization_format="pickle")
    row = [float(v) for v in x[0]]
    floor = {n: _predict_ms(model, x[:n]) for n in (1, 64)}
    return ModelFiles(mlmodel_dir, joblib_path, row, float(model.predict(x[:1])[0]), floor)


def _predict_ms(model: Any, rows: Any, repeats: int = 50) -> float:
    """The best wall time of ``repeats`` calls of ``model.predict(rows)`` in ms, after a warm-up call: a floor, so
    the least disturbed call is the one that counts."""
    model.predict(rows)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        model.predict(rows)
        times.append(time.perf_counter() - t)
    return min(times) * 1000


_LOAD_ONLY = """
import sys
import joblib, psutil
model = joblib.load(sys.argv[1])
print(psutil.Process().memory_info().rss / 2**20)
"""


def load_floor(files: ModelFiles) -> dict[str, float]:
    """What loading the model costs any server: a fresh interpreter that only unpickles it (which imports
    scikit-learn and what it imports), timed from process start to exit, and its RSS in MiB once loaded."""
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", _LOAD_ONLY, str(files.joblib_path)], capture_output=True, text=True,
                         check=True)
    return {"seconds": time.perf_counter() - t, "rss_mib": float(out.stdout.strip())}


# ---------------------------------------------------------------------------------------------- servers


@dataclass
class Server:
    """How to start one server and talk to it: its command, ready URL path, inference path and body, and how to
    read the first prediction out of its JSON answer."""

    name: str
    cmd: list[str]
    port: int
    ready_path: str
    infer_path: str
    body: dict[str, Any]
    first_prediction: Callable[[Any], float]
    env: dict[str, str] = field(default_factory=dict)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


class Skip(Exception):  # a reason to leave a peer out, not an error of the benchmark
    """A server that cannot take part in this run, with the reason to print."""


def _oip_body(row: list[float]) -> dict[str, Any]:
    return {"inputs": [{"name": "input-0", "shape": [1, len(row)], "datatype": "FP64", "data": row}]}


def _oip_first(doc: Any) -> float:
    return float(doc["outputs"][0]["data"][0])


def _predictions_first(doc: Any) -> float:
    return float(doc["predictions"][0])


def _capstan_server(name: str, files: ModelFiles, home: Path, opts: argparse.Namespace) -> Server:
    port = free_port()
    cmd = [str(Path(sys.executable).with_name("capstan")), "serve", str(files.mlmodel_dir), "--name", MODEL_NAME,
           "--port", str(port)]
    if "batch" in name:
        cmd += ["--max-batch-size", str(opts.batch_size), "--max-batch-delay-ms", str(opts.batch_delay_ms)]
    if name.endswith("-w2"):
        if "--workers" not in _capstan_serve_help():
            raise Skip("capstan serve has no --workers option yet")
        cmd += ["--workers", str(opts.capstan_workers)]
    env = {"CAPSTAN_HOME": str(home)}
    if name.endswith("-mlflow"):
        return Server(name, cmd, port, "/ping", "/invocations", {"inputs": [files.row]}, _predictions_first, env)
    return Server(name, cmd, port, f"/v2/models/{MODEL_NAME}/ready", f"/v2/models/{MODEL_NAME}/infer",
                  _oip_body(files.row),
                  _oip_first, env)


def _capstan_serve_help() -> str:
    capstan = str(Path(sys.executable).with_name("capstan"))
    return subprocess.run([capstan, "serve", "--help"], capture_output=True, text=True, check=False).stdout


def _mlflow_server(files: ModelFiles) -> Server:
    port = free_port()
    mlflow = str(Path(sys.executable).with_name("mlflow"))
    cmd = [mlflow, "models", "serve", "-m", str(files.mlmodel_dir), "-p", str(port), "--env-manager", "local"]
    return Server("mlflow", cmd, port, "/ping", "/invocations", {"inputs": [files.row]}, _predictions_first)


def _fastapi_server(files: ModelFiles) -> Server:
    port = free_port()
    cmd = [sys.executable, "-m", "uvicorn", "fastapi_app:app", "--app-dir", str(PEERS), "--port", str(port),
           "--log-level", "warning", "--no-access-log"]
    return Server("fastapi", cmd, port, "/health", "/predict", {"inputs": [files.row]}, _predictions_first,
                  {"BENCH_MODEL_PATH": str(files.joblib_path)})


def _mlserver_server(files: ModelFiles, work: Path, opts: argparse.Namespace) -> Server:
    python = peer_python("mlserver", opts)
    port, grpc_port, metrics_port = free_port(), free_port(), free_port()
    folder = work / "mlserver"
    (folder / MODEL_NAME).mkdir(parents=True, exist_ok=True)
    shutil.copy(files.joblib_path, folder / MODEL_NAME / "model.joblib")
    (folder / "settings.json").write_text(json.dumps(
        {"http_port": port, "grpc_port": grpc_port, "metrics_port": metrics_port, "host": "127.0.0.1"}))
    (folder / MODEL_NAME / "model-settings.json").write_text(json.dumps(
        {"name": MODEL_NAME, "implementation": "mlserver_sklearn.SKLearnModel",
         "parameters": {"uri": "./model.joblib"}}))
    cmd = [str(python.with_name("mlserver")), "start", str(folder)]
    return Server("mlserver", cmd, port, f"/v2/models/{MODEL_NAME}/ready", f"/v2/models/{MODEL_NAME}/infer",
                  _oip_body(files.row), _oip_first)


def _bentoml_server(files: ModelFiles, opts: argparse.Namespace) -> Server:
    python = peer_python("bentoml", opts)
    port = free_port()
    cmd = [str(python.with_name("bentoml")), "serve", "bentoml_service:RandomForest", "--working-dir", str(PEERS),
           "--port", str(port), "--host", "127.0.0.1"]
    return Server("bentoml", cmd, port, "/readyz", "/predict", {"rows": [files.row]},
                  lambda doc: float(doc[0]), {"BENCH_MODEL_PATH": str(files.joblib_path),
                                              "BENTOML_DO_NOT_TRACK": "true"})


def make_server(name: str, files: ModelFiles, work: Path, opts: argparse.Namespace) -> Server:
    """The `Server` called ``name`` (one of `ALL_SERVERS`); raises `Skip` when it cannot run here."""
    if name.startswith("capstan"):
        return _capstan_server(name, files, work / "capstan-home", opts)
    if name == "mlflow":
        return _mlflow_server(files)
    if name == "fastapi":
        return _fastapi_server(files)
    if name == "mlserver":
        return _mlserver_server(files, work, opts)
    if name == "bentoml":
        return _bentoml_server(files, opts)
    raise Skip(f"unknown server {name!r} (known: {', '.join(ALL_SERVERS)})")


# ---------------------------------------------------------------------------------------------- peer venvs


def _peer_packages(peer: str) -> list[str]:
    import sklearn

    same_sklearn = f"scikit-learn=={sklearn.__version__}"  # the joblib file must load as the same estimator
    if peer == "mlserver":
        # uvloop 0.22 made asyncio.get_event_loop() raise without a running loop, which kills MLServer 1.7's
        # inference worker processes at start ("There is no current event loop").
        return [f"mlserver=={MLSERVER_VERSION}", f"mlserver-sklearn=={MLSERVER_VERSION}", "uvloop<0.22", same_sklearn]
    return [f"bentoml=={BENTOML_VERSION}", same_sklearn]


def peer_python(peer: str, opts: argparse.Namespace) -> Path:
    """The Python of ``peer``'s own virtualenv under ``--venv-dir``, created and installed on first use (unless
    ``--no-install``). A marker file records the package list, so a changed list reinstalls."""
    venv = Path(opts.venv_dir).expanduser() / peer
    python = venv / "bin" / "python"
    marker = venv / ".capstan-bench-packages"
    packages = _peer_packages(peer)
    if python.exists() and marker.exists() and marker.read_text() == " ".join(packages):
        return python
    if opts.no_install:
        raise Skip(f"no virtualenv for {peer} at {venv} (run with --setup)")
    print(f"  installing {peer} into {venv} ({' '.join(packages)}); this takes a few minutes ...", flush=True)
    log = venv.with_suffix(".install.log")
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as fh:
        steps = [[sys.executable, "-m", "venv", "--clear", str(venv)],
                 [str(python), "-m", "pip", "install", "--disable-pip-version-check", *packages]]
        for step in steps:
            if subprocess.run(step, stdout=fh, stderr=subprocess.STDOUT, check=False).returncode != 0:
                raise Skip(f"installing {peer} failed: see {log}")
    marker.write_text(" ".join(packages))
    return python


# ---------------------------------------------------------------------------------------------- measuring


def tree_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process and its live descendants."""
    total = 0.0
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return total
    for proc in procs:
        try:
            times = proc.cpu_times()
            total += times.user + times.system
        except psutil.Error:
            continue
    return total


def run_wrk(server: Server, body_file: Path, concurrency: int, seconds: float, threads: int) -> dict[str, float]:
    """One wrk run against ``server``; its figures (requests, rps, latency percentiles in ms, errors)."""
    cmd = [shutil.which("wrk") or "wrk", f"-t{min(threads, concurrency)}", f"-c{concurrency}",
           f"-d{max(1, round(seconds))}s", "--timeout", "10s", "-s", str(WRK_SCRIPT),
           server.url(server.infer_path), "--", str(body_file)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=seconds + 60)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stderr.strip() or out.stdout.strip()}")
    raw = json.loads(lines[-1])
    errors = sum(raw[k] for k in ("connect_errors", "read_errors", "write_errors", "status_errors", "timeouts"))
    return {"requests": raw["requests"], "rps": raw["requests"] / (raw["duration_us"] / 1e6),
            "p50_ms": raw["p50_us"] / 1000, "p90_ms": raw["p90_us"] / 1000, "p99_ms": raw["p99_us"] / 1000,
            "max_ms": raw["max_us"] / 1000, "errors": errors, "status_errors": raw["status_errors"]}


def check_answer(server: Server, expected: float) -> None:
    """One request by hand: the server must answer 200 with the in-process prediction."""
    try:
        resp = httpx.post(server.url(server.infer_path), json=server.body, timeout=30)
        if resp.status_code != 200:
            raise Skip(f"{server.name} answered {resp.status_code}: {resp.text[:200]}")
        got = server.first_prediction(resp.json())
    except (httpx.HTTPError, ValueError, LookupError, TypeError) as exc:
        raise Skip(f"{server.name} gave no prediction: {exc!r}") from exc
    if got != expected:
        raise Skip(f"{server.name} predicted {got}, expected {expected}")


def measure(server: Server, files: ModelFiles, work: Path, opts: argparse.Namespace) -> dict[str, Any]:
    """Start ``server``, time it to ready, check one answer, warm it up, then load it at each concurrency."""
    body_file = work / f"{server.name}.body.json"
    body_file.write_text(json.dumps(server.body))
    log = work / f"{server.name}.log"
    t0 = time.perf_counter()
    proc = start(server.cmd, server.env, log)
    try:
        try:
            wait_healthy(server.url(server.ready_path), proc, timeout=opts.start_timeout)
        except (RuntimeError, TimeoutError) as exc:
            raise Skip(f"{server.name} did not become ready ({exc}); log: {log}") from exc
        result: dict[str, Any] = {"cold_start_s": time.perf_counter() - t0}
        result["rss_idle_mib"], result["pss_idle_mib"] = tree_memory_mb(proc.pid)
        check_answer(server, files.expected)
        if opts.warmup > 0:
            run_wrk(server, body_file, max(opts.concurrency), opts.warmup, opts.wrk_threads)
        levels: dict[int, dict[str, float]] = {}
        for conc in opts.concurrency:
            cpu0 = tree_cpu_s(proc.pid)
            figures = run_wrk(server, body_file, conc, opts.duration, opts.wrk_threads)
            figures["cpu_ms_per_request"] = (tree_cpu_s(proc.pid) - cpu0) * 1000 / max(figures["requests"], 1)
            levels[conc] = figures
            print(f"  {server.name:<22} c={conc:<3} {figures['rps']:8.0f} req/s  p50 {figures['p50_ms']:7.2f} ms  "
                  f"p99 {figures['p99_ms']:7.2f} ms  cpu {figures['cpu_ms_per_request']:.3f} ms/req  "
                  f"errors {figures['errors']}", flush=True)
        result["levels"] = levels
        result["rss_loaded_mib"], result["pss_loaded_mib"] = tree_memory_mb(proc.pid)
        result["processes"] = 1 + len(psutil.Process(proc.pid).children(recursive=True))
        return result
    finally:
        stop(proc)



def first_start(files: ModelFiles, work: Path, opts: argparse.Namespace) -> dict[str, float]:
    """``capstan serve`` started once on a model file it has never seen: it unpickles the forest (importing
    scikit-learn) and compiles it into the serving cache. Every later start of that file (the measured runs below,
    a replica restart, a scale from zero) loads the compiled arrays instead."""
    server = make_server("capstan", files, work, opts)
    t0 = time.perf_counter()
    proc = start(server.cmd, server.env, work / "capstan-first-start.log")
    try:
        wait_healthy(server.url(server.ready_path), proc, timeout=opts.start_timeout)
        ready = time.perf_counter() - t0
        check_answer(server, files.expected)
        rss, _pss = tree_memory_mb(proc.pid)
        return {"cold_start_s": ready, "rss_mib": rss}
    finally:
        stop(proc)


# ---------------------------------------------------------------------------------------------- report


def _at(results: dict[str, Any], name: str, conc: int) -> dict[str, float] | None:
    entry = results.get(name)
    return entry["levels"].get(conc) if entry else None


def _verdict(met: bool | None) -> str:
    return "n/a" if met is None else ("met" if met else "NOT met")


def goals(results: dict[str, Any], lo: int, hi: int) -> list[list[str]]:
    """The issue's goals, each as [goal, Capstan variant judged, measured, verdict]. The throughput goals judge the
    fastest Capstan variant at ``hi`` (the fastest batching one for the batching goals); latency at ``lo`` judges
    every single-process variant and reports the worst."""
    capstan = [n for n in results if n.startswith("capstan")]
    batching = [n for n in capstan if "batch" in n]
    rows: list[list[str]] = []

    def fastest(names: list[str]) -> str | None:
        present = [n for n in names if _at(results, n, hi)]
        return max(present, key=lambda n: _at(results, n, hi)["rps"]) if present else None  # type: ignore[index]  # present filters out the None ones

    best, best_batch = fastest(capstan), fastest(batching)
    mlflow, fastapi = _at(results, "mlflow", hi), _at(results, "fastapi", hi)
    if best and mlflow:
        ours = _at(results, best, hi)
        assert ours is not None
        ratio = ours["rps"] / mlflow["rps"]
        rows.append([f"c={hi}: >= 3x mlflow throughput", best, f"{ratio:.2f}x", _verdict(ratio >= 3)])
        p99 = ours["p99_ms"] / mlflow["p99_ms"]
        rows.append([f"c={hi}: <= 1/3 mlflow p99", best, f"{p99:.2f}x ({ours['p99_ms']:.1f} vs "
                     f"{mlflow['p99_ms']:.1f} ms)", _verdict(p99 <= 1 / 3)])
    else:
        rows.append([f"c={hi}: >= 3x mlflow throughput, <= 1/3 its p99", best or "-", "mlflow or capstan missing",
                     _verdict(None)])
    if best_batch and fastapi:
        ours = _at(results, best_batch, hi)
        assert ours is not None
        ratio = ours["rps"] / fastapi["rps"]
        rows.append([f"c={hi}: batching >= 1.5x fastapi throughput", best_batch, f"{ratio:.2f}x",
                     _verdict(ratio >= 1.5)])
    fastapi_lo = _at(results, "fastapi", lo)
    singles = [n for n in capstan if not n.endswith("-w2") and _at(results, n, lo)]
    if fastapi_lo and singles:
        worst = max(singles, key=lambda n: _at(results, n, lo)["p50_ms"])  # type: ignore[index]  # singles are present
        diff = _at(results, worst, lo)["p50_ms"] - fastapi_lo["p50_ms"]  # type: ignore[index]  # as above
        rows.append([f"c={lo}: p50 within 1 ms of fastapi", worst, f"{diff:+.2f} ms", _verdict(diff <= 1.0)])
    if best_batch:
        cpu = _at(results, best_batch, hi)["cpu_ms_per_request"]  # type: ignore[index]  # fastest() found it
        rows.append([f"c={hi}: server CPU <= 0.15 ms/request, batching", best_batch, f"{cpu:.3f} ms",
                     _verdict(cpu <= 0.15)])
    if capstan:  # every variant starts after `first_start` compiled the model file: a replica's usual start
        slowest = max(capstan, key=lambda n: results[n]["cold_start_s"])
        cold = results[slowest]["cold_start_s"]
        rows.append(["cold start to ready <= 1.5 s (model compiled)", slowest, f"{cold:.2f} s",
                     _verdict(cold <= 1.5)])
    if singles:
        fattest = max(singles, key=lambda n: results[n]["rss_loaded_mib"])
        rss = results[fattest]["rss_loaded_mib"]
        rows.append(["RSS per replica <= 150 MiB (after load)", fattest, f"{rss:.0f} MiB", _verdict(rss <= 150)])
    return rows


def report(files: ModelFiles, results: dict[str, Any], skipped: dict[str, str], loading: dict[str, float],
           opts: argparse.Namespace) -> None:
    """Print the figures, the ratios against the peers and the goals."""
    lo, hi = min(opts.concurrency), max(opts.concurrency)
    print(f"\ncompute floor (in-process predict): 1 row {files.floor_ms[1]:.2f} ms, 64 rows "
          f"{files.floor_ms[64]:.2f} ms ({files.floor_ms[64] / 64:.3f} ms/row)")
    print(f"load floor (a fresh python that only unpickles the model): {loading['seconds']:.2f} s, "
          f"{loading['rss_mib']:.0f} MiB RSS")
    rows = [[name, str(c), f"{f['rps']:.0f}", f"{f['p50_ms']:.2f}", f"{f['p90_ms']:.2f}", f"{f['p99_ms']:.2f}",
             f"{f['cpu_ms_per_request']:.3f}", str(int(f["errors"]))]
            for name, res in results.items() for c, f in res["levels"].items()]
    print("\n" + table(rows, ["server", "c", "req/s", "p50 ms", "p90 ms", "p99 ms", "CPU ms/req", "errors"]))
    rows = [[name, f"{r['cold_start_s']:.2f}", f"{r['rss_idle_mib']:.0f}", f"{r['rss_loaded_mib']:.0f}",
             f"{r['pss_loaded_mib']:.0f}", str(r["processes"])] for name, r in results.items()]
    print("\n" + table(rows, ["server", "cold start s", "RSS idle MiB", "RSS loaded MiB", "PSS loaded MiB",
                              "processes"]))
    peers = [n for n in results if not n.startswith("capstan")]
    ratio_rows = []
    for name in (n for n in results if n.startswith("capstan")):
        ours = results[name]["levels"][hi]
        for peer in peers:
            theirs = results[peer]["levels"][hi]
            ratio_rows.append([name, peer, f"{ours['rps'] / theirs['rps']:.2f}x",
                               f"{ours['p99_ms'] / theirs['p99_ms']:.2f}x",
                               f"{ours['cpu_ms_per_request'] / theirs['cpu_ms_per_request']:.2f}x"])
    if ratio_rows:
        print(f"\nratios at c={hi} (Capstan / peer)\n" + table(ratio_rows, ["capstan", "peer", "throughput", "p99",
                                                                            "CPU/request"]))
    print("\ngoals (issue 10)\n" + table(goals(results, lo, hi), ["goal", "judged on", "measured", "verdict"]))
    for name, why in skipped.items():
        print(f"skipped {name}: {why}")
    load = os.getloadavg()
    print(f"\nload average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} CPUs")


# ---------------------------------------------------------------------------------------------- main


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _server_list(text: str) -> list[str]:
    names = [v.strip() for v in text.split(",") if v.strip()]
    unknown = sorted(set(names) - set(ALL_SERVERS))
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown servers {unknown}; known: {', '.join(ALL_SERVERS)}")
    return names


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per concurrency level (default 20)")
    parser.add_argument("--concurrency", type=_int_list, default=[1, 16, 64], help="levels, e.g. 1,16,64")
    parser.add_argument("--servers", type=_server_list, default=list(ALL_SERVERS),
                        help=f"comma-separated subset of {','.join(ALL_SERVERS)}")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of load before measuring (default 2)")
    parser.add_argument("--wrk-threads", type=int, default=1, help="wrk threads (default 1: the CPUs are shared)")
    parser.add_argument("--batch-size", type=int, default=32, help="capstan --max-batch-size (default 32)")
    parser.add_argument("--batch-delay-ms", type=float, default=2.0, help="capstan --max-batch-delay-ms (default 2)")
    parser.add_argument("--capstan-workers", type=int, default=2, help="--workers of capstan-batch-w2 (default 2)")
    parser.add_argument("--start-timeout", type=float, default=180.0, help="seconds a server may take to be ready")
    parser.add_argument("--venv-dir", default="~/.cache/capstan-bench/venvs",
                        help="where the MLServer and BentoML virtualenvs live")
    parser.add_argument("--no-install", action="store_true", help="skip a peer whose virtualenv is missing")
    parser.add_argument("--setup", action="store_true", help="only create the peer virtualenvs, then exit")
    parser.add_argument("--json", metavar="PATH", help="also write the raw figures to PATH")
    return parser.parse_args(argv)


def setup_venvs(opts: argparse.Namespace) -> int:
    code = 0
    for peer in ("mlserver", "bentoml"):
        try:
            print(f"{peer}: {peer_python(peer, opts)}")
        except Skip as why:
            print(f"{peer}: {why}")
            code = 1
    return code


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    if opts.setup:
        return setup_venvs(opts)
    if shutil.which("wrk") is None:
        print("error: wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 1
    work = Path(tempfile.mkdtemp(prefix="capstan-bench-serving-"))
    try:
        files = build_model(work)
        print(f"model: RandomForestClassifier, {N_TREES} trees, {N_FEATURES} features; "
              f"{opts.duration:g} s per level at c={','.join(map(str, opts.concurrency))}", flush=True)
        loading = load_floor(files)
        results: dict[str, Any] = {}
        skipped: dict[str, str] = {}
        first: dict[str, float] | None = None
        if any(name.startswith("capstan") for name in opts.servers):
            first = first_start(files, work, opts)
            print(f"  capstan first start (compiles the model file once): ready in {first['cold_start_s']:.2f} s, "
                  f"{first['rss_mib']:.0f} MiB RSS", flush=True)
        for name in opts.servers:
            try:
                results[name] = measure(make_server(name, files, work, opts), files, work, opts)
            except (Skip, RuntimeError, subprocess.TimeoutExpired) as why:  # wrk failing is a RuntimeError
                skipped[name] = str(why)
                print(f"  {name:<22} skipped: {why}", flush=True)
        report(files, results, skipped, loading, opts)
        if opts.json:
            document = {"floor_ms": files.floor_ms, "load_floor": loading, "servers": results, "skipped": skipped,
                        "capstan_first_start": first,
                        "options": {k: v for k, v in vars(opts).items() if k != "json"},
                        "loadavg": os.getloadavg(), "cpus": os.cpu_count()}
            Path(opts.json).write_text(json.dumps(document, indent=2))
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
