"""Project isolation through model-version sources and artifact locations, against a real server.

Project ``pa`` belongs to alice, ``pb`` to bob; carol edits ``pb`` and reads ``pa``. Bob must not reach ``pa``'s
files by registering a version in ``pb`` whose source points into ``pa``, nor by giving a ``pb`` experiment an
artifact location inside ``pa``'s tree; bad locations, sources and artifact paths are refused with a 400.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from capstan.errors import InvalidParameterValue
from capstan.sdk.client import Client
from capstan.services import Services
from capstan.settings import Settings
from helpers.server import ServerProcess, start_server

MLFLOW = "/api/2.0/mlflow"
ARTIFACTS = "/api/2.0/mlflow-artifacts/artifacts"


@dataclass
class World:
    server: ServerProcess
    tokens: dict[str, str]
    exp_a: str = ""
    run_a: str = ""
    model_a: str = ""  # logged model id in pa
    exp_b: str = ""
    run_b: str = ""

    def call(self, who: str, method: str, path: str, *, project: str = "pb", **kwargs: object) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.tokens[who]}", "X-Capstan-Project": project}
        return httpx.request(method, f"{self.server.url}{path}", headers=headers, timeout=30,
                             **kwargs)  # type: ignore[arg-type]  # json=/params=/content= pass through

    def ok(self, who: str, method: str, path: str, *, project: str = "pb", **kwargs: object) -> httpx.Response:
        response = self.call(who, method, path, project=project, **kwargs)
        assert response.status_code < 300, response.text
        return response


def _error(response: httpx.Response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error_code"] == code, body
    message: str = body["message"]
    return message


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    home = tmp_path_factory.mktemp("isolation") / "home"
    services = Services.open(Settings.for_home(home))
    auth = services.auth
    auth.create_user("root", admin=True)
    for name, grants in (("alice", [("pa", "editor")]), ("bob", [("pb", "editor")]),
                         ("carol", [("pb", "editor"), ("pa", "viewer")])):
        auth.create_user(name)
        for project, role in grants:
            auth.grant(name, project, role)
    tokens = {name: auth.create_token(name).secret for name in ("root", "alice", "bob", "carol")}
    services.close()
    with start_server(home) as server:
        w = World(server, tokens)
        w.exp_a = w.ok("alice", "POST", f"{MLFLOW}/experiments/create", project="pa",
                       json={"name": "secret-a"}).json()["experiment_id"]
        w.run_a = w.ok("alice", "POST", f"{MLFLOW}/runs/create", project="pa",
                       json={"experiment_id": w.exp_a}).json()["run"]["info"]["run_id"]
        w.ok("alice", "PUT", f"{ARTIFACTS}/{w.exp_a}/{w.run_a}/artifacts/model/secret.txt", project="pa",
             content=b"alice only")
        w.model_a = w.ok("alice", "POST", f"{MLFLOW}/logged-models", project="pa",
                         json={"experiment_id": w.exp_a, "name": "lm"}).json()["model"]["info"]["model_id"]
        w.ok("alice", "POST", f"{MLFLOW}/registered-models/create", project="pa", json={"name": "modelA"})
        w.ok("alice", "POST", f"{MLFLOW}/model-versions/create", project="pa",
             json={"name": "modelA", "source": f"runs:/{w.run_a}/model", "run_id": w.run_a})
        w.ok("alice", "POST", f"{MLFLOW}/registered-models/alias", project="pa",
             json={"name": "modelA", "alias": "champion", "version": "1"})
        w.exp_b = w.ok("bob", "POST", f"{MLFLOW}/experiments/create", json={"name": "own-b"}).json()["experiment_id"]
        w.run_b = w.ok("bob", "POST", f"{MLFLOW}/runs/create",
                       json={"experiment_id": w.exp_b}).json()["run"]["info"]["run_id"]
        w.ok("bob", "POST", f"{MLFLOW}/registered-models/create", json={"name": "modelB"})
        yield w


def _cross_sources(w: World) -> dict[str, dict[str, str]]:
    return {
        "runs": {"source": f"runs:/{w.run_a}/model"},
        "mlflow-artifacts": {"source": f"mlflow-artifacts:/{w.exp_a}/{w.run_a}/artifacts/model"},
        "mlflow-artifacts-host": {"source": f"mlflow-artifacts://elsewhere:9000/{w.exp_a}/{w.run_a}/artifacts"},
        "models-version": {"source": "models:/modelA/1"},
        "models-alias": {"source": "models:/modelA@champion"},
        "logged-model-uri": {"source": f"models:/{w.model_a}"},
        "run_id-lineage": {"source": "s3://bucket/b-model", "run_id": w.run_a},
        "model_id-lineage": {"source": "s3://bucket/b-model", "model_id": w.model_a},
    }


SOURCE_KINDS = ("runs", "mlflow-artifacts", "mlflow-artifacts-host", "models-version", "models-alias",
                "logged-model-uri", "run_id-lineage", "model_id-lineage")


def _version_count(w: World, name: str) -> int:
    found = w.ok("root", "GET", f"{MLFLOW}/model-versions/search", params={"filter": f"name = '{name}'"})
    return len(found.json().get("model_versions", []))


@pytest.mark.parametrize("kind", SOURCE_KINDS)
def test_mlflow_version_source_in_another_project_is_refused(world: World, kind: str) -> None:
    before = _version_count(world, "modelB")
    body = {"name": "modelB", **_cross_sources(world)[kind]}
    message = _error(world.call("bob", "POST", f"{MLFLOW}/model-versions/create", json=body),
                     403, "PERMISSION_DENIED")
    assert "'pa'" in message and "read" in message
    assert _version_count(world, "modelB") == before


@pytest.mark.parametrize("kind", SOURCE_KINDS)
def test_api_v1_version_source_in_another_project_is_refused(world: World, kind: str) -> None:
    before = _version_count(world, "modelB")
    response = world.call("bob", "POST", "/api/v1/registered-models/modelB/versions",
                          json=_cross_sources(world)[kind])
    _error(response, 403, "PERMISSION_DENIED")
    assert _version_count(world, "modelB") == before


def test_reader_of_the_source_project_may_register_and_loses_access_with_the_role(world: World) -> None:
    world.ok("carol", "POST", f"{MLFLOW}/registered-models/create", json={"name": "carolB"})
    world.ok("carol", "POST", f"{MLFLOW}/model-versions/create",
             json={"name": "carolB", "source": f"runs:/{world.run_a}/model", "run_id": world.run_a})
    files = "/api/v1/registered-models/carolB/versions/1/artifacts"
    assert world.ok("carol", "GET", f"{files}/secret.txt").content == b"alice only"
    assert world.ok("carol", "GET", f"{MLFLOW}/model-versions/get-download-uri",
                    params={"name": "carolB", "version": "1"}).json()["artifact_uri"].endswith("/model")
    # Bob reads carolB (his project) but not pa, where its files are: every read-through route refuses.
    _error(world.call("bob", "GET", f"{files}/secret.txt"), 403, "PERMISSION_DENIED")
    _error(world.call("bob", "GET", files), 403, "PERMISSION_DENIED")
    _error(world.call("bob", "GET", f"{MLFLOW}/model-versions/get-download-uri",
                      params={"name": "carolB", "version": "1"}), 403, "PERMISSION_DENIED")
    # Rights are checked again on every read: without her role in pa, carol is refused too.
    world.ok("root", "DELETE", "/api/v1/projects/pa/members/carol", project="pa")
    try:
        _error(world.call("carol", "GET", f"{files}/secret.txt"), 403, "PERMISSION_DENIED")
        _error(world.call("carol", "GET", f"{MLFLOW}/model-versions/get-download-uri",
                          params={"name": "carolB", "version": "1"}), 403, "PERMISSION_DENIED")
    finally:
        world.ok("root", "PUT", "/api/v1/projects/pa/members/carol", project="pa", json={"role": "viewer"})


def test_version_from_own_project_still_works(world: World) -> None:
    world.ok("bob", "PUT", f"{ARTIFACTS}/{world.exp_b}/{world.run_b}/artifacts/m/weights.bin", content=b"bb")
    world.ok("bob", "POST", f"{MLFLOW}/model-versions/create",
             json={"name": "modelB", "source": f"runs:/{world.run_b}/m", "run_id": world.run_b})
    number = world.ok("bob", "GET", f"{MLFLOW}/registered-models/get-latest-versions",
                      params={"name": "modelB"}).json()["model_versions"][-1]["version"]
    got = world.ok("bob", "GET", f"/api/v1/registered-models/modelB/versions/{number}/artifacts/weights.bin")
    assert got.content == b"bb"


# -- artifact locations -------------------------------------------------------------------------------------
def _bad_locations(w: World) -> list[str]:
    return [
        f"mlflow-artifacts:/{w.exp_a}/{w.run_a}/artifacts",
        f"mlflow-artifacts://host:9000/{w.exp_a}",
        "file:///etc",
        "/etc",
        "../../etc",
        f"../{w.exp_a}",
        "runs:/abc/model",
        "s3://bucket/a/../../other",
        "s3://bucket/a/..%2f..%2fother",
        "s3://bucket/a\x00b",
    ]


def _experiment_names(w: World, project: str) -> set[str]:
    found = w.ok("root", "POST", f"{MLFLOW}/experiments/search", project=project,
                 json={"max_results": 1000, "view_type": "ALL"})
    return {e["name"] for e in found.json().get("experiments", [])}


def test_bad_artifact_locations_are_refused_on_the_mlflow_route(world: World) -> None:
    for index, location in enumerate(_bad_locations(world)):
        response = world.call("bob", "POST", f"{MLFLOW}/experiments/create",
                              json={"name": f"mlflow-bad-{index}", "artifact_location": location})
        assert "artifact_location" in _error(response, 400, "INVALID_PARAMETER_VALUE"), location
    assert not any(n.startswith("mlflow-bad-") for n in _experiment_names(world, "pb"))


def test_bad_artifact_locations_are_refused_on_api_v1(world: World) -> None:
    for index, location in enumerate(_bad_locations(world)):
        response = world.call("bob", "POST", "/api/v1/experiments",
                              json={"name": f"v1-bad-{index}", "artifact_location": location})
        assert "artifact_location" in _error(response, 400, "INVALID_PARAMETER_VALUE"), location
    assert not any(n.startswith("v1-bad-") for n in _experiment_names(world, "pb"))


def test_bad_artifact_locations_are_refused_by_the_sdk(world: World) -> None:
    local = Client(Settings.for_home(world.server.home, project="pb"))
    remote = Client(Settings.for_home(world.server.home, project="pb", url=world.server.url,
                                      token=world.tokens["bob"]))
    try:
        for client, label in ((local, "local"), (remote, "http")):
            for index, location in enumerate(_bad_locations(world)):
                with pytest.raises(InvalidParameterValue, match="artifact_location"):
                    client.create_experiment(f"sdk-{label}-bad-{index}", artifact_location=location)
    finally:
        local.close()
        remote.close()
    assert not any(n.startswith("sdk-") for n in _experiment_names(world, "pb"))


def test_relative_location_is_resolved_inside_the_experiments_own_tree(world: World) -> None:
    exp = world.ok("bob", "POST", f"{MLFLOW}/experiments/create",
                   json={"name": "relative", "artifact_location": "my_location"}).json()["experiment_id"]
    got = world.ok("bob", "GET", f"{MLFLOW}/experiments/get", params={"experiment_id": exp}).json()
    assert got["experiment"]["artifact_location"] == f"mlflow-artifacts:/{exp}/my_location"
    run = world.ok("bob", "POST", f"{MLFLOW}/runs/create", json={"experiment_id": exp}).json()["run"]["info"]
    assert run["artifact_uri"] == f"mlflow-artifacts:/{exp}/my_location/{run['run_id']}/artifacts"
    world.ok("bob", "PUT", f"/api/v1/runs/{run['run_id']}/artifacts/a.txt", content=b"rel")
    assert world.ok("bob", "GET", f"/api/v1/runs/{run['run_id']}/artifacts/a.txt").content == b"rel"
    external = world.ok("bob", "POST", "/api/v1/experiments",
                        json={"name": "external", "artifact_location": "s3://bucket/b/"}).json()["experiment_id"]
    got = world.ok("bob", "GET", f"{MLFLOW}/experiments/get", params={"experiment_id": external}).json()
    assert got["experiment"]["artifact_location"] == "s3://bucket/b/"


# -- bad sources --------------------------------------------------------------------------------------------
BAD_SOURCES = (
    ("/etc", "To use a local path as a model version"),
    ("file:///etc/passwd", "To use a local path as a model version"),
    ("mlflow-artifacts://host:9000/models/../../../", "If supplying a source as an http, https,"),
    ("http://host:9000/models/../../../", "If supplying a source as an http, https,"),
    ("mlflow-artifacts://host:9000/models/..%2f..%2fartifacts", "If supplying a source as an http, https,"),
    ("mlflow-artifacts://host:9000/models/artifact%00", "If supplying a source as an http, https,"),
    ("dbfs:/run/artifacts/a%3f/../../../../", "Invalid model version source"),
    ("s3://bucket/a/./b", "If supplying a source as an http, https,"),
)


@pytest.mark.parametrize(("source", "wording"), BAD_SOURCES)
def test_bad_sources_are_refused_and_nothing_is_registered(world: World, source: str, wording: str) -> None:
    before = _version_count(world, "modelB")
    message = _error(world.call("bob", "POST", f"{MLFLOW}/model-versions/create",
                                json={"name": "modelB", "source": source}), 400, "INVALID_PARAMETER_VALUE")
    assert wording in message
    _error(world.call("bob", "POST", "/api/v1/registered-models/modelB/versions", json={"source": source}),
           400, "INVALID_PARAMETER_VALUE")
    assert _version_count(world, "modelB") == before


def test_artifact_source_must_name_an_experiment(world: World) -> None:
    response = world.call("bob", "POST", f"{MLFLOW}/model-versions/create",
                          json={"name": "modelB", "source": "mlflow-artifacts:/models"})
    assert "experiment id" in _error(response, 400, "INVALID_PARAMETER_VALUE")


# -- artifact paths -----------------------------------------------------------------------------------------
def test_leading_zero_experiment_id_is_refused(world: World) -> None:
    for path in (f"0{world.exp_b}/{world.run_b}/artifacts/x.txt", f"00{world.exp_b}/{world.run_b}/artifacts/x.txt"):
        message = _error(world.call("bob", "PUT", f"{ARTIFACTS}/{path}", content=b"zz"), 400,
                         "INVALID_PARAMETER_VALUE")
        assert "leading zeros" in message
        _error(world.call("bob", "GET", f"{ARTIFACTS}/{path}"), 400, "INVALID_PARAMETER_VALUE")
        _error(world.call("bob", "GET", ARTIFACTS, params={"path": path}), 400, "INVALID_PARAMETER_VALUE")
    canonical = f"{world.exp_b}/{world.run_b}/artifacts/zero/x.txt"
    world.ok("bob", "PUT", f"{ARTIFACTS}/{canonical}", content=b"zz")
    assert world.ok("bob", "GET", f"{ARTIFACTS}/{canonical}").content == b"zz"


def test_put_with_a_trailing_slash_does_not_create_a_file_over_a_folder(world: World) -> None:
    root = f"{world.exp_b}/{world.run_b}/artifacts"
    for path in (f"{root}/", f"{root}/sub/", root):
        _error(world.call("bob", "PUT", f"{ARTIFACTS}/{path}", content=b"{}"), 400, "INVALID_PARAMETER_VALUE")
    _error(world.call("bob", "PUT", f"/api/v1/runs/{world.run_b}/artifacts/sub/", content=b"{}"),
           400, "INVALID_PARAMETER_VALUE")
    world.ok("bob", "PUT", f"{ARTIFACTS}/{root}/dir/file.txt", content=b"f")
    _error(world.call("bob", "PUT", f"{ARTIFACTS}/{root}/dir", content=b"{}"), 400, "INVALID_PARAMETER_VALUE")
    _error(world.call("bob", "PUT", f"{ARTIFACTS}/{root}/dir/file.txt/inner", content=b"{}"),
           400, "INVALID_PARAMETER_VALUE")
    listed = world.ok("bob", "GET", f"{MLFLOW}/artifacts/list", params={"run_id": world.run_b}).json()
    assert {(f["path"], f["is_dir"]) for f in listed["files"]} >= {("dir", True)}
    assert all(not (f["path"] == "" or f.get("file_size") == 2) for f in listed["files"])


# -- rows written before these checks existed ----------------------------------------------------------------
def test_older_rows_cannot_reach_another_project(world: World) -> None:
    """A version with a local source and an experiment whose location points into pa, as an older server could
    store them: the read-through and write routes still refuse."""
    from sqlalchemy import select, update

    from capstan.store.schema import experiments, model_versions, registered_models

    exp = world.ok("bob", "POST", f"{MLFLOW}/experiments/create", json={"name": "legacy"}).json()["experiment_id"]
    world.ok("bob", "POST", f"{MLFLOW}/registered-models/create", json={"name": "legacyB"})
    world.ok("bob", "POST", f"{MLFLOW}/model-versions/create",
             json={"name": "legacyB", "source": "s3://bucket/legacy"})
    services = Services.open(Settings.for_home(world.server.home))
    try:
        with services.engine.begin() as conn:
            model_id = conn.execute(select(registered_models.c.id)
                                    .where(registered_models.c.name == "legacyB")).scalar_one()
            conn.execute(update(model_versions).where(model_versions.c.model_id == model_id)
                         .values(source="/etc", storage_location="/etc"))
            conn.execute(update(experiments).where(experiments.c.id == int(exp))
                         .values(artifact_location=f"mlflow-artifacts:/{world.exp_a}"))
    finally:
        services.close()
    message = _error(world.call("bob", "GET", f"{MLFLOW}/model-versions/get-download-uri",
                                params={"name": "legacyB", "version": "1"}), 400, "INVALID_PARAMETER_VALUE")
    assert "/etc" in message
    _error(world.call("bob", "GET", "/api/v1/registered-models/legacyB/versions/1/artifacts"),
           400, "INVALID_PARAMETER_VALUE")
    run = world.ok("bob", "POST", f"{MLFLOW}/runs/create", json={"experiment_id": exp}).json()["run"]["info"]
    assert run["artifact_uri"].startswith(f"mlflow-artifacts:/{world.exp_a}/")
    _error(world.call("bob", "PUT", f"/api/v1/runs/{run['run_id']}/artifacts/planted.txt", content=b"x"),
           403, "PERMISSION_DENIED")
    _error(world.call("bob", "GET", f"/api/v1/runs/{run['run_id']}/artifacts"), 403, "PERMISSION_DENIED")
    _error(world.call("bob", "GET", f"{MLFLOW}/artifacts/list", params={"run_id": run["run_id"]}),
           403, "PERMISSION_DENIED")
