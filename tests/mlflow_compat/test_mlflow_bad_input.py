"""Bad input through the mlflow client and raw HTTP: MLflow's error codes and statuses, the field named, and
nothing already stored lost."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest


def _error(resp: httpx.Response, status: int, code: str) -> str:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert body["error_code"] == code, body
    message: str = body["message"]
    return message


@pytest.fixture
def run_id(mlflow_env: Any, client: Any, unique: str) -> str:
    exp_id = mlflow_env.create_experiment(f"compat-bad-{unique}")
    run: str = client.create_run(exp_id).info.run_id
    return run


def test_unknown_objects_via_client(mlflow_env: Any, client: Any) -> None:
    exc_type = mlflow_env.exceptions.MlflowException
    calls: list[Callable[[], object]] = [
        lambda: client.get_experiment("987654321"), lambda: client.get_run("0" * 32),
        lambda: client.get_registered_model("no-such-model"), lambda: client.get_model_version("no-such-model", "1"),
        lambda: client.get_logged_model("m-" + "0" * 32), lambda: client.log_metric("f" * 32, "m", 1.0)]
    for call in calls:
        with pytest.raises(exc_type) as exc:
            call()
        assert exc.value.error_code == "RESOURCE_DOES_NOT_EXIST"


def test_unknown_objects_raw(server_url: str) -> None:
    api = f"{server_url}/api/2.0/mlflow"
    message = _error(httpx.get(f"{api}/experiments/get", params={"experiment_id": "987654321"}), 404,
                     "RESOURCE_DOES_NOT_EXIST")
    assert "987654321" in message
    _error(httpx.get(f"{api}/runs/get", params={"run_id": "0" * 32}), 404, "RESOURCE_DOES_NOT_EXIST")
    _error(httpx.post(f"{api}/runs/log-metric", json={"run_id": "0" * 32, "key": "m", "value": 1,
                                                     "timestamp": 1}), 404, "RESOURCE_DOES_NOT_EXIST")
    _error(httpx.get(f"{api}/registered-models/get", params={"name": "no-such"}), 404, "RESOURCE_DOES_NOT_EXIST")
    _error(httpx.get(f"{api}/experiments/get-by-name", params={"experiment_name": "no-such"}), 404,
           "RESOURCE_DOES_NOT_EXIST")
    _error(httpx.get(f"{server_url}/api/2.0/mlflow-artifacts/artifacts/987654321/x/artifacts/f.txt"), 404,
           "RESOURCE_DOES_NOT_EXIST")
    _error(httpx.get(f"{api}/no/such/endpoint"), 404, "ENDPOINT_NOT_FOUND")


def test_invalid_metric_values_raw(server_url: str, run_id: str, client: Any) -> None:
    api = f"{server_url}/api/2.0/mlflow/runs/log-metric"
    now = int(time.time() * 1000)
    for bad in ("abc", "", True, None, [1], {"x": 1}):
        message = _error(httpx.post(api, json={"run_id": run_id, "key": "m", "value": bad, "timestamp": now}),
                         400, "INVALID_PARAMETER_VALUE")
        assert "'value'" in message, message
    message = _error(httpx.post(api, json={"run_id": run_id, "key": "m", "value": 1.0}), 400,
                     "INVALID_PARAMETER_VALUE")
    assert "'timestamp'" in message
    message = _error(httpx.post(api, json={"run_id": run_id, "key": "m", "value": 1.0, "timestamp": "soon"}),
                     400, "INVALID_PARAMETER_VALUE")
    assert "'timestamp'" in message
    message = _error(httpx.post(api, json={"run_id": run_id, "key": "m", "value": 1.0, "timestamp": now,
                                           "step": 1.5}), 400, "INVALID_PARAMETER_VALUE")
    assert "'step'" in message
    # proto-JSON forms are accepted: int64 as strings, doubles as "NaN"/"Infinity" strings
    for value in ("NaN", "Infinity", "-Infinity", "2.5", 3):
        resp = httpx.post(api, json={"run_id": run_id, "key": "ok", "value": value, "timestamp": str(now),
                                     "step": "7"})
        assert resp.status_code == 200, resp.text
    assert len(client.get_metric_history(run_id, "ok")) == 5
    assert client.get_run(run_id).data.metrics.get("m") is None  # nothing half-stored


def test_bad_keys_and_long_values_via_client(mlflow_env: Any, client: Any, run_id: str) -> None:
    exc_type = mlflow_env.exceptions.MlflowException
    with pytest.raises(exc_type) as exc:
        client.log_param(run_id, "long", "x" * 6001)
    assert exc.value.error_code == "INVALID_PARAMETER_VALUE" and "value" in exc.value.message
    with pytest.raises(exc_type) as exc:
        client.log_metric(run_id, "bad key!", 1.0)
    assert exc.value.error_code == "INVALID_PARAMETER_VALUE" and "key" in exc.value.message
    with pytest.raises(exc_type) as exc:
        client.set_tag(run_id, "bad*tag", "v")
    assert exc.value.error_code == "INVALID_PARAMETER_VALUE" and "key" in exc.value.message
    with pytest.raises(exc_type) as exc:
        client.log_param(run_id, "k" * 251, "v")
    assert exc.value.error_code == "INVALID_PARAMETER_VALUE" and "key" in exc.value.message
    data = client.get_run(run_id).data
    assert data.params == {} and data.metrics == {} and not any(k.startswith("bad") for k in data.tags)


def test_bad_keys_raw_name_the_field(server_url: str, run_id: str) -> None:
    api = f"{server_url}/api/2.0/mlflow/runs"
    message = _error(httpx.post(f"{api}/log-parameter", json={"run_id": run_id, "key": "p", "value": "x" * 6001}),
                     400, "INVALID_PARAMETER_VALUE")
    assert message.startswith("value"), message
    message = _error(httpx.post(f"{api}/log-metric", json={"run_id": run_id, "key": "a$b", "value": 1,
                                                          "timestamp": 1}), 400, "INVALID_PARAMETER_VALUE")
    assert message.startswith("key"), message
    message = _error(httpx.post(f"{api}/log-batch", json={
        "run_id": run_id, "metrics": [{"key": "fine", "value": 1, "timestamp": 1},
                                      {"key": "fine2", "value": "oops", "timestamp": 1}]}),
        400, "INVALID_PARAMETER_VALUE")
    assert "metrics[1].value" in message
    message = _error(httpx.post(f"{api}/log-batch", json={
        "run_id": run_id, "metrics": [{"key": "fine", "value": 1, "timestamp": 1}],
        "params": [{"key": "bad/../key", "value": "v"}]}), 400, "INVALID_PARAMETER_VALUE")
    assert "params[0].key" in message
    # an atomic batch: the valid metric of the rejected batch was not stored
    run = httpx.get(f"{api}/get", params={"run_id": run_id}).json()["run"]
    assert run["data"]["metrics"] == [] and run["data"]["params"] == []
    too_many = [{"key": f"m{i}", "value": 1, "timestamp": 1} for i in range(1001)]
    message = _error(httpx.post(f"{api}/log-batch", json={"run_id": run_id, "metrics": too_many}), 400,
                     "INVALID_PARAMETER_VALUE")
    assert "metrics" in message


def test_param_relog_rejected(mlflow_env: Any, client: Any, run_id: str) -> None:
    client.log_param(run_id, "lr", "0.1")
    client.log_param(run_id, "lr", "0.1")  # the same value again is fine, as in MLflow
    with pytest.raises(mlflow_env.exceptions.MlflowException) as exc:
        client.log_param(run_id, "lr", "0.2")
    assert exc.value.error_code == "INVALID_PARAMETER_VALUE"
    assert "lr" in exc.value.message
    assert client.get_run(run_id).data.params == {"lr": "0.1"}


def test_malformed_requests_raw(server_url: str, run_id: str) -> None:
    api = f"{server_url}/api/2.0/mlflow"
    message = _error(httpx.post(f"{api}/runs/log-metric", content=b"{not json",
                                headers={"Content-Type": "application/json"}), 400, "INVALID_PARAMETER_VALUE")
    assert "JSON" in message
    _error(httpx.post(f"{api}/runs/log-metric", content=b"[1, 2]"), 400, "INVALID_PARAMETER_VALUE")
    message = _error(httpx.post(f"{api}/runs/log-metric", json={"key": "m", "value": 1, "timestamp": 1}), 400,
                     "INVALID_PARAMETER_VALUE")
    assert "'run_id'" in message
    message = _error(httpx.post(f"{api}/runs/search", json={"experiment_ids": ["0"], "max_results": 50001}), 400,
                     "INVALID_PARAMETER_VALUE")
    assert "'max_results'" in message
    message = _error(httpx.post(f"{api}/runs/search", json={"experiment_ids": "0", "run_view_type": "SOME"}),
                     400, "INVALID_PARAMETER_VALUE")
    assert "'run_view_type'" in message
    message = _error(httpx.post(f"{api}/runs/search", json={"experiment_ids": [0]}), 400,
                     "INVALID_PARAMETER_VALUE")
    assert "'experiment_ids'" in message
    message = _error(httpx.post(f"{api}/runs/search", json={"experiment_ids": ["0"], "filter": "metrics.x >>> 1"}),
                     400, "INVALID_PARAMETER_VALUE")
    message = _error(httpx.post(f"{api}/runs/update", json={"run_id": run_id, "status": "DONE"}), 400,
                     "INVALID_PARAMETER_VALUE")
    assert "'status'" in message
    message = _error(httpx.get(f"{api}/model-versions/get", params={"name": "x", "version": "one"}), 400,
                     "INVALID_PARAMETER_VALUE")
    assert "'version'" in message


def test_duplicate_names(mlflow_env: Any, client: Any, server_url: str, unique: str) -> None:
    name = f"compat-dup-{unique}"
    mlflow_env.create_experiment(name)
    with pytest.raises(mlflow_env.exceptions.MlflowException) as exc:
        mlflow_env.create_experiment(name)
    assert exc.value.error_code == "RESOURCE_ALREADY_EXISTS"
    _error(httpx.post(f"{server_url}/api/2.0/mlflow/experiments/create", json={"name": name}), 400,
           "RESOURCE_ALREADY_EXISTS")


def test_artifact_paths_rejected(server_url: str, mlflow_env: Any, client: Any, unique: str) -> None:
    exp_id = mlflow_env.create_experiment(f"compat-badart-{unique}")
    rid = client.create_run(exp_id).info.run_id
    base = f"{server_url}/api/2.0/mlflow-artifacts/artifacts"
    for path in (f"{exp_id}/{rid}/artifacts/%2E%2E/%2E%2E/escape.txt", f"{exp_id}/{rid}/artifacts/a%00b"):
        message = _error(httpx.put(f"{base}/{path}", content=b"x"), 400, "INVALID_PARAMETER_VALUE")
        assert "path" in message
    message = _error(httpx.get(base, params={"path": ""}), 400, "INVALID_PARAMETER_VALUE")
    assert "'path'" in message
    # past the server's size limit (8 MiB in this suite): 413 and nothing stored
    resp = httpx.put(f"{base}/{exp_id}/{rid}/artifacts/huge.bin", content=b"\0" * (8 * 1024 * 1024 + 1))
    _error(resp, 413, "INVALID_PARAMETER_VALUE")
    assert client.list_artifacts(rid) == []
    # a streamed body without a declared length is cut off at the limit too
    def body() -> Any:
        for _ in range(9):
            yield b"\1" * (1024 * 1024)
    resp = httpx.put(f"{base}/{exp_id}/{rid}/artifacts/huge2.bin", content=body())
    _error(resp, 413, "INVALID_PARAMETER_VALUE")
    assert client.list_artifacts(rid) == []
    experiment_with_location = httpx.post(f"{server_url}/api/2.0/mlflow/experiments/create",
                                          json={"name": f"loc-{unique}", "artifact_location": "mlflow-artifacts:/1"})
    assert "'artifact_location'" in _error(experiment_with_location, 400, "INVALID_PARAMETER_VALUE")
