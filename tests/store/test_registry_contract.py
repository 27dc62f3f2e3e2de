"""Contract of the model registry store, run against SQLite and PostgreSQL."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from sqlalchemy import Engine, func, insert, select

from capstan.errors import InvalidParameterValue, ResourceAlreadyExists, ResourceDoesNotExist
from capstan.registry.ports import RegistryStore
from capstan.settings import Settings
from capstan.store import schema
from capstan.store.engine import create_store_engine
from capstan.store.events_sql import SqlEventLog
from capstan.store.registry_sql import SqlRegistryStore
from helpers.clock import FakeClock


@dataclass
class Env:
    engine: Engine
    store: SqlRegistryStore
    events: SqlEventLog
    settings: Settings


@pytest.fixture
def env(backend_settings: Settings) -> Iterator[Env]:
    engine = create_store_engine(backend_settings)
    clock = FakeClock(1_000, step=1)  # a strictly increasing fake clock keeps orderings deterministic
    events = SqlEventLog(engine, clock=clock)
    yield Env(engine, SqlRegistryStore(engine, clock=clock, events=events), events, backend_settings)
    engine.dispose()


def _add_run(engine: Engine, *, experiment: int | None = None) -> tuple[str, str]:
    """Insert an experiment (when needed) and a run directly; returns (run uuid, artifact uri)."""
    run_uuid = uuid.uuid4().hex
    with engine.begin() as conn:
        if experiment is None:
            project_id = conn.execute(select(schema.projects.c.id).where(schema.projects.c.name == "default")
                                      ).scalar()
            if project_id is None:
                project_id = conn.execute(insert(schema.projects).values(
                    name="default", description="", created_at=1)).inserted_primary_key[0]  # type: ignore[index]  # untyped JSON or driver value
            experiment = int(conn.execute(insert(schema.experiments).values(
                project_id=project_id, name=f"exp-{run_uuid[:6]}", artifact_location="", created_at=1,
                updated_at=1)).inserted_primary_key[0])  # type: ignore[index]  # untyped JSON or driver value
        artifact_uri = f"mlflow-artifacts:/{experiment}/{run_uuid}/artifacts"
        conn.execute(insert(schema.runs).values(uuid=run_uuid, experiment_id=experiment, status="RUNNING",
                                                artifact_uri=artifact_uri, start_time=1))
    return run_uuid, artifact_uri


def _add_logged_model(engine: Engine, run_uuid: str | None) -> tuple[str, str]:
    model_id = f"m-{uuid.uuid4().hex}"
    with engine.begin() as conn:
        experiment = conn.execute(select(func.min(schema.experiments.c.id))).scalar()
        location = f"mlflow-artifacts:/{experiment}/models/{model_id}/artifacts"
        conn.execute(insert(schema.logged_models).values(
            id=model_id, experiment_id=experiment, name="model", artifact_location=location, status="READY",
            source_run_uuid=run_uuid, created_at=1, updated_at=1))
    return model_id, location


def test_store_satisfies_the_protocol(env: Env) -> None:
    store: RegistryStore = env.store  # checked by mypy
    assert store.search_registered_models().items == ()


# ---------------------------------------------------------------- registered models


def test_create_get_and_duplicate_model(env: Env) -> None:
    created = env.store.create_registered_model("iris", project="team-a", description="d",
                                                tags={"owner": "ann", "mlflow.note": "x y"})
    assert (created.name, created.project, created.description) == ("iris", "team-a", "d")
    assert created.tags == {"owner": "ann", "mlflow.note": "x y"}
    got = env.store.get_registered_model("iris")
    assert got == created
    assert got.creation_timestamp == got.last_updated_timestamp > 0
    with env.engine.connect() as conn:
        assert conn.execute(select(schema.projects.c.name)).scalars().all() == ["team-a"]
    env.store.create_registered_model("other", project="team-a")  # the project row is reused
    with pytest.raises(ResourceAlreadyExists, match=r"Registered Model \(name=iris\) already exists"):
        env.store.create_registered_model("iris", project="team-b")
    with pytest.raises(ResourceDoesNotExist, match="Registered Model with name=nope not found"):
        env.store.get_registered_model("nope")
    assert env.store.get_registered_model("iris").project == "team-a"


_INVALID: list[tuple[Callable[[SqlRegistryStore], object], str]] = [
    (lambda s: s.create_registered_model("", project="p"), "name"),
    (lambda s: s.create_registered_model("a/b", project="p"), "name"),
    (lambda s: s.create_registered_model("a:b", project="p"), "name"),
    (lambda s: s.create_registered_model("x" * 257, project="p"), "name"),
    (lambda s: s.create_registered_model("ok", project=""), "project"),
    (lambda s: s.create_registered_model("ok", project="p", tags={"bad!key": "v"}), "key"),
    (lambda s: s.create_registered_model("ok", project="p", tags={"../up": "v"}), "key"),
    (lambda s: s.create_registered_model("ok", project="p", tags={"k": "v" * 100_001}), "value"),
    (lambda s: s.rename_registered_model("m", "x/y"), "new_name"),
    (lambda s: s.create_model_version("m", source=""), "source"),
    (lambda s: s.create_model_version("m", source="s3://b/k", run_id="r" * 33), "run_id"),
    (lambda s: s.get_model_version("m", 0), "version"),
    (lambda s: s.get_model_version("m", "three"), "version"),  # type: ignore[arg-type]  # a bad API value
    (lambda s: s.set_alias("m", "latest", 1), "alias"),
    (lambda s: s.set_alias("m", "V12", 1), "alias"),
    (lambda s: s.set_alias("m", "has space", 1), "alias"),
    (lambda s: s.set_alias("m", "", 1), "alias"),
    (lambda s: s.transition_model_version_stage("m", 1, "Prod"), "stage"),
    (lambda s: s.transition_model_version_stage("m", 1, "None", archive_existing_versions=True),
     "archive_existing_versions"),
    (lambda s: s.get_latest_versions("m", ["bogus"]), "stage"),
    (lambda s: s.set_model_version_tag("m", 1, "", "v"), "key"),
    (lambda s: s.search_registered_models(max_results=1001), "max_results"),
    (lambda s: s.search_model_versions(max_results=0), "max_results"),
    (lambda s: s.search_registered_models(page_token="not-a-token"), "page_token"),
    (lambda s: s.search_registered_models(filter_string="owner = 'x'"), "filter_string"),
    (lambda s: s.search_registered_models(filter_string="name > 'x'"), "filter_string"),
    (lambda s: s.search_registered_models(filter_string="name = 'a' OR name = 'b'"), "filter_string"),
    (lambda s: s.search_registered_models(order_by=["owner"]), "order_by"),
    (lambda s: s.search_registered_models(order_by=["name", "name DESC"]), "order_by"),
    (lambda s: s.search_model_versions(filter_string="version = 'x'"), "filter_string"),
    (lambda s: s.search_model_versions(filter_string="source_path IN ('a')"), "filter_string"),
    (lambda s: s.search_model_versions(filter_string="name LIKE 'a\\'"), "filter_string"),
]


def test_invalid_input_names_the_field_and_loses_nothing(env: Env) -> None:
    env.store.create_registered_model("m", project="p")
    env.store.create_model_version("m", source="s3://bucket/m")
    before = env.store.get_registered_model("m")
    for index, (call, field) in enumerate(_INVALID):
        with pytest.raises(InvalidParameterValue) as info:
            call(env.store)
        assert info.value.message.startswith(f"{field}:"), (index, info.value.message)
    assert env.store.get_registered_model("m") == before
    assert env.store.search_registered_models().items == (before,)


def test_update_and_rename_keep_versions_tags_and_aliases(env: Env) -> None:
    s = env.store
    created = s.create_registered_model("old", project="p", tags={"t": "1"})
    s.create_model_version("old", source="s3://b/1")
    s.create_model_version("old", source="s3://b/2", tags={"k": "v"})
    s.set_alias("old", "champion", 2)
    updated = s.update_registered_model("old", description="better")
    assert updated.description == "better" and updated.last_updated_timestamp > created.last_updated_timestamp
    renamed = s.rename_registered_model("old", "new")
    assert (renamed.name, renamed.description, renamed.tags, renamed.aliases) == ("new", "better", {"t": "1"},
                                                                                  {"champion": 2})
    with pytest.raises(ResourceDoesNotExist):
        s.get_registered_model("old")
    version = s.get_version_by_alias("new", "champion")
    assert (version.name, version.version, version.tags, version.aliases) == ("new", 2, {"k": "v"}, ("champion",))
    s.create_registered_model("taken", project="p")
    with pytest.raises(ResourceAlreadyExists, match=r"name=taken"):
        s.rename_registered_model("new", "taken")
    with pytest.raises(ResourceDoesNotExist):
        s.rename_registered_model("ghost", "x")
    assert s.create_model_version("new", source="s3://b/3").version == 3


def test_model_tags(env: Env) -> None:
    s = env.store
    s.create_registered_model("m", project="p")
    s.set_registered_model_tag("m", "stage", "dev")
    s.set_registered_model_tag("m", "stage", "prod")
    s.set_registered_model_tag("m", "a b", "")
    assert s.get_registered_model("m").tags == {"a b": "", "stage": "prod"}
    s.delete_registered_model_tag("m", "stage")
    s.delete_registered_model_tag("m", "never-set")  # as MLflow: no error
    assert s.get_registered_model("m").tags == {"a b": ""}
    with pytest.raises(ResourceDoesNotExist):
        s.set_registered_model_tag("nope", "k", "v")


def test_delete_model_removes_versions_tags_and_aliases(env: Env) -> None:
    s = env.store
    s.create_registered_model("m", project="p", tags={"t": "v"})
    s.create_model_version("m", source="s3://b/1", tags={"k": "v"})
    s.create_model_version("m", source="s3://b/2")
    s.set_alias("m", "champion", 1)
    s.delete_model_version("m", 2)
    s.delete_registered_model("m")
    with pytest.raises(ResourceDoesNotExist):
        s.get_registered_model("m")
    with pytest.raises(ResourceDoesNotExist):
        s.delete_registered_model("m")
    with env.engine.connect() as conn:
        for table in (schema.registered_models, schema.registered_model_tags, schema.model_versions,
                      schema.model_version_tags, schema.model_aliases):
            assert conn.execute(select(func.count()).select_from(table)).scalar() == 0, table.name
    s.create_registered_model("m", project="p")
    assert s.create_model_version("m", source="s3://b/again").version == 1


# ---------------------------------------------------------------- versions and lineage


def test_versions_are_numbered_and_keep_lineage(env: Env) -> None:
    s = env.store
    run_uuid, artifact_uri = _add_run(env.engine)
    s.create_registered_model("m", project="p")
    v1 = s.create_model_version("m", source=f"runs:/{run_uuid}/model", run_link="http://x", description="first",
                                user_id="ann", tags={"k": "v"})
    assert (v1.version, v1.run_id, v1.source) == (1, run_uuid, f"runs:/{run_uuid}/model")
    assert v1.storage_location == f"{artifact_uri}/model"
    assert (v1.run_link, v1.description, v1.user_id, v1.tags) == ("http://x", "first", "ann", {"k": "v"})
    assert (v1.status, v1.current_stage, v1.aliases) == ("READY", "None", ())
    assert s.get_model_version("m", 1) == v1

    model_id, location = _add_logged_model(env.engine, run_uuid)
    v2 = s.create_model_version("m", source=f"models:/{model_id}", model_id=model_id)
    assert (v2.version, v2.storage_location, v2.run_id, v2.model_id) == (2, location, run_uuid, model_id)

    v3 = s.create_model_version("m", source=location, model_id=model_id)  # what the MLflow 3 client sends
    assert (v3.version, v3.storage_location, v3.run_id) == (3, location, run_uuid)
    v4 = s.create_model_version("m", source="s3://bucket/plain", run_id="abc")
    assert (v4.storage_location, v4.run_id, v4.model_id) == ("s3://bucket/plain", "abc", None)
    v5 = s.create_model_version("m", source="models:/m/1")
    assert (v5.storage_location, v5.run_id) == (f"{artifact_uri}/model", run_uuid)
    s.set_alias("m", "champion", 2)
    assert s.create_model_version("m", source="models:/m@champion").storage_location == location
    assert s.create_model_version("m", source=f"runs:/{run_uuid}").storage_location == artifact_uri

    assert s.get_download_uri("m", 1) == f"{artifact_uri}/model"
    assert s.get_download_uri("m", 2) == location
    assert s.get_registered_model("m").last_updated_timestamp == s.get_model_version("m", 7).creation_timestamp

    with pytest.raises(ResourceDoesNotExist, match="source: run"):
        s.create_model_version("m", source=f"runs:/{uuid.uuid4().hex}/model")
    with pytest.raises(ResourceDoesNotExist, match="source: logged model"):
        s.create_model_version("m", source="models:/m-doesnotexist")
    with pytest.raises(ResourceDoesNotExist, match="Registered Model with name=ghost not found"):
        s.create_model_version("ghost", source="s3://b/k")
    assert [v.version for v in s.search_model_versions(filter_string="name = 'm'").items] == [7, 6, 5, 4, 3, 2, 1]


def test_version_updates_tags_and_not_found(env: Env) -> None:
    s = env.store
    s.create_registered_model("m", project="p")
    s.create_model_version("m", source="s3://b/1")
    updated = s.update_model_version("m", 1, description="now described")
    assert updated.description == "now described"
    s.set_model_version_tag("m", 1, "k", "v1")
    s.set_model_version_tag("m", 1, "k", "v2")
    s.set_model_version_tag("m", 1, "other", "x")
    s.delete_model_version_tag("m", 1, "other")
    s.delete_model_version_tag("m", 1, "never-set")
    got = s.get_model_version("m", "1")  # type: ignore[arg-type]  # MLflow's API sends versions as strings
    assert (got.description, got.tags) == ("now described", {"k": "v2"})
    for call in (lambda: s.get_model_version("m", 3), lambda: s.update_model_version("m", 3, description=""),
                 lambda: s.set_model_version_tag("m", 3, "k", "v"), lambda: s.get_download_uri("m", 3),
                 lambda: s.transition_model_version_stage("m", 3, "Staging")):
        with pytest.raises(ResourceDoesNotExist, match=r"Model Version \(name=m, version=3\) not found"):
            call()
    with pytest.raises(ResourceDoesNotExist, match="Registered Model with name=x not found"):
        s.get_model_version("x", 1)


def test_delete_version_removes_aliases_and_never_reuses_the_number(env: Env) -> None:
    s = env.store
    run_uuid, _ = _add_run(env.engine)
    s.create_registered_model("m", project="p")
    for _ in range(3):
        s.create_model_version("m", source=f"runs:/{run_uuid}/model", tags={"k": "v"})
    s.set_alias("m", "champion", 3)
    s.set_alias("m", "challenger", 3)
    s.set_alias("m", "old", 1)
    s.delete_model_version("m", 3)
    with pytest.raises(ResourceDoesNotExist, match=r"version=3\) not found"):
        s.get_model_version("m", 3)
    with pytest.raises(ResourceDoesNotExist):
        s.delete_model_version("m", 3)
    with pytest.raises(ResourceDoesNotExist, match="alias champion not found"):
        s.get_version_by_alias("m", "champion")
    assert s.get_registered_model("m").aliases == {"old": 1}
    assert [v.version for v in s.search_model_versions(filter_string=f"run_id = '{run_uuid}'").items] == [2, 1]
    assert s.create_model_version("m", source="s3://b/4").version == 4
    assert s.get_version_by_alias("m", "latest").version == 4


def test_aliases(env: Env) -> None:
    s = env.store
    s.create_registered_model("m", project="p")
    for _ in range(3):
        s.create_model_version("m", source="s3://b/x")
    s.set_alias("m", "champion", 1)
    s.set_alias("m", "challenger", 2)
    s.set_alias("m", "backup-1", 2)
    assert s.get_version_by_alias("m", "champion").version == 1
    s.set_alias("m", "champion", 2)  # moving an alias
    assert s.get_registered_model("m").aliases == {"backup-1": 2, "challenger": 2, "champion": 2}
    assert s.get_model_version("m", 2).aliases == ("backup-1", "challenger", "champion")
    assert s.get_model_version("m", 1).aliases == ()
    assert s.get_version_by_alias("m", "LATEST").version == 3
    s.delete_alias("m", "backup-1")
    assert s.get_version_by_alias("m", "champion").aliases == ("challenger", "champion")
    with pytest.raises(ResourceDoesNotExist, match="alias backup-1 not found"):
        s.delete_alias("m", "backup-1")
    with pytest.raises(ResourceDoesNotExist, match="alias nope not found"):
        s.get_version_by_alias("m", "nope")
    with pytest.raises(ResourceDoesNotExist, match=r"version=9\) not found"):
        s.set_alias("m", "champion", 9)
    with pytest.raises(ResourceDoesNotExist, match="name=ghost not found"):
        s.set_alias("ghost", "champion", 1)
    s.create_registered_model("empty", project="p")
    with pytest.raises(ResourceDoesNotExist, match="Latest version not found"):
        s.get_version_by_alias("empty", "latest")


def test_stages_and_latest_versions(env: Env) -> None:
    s = env.store
    s.create_registered_model("m", project="p")
    for _ in range(4):
        s.create_model_version("m", source="s3://b/x")
    assert s.transition_model_version_stage("m", 1, "production").current_stage == "Production"
    s.transition_model_version_stage("m", 2, "Staging")
    moved = s.transition_model_version_stage("m", 3, "Production", archive_existing_versions=True)
    assert moved.current_stage == "Production"
    assert s.get_model_version("m", 1).current_stage == "Archived"
    assert s.get_model_version("m", 2).current_stage == "Staging"  # another stage is left alone
    latest = {v.current_stage: v.version for v in s.get_latest_versions("m")}
    assert latest == {"None": 4, "Staging": 2, "Production": 3, "Archived": 1}
    assert [v.version for v in s.get_latest_versions("m", ["production", "Staging"])] == [2, 3]
    assert [(v.current_stage, v.version) for v in s.get_registered_model("m").latest_versions] == [
        ("None", 4), ("Staging", 2), ("Production", 3), ("Archived", 1)]
    s.delete_model_version("m", 4)
    assert [v.version for v in s.get_latest_versions("m", ["None"])] == []
    s.set_alias("m", "champion", 3)
    assert s.get_latest_versions("m", ["Production"])[0].aliases == ("champion",)
    with pytest.raises(ResourceDoesNotExist):
        s.get_latest_versions("ghost")


# ---------------------------------------------------------------- search


def _models_for_search(s: SqlRegistryStore) -> None:
    for name, project, tags in [("alpha", "p1", {"team": "x", "tier": "gold"}), ("Alpha2", "p1", {"team": "y"}),
                                ("beta", "p2", {"team": "x"}), ("beta_1", "p2", {}), ("betaX1", "p2", {}),
                                ("gamma", "p1", {"tier": "gold"}), ("delta%", "p2", {})]:
        s.create_registered_model(name, project=project, tags=tags)


_MODEL_FILTERS = [
    ("", ["Alpha2", "alpha", "beta", "betaX1", "beta_1", "delta%", "gamma"]),
    ("name = 'alpha'", ["alpha"]),
    ("name != 'alpha'", ["Alpha2", "beta", "betaX1", "beta_1", "delta%", "gamma"]),
    ("name LIKE 'alpha%'", ["alpha"]),
    ("name LIKE 'Alpha%'", ["Alpha2"]),
    ("name ILIKE 'alpha%'", ["Alpha2", "alpha"]),
    ("name like '%ta_%'", ["betaX1", "beta_1", "delta%"]),
    ("name LIKE 'beta\\_%'", ["beta_1"]),
    ("name LIKE 'delta\\%'", ["delta%"]),
    ("name LIKE 'beta*'", []),
    ("name IN ('beta', 'gamma', 'zzz')", ["beta", "gamma"]),
    ("name NOT IN ('beta', 'gamma')", ["Alpha2", "alpha", "betaX1", "beta_1", "delta%"]),
    ("tags.team = 'x'", ["alpha", "beta"]),
    ("tags.team != 'x'", ["Alpha2"]),
    ("tags.`tier` LIKE 'go%' AND tags.team = 'x'", ["alpha"]),
    ("tag.tier = 'gold' and name ILIKE 'G%'", ["gamma"]),
    ("attribute.name = \"beta\"", ["beta"]),
    ("tags.missing = 'x'", []),
]


def test_search_registered_models_filters(env: Env) -> None:
    _models_for_search(env.store)
    for filter_string, expected in _MODEL_FILTERS:
        page = env.store.search_registered_models(filter_string=filter_string)
        assert [m.name for m in page.items] == expected, filter_string
        assert page.next_page_token is None


def test_search_registered_models_projects_order_and_pages(env: Env) -> None:
    s = env.store
    _models_for_search(s)
    assert [m.name for m in s.search_registered_models(project="p1").items] == ["Alpha2", "alpha", "gamma"]
    assert s.search_registered_models(project="none").items == ()
    assert [m.name for m in s.search_registered_models(order_by=["name DESC"]).items][:3] == [
        "gamma", "delta%", "beta_1"]
    s.update_registered_model("beta", description="touched")
    assert s.search_registered_models(order_by=["last_updated_timestamp DESC"]).items[0].name == "beta"
    assert s.search_registered_models(order_by=["timestamp DESC"]).items[0].name == "beta"
    assert [m.name for m in s.search_registered_models(order_by=["creation_timestamp ASC"]).items][:2] == [
        "alpha", "Alpha2"]
    seen: list[str] = []
    token: str | None = None
    pages = 0
    while True:
        page = s.search_registered_models(max_results=3, page_token=token, order_by=["creation_timestamp"])
        seen += [m.name for m in page.items]
        pages += 1
        token = page.next_page_token
        if token is None:
            break
    assert pages == 3 and len(seen) == 7 and len(set(seen)) == 7
    exact = s.search_registered_models(max_results=7)
    assert len(exact.items) == 7 and exact.next_page_token is None


def test_search_registered_models_returns_latest_versions_and_aliases(env: Env) -> None:
    s = env.store
    s.create_registered_model("m", project="p")
    for _ in range(3):
        s.create_model_version("m", source="s3://b/x")
    s.transition_model_version_stage("m", 1, "Production")
    s.set_alias("m", "champion", 1)
    (found,) = s.search_registered_models(filter_string="name = 'm'").items
    assert found.aliases == {"champion": 1}
    assert [(v.current_stage, v.version, v.aliases) for v in found.latest_versions] == [
        ("None", 3, ()), ("Production", 1, ("champion",))]
    assert found == s.get_registered_model("m")


def test_search_model_versions(env: Env) -> None:
    s = env.store
    run_a, _ = _add_run(env.engine)
    run_b, _ = _add_run(env.engine)
    s.create_registered_model("iris", project="p")
    s.create_registered_model("iris_big", project="p")
    s.create_model_version("iris", source=f"runs:/{run_a}/model", tags={"data": "v1"})       # iris 1
    s.create_model_version("iris", source=f"runs:/{run_b}/model", tags={"data": "v2"})       # iris 2
    s.create_model_version("iris", source="s3://bucket/iris/3", run_id=run_a)               # iris 3
    s.create_model_version("iris_big", source="s3://bucket/big/1", tags={"data": "v1"})     # iris_big 1

    def versions(filter_string: str = "", **kw: object) -> list[tuple[str, int]]:
        page = s.search_model_versions(filter_string=filter_string, **kw)  # type: ignore[arg-type]  # keyword arguments from a parametrized dict
        return [(v.name, v.version) for v in page.items]

    assert versions() == [("iris_big", 1), ("iris", 3), ("iris", 2), ("iris", 1)]  # newest update first
    assert versions("name = 'iris'") == [("iris", 3), ("iris", 2), ("iris", 1)]
    assert versions("name LIKE 'iris%'", order_by=["name", "version_number"]) == [
        ("iris", 1), ("iris", 2), ("iris", 3), ("iris_big", 1)]
    assert versions("name ILIKE 'IRIS\\_%'") == [("iris_big", 1)]
    assert versions("name = 'iris' AND version = 3") == [("iris", 3)]
    assert versions("version_number > 1", order_by=["version_number DESC"]) == [("iris", 3), ("iris", 2)]
    assert versions("version <= '1'", order_by=["name ASC"]) == [("iris", 1), ("iris_big", 1)]
    assert versions(f"run_id = '{run_a}'", order_by=["version_number ASC"]) == [("iris", 1), ("iris", 3)]
    assert versions(f"run_id IN ('{run_b}', 'zzz')") == [("iris", 2)]
    assert versions("source_path = 's3://bucket/iris/3'") == [("iris", 3)]
    assert versions("source_path LIKE 's3://bucket/%'", order_by=["creation_timestamp"]) == [
        ("iris", 3), ("iris_big", 1)]
    assert versions("tags.data = 'v1'", order_by=["name"]) == [("iris", 1), ("iris_big", 1)]
    assert versions("tags.data = 'v1' AND name = 'iris'") == [("iris", 1)]
    s.update_model_version("iris", 1, description="touched")
    assert versions(order_by=["last_updated_timestamp DESC"])[0] == ("iris", 1)

    seen: list[tuple[str, int]] = []
    token: str | None = None
    while True:
        page = s.search_model_versions(max_results=3, page_token=token, order_by=["version_number"])
        seen += [(v.name, v.version) for v in page.items]
        token = page.next_page_token
        if token is None:
            break
    assert sorted(seen) == sorted(versions()) and len(seen) == 4
    with pytest.raises(InvalidParameterValue, match="filter_string: invalid attribute 'stage'"):
        s.search_model_versions(filter_string="stage = 'None'")


# ---------------------------------------------------------------- gc, events, concurrency


def test_referenced_artifact_prefixes(env: Env) -> None:
    s = env.store
    run_uuid, artifact_uri = _add_run(env.engine)
    model_id, location = _add_logged_model(env.engine, run_uuid)
    s.create_registered_model("m", project="p")
    s.create_model_version("m", source=f"runs:/{run_uuid}/model")
    s.create_model_version("m", source=f"models:/{model_id}")
    s.create_model_version("m", source=location)  # same location twice: reported once
    s.create_model_version("m", source="s3://elsewhere/model")  # outside the artifact store
    doomed = s.create_model_version("m", source="mlflow-artifacts:/9/gone/artifacts/model")
    s.delete_model_version("m", doomed.version)
    exp_run = artifact_uri.removeprefix("mlflow-artifacts:/")
    assert s.referenced_artifact_prefixes() == tuple(sorted([
        f"{exp_run}/model", location.removeprefix("mlflow-artifacts:/")]))


def test_events_are_written(env: Env) -> None:
    s = env.store
    s.create_registered_model("m", project="team")
    s.create_model_version("m", source="s3://b/1")
    s.create_model_version("m", source="s3://b/2")
    s.set_alias("m", "champion", 1)
    s.set_alias("m", "champion", 2)
    s.delete_alias("m", "champion")
    s.transition_model_version_stage("m", 2, "Staging")
    s.delete_model_version("m", 1)
    s.delete_registered_model("m")
    got = env.events.list("model", "m")
    assert [e.reason for e in got] == [
        "RegisteredModelCreated", "ModelVersionCreated", "ModelVersionCreated", "AliasSet", "AliasSet",
        "AliasDeleted", "StageTransitioned", "ModelVersionDeleted", "RegisteredModelDeleted"]
    assert {e.project for e in got} == {"team"}
    assert got[2].data["version"] == 2
    assert got[4].data == {"alias": "champion", "version": 2, "previous_version": 1}
    assert got[6].data["to"] == "Staging" and got[6].data["from"] == "None"
    quiet = SqlRegistryStore(env.engine)  # no event log: nothing is written
    quiet.create_registered_model("q", project="team")
    assert env.events.list("model", "q") == ()


_WORKER = r"""
import json, sys
from capstan.settings import Settings
from capstan.store.engine import create_store_engine
from capstan.store.registry_sql import SqlRegistryStore

