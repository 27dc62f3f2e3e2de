"""A real ``capstan server`` on a loopback port, shared by the MLflow-compatibility tests, and the mlflow client.

The server is the ``capstan server`` subprocess of `helpers.server` with its own ``CAPSTAN_HOME`` (single-user
mode: loopback, no users); the ``mlflow`` client (imported once, in the test process, because importing it is
slow) talks to it through ``MLFLOW_TRACKING_URI``. Set ``CAPSTAN_TEST_MLFLOW_URL`` to run the suite against a
server that is already running instead.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from helpers.server import start_server

pytest.importorskip("mlflow", reason="the mlflow client is a test extra: pip install -e '.[test]'")

ARTIFACT_LIMIT = 8 * 1024 * 1024
"""The server's artifact size limit in this suite (CAPSTAN_ARTIFACT_MAX_BYTES)."""


def _wait_ready(url: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"no capstan server answers at {url}")
        time.sleep(0.1)


@pytest.fixture(scope="package")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL of a running capstan server."""
    existing = os.environ.get("CAPSTAN_TEST_MLFLOW_URL")
    if existing:
        _wait_ready(existing.rstrip("/"))
        yield existing.rstrip("/")
        return
    with start_server(tmp_path_factory.mktemp("capstan-home"),
                      env={"CAPSTAN_ARTIFACT_MAX_BYTES": str(ARTIFACT_LIMIT)}) as server:
        yield server.url


@pytest.fixture(scope="module")
def mlflow_env(server_url: str) -> Iterator[Any]:
    """The ``mlflow`` module pointed at the server, with short retries and no telemetry. Per module: under
    pytest-xdist a worker runs other packages' modules between this package's, and the mlflow module's URIs are
    process-wide state that is reset after each module."""
    settings = {
        "MLFLOW_TRACKING_URI": server_url,
        "MLFLOW_REGISTRY_URI": server_url,
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "0",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "60",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "true",
        "MLFLOW_ENABLE_ASYNC_LOGGING": "false",
    }
    saved = {name: os.environ.get(name) for name in settings}
    os.environ.update(settings)
    import mlflow

    mlflow.set_tracking_uri(server_url)
    mlflow.set_registry_uri(server_url)
    try:
        yield mlflow
    finally:
        if mlflow.active_run() is not None:
            mlflow.end_run()
        # The URIs are process-wide state of the mlflow module: reset them so later test packages that use mlflow
        # against other servers do not send registry calls here.
        mlflow.set_tracking_uri("")
        mlflow.set_registry_uri("")
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture
def client(mlflow_env: Any) -> Any:
    """An ``mlflow.MlflowClient`` for the server."""
    return mlflow_env.MlflowClient()


@pytest.fixture
def unique() -> str:
    """A short random suffix, so names never clash across tests or repeated runs."""
    return uuid.uuid4().hex[:8]
