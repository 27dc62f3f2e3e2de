"""Contract of the deployment store (`capstan.serving.ports.DeploymentStore`), run against SQLite and PostgreSQL."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest

from capstan.errors import InvalidState
from capstan.serving.deployments_sql import SqlDeploymentStore
from capstan.serving.ports import DeploymentRecord, DeploymentStore, LoadReport, ReplicaRecord, Role
from capstan.serving.spec import parse_spec
from capstan.settings import Settings
from capstan.store.engine import create_store_engine

SPEC = parse_spec({"name": "fraud", "model": "models:/fraud@champion",
                   "autoscaling": {"min_replicas": 0, "max_replicas": 4, "target_concurrency": 2},
                   "canary": {"model": "models:/fraud/7", "traffic": 10},
                   "resources": {"cpu": "500m", "memory": "1Gi", "queue": "serving"}})


@pytest.fixture
def store(backend_settings: Settings) -> Iterator[DeploymentStore]:
    engine = create_store_engine(backend_settings)
    yield SqlDeploymentStore(engine)
    engine.dispose()


def _record(name: str = "fraud", project: str = "alpha", revision: int = 1) -> DeploymentRecord:
    spec = dataclasses.replace(SPEC, name=name)
    versions: tuple[tuple[Role, str], ...] = (("primary", "models:/fraud/6"), ("canary", "models:/fraud/7"))
    return DeploymentRecord(name, project, spec, revision, versions, 1, 1_000, 1_000 + revision)


def _replica(rid: str, deployment: str = "fraud", project: str = "alpha", state: str = "ready") -> ReplicaRecord:
    return ReplicaRecord(rid, deployment, project, "primary", "models:/fraud/6", state,  # type: ignore[arg-type]  # a state literal
                         "http://127.0.0.1:1234", 42, 0, 1_000, 1_001, "")


def test_put_get_round_trips_the_spec_and_versions(store: DeploymentStore) -> None:
    record = _record()
    store.put(record, expected_revision=0)
    got = store.get("alpha", "fraud")
    assert got == record
    assert got is not None and got.spec == SPEC and got.version_of("canary") == "models:/fraud/7"
    assert store.get("beta", "fraud") is None


def test_previous_spec_is_kept(store: DeploymentStore) -> None:
    store.put(_record())
    after = dataclasses.replace(_record(revision=2), previous=SPEC, previous_versions=(("primary", "models:/f/5"),))
    store.put(after, expected_revision=1)
    assert store.get("alpha", "fraud") == after


def test_expected_revision_refuses_lost_updates(store: DeploymentStore) -> None:
    store.put(_record(), expected_revision=0)
    with pytest.raises(InvalidState, match="already exists"):
        store.put(_record(), expected_revision=0)
    store.put(_record(revision=2), expected_revision=1)
    with pytest.raises(InvalidState, match="changed meanwhile"):
        store.put(_record(revision=3), expected_revision=1)
    with pytest.raises(InvalidState):
        store.put(_record("other"), expected_revision=4)
    store.put(_record(revision=7))  # no expectation: replaced
    got = store.get("alpha", "fraud")
    assert got is not None and got.revision == 7


def test_list_is_by_project_then_name(store: DeploymentStore) -> None:
    for project, name in (("beta", "b"), ("alpha", "z"), ("alpha", "a")):
        store.put(_record(name, project))
    assert [(r.project, r.name) for r in store.list()] == [("alpha", "a"), ("alpha", "z"), ("beta", "b")]
    assert [r.name for r in store.list("alpha")] == ["a", "z"]
    assert store.list("nobody") == ()


def test_replicas_upsert_filter_and_delete(store: DeploymentStore) -> None:
    store.put(_record())
    store.put_replica(_replica("r1"))
    store.put_replica(_replica("r2", state="starting"))
    store.put_replica(_replica("r3", deployment="other"))
    store.put_replica(dataclasses.replace(_replica("r2"), state="ready", restarts=2, message="back"))
    mine = {r.id: r for r in store.replicas("alpha", "fraud")}
    assert set(mine) == {"r1", "r2"}
    assert (mine["r2"].state, mine["r2"].restarts, mine["r2"].message) == ("ready", 2, "back")
    assert {r.id for r in store.replicas()} == {"r1", "r2", "r3"}
    store.delete_replica("r1")
    assert [r.id for r in store.replicas("alpha", "fraud")] == ["r2"]


def test_delete_removes_replicas_and_load(store: DeploymentStore) -> None:
    store.put(_record())
    store.put_replica(_replica("r1"))
    store.report_load(LoadReport("w1", "fraud", "alpha", 1, 2, 0, 5_000))
    assert store.delete("alpha", "fraud") is True
    assert store.get("alpha", "fraud") is None
    assert store.replicas("alpha", "fraud") == ()
    assert store.load("alpha", "fraud", since_ms=0) == ()
    assert store.delete("alpha", "fraud") is False


def test_load_keeps_the_latest_report_per_worker(store: DeploymentStore) -> None:
    store.report_load(LoadReport("w1", "fraud", "alpha", 1, 2, 0, 5_000))
    store.report_load(LoadReport("w2", "fraud", "alpha", 0, 0, 3, 4_000))
    store.report_load(LoadReport("w1", "fraud", "alpha", 4, 9, 1, 6_000))
    store.report_load(LoadReport("w1", "other", "alpha", 7, 7, 7, 6_000))
    assert store.load("alpha", "fraud", since_ms=0) == (LoadReport("w1", "fraud", "alpha", 4, 9, 1, 6_000),
                                                        LoadReport("w2", "fraud", "alpha", 0, 0, 3, 4_000))
    assert [r.worker for r in store.load("alpha", "fraud", since_ms=4_500)] == ["w1"]
