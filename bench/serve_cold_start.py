"""Cold start of ``capstan serve``: process start to ``/v2/health/ready`` 200, and the replica's RSS then.

Issue 10's model (a RandomForestClassifier, 50 trees on 20 features, as in bench/serving.py) is logged with
``capstan.log_model`` in each serialization format into a temporary ``CAPSTAN_HOME`` and served from the registry
(``models:/rf-FORMAT/1``). Each format is started twice over: with an empty compiled-trees cache (the model file is
unpickled and compiled, the cache written), and again with the cache filled (served from
``CAPSTAN_HOME/serving-cache/<sha256>.npz`` without importing scikit-learn). The goal: ready within 1.5 s, RSS at most
150 MiB. The load average is printed: the figures mean little on a busy machine.

Run: ``python -P bench/serve_cold_start.py [--runs 3]`` (``-P``: bench/queue.py must not shadow the stdlib).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _log_models(home: Path, formats: list[str]) -> None:
    from sklearn.datasets import make_classification
    from sklearn.ensemble import RandomForestClassifier

    from capstan.sdk.client import Client
    from capstan.settings import Settings

    x, y = make_classification(n_samples=2000, n_features=20, n_informative=10, random_state=0)
    model = RandomForestClassifier(n_estimators=50, random_state=0).fit(x, y)
    with Client(Settings.for_home(home)) as client:
        run_id = client.create_run(client.create_experiment("cold-start")).info.run_id
        for fmt in formats:
            client.log_model(run_id, model, f"model-{fmt}", registered_model_name=f"rf-{fmt}",
                             serialization_format=fmt, input_example=x[:2])
        client.set_terminated(run_id)


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _one(home: Path, uri: str, env_extra: dict[str, str]) -> tuple[float, float]:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAPSTAN_")}
    env.update(CAPSTAN_HOME=str(home), **env_extra)
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "capstan", "serve", uri, "--port", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None:
                raise SystemExit(f"capstan serve {uri} exited with {proc.returncode}")
            time.sleep(0.01)
        return time.perf_counter() - start, _rss_mib(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--formats", default="pickle,skops")
    args = parser.parse_args()
    formats = args.formats.split(",")
    print(f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}, {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        _log_models(home, formats)
        cache = home / "serving-cache"
        for fmt in formats:
            uri = f"models:/rf-{fmt}/1"
            first = []
            for _ in range(args.runs):
                shutil.rmtree(cache, ignore_errors=True)
                first.append(_one(home, uri, {}))
            hits = [_one(home, uri, {}) for _ in range(args.runs)]
            for label, results in (("first start", first), ("cache hit", hits)):
                best = min(r[0] for r in results)
                rss = max(r[1] for r in results)
                print(f"{fmt:8s} {label:12s} ready in {best:.2f} s (best of {args.runs}), RSS {rss:.0f} MiB")
    print(f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
