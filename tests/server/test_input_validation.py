"""Hostile input gets a 4xx naming the field, never a 5xx: big integers, control and bidi characters in names,
loose JSON types, non-JSON ``log_dict`` values; and the OpenAPI document states the limits the stores enforce."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import capstan
from capstan.errors import InvalidParameterValue
from capstan.names import check_characters, forbidden_character
from capstan.sdk import fluent as sdk
from capstan.services import Services
from capstan.settings import Settings
from capstan.store import registry_checks
from capstan.store.tracking_validation import MAX_KEY_LENGTH, MAX_NAME_LENGTH, MAX_RUN_NAME_LENGTH
from helpers.server import ServerProcess, start_server

HUGE = "956969569694412872404172800"
ABOVE_INT64 = str(2**63)
BAD_NAMES = ["nul\x00name", "evil\u202eevil", "bell\x07", "c1\x85x", "iso\u2066late"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with start_server(tmp_path_factory.mktemp("input-validation")) as srv:
        yield srv


@pytest.fixture(scope="module")
def model(server: ServerProcess) -> str:
    """A registered model with one version."""
    api = f"{server.url}/api/v1"
    assert httpx.post(f"{api}/registered-models", json={"name": "iv-model"}).status_code == 201
    experiment_id = httpx.post(f"{api}/experiments", json={"name": "iv-exp"}).json()["experiment_id"]
    run_id = httpx.post(f"{api}/runs", json={"experiment_id": experiment_id}).json()["info"]["run_id"]
    version = httpx.post(f"{api}/registered-models/iv-model/versions", json={"source": f"runs:/{run_id}/model",
                                                                            "run_id": run_id})
    assert version.status_code == 201, version.text
    return "iv-model"


def assert_400(response: httpx.Response, field: str) -> dict[str, Any]:
    assert response.status_code == 400, f"{response.status_code} {response.text}"
    body: dict[str, Any] = response.json()
    assert body["error_code"] == "INVALID_PARAMETER_VALUE"
    assert field in body["message"], body["message"]
    return body


# -- big numbers ----------------------------------------------------------------------------------------------
def test_alias_with_a_version_above_int64_is_400(server: ServerProcess, model: str) -> None:
    url = f"{server.url}/api/v1/registered-models/{model}/aliases/champion"
    assert_400(httpx.put(url, content=f'{{"version": {HUGE}}}', headers={"content-type": "application/json"}),
               "version")
    assert httpx.put(url, json={"version": 1}).status_code == 204


@pytest.mark.parametrize("version", [ABOVE_INT64, HUGE, "9" * 5000])
def test_version_path_above_int64_is_400(server: ServerProcess, model: str, version: str) -> None:
    assert_400(httpx.get(f"{server.url}/api/v1/registered-models/{model}/versions/{version}"), "version")
    assert_400(httpx.get(f"{server.url}/api/v1/registered-models/{model}/versions/{version}/artifacts"), "version")


@pytest.mark.parametrize("version", [ABOVE_INT64, HUGE, "9" * 5000])
def test_mlflow_model_version_above_int64_is_400(server: ServerProcess, model: str, version: str) -> None:
    response = httpx.get(f"{server.url}/api/2.0/mlflow/model-versions/get", params={"name": model, "version": version})
    assert_400(response, "version")


def test_mlflow_integers_are_bounded_to_int64(server: ServerProcess) -> None:
    mlflow = f"{server.url}/api/2.0/mlflow"
    experiment_id = httpx.post(f"{mlflow}/experiments/create", json={"name": "iv-mlflow"}).json()["experiment_id"]
    run_id = httpx.post(f"{mlflow}/runs/create", json={"experiment_id": experiment_id}).json()["run"]["info"]["run_id"]
    for field, value in (("timestamp", 2**63), ("step", -(2**63) - 1), ("timestamp", "9" * 5000)):
        metric = {"run_id": run_id, "key": "m", "value": 1.0, "timestamp": 1, field: value}
        assert_400(httpx.post(f"{mlflow}/runs/log-metric", json=metric), field)
    ok = {"run_id": run_id, "key": "m", "value": 1.0, "timestamp": 2**63 - 1, "step": -(2**63 - 1)}
    assert httpx.post(f"{mlflow}/runs/log-metric", json=ok).status_code == 200
    assert_400(httpx.post(f"{mlflow}/experiments/search", json={"max_results": HUGE}), "max_results")


def test_api_v1_metric_integers_are_bounded(server: ServerProcess) -> None:
    api = f"{server.url}/api/v1"
    experiment_id = httpx.post(f"{api}/experiments", json={"name": "iv-metrics"}).json()["experiment_id"]
    run_id = httpx.post(f"{api}/runs", json={"experiment_id": experiment_id}).json()["info"]["run_id"]
    for bad in ({"timestamp": 2**63}, {"timestamp": -1}, {"step": 2**63}, {"timestamp": "5"}, {"timestamp": True}):
        metric = {"key": "m", "value": 1.0, "timestamp": 5, **bad}
        assert_400(httpx.post(f"{api}/runs/{run_id}/batch", json={"metrics": [metric]}), next(iter(bad)))
    # JSON Schema counts 5.0 as an integer, so the API does too; "NaN" is a documented metric value.
    good = {"key": "m", "value": "NaN", "timestamp": 5.0, "step": 2**63 - 1}
    assert httpx.post(f"{api}/runs/{run_id}/batch", json={"metrics": [good]}).status_code == 204
    assert_400(httpx.get(f"{api}/runs/{run_id}/metrics/m", params={"max_results": HUGE}), "max_results")


# -- names --------------------------------------------------------------------------------------------------
def test_name_rule() -> None:
    for name in BAD_NAMES:
        assert forbidden_character(name) is not None
        with pytest.raises(InvalidParameterValue, match=r"^experiment: .*U\+"):
            check_characters(name, "experiment")
    for name in ("plain", "with space", "ünïcödé-名前", "emoji 🚀", "a/b:c"):
        assert check_characters(name, "x") == name


@pytest.mark.parametrize("name", BAD_NAMES)
def test_names_with_control_or_bidi_characters_are_refused_everywhere(server: ServerProcess, name: str) -> None:
    api, mlflow = f"{server.url}/api/v1", f"{server.url}/api/2.0/mlflow"
    assert_400(httpx.post(f"{api}/experiments", json={"name": name}), "name")
    assert_400(httpx.post(f"{api}/registered-models", json={"name": name}), "name")
    assert_400(httpx.post(f"{mlflow}/experiments/create", json={"name": name}), "name")
    assert_400(httpx.post(f"{mlflow}/registered-models/create", json={"name": name}), "name")
    experiment_id = httpx.post(f"{mlflow}/experiments/create", json={"name": f"ok-{len(name)}-{ord(name[-1])}"})
    created = experiment_id.json().get("experiment_id") or httpx.get(
        f"{mlflow}/experiments/get-by-name",
        params={"experiment_name": f"ok-{len(name)}-{ord(name[-1])}"}).json()["experiment"]["experiment_id"]
    assert_400(httpx.post(f"{mlflow}/runs/create", json={"experiment_id": created, "run_name": name}), "run_name")
    if all(0x20 <= ord(ch) < 0x100 and ch != "\x7f" for ch in name.replace("\x85", "")):  # sendable as a header
        project = [(b"X-Capstan-Project", name.encode("latin-1"))]
        assert_400(httpx.post(f"{api}/experiments", json={"name": "x"}, headers=project), "project")
    for listed in httpx.get(f"{api}/experiments").json()["experiments"]:
        assert forbidden_character(listed["name"]) is None


def test_local_stores_refuse_the_same_names(tmp_path: Path) -> None:
    services = Services.open(Settings.for_home(tmp_path / "home"))
    try:
        for name in BAD_NAMES:
            with pytest.raises(InvalidParameterValue, match="name"):
                services.tracking.create_experiment(name, project="default")
            with pytest.raises(InvalidParameterValue, match="name"):
                services.registry.create_registered_model(name, project="default")
            with pytest.raises(InvalidParameterValue, match="project"):
                services.auth.grant("nobody", name, "viewer")
    finally:
        services.close()


# -- strict JSON types -----------------------------------------------------------------------------------
def test_booleans_are_strict(server: ServerProcess) -> None:
    api = f"{server.url}/api/v1"
    for value in (0.0, 0, "false", "yes"):
        assert_400(httpx.post(f"{api}/users", json={"name": "strict-user", "admin": value}), "admin")
    assert httpx.get(f"{api}/users/strict-user").status_code == 404  # nothing was created
    assert_400(httpx.post(f"{api}/pipelines/runs", json={"pipeline": "x.py", "no_cache": 1}), "no_cache")
    assert_400(httpx.post(f"{api}/experiments", json={"name": 5}), "name")


# -- the OpenAPI document --------------------------------------------------------------------------------
def test_openapi_limits_are_the_stores(server: ServerProcess) -> None:
    document = httpx.get(f"{server.url}/api/v1/openapi.json").json()
    schemas = document["components"]["schemas"]
    assert schemas["ExperimentCreate"]["properties"]["name"]["maxLength"] == MAX_NAME_LENGTH
    assert schemas["RegisteredModelCreate"]["properties"]["name"]["maxLength"] == registry_checks.MAX_NAME_LENGTH
    assert schemas["KeyValue"]["properties"]["key"]["maxLength"] == MAX_KEY_LENGTH
    run_name = schemas["RunCreate"]["properties"]["run_name"]["anyOf"][0]
    assert run_name["maxLength"] == MAX_RUN_NAME_LENGTH and "pattern" in run_name
    step = schemas["MetricIn"]["properties"]["step"]
    assert step["exclusiveMaximum"] == 2**63 and step["exclusiveMinimum"] == -(2**63)
    alias = schemas["AliasSet"]["properties"]["version"]
    assert alias["minimum"] == 1 and alias["exclusiveMaximum"] == 2**63
    search = document["paths"]["/api/v1/registered-models"]["get"]
    max_results = next(p for p in search["parameters"] if p["name"] == "max_results")
    assert max_results["schema"]["maximum"] == registry_checks.MAX_MODELS_PER_PAGE
    # Validation errors answer 400, and the document says so.
    create = document["paths"]["/api/v1/experiments"]["post"]["responses"]
    assert "422" not in create and "400" in create
    assert_400(httpx.post(f"{server.url}/api/v1/experiments", json={}), "name")


def test_405_lists_every_method_of_the_path(server: ServerProcess) -> None:
    response = httpx.request("OPTIONS", f"{server.url}/api/v1/experiments/1")
    assert response.status_code == 405
    assert response.headers["allow"] == "DELETE, GET, PATCH"
    upload = httpx.request("POST", f"{server.url}/api/v1/runs/r/artifacts/a/b.txt")
    assert upload.headers["allow"] == "GET, PUT"


# -- log_dict -------------------------------------------------------------------------------------------
def test_log_dict_refuses_values_that_are_not_json(tmp_path: Path) -> None:
    sdk.configure(Settings.for_home(tmp_path / "home"))
    try:
        with capstan.start_run(experiment="iv-log-dict") as run:
            with pytest.raises(InvalidParameterValue, match=r"a\.b\[1\].*object"):
                capstan.log_dict({"a": {"b": [1, object()]}}, "bad.json")
            with pytest.raises(InvalidParameterValue, match="key"):
                capstan.log_dict({(1, 2): "tuple key"}, "bad.json")
            circular: list[Any] = []
            circular.append(circular)
            with pytest.raises(InvalidParameterValue, match="circular"):
                capstan.log_dict(circular, "bad.json")
            capstan.log_dict({"a": [1, 2.5, None, True, "x"]}, "good.json")
            names = {item.path for item in capstan.Client().list_artifacts(run.run_id)}
        assert names == {"good.json"}
    finally:
        sdk.configure(Settings.for_home(tmp_path / "idle"))
