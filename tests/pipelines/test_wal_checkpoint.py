"""WAL checkpoints requested by orchestrators run on the checkpoint thread, at most once a second per database."""

from __future__ import annotations

import itertools
import sqlite3
import time
from pathlib import Path

import pytest

from capstan.pipelines import wal


def filled_wal(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA wal_autocheckpoint=0")  # as the round writer's connection
    conn.execute("CREATE TABLE t (x TEXT)")
    conn.executemany("INSERT INTO t VALUES (?)", [("x" * 200,) for _ in range(2000)])
    return conn


def test_a_requested_checkpoint_moves_the_wal_into_the_database(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    conn = filled_wal(path)
    try:
        before = path.stat().st_size
        wal.request_checkpoint(str(path))
        assert wal.wait_idle(10)
        assert path.stat().st_size > before + 200 * 1000, "the rows reached the database file"
        assert conn.execute("SELECT count(*) FROM t").fetchone() == (2000,)
    finally:
        conn.close()


def test_checkpoints_of_one_database_are_a_second_apart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = str(tmp_path / "db.sqlite")
    conn = filled_wal(Path(path))
    times: list[float] = []
    real = wal._checkpoint

    def timed(p: str) -> None:
        times.append(time.monotonic())
        real(p)

    monkeypatch.setattr(wal, "_checkpoint", timed)
    try:
        for _ in range(3):
            wal.request_checkpoint(path)
            assert wal.wait_idle(10)
    finally:
        conn.close()
    assert len(times) == 3
    assert all(b - a >= wal.MIN_INTERVAL_S * 0.99 for a, b in itertools.pairwise(times))


def test_a_missing_database_is_skipped(tmp_path: Path) -> None:
    wal.request_checkpoint(str(tmp_path / "nowhere" / "db.sqlite"))  # cannot be opened: nothing raises
    assert wal.wait_idle(10)
