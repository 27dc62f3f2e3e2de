"""Shared fixtures: settings rooted in a temporary home, and the metadata-store backends (SQLite, PostgreSQL)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from capstan.settings import Settings


def pytest_configure(config: pytest.Config) -> None:
    """pytest-xdist's workers get ``COLUMNS=80``/``LINES=24``; without a terminal the CLI prints unfolded tables,
    and its commands run by the tests must see the same environment whether the suite runs in parallel or not."""
    for name in ("COLUMNS", "LINES"):
        os.environ.pop(name, None)


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """``-n auto``: one worker more than the machine has cores (at most 4, as ``--maxprocesses`` says). Much of the
    suite waits on servers and subprocesses starting, so one worker per core leaves about a third of the CPU idle
    (measured on 2 cores: 1,146 s with 2 workers, 1,033 s with 3)."""
    return min(4, (os.cpu_count() or 1) + 1)


PG_URL = os.environ.get("CAPSTAN_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def _pg_reason() -> str | None:
    try:
        import psycopg

        with psycopg.connect(PG_URL.replace("postgresql+psycopg", "postgresql"), connect_timeout=3):
            return None
    except Exception as exc:  # noqa: BLE001  # any failure to connect means "skip", with the reason shown
        return f"PostgreSQL not reachable at {PG_URL}: {exc}"


_PG_SKIP: list[str | None] = []


def pg_skip_reason() -> str | None:
    """Why PostgreSQL tests must skip (None when the server answers); probed once per session."""
    if not _PG_SKIP:
        _PG_SKIP.append(_pg_reason())
    return _PG_SKIP[0]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Embedded defaults (SQLite + local artifacts) under a fresh temporary home."""
    return Settings.for_home(tmp_path / "home")


@pytest.fixture
def pg_settings(tmp_path: Path) -> Iterator[Settings]:
    """Settings on a fresh PostgreSQL schema, dropped afterwards."""
    reason = pg_skip_reason()
    if reason:
        pytest.skip(reason)
    import psycopg

    schema = f"capstan_{uuid.uuid4().hex[:12]}"
    raw = PG_URL.replace("postgresql+psycopg", "postgresql")
    with psycopg.connect(raw, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    url = f"{PG_URL}?options=-csearch_path%3D{schema}"
    yield Settings.for_home(tmp_path / "home", db_url=url)
    with psycopg.connect(raw, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture(params=["sqlite", "postgresql"])
def backend_settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    """Run a contract test once per metadata-store backend."""
    if request.param == "sqlite":
        return Settings.for_home(tmp_path / "home")
    return request.getfixturevalue("pg_settings")  # type: ignore[no-any-return]  # untyped helper value
