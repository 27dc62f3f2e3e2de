"""Fixtures for the SDK tests: a real ``capstan server`` (subprocess, loopback port) and both backends."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from capstan.sdk import fluent as sdk
from capstan.sdk.backends import TrackingBackend
from capstan.sdk.backends_http import HttpBackend
from capstan.sdk.backends_local import LocalBackend
from capstan.settings import Settings
from helpers.server import ServerProcess, start_server


@pytest.fixture(scope="package")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One real server (single-user mode on loopback) shared by the SDK tests."""
    with start_server(tmp_path_factory.mktemp("sdk-server")) as srv:
        yield srv


@pytest.fixture(scope="module")
def local_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """A local home shared by a module's tests (tests use unique names, so they do not collide)."""
    return Settings.for_home(tmp_path_factory.mktemp("sdk-local"))


@pytest.fixture(scope="module", params=["local", "http"])
def backend(request: pytest.FixtureRequest, local_settings: Settings) -> Iterator[TrackingBackend]:
    """The contract's subject: `LocalBackend` on SQLite, or `HttpBackend` against the real server."""
    chosen: TrackingBackend
    if request.param == "local":
        chosen = LocalBackend(local_settings)
    else:
        srv: ServerProcess = request.getfixturevalue("server")
        chosen = HttpBackend(replace(local_settings, url=srv.url))
    yield chosen
    chosen.close()


@pytest.fixture(params=["local", "http"])
def fluent(request: pytest.FixtureRequest, local_settings: Settings, tmp_path: Path) -> Iterator[Settings]:
    """The fluent API configured for the module's local home, or for the shared server."""
    settings = replace(local_settings, metric_flush_interval_s=0.05)
    if request.param == "http":
        srv: ServerProcess = request.getfixturevalue("server")
        settings = replace(settings, url=srv.url)
    sdk.configure(settings)
    yield settings
    while sdk.active_run() is not None:
        sdk.end_run()
    sdk.configure(Settings.for_home(tmp_path / "idle"))  # closes this test's backend; nothing opens until used

