"""Search limits and hostile search input through a real server: the requests that used to crash the process now
get a 400 naming the limit and the server keeps answering; logged-model search takes MLflow's ``order_by`` and
``datasets`` through the real ``mlflow`` client."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from capstan.tracking.search_limits import MAX_FILTER_TERMS, MAX_ORDER_BY_TERMS
from helpers.server import ServerProcess, start_server

KEYS = 70
"""Metric keys logged on every run of the dedicated server: enough for each old crash size (31-63)."""


def _error(resp: httpx.Response, status: int = 400, code: str = "INVALID_PARAMETER_VALUE") -> str:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert body["error_code"] == code, body
    message: str = body["message"]
    return message


@pytest.fixture(scope="module")
def lone_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, str]]:
    """A single-worker server of its own (the default shape the crash took down), with one experiment of three
    runs that each log metrics m0..m69 and params p0..p99."""
    with start_server(Path(tmp_path_factory.mktemp("search-limits"))) as server:
        api = f"{server.url}/api/2.0/mlflow"
        exp = httpx.post(f"{api}/experiments/create", json={"name": "limits"}).json()["experiment_id"]
        now = int(time.time() * 1000)
        for i in range(3):
            run = httpx.post(f"{api}/runs/create", json={"experiment_id": exp, "start_time": now + i}).json()
            run_id = run["run"]["info"]["run_id"]
            metrics = [{"key": f"m{k}", "value": float(i if k == KEYS - 1 else 1), "timestamp": now, "step": 0}
                       for k in range(KEYS)]
            params = [{"key": f"p{k}", "value": "v"} for k in range(100)]
            resp = httpx.post(f"{api}/runs/log-batch", json={"run_id": run_id, "metrics": metrics})
            assert resp.status_code == 200, resp.text
            resp = httpx.post(f"{api}/runs/log-batch", json={"run_id": run_id, "params": params})
            assert resp.status_code == 200, resp.text
        yield server, exp


def _healthy(server: ServerProcess) -> None:
    assert server.process.poll() is None, "".join(server.output[-20:])
    assert httpx.get(f"{server.url}/health").status_code == 200


@pytest.mark.parametrize("count", [MAX_ORDER_BY_TERMS + 1, 31, 40, 63, 64, 199, 500, 1000])
def test_wide_order_by_gets_a_400_and_the_server_survives(lone_server: tuple[ServerProcess, str], count: int) -> None:
    server, exp = lone_server
    body = {"experiment_ids": [exp], "order_by": [f"metrics.m{k % KEYS}" if k < KEYS else f"metrics.x{k}"
                                                  for k in range(count)]}
    message = _error(httpx.post(f"{server.url}/api/2.0/mlflow/runs/search", json=body))
    assert f"order_by has {count} terms; at most {MAX_ORDER_BY_TERMS} are allowed" in message
    message = _error(httpx.post(f"{server.url}/api/v1/runs/search", json=body))
    assert f"at most {MAX_ORDER_BY_TERMS}" in message
    _healthy(server)


def test_order_by_at_the_limit_answers(lone_server: tuple[ServerProcess, str]) -> None:
    server, exp = lone_server
    keys = [f"metrics.m{k}" for k in range(MAX_ORDER_BY_TERMS - 1)] + [f"metrics.m{KEYS - 1} DESC"]
    resp = httpx.post(f"{server.url}/api/2.0/mlflow/runs/search", json={"experiment_ids": [exp], "order_by": keys})
    assert resp.status_code == 200, resp.text
    values = [next(m["value"] for m in r["data"]["metrics"] if m["key"] == f"m{KEYS - 1}")
              for r in resp.json()["runs"]]
    assert values == [2.0, 1.0, 0.0]
    _healthy(server)


@pytest.mark.parametrize(("filter_string", "fragment"), [
    (" AND ".join(f"params.p{k % 100} = 'v'" for k in range(990)), f"at most {MAX_FILTER_TERMS} are allowed"),
    (" AND ".join(f"metrics.m{k % KEYS} > 0" for k in range(1000)), f"at most {MAX_FILTER_TERMS} are allowed"),
    ("attributes.start_time > 9223372036854775808", "start_time"),
    ("attributes.start_time > 1e26", "start_time"),
    ("metrics.m0 > 1e400", "metrics.m0"),
    ("params.p0 = 'a\x00b'", "NUL"),
])
def test_hostile_filters_get_a_400(lone_server: tuple[ServerProcess, str], filter_string: str,
                                   fragment: str) -> None:
    server, exp = lone_server
    body = {"experiment_ids": [exp], "filter": filter_string}
    assert fragment in _error(httpx.post(f"{server.url}/api/2.0/mlflow/runs/search", json=body))
    assert fragment in _error(httpx.post(f"{server.url}/api/v1/runs/search", json=body))
    _healthy(server)


def test_filter_at_the_limit_answers(lone_server: tuple[ServerProcess, str]) -> None:
    server, exp = lone_server
    text = " AND ".join(f"params.p{k} = 'v'" for k in range(MAX_FILTER_TERMS))
    resp = httpx.post(f"{server.url}/api/2.0/mlflow/runs/search", json={"experiment_ids": [exp], "filter": text})
    assert resp.status_code == 200, resp.text
    assert len(resp.json()["runs"]) == 3


def test_experiment_ids_must_be_a_list(lone_server: tuple[ServerProcess, str]) -> None:
    server, exp = lone_server
    for path in ("/api/2.0/mlflow/runs/search", "/api/v1/runs/search", "/api/2.0/mlflow/logged-models/search"):
        message = _error(httpx.post(f"{server.url}{path}", json={"experiment_ids": exp}))
        assert "experiment_ids" in message, (path, message)
    resp = httpx.post(f"{server.url}/api/2.0/mlflow/runs/search", json={"experiment_ids": [exp]})
    assert resp.status_code == 200 and len(resp.json()["runs"]) == 3


def test_other_searches_refuse_numbers_out_of_range(lone_server: tuple[ServerProcess, str]) -> None:
    server, _ = lone_server
    api = f"{server.url}/api/2.0/mlflow"
    assert "creation_time" in _error(httpx.post(f"{api}/experiments/search",
                                                json={"filter": "creation_time > 9223372036854775808"}))
    assert "out of range" in _error(httpx.get(f"{api}/model-versions/search",
                                              params={"filter": "version_number = 9223372036854775808"}))
    assert "at most" in _error(httpx.get(f"{api}/registered-models/search",
                                         params={"filter": " AND ".join(["name = 'x'"] * 101)}))
    _healthy(server)


# ---------------------------------------------------------------------------------------------- logged models


def test_search_logged_models_order_by_and_datasets(mlflow_env: Any, client: Any, unique: str) -> None:
    from mlflow.entities import Metric

    exp_id = client.create_experiment(f"lm-search-{unique}")
    run = client.create_run(exp_id)
    models = [client.create_logged_model(exp_id, name=f"lm-{i}", source_run_id=run.info.run_id) for i in range(3)]
    # acc per (dataset, digest): lm-0 eval 0.5 then train 0.9; lm-1 eval/d1 0.7 then eval/d2 0.1; lm-2 only loss.
    client.log_batch(run.info.run_id, metrics=[
        Metric("acc", 0.5, 1000, 0, model_id=models[0].model_id, dataset_name="eval", dataset_digest="d1"),
        Metric("acc", 0.9, 2000, 0, model_id=models[0].model_id, dataset_name="train", dataset_digest="t1"),
        Metric("acc", 0.7, 1000, 0, model_id=models[1].model_id, dataset_name="eval", dataset_digest="d1"),
        Metric("acc", 0.1, 3000, 0, model_id=models[1].model_id, dataset_name="eval", dataset_digest="d2"),
        Metric("loss", 0.3, 1000, 0, model_id=models[2].model_id, dataset_name="eval", dataset_digest="d1"),
    ])

    def names(**kwargs: Any) -> list[str]:
        found = mlflow_env.search_logged_models(experiment_ids=[exp_id], output_format="list", **kwargs)
        return [m.name for m in found]

    assert names() == ["lm-2", "lm-1", "lm-0"]
    assert names(order_by=[{"field_name": "metrics.acc", "ascending": True}]) == ["lm-1", "lm-0", "lm-2"]
    assert names(order_by=[{"field_name": "metrics.acc", "ascending": False}]) == ["lm-0", "lm-1", "lm-2"]
    assert names(order_by=[{"field_name": "metrics.acc", "ascending": False, "dataset_name": "eval"}]) == \
        ["lm-0", "lm-1", "lm-2"]
    assert names(order_by=[{"field_name": "metrics.acc", "ascending": False, "dataset_name": "eval",
                            "dataset_digest": "d1"}]) == ["lm-1", "lm-0", "lm-2"]
    assert names(order_by=[{"field_name": "name", "ascending": True}]) == ["lm-0", "lm-1", "lm-2"]
    assert names(filter_string="metrics.acc > 0.6") == ["lm-1", "lm-0"]
    assert names(filter_string="metrics.acc > 0.6", datasets=[{"dataset_name": "eval"}]) == ["lm-1"]
    assert names(filter_string="metrics.acc > 0.6", datasets=[{"dataset_name": "eval", "dataset_digest": "d2"}]) == []
    assert names(datasets=[{"dataset_name": "train"}]) == ["lm-0"]
    # Pages keep the order.
    first = client.search_logged_models([exp_id], order_by=[{"field_name": "metrics.acc", "ascending": True}],
                                        max_results=2)
    assert [m.name for m in first] == ["lm-1", "lm-0"]
    rest = client.search_logged_models([exp_id], order_by=[{"field_name": "metrics.acc", "ascending": True}],
                                       max_results=2, page_token=first.token)
    assert [m.name for m in rest] == ["lm-2"]


def test_search_logged_models_bad_order_by_and_datasets(server_url: str, mlflow_env: Any, client: Any,
                                                        unique: str) -> None:
    exp_id = client.create_experiment(f"lm-bad-{unique}")
    api = f"{server_url}/api/2.0/mlflow/logged-models/search"
    cases: list[tuple[dict[str, Any], str]] = [
        ({"order_by": [{"field_name": "params.p"}]}, "order_by[0].field_name"),
        ({"order_by": [{"ascending": True}]}, "order_by[0].field_name"),
        ({"order_by": [{"field_name": "name", "dataset_name": "eval"}]}, "order_by[0]"),
        ({"order_by": [{"field_name": f"metrics.k{k}"} for k in range(MAX_ORDER_BY_TERMS + 1)]},
         f"at most {MAX_ORDER_BY_TERMS}"),
        ({"order_by": "metrics.acc"}, "order_by"),
        ({"datasets": [{"dataset_digest": "d1"}]}, "datasets[0].dataset_name"),
        ({"datasets": {"dataset_name": "eval"}}, "datasets"),
    ]
    for extra, fragment in cases:
        message = _error(httpx.post(api, json={"experiment_ids": [exp_id], **extra}))
        assert fragment in message, (extra, message)
    with pytest.raises(mlflow_env.exceptions.MlflowException) as info:
        mlflow_env.search_logged_models(experiment_ids=[exp_id], order_by=[{"field_name": "nosuch"}])
    assert info.value.error_code == "INVALID_PARAMETER_VALUE"
