"""MLflow parity of model versions, logged models and experiment locations, through the real mlflow client (the
cases MLflow's own REST tests check)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest


def _post(server_url: str, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{server_url}/api/2.0/mlflow/{path}", json=body, timeout=30)


def test_version_from_a_logged_model_is_listed_in_its_model_versions_tag(mlflow_env: Any, client: Any,
                                                                          unique: str) -> None:
    exp_id = client.create_experiment(f"parity-mv-{unique}")
    model = client.create_logged_model(exp_id, name="clf")
    client.create_registered_model(f"parity-{unique}")
    first = client.create_model_version(f"parity-{unique}", model.artifact_location, model_id=model.model_id)
    second = client.create_model_version(f"parity-{unique}", model.artifact_location, model_id=model.model_id)
    tag = client.get_logged_model(model.model_id).tags["mlflow.modelVersions"]
    assert json.loads(tag) == [{"name": f"parity-{unique}", "version": int(first.version)},
                               {"name": f"parity-{unique}", "version": int(second.version)}]


def test_metrics_logged_with_a_model_id_belong_to_the_logged_model(mlflow_env: Any, client: Any,
                                                                   unique: str) -> None:
    exp_id = client.create_experiment(f"parity-metrics-{unique}")
    run = client.create_run(exp_id)
    model = client.create_logged_model(exp_id, name="clf", source_run_id=run.info.run_id)
    client.log_metric(run.info.run_id, "accuracy", 0.9, step=1, model_id=model.model_id)
    client.log_metric(run.info.run_id, "unlinked", 1.0)
    from mlflow.entities import Metric

    client.log_batch(run.info.run_id, metrics=[
        Metric("loss", 0.25, 1000, 2, model_id=model.model_id, dataset_name="train", dataset_digest="abc"),
        Metric("loss", 0.5, 1000, 1, model_id=model.model_id),
    ])
    got = client.get_logged_model(model.model_id)
    assert [(m.key, m.value, m.step) for m in got.metrics] == [("accuracy", 0.9, 1), ("loss", 0.5, 1),
                                                               ("loss", 0.25, 2)]
    found = client.search_logged_models([exp_id], filter_string="metrics.accuracy > 0.5")
    assert [m.model_id for m in found] == [model.model_id]
    # The run keeps its points too, as in MLflow.
    assert client.get_run(run.info.run_id).data.metrics["loss"] == 0.25


def test_metric_for_a_missing_logged_model_is_refused(mlflow_env: Any, client: Any, unique: str) -> None:
    from mlflow.exceptions import MlflowException

    run = client.create_run(client.create_experiment(f"parity-missing-{unique}"))
    with pytest.raises(MlflowException, match="not found"):
        client.log_metric(run.info.run_id, "accuracy", 0.9, model_id="m-doesnotexist")


def test_relative_artifact_location_is_resolved_by_the_server(mlflow_env: Any, client: Any, unique: str) -> None:
    exp_id = client.create_experiment(f"parity-rel-{unique}", artifact_location="my_location")
    location = client.get_experiment(exp_id).artifact_location
    assert location != "my_location"
    assert location == f"mlflow-artifacts:/{exp_id}/my_location"


@pytest.mark.parametrize(("source", "wording"), [
    ("mlflow-artifacts://host:9000/models/../../../", "If supplying a source as an http, https,"),
    ("http://host:9000/models/../../../", "If supplying a source as an http, https,"),
    ("https://host/api/2.0/mlflow-artifacts/artifacts/../../../", "If supplying a source as an http, https,"),
    ("s3a://my_bucket/api/2.0/mlflow-artifacts/artifacts/../../../", "If supplying a source as an http, https,"),
    ("ftp://host:8888/api/2.0/mlflow-artifacts/artifacts/../../../", "If supplying a source as an http, https,"),
    ("mlflow-artifacts://host:9000/models/..%2f..%2fartifacts", "If supplying a source as an http, https,"),
    ("mlflow-artifacts://host:9000/models/artifact%00", "If supplying a source as an http, https,"),
    ("dbfs:/RUN/artifacts/a%3f/../../../../../../../../../../", "Invalid model version source"),
    ("/tmp", "To use a local path as a model version"),
    ("file:///tmp", "To use a local path as a model version"),
])
def test_model_version_sources_mlflow_refuses(server_url: str, mlflow_env: Any, client: Any, unique: str,
                                              source: str, wording: str) -> None:
    name = f"parity-src-{unique}"
    client.create_registered_model(name)
    run = client.create_run(client.create_experiment(f"parity-src-{unique}"))
    response = _post(server_url, "model-versions/create",
                     {"name": name, "source": source.replace("RUN", run.info.run_id), "run_id": run.info.run_id})
    assert response.status_code == 400, response.text
    assert response.json()["error_code"] == "INVALID_PARAMETER_VALUE"
    assert wording in response.json()["message"]
    assert client.search_model_versions(f"name = '{name}'") == []


def test_model_version_sources_mlflow_accepts(server_url: str, mlflow_env: Any, client: Any, unique: str) -> None:
    name = f"parity-ok-{unique}"
    client.create_registered_model(name)
    exp_id = client.create_experiment(f"parity-ok-{unique}")
    run = client.create_run(exp_id)
    root = run.info.artifact_uri
    for source in (root, f"{root}/", f"{root}///", f"{root}/foo///bar", f"{root}/artifact/..../",
                   f"runs:/{run.info.run_id}/model", "s3://bucket/models/1"):
        response = _post(server_url, "model-versions/create",
                         {"name": name, "source": source, "run_id": run.info.run_id})
        assert response.status_code == 200, (source, response.text)
    uri = client.get_model_version_download_uri(name, "1")
    assert uri == root


def test_error_wording_matches_mlflow(server_url: str, mlflow_env: Any, client: Any, unique: str) -> None:
    response = _post(server_url, "experiments/create",
                     {"name": f"parity-tags-{unique}", "artifact_location": "my_location", "tags": "5"})
    assert response.status_code == 400
    assert "Invalid value \\\"5\\\" for parameter 'tags'" in response.text
    run = client.create_run(client.create_experiment(f"parity-tag-{unique}"))
    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException, match="No tag with name: fakeTag"):
        client.delete_tag(run.info.run_id, "fakeTag")
