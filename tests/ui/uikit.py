"""Helpers of the web UI tests (imported by tests/ui/conftest.py and the test modules).

`UiPage` wraps a Playwright page: it fails the test on any console error or uncaught page error and saves a
screenshot of every page it visits to ``tests/ui/screenshots/`` (ignored by git; CI keeps the folder as the test
artifact). `start_ui_server` starts a real ``capstan server`` on loopback after seeding its stores; `api` calls the
JSON twins.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from capstan.services import Services
from capstan.settings import Settings
from helpers.server import ServerProcess, start_server

SCREENSHOTS = Path(__file__).resolve().parent / "screenshots"


@dataclass
class UiPage:
    """A Playwright page on the server that records console errors and page errors and screenshots each visit."""

    page: Any
    base_url: str
    name: str
    errors: list[str] = field(default_factory=list)
    allowed: list[re.Pattern[str]] = field(default_factory=list)
    shots: int = 0

    def __post_init__(self) -> None:
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda exc: self.errors.append(f"page error: {exc}"))

    def _console(self, message: Any) -> None:
        if message.type == "error" and not any(p.search(message.text) for p in self.allowed):
            self.errors.append(f"console error: {message.text} ({message.location.get('url', '')})")

    def allow_status(self, status: int) -> None:
        """Expect a document with this HTTP status: Chromium logs it as a failed resource, which is no error here."""
        self.allowed.append(re.compile(rf"status of {status}\b"))

    def visit(self, path: str, *, status: int = 200) -> Any:
        """Open ``path`` (relative to the server), check the document's status, wait for scripts, screenshot."""
        if status >= 400:
            self.allow_status(status)
        response = self.page.goto(self.base_url + path)
        assert response is not None and response.status == status, (
            f"{path}: expected {status}, got {response.status if response else None}")
        self.settle()
        return response

    def settle(self) -> None:
        """Wait until the page's own requests are done, then save a screenshot of it."""
        self.page.wait_for_load_state("networkidle")
        self.screenshot()

    def screenshot(self) -> Path:
        self.shots += 1
        slug = re.sub(r"[^A-Za-z0-9]+", "-", self.page.url.split("://", 1)[-1].split("/", 1)[-1])[:60].strip("-")
        path = SCREENSHOTS / f"{self.name}-{self.shots:02d}-{slug or 'root'}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path

    def text(self, selector: str) -> str:
        return str(self.page.locator(selector).inner_text())

    def cells(self, selector: str) -> list[list[str]]:
        """The text of each body row's cells of the table at ``selector``."""
        rows = self.page.locator(f"{selector} tbody tr")
        return [[c.strip() for c in rows.nth(i).locator("td").all_inner_texts()] for i in range(rows.count())]

    def check(self) -> None:
        assert not self.errors, f"{self.name}: the browser reported errors:\n  " + "\n  ".join(self.errors)


@contextmanager
def start_ui_server(home: Path, seed: Callable[[Services], None] | None = None) -> Iterator[ServerProcess]:
    """A ``capstan server`` on loopback over ``home``, after ``seed`` filled its stores."""
    services = Services.open(Settings.for_home(home))
    try:
        if seed is not None:
            seed(services)
    finally:
        services.close()
    with start_server(home) as server:
        yield server


def api(server: ServerProcess, method: str, path: str, *, token: str | None = None, **kwargs: Any) -> Any:
    """Call the server's JSON API (the pages' twins) and return the decoded body; asserts a 2xx answer."""
    headers = dict(kwargs.pop("headers", {}))
    if token:
        headers["Authorization"] = f"Bearer {token}"
    response = httpx.request(method, server.url + path, headers=headers, timeout=30, **kwargs)
    assert response.status_code < 300, f"{method} {path}: {response.status_code} {response.text}"
    return response.json() if response.content else None
