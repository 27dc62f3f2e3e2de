"""The mlflow client against capstan server: sklearn log_model + registration + loading back, the registry API and
MLflow 3 logged models."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest


@pytest.fixture(scope="module")
def trained() -> tuple[Any, np.ndarray]:
    """A small fitted scikit-learn classifier and some inputs."""
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    x, y = load_iris(return_X_y=True)
    return LogisticRegression(max_iter=300).fit(x, y), x[:10]


def test_sklearn_log_register_and_load(mlflow_env: Any, client: Any, unique: str,
                                       trained: tuple[Any, np.ndarray], tmp_path: Path) -> None:
    mlflow = mlflow_env
    model, x = trained
    name = f"compat-iris-{unique}"
    mlflow.set_experiment(f"compat-models-{unique}")
    with mlflow.start_run() as run:
        mlflow.log_param("max_iter", 300)
        mlflow.log_metric("train_acc", 0.97, step=0)
        info = mlflow.sklearn.log_model(model, name="model", registered_model_name=name, input_example=x[:2],
                                        pip_requirements=["scikit-learn", "skops"])  # skip slow inference
    run_id = run.info.run_id
    assert str(info.registered_model_version) == "1"
    assert info.model_uri == f"models:/{info.model_id}"

    # The logged model: finalized READY, files under the experiment's models/ folder, a run output.
    logged = client.get_logged_model(info.model_id)
    assert logged.status == mlflow.entities.LoggedModelStatus.READY
    assert logged.source_run_id == run_id
    assert logged.artifact_location.endswith(f"/models/{info.model_id}/artifacts")
    assert logged.params.get("max_iter") == "300"
    files = {f.path.rsplit("/", 1)[-1] for f in mlflow.artifacts.list_artifacts(artifact_uri=logged.artifact_location)}
    assert {"MLmodel", "model.skops"} <= files
    outputs = client.get_run(run_id).outputs
    assert outputs is not None and [o.model_id for o in outputs.model_outputs] == [info.model_id]

    version = client.get_model_version(name, "1")
    assert version.run_id == run_id and version.source == f"models:/{info.model_id}"
    assert client.get_model_version_download_uri(name, "1") == logged.artifact_location

    client.set_registered_model_alias(name, "champion", "1")
    assert client.get_model_version_by_alias(name, "champion").version == "1"
    expected = model.predict(x)
    by_alias = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    assert list(by_alias.predict(x)) == list(expected)
    by_version = mlflow.pyfunc.load_model(f"models:/{name}/1")
    assert list(by_version.predict(x)) == list(expected)
    native = mlflow.sklearn.load_model(info.model_uri)
    assert list(native.predict(x)) == list(expected)
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{name}@champion", dst_path=str(tmp_path / "m")))
    assert (local / "MLmodel").is_file() and (local / "model.skops").is_file()

    # A second version from the runs:/ URI (resolved through the run's logged models).
    second = mlflow.register_model(f"runs:/{run_id}/model", name)
    assert second.version == "2" and second.run_id == run_id
    client.set_registered_model_alias(name, "challenger", "2")
    latest = mlflow.pyfunc.load_model(f"models:/{name}/latest")
    assert list(latest.predict(x)) == list(expected)
    registered = client.get_registered_model(name)
    assert registered.aliases == {"champion": "1", "challenger": "2"}


@pytest.mark.filterwarnings("ignore::FutureWarning")  # stages and get_latest_versions are deprecated in mlflow
def test_registry_api(mlflow_env: Any, client: Any, unique: str) -> None:
    mlflow = mlflow_env
    name = f"compat-reg-{unique}"
    created = client.create_registered_model(name, tags={"owner": "ml"}, description="first")
    assert created.name == name and created.description == "first" and created.tags == {"owner": "ml"}
    with pytest.raises(mlflow.exceptions.MlflowException) as exc:
        client.create_registered_model(name)
    assert exc.value.error_code == "RESOURCE_ALREADY_EXISTS"

    client.update_registered_model(name, description="second")
    client.set_registered_model_tag(name, "tier", "gold")
    client.delete_registered_model_tag(name, "owner")
    model = client.get_registered_model(name)
    assert model.description == "second" and model.tags == {"tier": "gold"}

    exp_id = mlflow.create_experiment(f"compat-reg-exp-{unique}")
    run = client.create_run(exp_id)
    client.log_text(run.info.run_id, "weights", "model/weights.txt")
    source = f"{run.info.artifact_uri}/model"
    v1 = client.create_model_version(name, source, run_id=run.info.run_id, tags={"k": "v"}, description="v1")
    v2 = client.create_model_version(name, source, run_id=run.info.run_id)
    assert (v1.version, v2.version) == ("1", "2")
    assert v1.tags == {"k": "v"} and v1.description == "v1" and v1.run_id == run.info.run_id
    assert client.get_model_version_download_uri(name, "1") == source

    client.update_model_version(name, "2", description="better")
    client.set_model_version_tag(name, "2", "validated", "yes")
    client.delete_model_version_tag(name, "1", "k")
    got = client.get_model_version(name, "2")
    assert got.description == "better" and got.tags == {"validated": "yes"}
    assert client.get_model_version(name, "1").tags == {}

    client.set_registered_model_alias(name, "prod", "2")
    assert client.get_model_version_by_alias(name, "prod").version == "2"
    assert client.get_model_version(name, "2").aliases == ["prod"]
    client.delete_registered_model_alias(name, "prod")
    with pytest.raises(mlflow.exceptions.MlflowException) as exc:
        client.get_model_version_by_alias(name, "prod")
    assert exc.value.error_code == "RESOURCE_DOES_NOT_EXIST"

    staged = client.transition_model_version_stage(name, "1", "Staging")
    assert staged.current_stage == "Staging"
    latest = client.get_latest_versions(name, stages=["Staging"])
    assert [v.version for v in latest] == ["1"]

    versions = client.search_model_versions(f"name = '{name}'", order_by=["version_number ASC"])
    assert [v.version for v in versions] == ["1", "2"]
    by_run = client.search_model_versions(f"run_id = '{run.info.run_id}'")
    assert {v.version for v in by_run} == {"1", "2"}
    found = client.search_registered_models(filter_string=f"name LIKE 'compat-reg-{unique}%'")
    assert [m.name for m in found] == [name]
    assert [m.name for m in mlflow.search_registered_models(filter_string=f"name = '{name}'")] == [name]
    assert client.search_registered_models(filter_string=f"tags.tier = 'gold' AND name = '{name}'")[0].name == name

    client.rename_registered_model(name, f"{name}-new")
    assert client.get_model_version(f"{name}-new", "1").name == f"{name}-new"
    client.delete_model_version(f"{name}-new", "1")
    assert [v.version for v in client.search_model_versions(f"name = '{name}-new'")] == ["2"]
    client.delete_registered_model(f"{name}-new")
    with pytest.raises(mlflow.exceptions.MlflowException) as exc:
        client.get_registered_model(f"{name}-new")
    assert exc.value.error_code == "RESOURCE_DOES_NOT_EXIST"


def test_logged_model_api(mlflow_env: Any, client: Any, unique: str) -> None:
    mlflow = mlflow_env
    from mlflow.entities import LoggedModelStatus

    exp_id = mlflow.create_experiment(f"compat-lm-{unique}")
    model = client.create_logged_model(exp_id, name="agent", model_type="agent", tags={"a": "1"},
                                       params={"p": "x"})
    assert model.status == LoggedModelStatus.PENDING
    assert model.name == "agent" and model.model_type == "agent" and model.tags["a"] == "1"
    assert model.params == {"p": "x"}
    client.set_logged_model_tags(model.model_id, {"b": "2"})
    client.delete_logged_model_tag(model.model_id, "a")
    final = client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
    assert final.status == LoggedModelStatus.READY
    got = client.get_logged_model(model.model_id)
    assert got.tags.get("b") == "2" and "a" not in got.tags

    other = client.create_logged_model(exp_id, name="other")
    found = client.search_logged_models([exp_id], filter_string="name = 'agent'")
    assert [m.model_id for m in found] == [model.model_id]
    assert {m.model_id for m in client.search_logged_models([exp_id])} == {model.model_id, other.model_id}
    client.delete_logged_model(other.model_id)
    assert [m.model_id for m in client.search_logged_models([exp_id])] == [model.model_id]

    # More than 100 params: the client creates the model with the first 100 and posts the rest to /params.
    many = {f"p{i:03d}": str(i) for i in range(250)}
    big = client.create_logged_model(exp_id, name="many-params", params=many)
    assert client.get_logged_model(big.model_id).params == many


def test_registry_raw_wire_format(server_url: str, mlflow_env: Any, unique: str) -> None:
    name = f"compat-wire-{unique}"
    api = f"{server_url}/api/2.0/mlflow"
    assert httpx.post(f"{api}/registered-models/create", json={"name": name}).status_code == 200
    exp_id = mlflow_env.create_experiment(f"compat-wire-exp-{unique}")
    created = httpx.post(f"{api}/model-versions/create",
                         json={"name": name, "source": f"mlflow-artifacts:/{exp_id}/somewhere"}).json()
    assert created["model_version"]["version"] == "1"  # versions are strings on the wire
    alias = httpx.post(f"{api}/registered-models/alias", json={"name": name, "alias": "a", "version": "1"})
    assert alias.status_code == 200 and alias.json() == {}
    got = httpx.get(f"{api}/registered-models/alias", params={"name": name, "alias": "a"}).json()
    assert got["model_version"]["aliases"] == ["a"]
    model = httpx.get(f"{api}/registered-models/get", params={"name": name}).json()["registered_model"]
    assert model["aliases"] == [{"alias": "a", "version": "1"}]
    latest = httpx.get(f"{api}/registered-models/get-latest-versions", params={"name": name}).json()
    assert [v["version"] for v in latest["model_versions"]] == ["1"]
    deleted = httpx.request("DELETE", f"{api}/registered-models/delete", json={"name": name})
    assert deleted.status_code == 200
