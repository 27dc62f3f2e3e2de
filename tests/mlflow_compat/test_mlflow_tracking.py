"""The unmodified mlflow client against capstan server: experiments, runs, params/metrics/tags, search, artifacts."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import httpx
import pytest


# -- experiments ------------------------------------------------------------------------------------------
def test_experiment_create_get_search_update_delete(mlflow_env: Any, client: Any, unique: str) -> None:
    mlflow = mlflow_env
    name = f"compat-exp-{unique}"
    exp_id = mlflow.create_experiment(name, tags={"team": "vision", "stage": "dev"})
    exp = client.get_experiment(exp_id)
    assert exp.name == name
    assert exp.lifecycle_stage == "active"
    assert exp.tags["team"] == "vision"
    assert exp.artifact_location == f"mlflow-artifacts:/{exp_id}"
    assert exp.creation_time and exp.last_update_time

    by_name = client.get_experiment_by_name(name)
    assert by_name is not None and by_name.experiment_id == exp_id
    assert client.get_experiment_by_name(f"missing-{unique}") is None

    other = mlflow.create_experiment(f"compat-other-{unique}")
    found = client.search_experiments(filter_string=f"name LIKE 'compat-%{unique}'", order_by=["name ASC"])
    assert [e.name for e in found] == [name, f"compat-other-{unique}"]
    found = client.search_experiments(filter_string=f"tags.team = 'vision' AND name ILIKE 'COMPAT-EXP-{unique}'")
    assert [e.experiment_id for e in found] == [exp_id]
    assert [e.experiment_id for e in mlflow.search_experiments(filter_string=f"name = '{name}'")] == [exp_id]

    # paging through the POST search endpoint
    first = client.search_experiments(filter_string=f"name LIKE '%{unique}'", max_results=1)
    assert len(first) == 1 and first.token
    second = client.search_experiments(filter_string=f"name LIKE '%{unique}'", max_results=1,
                                       page_token=first.token)
    assert {first[0].experiment_id, second[0].experiment_id} == {exp_id, other}

    client.set_experiment_tag(exp_id, "stage", "prod")
    client.delete_experiment_tag(exp_id, "team")
    tags = client.get_experiment(exp_id).tags
    assert tags.get("stage") == "prod" and "team" not in tags

    client.rename_experiment(exp_id, f"{name}-renamed")
    assert client.get_experiment(exp_id).name == f"{name}-renamed"

    client.delete_experiment(other)
    assert client.get_experiment(other).lifecycle_stage == "deleted"
    deleted = client.search_experiments(view_type=mlflow.entities.ViewType.DELETED_ONLY,
                                        filter_string=f"name LIKE '%{unique}'")
    assert [e.experiment_id for e in deleted] == [other]
    client.restore_experiment(other)
    assert client.get_experiment(other).lifecycle_stage == "active"


def test_experiment_search_by_get(server_url: str, mlflow_env: Any, unique: str) -> None:
    exp_id = mlflow_env.create_experiment(f"compat-get-{unique}")
    resp = httpx.get(f"{server_url}/api/2.0/mlflow/experiments/search",
                     params={"filter": f"name = 'compat-get-{unique}'", "max_results": "5"})
    assert resp.status_code == 200
    assert [e["experiment_id"] for e in resp.json()["experiments"]] == [exp_id]
    ajax = httpx.get(f"{server_url}/ajax-api/2.0/mlflow/experiments/get", params={"experiment_id": exp_id})
    assert ajax.status_code == 200 and ajax.json()["experiment"]["name"] == f"compat-get-{unique}"


# -- runs, params, metrics, tags ------------------------------------------------------------------------------
def test_run_lifecycle_and_logging(mlflow_env: Any, client: Any, unique: str) -> None:
    mlflow = mlflow_env
    from mlflow.entities import Metric, Param, RunTag

    exp = mlflow.set_experiment(f"compat-runs-{unique}")
    with mlflow.start_run(run_name="first", tags={"team": "a"}) as run:
        run_id = run.info.run_id
        assert run.info.status == "RUNNING"
        assert run.info.artifact_uri == f"mlflow-artifacts:/{exp.experiment_id}/{run_id}/artifacts"
        mlflow.log_param("lr", 0.1)
        mlflow.log_params({"depth": 3, "optimizer": "adam"})
        mlflow.log_metric("loss", 1.0, step=0)
        mlflow.log_metric("loss", 0.5, step=1)
        mlflow.log_metrics({"acc": 0.8, "f1": 0.7}, step=1)
        mlflow.log_metric("weird", float("nan"))
        mlflow.log_metric("big", float("inf"))
        mlflow.set_tag("purpose", "compat")
        mlflow.set_tags({"k1": "v1", "k2": "v2"})
        now = int(time.time() * 1000)
        client.log_batch(run_id, metrics=[Metric("batch", float(i), now + i, i) for i in range(5)],
                         params=[Param("batch_param", "x")], tags=[RunTag("batch_tag", "y")])
        client.delete_tag(run_id, "k2")

    got = client.get_run(run_id)
    assert got.info.status == "FINISHED"
    assert got.info.end_time is not None and got.info.end_time >= got.info.start_time
    assert got.info.run_name == "first"
    assert got.data.params == {"lr": "0.1", "depth": "3", "optimizer": "adam", "batch_param": "x"}
    metrics = got.data.metrics
    assert metrics["loss"] == 0.5 and metrics["acc"] == 0.8 and metrics["batch"] == 4.0
    assert math.isnan(metrics["weird"]) and metrics["big"] == math.inf
    tags = got.data.tags
    assert tags["team"] == "a" and tags["purpose"] == "compat" and tags["k1"] == "v1"
    assert tags["batch_tag"] == "y" and "k2" not in tags
    assert tags["mlflow.runName"] == "first"

    history = client.get_metric_history(run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(0, 1.0), (1, 0.5)]
    batch = client.get_metric_history(run_id, "batch")
    assert [m.value for m in batch] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert [m.timestamp for m in batch] == [now + i for i in range(5)]
    assert client.get_metric_history(run_id, "never-logged") == []

    # update, delete, restore
    client.update_run(run_id, name="renamed")
    assert client.get_run(run_id).info.run_name == "renamed"
    client.delete_run(run_id)
    assert client.get_run(run_id).info.lifecycle_stage == "deleted"
    assert client.search_runs([exp.experiment_id]) == []
    assert len(client.search_runs([exp.experiment_id], run_view_type=mlflow.entities.ViewType.ALL)) == 1
    client.restore_run(run_id)
    assert [r.info.run_id for r in client.search_runs([exp.experiment_id])] == [run_id]


def test_failed_run_status(mlflow_env: Any, client: Any, unique: str) -> None:
    mlflow = mlflow_env
    mlflow.set_experiment(f"compat-fail-{unique}")
    with pytest.raises(RuntimeError), mlflow.start_run() as run:
        raise RuntimeError("boom")
    assert client.get_run(run.info.run_id).info.status == "FAILED"
    created = client.create_run(mlflow.get_experiment_by_name(f"compat-fail-{unique}").experiment_id)
    client.set_terminated(created.info.run_id, status="KILLED")
    assert client.get_run(created.info.run_id).info.status == "KILLED"


@pytest.fixture(scope="module")
def search_experiment(mlflow_env: Any) -> tuple[str, dict[str, str]]:
    """An experiment with six runs of known params, metrics and tags."""
    mlflow = mlflow_env
    import uuid

    exp_id = mlflow.create_experiment(f"compat-search-{uuid.uuid4().hex[:8]}")
    names: dict[str, str] = {}
    rows = [("alpha", 0.1, 3, 0.91, "Vision"), ("beta", 0.1, 5, 0.72, "vision"), ("gamma", 0.01, 3, 0.55, "nlp"),
            ("delta", 0.01, 7, 0.98, "NLP"), ("epsilon", 0.001, 3, 0.60, "tabular"),
            ("zeta", 0.001, 9, 0.33, "vision-x")]
    for name, lr, depth, acc, team in rows:
        with mlflow.start_run(experiment_id=exp_id, run_name=name) as run:
            mlflow.log_params({"lr": lr, "depth": depth})
            mlflow.log_metric("acc", acc)
            mlflow.log_metric("loss", 1 - acc)
            mlflow.set_tag("team", team)
            names[run.info.run_id] = name
        if name == "zeta":
            mlflow.MlflowClient().set_terminated(run.info.run_id, status="FAILED")
    return exp_id, names


@pytest.mark.parametrize(("filter_string", "expected"), [
    ("metrics.acc > 0.7", {"alpha", "beta", "delta"}),
    ("metrics.acc >= 0.72", {"alpha", "beta", "delta"}),
    ("metrics.acc < 0.6", {"gamma", "zeta"}),
    ("metrics.acc <= 0.6", {"gamma", "epsilon", "zeta"}),
    ("metrics.acc = 0.91", {"alpha"}),
    ("metrics.acc != 0.91", {"beta", "gamma", "delta", "epsilon", "zeta"}),
    ("params.lr = '0.1'", {"alpha", "beta"}),
    ("params.depth != '3'", {"beta", "delta", "zeta"}),
    ("params.lr LIKE '0.0%'", {"gamma", "delta", "epsilon", "zeta"}),
    ("tags.team = 'vision'", {"beta"}),
    ("tags.team LIKE 'vision%'", {"beta", "zeta"}),
    ("tags.team ILIKE 'vision%'", {"alpha", "beta", "zeta"}),
    ("tags.team ILIKE '%lp'", {"gamma", "delta"}),
    ("attributes.status = 'FAILED'", {"zeta"}),
    ("attributes.status != 'FAILED'", {"alpha", "beta", "gamma", "delta", "epsilon"}),
    ("attributes.run_name = 'gamma'", {"gamma"}),
    ("attributes.run_name LIKE '%ta'", {"beta", "delta", "zeta"}),
    ("run_name ILIKE 'ALP%'", {"alpha"}),
    ("metrics.acc > 0.5 AND params.depth = '3'", {"alpha", "gamma", "epsilon"}),
    ("metrics.acc > 0.5 AND params.lr = '0.01' AND tags.team ILIKE 'nlp'", {"gamma", "delta"}),
    ("metrics.loss < 0.3 AND tags.team LIKE 'V%'", {"alpha"}),
])
def test_search_runs_filters(client: Any, search_experiment: tuple[str, dict[str, str]],
                             filter_string: str, expected: set[str]) -> None:
    exp_id, names = search_experiment
    runs = client.search_runs([exp_id], filter_string=filter_string)
    assert {names[r.info.run_id] for r in runs} == expected


def test_search_runs_order_and_paging(mlflow_env: Any, client: Any,
                                      search_experiment: tuple[str, dict[str, str]]) -> None:
    exp_id, names = search_experiment
    by_acc = client.search_runs([exp_id], order_by=["metrics.acc DESC"])
    assert [names[r.info.run_id] for r in by_acc] == ["delta", "alpha", "beta", "epsilon", "gamma", "zeta"]
    by_param = client.search_runs([exp_id], order_by=["params.depth ASC", "metrics.acc DESC"])
    assert [names[r.info.run_id] for r in by_param][:3] == ["alpha", "epsilon", "gamma"]
    by_name = client.search_runs([exp_id], filter_string="metrics.acc > 0.5", order_by=["attributes.run_name"])
    assert [names[r.info.run_id] for r in by_name] == ["alpha", "beta", "delta", "epsilon", "gamma"]
    oldest_first = client.search_runs([exp_id], order_by=["attributes.start_time ASC"])
    assert [names[r.info.run_id] for r in oldest_first] == ["alpha", "beta", "gamma", "delta", "epsilon", "zeta"]

    page1 = client.search_runs([exp_id], order_by=["metrics.acc DESC"], max_results=4)
    assert len(page1) == 4 and page1.token
    page2 = client.search_runs([exp_id], order_by=["metrics.acc DESC"], max_results=4, page_token=page1.token)
    assert [names[r.info.run_id] for r in page2] == ["gamma", "zeta"] and not page2.token

    frame = mlflow_env.search_runs([exp_id], filter_string="params.lr = '0.1'", order_by=["metrics.acc ASC"])
    assert list(frame["tags.mlflow.runName"]) == ["beta", "alpha"]
    assert list(frame["metrics.acc"]) == [0.72, 0.91]


# -- artifacts ---------------------------------------------------------------------------------------------
def test_artifacts_log_list_download(mlflow_env: Any, client: Any, unique: str, tmp_path: Path) -> None:
    mlflow = mlflow_env
    src = tmp_path / "src"
    (src / "nested" / "deeper").mkdir(parents=True)
    (src / "a.txt").write_text("alpha")
    (src / "nested" / "b.json").write_text('{"b": 1}')
    (src / "nested" / "deeper" / "c.bin").write_bytes(bytes(range(256)) * 40)
    big = tmp_path / "big.bin"
    big.write_bytes(bytes(range(251)) * 12_000)  # ~3 MB: several upload and download chunks
    single = tmp_path / "single.txt"
    single.write_text("one file")

    mlflow.set_experiment(f"compat-artifacts-{unique}")
    with mlflow.start_run() as run:
        mlflow.log_artifact(str(single))
        mlflow.log_artifact(str(big), artifact_path="blobs")
        mlflow.log_artifacts(str(src), artifact_path="tree")
        mlflow.log_text("hello", "notes/hello.txt")
        mlflow.log_dict({"x": 1}, "notes/config.json")
    run_id = run.info.run_id

    root = client.list_artifacts(run_id)
    assert [(f.path, f.is_dir) for f in root] == [("blobs", True), ("notes", True), ("single.txt", False),
                                                 ("tree", True)]
    assert next(f for f in root if f.path == "single.txt").file_size == len("one file")
    tree = client.list_artifacts(run_id, "tree")
    assert [(f.path, f.is_dir) for f in tree] == [("tree/a.txt", False), ("tree/nested", True)]
    assert [f.path for f in client.list_artifacts(run_id, "tree/nested")] == ["tree/nested/b.json",
                                                                              "tree/nested/deeper"]
    assert client.list_artifacts(run_id, "single.txt") == []

    out = Path(client.download_artifacts(run_id, "tree", str(tmp_path / "dl")))
    assert (out / "a.txt").read_text() == "alpha"
    assert (out / "nested" / "b.json").read_text() == '{"b": 1}'
    assert (out / "nested" / "deeper" / "c.bin").read_bytes() == bytes(range(256)) * 40
    one = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="blobs/big.bin",
                                              dst_path=str(tmp_path / "dl2"))
    assert Path(one).read_bytes() == big.read_bytes()
    assert mlflow.artifacts.load_text(f"runs:/{run_id}/notes/hello.txt") == "hello"
    assert mlflow.artifacts.load_dict(f"runs:/{run_id}/notes/config.json") == {"x": 1}
    everything = Path(mlflow.artifacts.download_artifacts(run_id=run_id, dst_path=str(tmp_path / "all")))
    assert sorted(p.relative_to(everything).as_posix() for p in everything.rglob("*") if p.is_file()) == [
        "blobs/big.bin", "notes/config.json", "notes/hello.txt", "single.txt", "tree/a.txt", "tree/nested/b.json",
        "tree/nested/deeper/c.bin"]


def test_artifact_endpoints_raw(server_url: str, mlflow_env: Any, client: Any, unique: str) -> None:
    exp_id = mlflow_env.create_experiment(f"compat-raw-art-{unique}")
    run_id = client.create_run(exp_id).info.run_id
    base = f"{server_url}/api/2.0/mlflow-artifacts/artifacts/{exp_id}/{run_id}/artifacts"
    assert httpx.put(f"{base}/x/y.txt", content=b"payload").status_code == 200
    got = httpx.get(f"{base}/x/y.txt")
    assert got.status_code == 200 and got.content == b"payload"
    listing = httpx.get(f"{server_url}/api/2.0/mlflow-artifacts/artifacts",
                        params={"path": f"{exp_id}/{run_id}/artifacts/x"}).json()
    assert listing == {"files": [{"path": "y.txt", "is_dir": False, "file_size": 7}]}
    run_listing = httpx.get(f"{server_url}/api/2.0/mlflow/artifacts/list",
                            params={"run_id": run_id, "path": "x"}).json()
    assert run_listing["files"] == [{"path": "x/y.txt", "is_dir": False, "file_size": 7}]
    assert run_listing["root_uri"].endswith(f"{run_id}/artifacts")
    assert httpx.delete(f"{base}/x").status_code == 200
    missing = httpx.get(f"{base}/x/y.txt")
    assert missing.status_code == 404 and missing.json()["error_code"] == "RESOURCE_DOES_NOT_EXIST"
    # multipart upload is declined with the message that makes the client fall back to one PUT
    mpu = httpx.post(f"{server_url}/api/2.0/mlflow-artifacts/mpu/create/{exp_id}/{run_id}/artifacts/z",
                     json={"path": "z", "num_parts": 2})
    assert mpu.status_code == 501
    assert mpu.json()["message"].startswith("Multipart upload is not supported")
    info = httpx.get(f"{server_url}/api/3.0/mlflow/server-info").json()
    assert info["store_type"] == "SqlStore" and info["multipart_uploads_enabled"] is False


def test_metrics_label_mlflow_routes(server_url: str, mlflow_env: Any, client: Any, unique: str) -> None:
    exp_id = mlflow_env.create_experiment(f"compat-metrics-{unique}")
    run_id = client.create_run(exp_id).info.run_id
    client.log_metric(run_id, "m", 1.0)
    httpx.get(f"{server_url}/api/2.0/mlflow/logged-models/m-{unique}")
    text = httpx.get(f"{server_url}/metrics").text
    assert 'route="/api/2.0/mlflow/runs/log-metric"' in text
    assert 'route="/api/2.0/mlflow/experiments/create"' in text
    assert 'route="/api/2.0/mlflow/logged-models/{model_id}"' in text


def test_dataset_inputs(mlflow_env: Any, client: Any, unique: str) -> None:
    mlflow = mlflow_env
    import pandas as pd

    frame = pd.DataFrame({"x": [1.0, 2.0, 3.0], "y": [0.0, 1.0, 0.0]})
    dataset = mlflow.data.from_pandas(frame, name="toy", targets="y")
    mlflow.set_experiment(f"compat-inputs-{unique}")
    with mlflow.start_run() as run:
        mlflow.log_input(dataset, context="training", tags={"split": "train"})
    inputs = client.get_run(run.info.run_id).inputs.dataset_inputs
    assert len(inputs) == 1
    assert inputs[0].dataset.name == "toy" and inputs[0].dataset.digest == dataset.digest
    assert inputs[0].dataset.source_type == "code"
    tags = {tag.key: tag.value for tag in inputs[0].tags}
    assert tags["mlflow.data.context"] == "training" and tags["split"] == "train"
