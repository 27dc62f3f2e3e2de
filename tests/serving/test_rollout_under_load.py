"""Zero failed requests while a canary is rolled out, promoted and rolled back under continuous load, end to end: a
real ``capstan server`` (controller and router) with real ``capstan serve`` replicas.

Four client threads send requests without pause through ``/deployments/NAME/...`` while the deployment goes
primary v1 -> canary v2 at 50 % -> promote (v2 primary, v1 drained and stopped) -> rollback (v1 primary again, v2
drained). Every request must be answered 200, each version must have answered during the phases where it is live, and
the predictions must be those of the version that says it answered.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from test_deploy_api import register, wait_for

from helpers.server import ServerProcess, start_server

pytestmark = pytest.mark.slow
API = "/api/v1/deployments"
ROW = {"inputs": [[6.3, 2.5, 5.0, 1.9]]}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    home: Path = tmp_path_factory.mktemp("rollout") / "home"
    register(home, "iris", versions=2)
    with start_server(home) as running:
        yield running


class Load:
    """Client threads posting to the deployment until stopped, recording (status, version) of every answer."""

    def __init__(self, url: str, threads: int = 4) -> None:
        self.url = url
        self.answers: list[tuple[int, str, str]] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        with httpx.Client(timeout=60) as http:
            while not self._stop.is_set():
                try:
                    response = http.post(self.url, json=ROW)
                except httpx.HTTPError as exc:
                    with self._lock:
                        self.failures.append(f"{type(exc).__name__}: {exc}")
                    continue
                with self._lock:
                    self.answers.append((response.status_code, response.headers.get("x-capstan-version", ""),
                                         response.text))

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)

    def mark(self) -> int:
        with self._lock:
            return len(self.answers)

    def versions_since(self, start: int) -> Counter[str]:
        with self._lock:
            return Counter(version for _status, version, _text in self.answers[start:])


def _ready(server: ServerProcess, name: str, versions: set[str]) -> bool:
    status = httpx.get(f"{server.url}{API}/{name}", timeout=30).json()
    live = {r["version"] for r in status["traffic"] if r["role"] != "shadow" and r["ready_replicas"] > 0}
    return live == versions


def _replica_versions(server: ServerProcess, name: str) -> set[str]:
    status = httpx.get(f"{server.url}{API}/{name}", timeout=30).json()
    return {r["model_version"] for r in status["replicas"]}


def test_no_request_fails_across_canary_promote_and_rollback(server: ServerProcess) -> None:
    spec = {"name": "roll", "model": "models:/iris/1", "replicas": 1}
    assert httpx.post(f"{server.url}{API}", json=spec, timeout=30).status_code == 201
    wait_for("v1 ready", lambda: _ready(server, "roll", {"1"}))

    with Load(f"{server.url}/deployments/roll/invocations") as load:
        wait_for("traffic on v1", lambda: load.versions_since(0)["1"] >= 20)

        canary = {**spec, "canary": {"model": "models:/iris/2", "traffic": 50}}
        assert httpx.post(f"{server.url}{API}", json=canary, timeout=30).status_code == 200
        wait_for("v1 and v2 ready", lambda: _ready(server, "roll", {"1", "2"}))
        start = load.mark()
        wait_for("traffic on both versions", lambda: min(load.versions_since(start)[v] for v in "12") >= 20)

        assert httpx.post(f"{server.url}{API}/roll/promote", timeout=30).status_code == 200
        wait_for("v1 drained and stopped", lambda: _replica_versions(server, "roll") == {"models:/iris/2"})
        start = load.mark()
        wait_for("traffic after promote", lambda: load.versions_since(start)["2"] >= 20)
        assert load.versions_since(start)["1"] == 0

        assert httpx.post(f"{server.url}{API}/roll/rollback", timeout=30).status_code == 200
        wait_for("v2 drained and stopped", lambda: _replica_versions(server, "roll") == {"models:/iris/1"})
        start = load.mark()
        wait_for("traffic after rollback", lambda: load.versions_since(start)["1"] >= 20)
        assert load.versions_since(start)["2"] == 0

    assert load.failures == []
    bad = [(status, text[:200]) for status, _version, text in load.answers if status != 200]
    assert bad == [], f"{len(bad)} of {len(load.answers)} requests failed: {bad[:5]}"
    assert len(load.answers) >= 100
    httpx.delete(f"{server.url}{API}/roll", timeout=30)