engine = create_store_engine(Settings.for_home(sys.argv[1], db_url=sys.argv[2]), migrate=False)
store = SqlRegistryStore(engine)
print("ready", flush=True)
sys.stdin.readline()
print(json.dumps([store.create_model_version("race", source="s3://b/x").version for _ in range(5)]), flush=True)
"""


def test_concurrent_processes_get_distinct_version_numbers(env: Env) -> None:
    env.store.create_registered_model("race", project="p")
    procs = [subprocess.Popen([sys.executable, "-c", _WORKER, str(env.settings.home), env.settings.db_url],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(4)]
    try:
        for proc in procs:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        results = [proc.communicate(timeout=60) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    numbers: list[int] = []
    for (out, err), proc in zip(results, procs, strict=True):
        assert proc.returncode == 0, err
        numbers += json.loads(out)
    assert sorted(numbers) == list(range(1, 21))
    assert len(env.store.search_model_versions(filter_string="name = 'race'").items) == 20


def test_search_model_versions_within_one_project(env: Env) -> None:
    s = env.store
    s.create_registered_model("ours", project="team-a")
    s.create_registered_model("theirs", project="team-b")
    s.create_model_version("ours", source="s3://b/ours")
    s.create_model_version("theirs", source="s3://b/theirs")
    assert [v.name for v in s.search_model_versions(project="team-a").items] == ["ours"]
    assert [v.name for v in s.search_model_versions(project="nobody").items] == []
    assert {v.name for v in s.search_model_versions().items} == {"ours", "theirs"}
