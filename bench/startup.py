"""Server start-up: ``capstan server`` against ``mlflow server``, each started N times on a fresh home.

Each start is a new process on a free loopback port with an empty home (so the database is created: migrations
count), timed from ``Popen`` to the first ``GET /health`` that answers 200, and on to the first API call that
answers 200 (``GET /api/2.0/mlflow/experiments/search?max_results=1``, which both servers serve). Polling is a raw
HTTP/1.1 request on a new socket every 5 ms, so the poller costs the server next to nothing on a small machine.
The two servers alternate start by start, so a change of load hits both; the load average is printed before and
after. The goal (issue 15): ``/health`` within 1.0 s on an idle machine.

    python -P bench/startup.py [--runs 5] [--mlflow-runs 3] [--compare-src /path/to/other/src] [--json out.json]

``--compare-src`` adds a third server: ``capstan server`` run from another source tree (``PYTHONPATH``), e.g. a
checkout of the previous commit, for a before/after ratio taken in the same run. ``-P`` keeps ``bench/`` (whose
``queue.py`` would shadow the standard library) off ``sys.path``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

API_PATH = "/api/2.0/mlflow/experiments/search?max_results=1"
POLL_S = 0.005


@dataclass(frozen=True)
class Server:
    """One kind of server to start: its name, command line (``{port}`` and ``{home}`` filled in) and env."""

    name: str
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _status(port: int, path: str) -> int | None:
    """The status code of ``GET path`` on a new connection, or None when nothing answers yet."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode())
            head = sock.recv(64)
    except OSError:
        return None
    parts = head.split(b" ", 2)
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None


def _wait(port: int, path: str, proc: subprocess.Popen[bytes], started: float, timeout: float) -> float:
    while time.perf_counter() - started < timeout:
        if _status(port, path) == 200:
            return time.perf_counter() - started
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with status {proc.returncode}")
        time.sleep(POLL_S)
    raise TimeoutError(f"{path} did not answer 200 within {timeout:.0f} s")


def start_once(server: Server, home: Path, timeout: float = 180.0) -> tuple[float, float]:
    """Start ``server`` on a fresh ``home``; seconds until /health answers 200 and until the API call does."""
    home.mkdir(parents=True)
    port = _free_port()
    argv = [a.format(port=port, home=home) for a in server.argv]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CAPSTAN_", "MLFLOW_"))}
    env.update({k: v.format(home=home) for k, v in server.env})
    with open(home / "server.log", "wb") as log:
        started = time.perf_counter()
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            health = _wait(port, "/health", proc, started, timeout)
            api = _wait(port, API_PATH, proc, started, timeout)
        finally:
            _stop(proc)
    return health, api


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server's process group (mlflow server forks workers), SIGKILL after 20 s."""
    import signal

    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        proc.wait()


def servers(compare_src: str | None) -> list[Server]:
    py = sys.executable
    capstan = ("-m", "capstan", "server", "--host", "127.0.0.1", "--port", "{port}")
    out = [Server("capstan server", (py, *capstan), (("CAPSTAN_HOME", "{home}"),))]
    if compare_src:
        out.append(Server(f"capstan server ({compare_src})", (py, *capstan),
                          (("CAPSTAN_HOME", "{home}"), ("PYTHONPATH", compare_src))))
    out.append(Server("mlflow server", (py, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", "{port}",
                                        "--backend-store-uri", "sqlite:///{home}/mlflow.db",
                                        "--artifacts-destination", "{home}/mlartifacts")))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="starts of each capstan server (default 5)")
    parser.add_argument("--mlflow-runs", type=int, default=None, help="starts of mlflow server (default: --runs)")
    parser.add_argument("--compare-src", default=None, help="also start capstan from this source tree")
    parser.add_argument("--no-mlflow", action="store_true", help="leave mlflow server out")
    parser.add_argument("--json", dest="json_path", default=None)
    args = parser.parse_args()
    chosen = [s for s in servers(args.compare_src) if not (args.no_mlflow and s.name == "mlflow server")]
    runs = {s.name: (args.mlflow_runs if s.name == "mlflow server" and args.mlflow_runs is not None else args.runs)
            for s in chosen}
    tmp = Path(tempfile.mkdtemp(prefix="capstan-startup-"))
    load_before = os.getloadavg()
    print(f"machine: {os.cpu_count()} CPUs, load average {load_before[0]:.2f} {load_before[1]:.2f} at start",
          flush=True)
    times: dict[str, list[tuple[float, float]]] = {s.name: [] for s in chosen}
    try:
        for i in range(max(runs.values())):
            for n, server in enumerate(chosen):  # alternate, so a change of load hits every server alike
                if i < runs[server.name]:
                    got = start_once(server, tmp / f"{n}-{i}")
                    times[server.name].append(got)
                    print(f"  {server.name}: /health {got[0]:.3f} s, API {got[1]:.3f} s", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    load_after = os.getloadavg()
    report = _report(times)
    print(f"load average {load_after[0]:.2f} {load_after[1]:.2f} at the end")
    if args.json_path:
        Path(args.json_path).write_text(json.dumps({"load_before": load_before, "load_after": load_after,
                                                    "times": times, "report": report}, indent=2))
    return 0


def _report(times: dict[str, list[tuple[float, float]]]) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    base = times.get("capstan server")
    base_health = statistics.median(h for h, _ in base) if base else None
    print(f"\n{'server':48s} {'starts':>6s} {'/health median':>15s} {'min-max':>13s} {'API median':>11s} "
          f"{'/health vs capstan':>19s}")
    for name, got in times.items():
        if not got:
            continue
        health = statistics.median(h for h, _ in got)
        api = statistics.median(a for _, a in got)
        ratio = health / base_health if base_health else float("nan")
        low, high = min(h for h, _ in got), max(h for h, _ in got)
        print(f"{name:48s} {len(got):6d} {health:13.3f} s {low:5.2f}-{high:5.2f} s {api:9.3f} s {ratio:18.1f}x")
        rows.append({"server": name, "starts": len(got), "health_median_s": health, "api_median_s": api,
                     "health_min_s": low, "health_max_s": high, "health_ratio_vs_capstan": ratio})
    return rows


if __name__ == "__main__":
    sys.exit(main())
