"""Fixtures of the web UI tests: a real ``capstan server`` on loopback and Debian's Chromium through Playwright.

- `chromium` (one per session): ``/usr/bin/chromium`` driven by Playwright, no browser download; the tests skip
  with a reason when it is missing (``.ci/run`` installs the ``chromium`` package).
- `ui_server` / `start_ui_server`: a server on a fresh home, seeded through the stores before it starts; one per
  test module (``start_ui_server`` inside a module-scoped fixture).
- `ui`: a fresh browser context (no cookies) wrapped in `UiPage`, which fails the test on any console error or
  uncaught page error and saves a screenshot of every page it visits to ``tests/ui/screenshots/`` (ignored by git;
  CI keeps the folder as the test artifact), named after the test.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from uikit import SCREENSHOTS, UiPage

from helpers.server import ServerProcess

CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    """One headless Chromium per test module. Playwright's sync API keeps an asyncio loop running in the main thread
    while it is open; under pytest-xdist a worker runs other packages' modules after this one, whose
    ``asyncio.run`` must find no loop running."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: install Debian's chromium package (.ci/run does)")
    from playwright.sync_api import sync_playwright

    SCREENSHOTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                             args=["--no-sandbox", "--disable-dev-shm-usage"])
        yield browser
        browser.close()


@pytest.fixture
def ui_factory(chromium: Any, request: pytest.FixtureRequest) -> Iterator[Callable[[str], UiPage]]:
    """Make `UiPage`s on a server (each in its own browser context: its own cookies); checked after the test."""
    made: list[tuple[Any, UiPage]] = []
    test_name = re.sub(r"[^A-Za-z0-9_]+", "-", request.node.name)

    def make(base_url: str) -> UiPage:
        context = chromium.new_context(viewport={"width": 1360, "height": 900})
        ui = UiPage(context.new_page(), base_url, f"{test_name}-{len(made)}" if made else test_name)
        made.append((context, ui))
        return ui

    yield make
    try:
        for _, ui in made:
            ui.check()
    finally:
        for context, _ in made:
            context.close()


@pytest.fixture
def ui(ui_factory: Callable[[str], UiPage], ui_server: ServerProcess) -> UiPage:
    """A page on this module's `ui_server`."""
    return ui_factory(ui_server.url)


