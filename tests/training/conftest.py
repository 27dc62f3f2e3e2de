"""Fixtures of the training job tests."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from training_helpers import GIB, Env, make_env

from capstan.resources.local import LocalAdmission
from capstan.resources.machine import Capacity
from capstan.sdk import fluent as sdk
from capstan.settings import Settings
from helpers.server import ServerProcess, start_server


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    """A machine of 8 CPUs, 16 GiB and 2 GPUs, in memory."""
    machine = Capacity(cpu=8, memory=16 * GIB, gpus=(("0", "test-gpu"), ("1", "test-gpu")))
    yield from make_env(tmp_path, LocalAdmission(machine))


@pytest.fixture(scope="package")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One real ``capstan server`` (single-user mode on loopback) shared by the training tests."""
    with start_server(tmp_path_factory.mktemp("training-server")) as srv:
        yield srv


@pytest.fixture(params=["local", "http"])
def fluent(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Settings]:
    """The fluent API (and so `capstan.checkpoint`) on a local home, or on the shared server."""
    settings = Settings.for_home(tmp_path / "home", metric_flush_interval_s=0.05)
    if request.param == "http":
        srv: ServerProcess = request.getfixturevalue("server")
        settings = replace(settings, url=srv.url)
    sdk.configure(settings)
    yield settings
    while sdk.active_run() is not None:
        sdk.end_run()
    sdk.configure(Settings.for_home(tmp_path / "idle"))  # closes this test's backend; nothing opens until used
