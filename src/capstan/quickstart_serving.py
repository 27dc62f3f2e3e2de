"""The serving half of ``capstan quickstart``: deploy the champion, send a burst, roll out a canary, compare versions.

With local stores it starts ``capstan server`` on a free loopback port for the length of the demo (its deployment
controller runs the replicas); with ``CAPSTAN_URL`` it uses that server. The deployment stays stored afterwards, so
the next ``capstan server`` brings it back.
"""

from __future__ import annotations

import asyncio
import collections
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx

from capstan.errors import InvalidState
from capstan.serving.replicas import LISTENING
from capstan.settings import Settings

DEPLOYMENT = "quickstart"
CANARY_PERCENT = 20
FIRST_BURST = 200
CANARY_BURST = 500
CONCURRENCY = 8
READY_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class VersionTraffic:
    """What one model version answered during a burst."""

    version: str
    role: str
    requests: int
    errors: int
    p50_ms: float
    p95_ms: float


@dataclass(frozen=True)
class ServingDemo:
    """The outcome of the serving demo: where it ran and the per-version traffic of each burst."""

    server: str
    first: tuple[VersionTraffic, ...]
    canary: tuple[VersionTraffic, ...]


def _server_command() -> list[str]:
    return [sys.executable, "-c", "import sys; from capstan.cli.main import main; sys.exit(main())"]


@contextmanager
def local_server(settings: Settings) -> Iterator[str]:
    """``capstan server`` on a free loopback port over ``settings``' stores, stopped (with its replicas) on exit."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAPSTAN_")}
    env.update(settings.store_environment())
    process = subprocess.Popen([*_server_command(), "server", "--host", "127.0.0.1", "--port", "0"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        url = _read_url(process)
        _wait_healthy(url, process)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _read_url(process: subprocess.Popen[str]) -> str:
    """The server's address from its start-up line; its later output is drained so it never blocks on the pipe."""
    stream = process.stdout
    assert stream is not None
    seen: list[str] = []
    for line in stream:
        seen.append(line.rstrip())
        found = LISTENING.search(line)
        if found:
            threading.Thread(target=collections.deque, args=(stream, 0), daemon=True).start()
            return found.group(1)
    raise InvalidState("capstan server did not start: " + " | ".join(seen[-5:]))


def _wait_healthy(url: str, process: subprocess.Popen[str]) -> None:
    """Wait until the server answers ``/health`` (it prints its address before its app has started)."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise InvalidState(f"capstan server at {url} did not become healthy")


class _Api:
    """The few calls the demo makes to ``/api/v1/deployments``."""

    def __init__(self, base: str, headers: dict[str, str]) -> None:
        self.base = base.rstrip("/")
        self.headers = headers
        self.http = httpx.Client(base_url=self.base, headers=headers, timeout=60)

    def apply(self, spec: dict[str, Any]) -> None:
        response = self.http.post("/api/v1/deployments", json=spec)
        if response.status_code >= 300:
            raise InvalidState(f"deploying {spec['name']!r} failed: {response.status_code} {response.text[:300]}")

    def wait_ready(self, name: str, roles: Sequence[str], clock: Callable[[], float]) -> None:
        deadline = clock() + READY_TIMEOUT_S
        while clock() < deadline:
            response = self.http.get(f"/api/v1/deployments/{name}")
            if response.status_code == 200 and _roles_ready(response.json(), roles):
                return
            time.sleep(0.2)
        raise InvalidState(f"deployment {name!r} was not ready after {READY_TIMEOUT_S:.0f} s: "
                           f"see `capstan deployments status {name}`")

    def close(self) -> None:
        self.http.close()


def _roles_ready(status: dict[str, Any], roles: Sequence[str]) -> bool:
    routes = {r.get("role"): r for r in status.get("traffic", []) if isinstance(r, dict)}
    return all(int(routes.get(role, {}).get("ready_replicas", 0)) > 0 for role in roles)


async def _burst(base: str, headers: dict[str, str], rows: Sequence[Sequence[float]], count: int,
                 clock: Callable[[], float]) -> list[tuple[str, int, float]]:
    """``count`` single-row requests, ``CONCURRENCY`` at a time: (version that answered, status, seconds) each."""
    url = f"{base.rstrip('/')}/deployments/{DEPLOYMENT}/invocations"
    results: list[tuple[str, int, float]] = []
    gate = asyncio.Semaphore(CONCURRENCY)
    async with httpx.AsyncClient(headers=headers, timeout=60) as http:
        async def one(i: int) -> None:
            body = {"inputs": [list(map(float, rows[i % len(rows)]))]}
            async with gate:
                started = clock()
                response = await http.post(url, json=body)
                results.append((response.headers.get("x-capstan-version", "?"), response.status_code,
                                clock() - started))

        await asyncio.gather(*(one(i) for i in range(count)))
    return results


def summarize(results: Sequence[tuple[str, int, float]], roles: dict[str, str]) -> tuple[VersionTraffic, ...]:
    """Per-version request counts, errors and latency percentiles of a burst. Pure."""
    import numpy as np

    out = []
    for version in sorted({v for v, _s, _t in results}):
        mine = [(s, t) for v, s, t in results if v == version]
        times = np.array([t for _s, t in mine]) * 1000
        out.append(VersionTraffic(version, roles.get(version, "?"), len(mine), sum(s >= 400 for s, _t in mine),
                                  float(np.percentile(times, 50)), float(np.percentile(times, 95))))
    return tuple(out)


def run_serving_demo(settings: Settings, model_name: str, champion: str, challenger: str,
                     rows: Sequence[Sequence[float]], *, step: Callable[[str], None]) -> ServingDemo:
    """Deploy ``champion`` (a version number of ``model_name``), burst, add ``challenger`` as a 20 % canary, burst.

    ``step`` is told what happens next (the progress bar's description).
    """
    clock = time.perf_counter
    headers = {"Authorization": f"Bearer {settings.token}"} if settings.token else {}
    with _server_for(settings) as base:
        api = _Api(base, headers)
        try:
            roles = {champion: "primary"}
            step(f"deploying models:/{model_name}/{champion} (a replica starts)")
            api.apply({"name": DEPLOYMENT, "model": f"models:/{model_name}/{champion}", "replicas": 1})
            api.wait_ready(DEPLOYMENT, ["primary"], clock)
            step(f"sending {FIRST_BURST} requests")
            first = summarize(asyncio.run(_burst(base, headers, rows, FIRST_BURST, clock)), roles)
            step(f"canary: version {challenger} at {CANARY_PERCENT}%")
            api.apply({"name": DEPLOYMENT, "model": f"models:/{model_name}/{champion}", "replicas": 1,
                       "canary": {"model": f"models:/{model_name}/{challenger}", "traffic": CANARY_PERCENT}})
            api.wait_ready(DEPLOYMENT, ["primary", "canary"], clock)
            roles[challenger] = "canary"
            step(f"sending {CANARY_BURST} requests")
            canary = summarize(asyncio.run(_burst(base, headers, rows, CANARY_BURST, clock)), roles)
        finally:
            api.close()
    return ServingDemo(settings.url or "a local capstan server (stopped again)", first, canary)


@contextmanager
def _server_for(settings: Settings) -> Iterator[str]:
    if settings.url:
        yield settings.url
        return
    with local_server(settings) as url:
        yield url
