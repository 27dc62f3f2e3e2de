"""Contract of the request-outcome store (`capstan.serving.outcomes.OutcomeStore`): in memory, SQLite, PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from capstan.serving.outcomes import MemoryOutcomeStore, Outcome, OutcomeStore, Truth
from capstan.settings import Settings
from capstan.store.deployment_outcomes_sql import SqlOutcomeStore
from capstan.store.engine import create_store_engine


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[OutcomeStore]:
    if request.param == "memory":
        yield MemoryOutcomeStore()
        return
    settings: Settings = (Settings.for_home(tmp_path / "home") if request.param == "sqlite"
                          else request.getfixturevalue("pg_settings"))
    engine = create_store_engine(settings)
    yield SqlOutcomeStore(engine)
    engine.dispose()


def _outcome(rid: str, *, deployment: str = "fraud", project: str = "alpha", version: str = "6",
             role: str = "primary", predictions: str | None = "[1]", **extra: object) -> Outcome:
    return Outcome(rid, project, deployment, version, role, 200, 1.5, 1_000, predictions, **extra)  # type: ignore[arg-type]  # test keywords


def test_outcomes_come_back_oldest_first_with_every_field(store: OutcomeStore) -> None:
    store.add([_outcome("a"), _outcome("b", version="7", role="canary", predictions='["x", "y"]'),
               _outcome("a", role="shadow", version="8", disagrees=True, cold_start_ms=812.5)])
    rows = store.outcomes("alpha", "fraud")
    assert [(r.request_id, r.version, r.role) for r in rows] == [("a", "6", "primary"), ("b", "7", "canary"),
                                                                 ("a", "8", "shadow")]
    assert rows[0].id < rows[1].id < rows[2].id
    assert rows[1].predictions == '["x", "y"]' and rows[1].disagrees is None and rows[1].truth is None
    assert rows[2].disagrees is True and rows[2].cold_start_ms == 812.5
    assert (rows[0].status, rows[0].latency_ms, rows[0].time_ms) == (200, 1.5, 1_000)
    assert [r.request_id for r in store.outcomes("alpha", "fraud", limit=2)] == ["b", "a"]
    assert store.outcomes("alpha", "other") == () and store.outcomes("beta", "fraud") == ()


def test_truth_reaches_every_outcome_of_the_request_and_unknown_ids_are_named(store: OutcomeStore) -> None:
    store.add([_outcome("a"), _outcome("a", role="shadow", version="8"), _outcome("b"),
               _outcome("a", deployment="other")])
    unknown = store.record_truth("alpha", "fraud", [Truth("a", "1"), Truth("zzz", "0")], time_ms=5_000)
    assert unknown == ["zzz"]
    rows = store.outcomes("alpha", "fraud")
    assert [(r.request_id, r.role, r.truth, r.truth_ms) for r in rows] == [
        ("a", "primary", "1", 5_000), ("a", "shadow", "1", 5_000), ("b", "primary", None, None)]
    assert store.outcomes("alpha", "other")[0].truth is None  # another deployment's request with the same id
    assert store.record_truth("alpha", "fraud", [], time_ms=1) == []


def test_trim_keeps_the_newest_per_deployment(store: OutcomeStore) -> None:
    store.add([_outcome(f"r{i}") for i in range(10)] + [_outcome("x", deployment="other")])
    assert store.trim("alpha", "fraud", keep=4) == 6
    assert [r.request_id for r in store.outcomes("alpha", "fraud")] == ["r6", "r7", "r8", "r9"]
    assert store.trim("alpha", "fraud", keep=4) == 0
    assert len(store.outcomes("alpha", "other")) == 1
    assert store.trim("alpha", "fraud", keep=0) == 4
    assert store.outcomes("alpha", "fraud") == ()


def test_delete_deployment_forgets_only_its_outcomes(store: OutcomeStore) -> None:
    store.add([_outcome("a"), _outcome("b"), _outcome("c", deployment="other")])
    assert store.delete_deployment("alpha", "fraud") == 2
    assert store.outcomes("alpha", "fraud") == ()
    assert len(store.outcomes("alpha", "other")) == 1
    assert store.delete_deployment("alpha", "fraud") == 0
