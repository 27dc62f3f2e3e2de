"""What the LLM deployment tests share: a ``capstan server`` whose registry holds the tiny model as ``tiny``, and
reads of a deployment's status."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from capstan.sdk.client import Client
from capstan.settings import Settings
from helpers.server import ServerProcess, start_server

API = "/api/v1/deployments"


def wait_for(what: str, check: Callable[[], Any], timeout: float = 180, interval: float = 0.2) -> Any:
    """``check()``'s first truthy value, polled every ``interval`` seconds; an `AssertionError` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)


@contextmanager
def server_with_tiny_model(home: Path, tiny_model_dir: Path) -> Iterator[ServerProcess]:
    """A real server on ``home`` after ``models:/tiny/1`` was registered there with ``capstan.log_model``."""
    with Client(Settings.for_home(home)) as client:
        run = client.create_run(client.create_experiment("llm"))
        client.log_model(run.info.run_id, str(tiny_model_dir), "tiny", registered_model_name="tiny")
        client.set_terminated(run.info.run_id)
    with start_server(home, env={"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
                                 "TOKENIZERS_PARALLELISM": "false"}) as server:
        yield server


def status(server: ServerProcess, name: str) -> dict[str, Any]:
    """The deployment's status document (``GET /api/v1/deployments/NAME``)."""
    response = httpx.get(f"{server.url}{API}/{name}", timeout=30)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body
