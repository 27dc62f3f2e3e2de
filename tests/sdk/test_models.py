"""Model flavors: Capstan's MLmodel folders, round trips through both backends, and MLflow interoperability
(MLflow loads Capstan's models; Capstan loads models the real ``mlflow`` client logged into a Capstan server)."""

from __future__ import annotations

import json
import os
import sys
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from sklearn.datasets import load_iris
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression

import capstan
from capstan.errors import InvalidParameterValue, ResourceDoesNotExist
from capstan.models.format import load_model_dir, save_model
from capstan.models.pyfunc import PyFuncModel
from capstan.models.signature import infer_schema
from capstan.settings import Settings
from helpers.server import ServerProcess


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module")
def iris() -> tuple[Any, Any, LogisticRegression]:
    x, y = load_iris(return_X_y=True, as_frame=True)
    return x, y, LogisticRegression(max_iter=500).fit(x, y)


@pytest.mark.parametrize("fmt", ["skops", "pickle", "cloudpickle"])
def test_save_and_load_every_serialization_format(tmp_path: Path, fmt: str) -> None:
    x, y = load_iris(return_X_y=True)
    forest = RandomForestClassifier(n_estimators=5, random_state=0).fit(x, y)  # skops needs a trusted Tree type
    mlmodel = save_model(forest, tmp_path / "m", input_example=x[:3], serialization_format=fmt)
    flavor = mlmodel["flavors"]["sklearn"]
    assert flavor["serialization_format"] == fmt
    assert (tmp_path / "m" / flavor["pickled_model"]).is_file()
    on_disk = yaml.safe_load((tmp_path / "m" / "MLmodel").read_text())
    assert on_disk["flavors"]["python_function"]["loader_module"] == "mlflow.sklearn"
    loaded = load_model_dir(tmp_path / "m")
    assert isinstance(loaded, RandomForestClassifier)
    assert (loaded.predict(x) == forest.predict(x)).all()
    assert "scikit-learn==" in (tmp_path / "m" / "requirements.txt").read_text()


def test_signature_and_example_are_inferred_from_a_dataframe(tmp_path: Path,
                                                             iris: tuple[Any, Any, LogisticRegression]) -> None:
    x, _, model = iris
    mlmodel = save_model(model, tmp_path / "m", input_example=x.head(3), serialization_format="pickle")
    inputs = json.loads(mlmodel["signature"]["inputs"])
    assert inputs[0] == {"type": "double", "name": "sepal length (cm)", "required": True}
    outputs = json.loads(mlmodel["signature"]["outputs"])
    assert outputs == [{"type": "tensor", "tensor-spec": {"dtype": "int64", "shape": [-1]}}]
    assert mlmodel["saved_input_example_info"]["type"] == "dataframe"
    example = json.loads((tmp_path / "m" / "input_example.json").read_text())
    assert example["columns"][0] == "sepal length (cm)" and len(example["data"]) == 3
    wrapper = load_model_dir(tmp_path / "m", as_pyfunc=True)
    assert isinstance(wrapper, PyFuncModel)
    assert list(wrapper.load_input_example().columns) == list(x.columns)
    assert (wrapper.predict(x.head(3)) == model.predict(x.head(3))).all()


def test_schema_of_arrays_and_explicit_signatures(tmp_path: Path, iris: tuple[Any, Any, LogisticRegression]) -> None:
    assert infer_schema(np.zeros((3, 4), dtype=np.float32)) == [
        {"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, 4]}}]
    x, _, model = iris
    signature = {"inputs": [{"type": "double", "name": "a", "required": True}]}
    mlmodel = save_model(model, tmp_path / "m", signature=signature, serialization_format="pickle")
    assert json.loads(mlmodel["signature"]["inputs"]) == signature["inputs"]
    none = save_model(model, tmp_path / "n", input_example=x.head(2), signature=False, serialization_format="pickle")
    assert "signature" not in none


def test_unsupported_models_and_bad_folders_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(InvalidParameterValue, match="not a supported model type"):
        save_model(object(), tmp_path / "m")
    with pytest.raises(InvalidParameterValue, match="no MLmodel"):
        load_model_dir(tmp_path)


def test_a_skops_model_without_skops_installed_gets_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  iris: tuple[Any, Any, LogisticRegression]) -> None:
    _, _, model = iris
    save_model(model, tmp_path / "m", serialization_format="skops")
    monkeypatch.setitem(sys.modules, "skops", None)
    monkeypatch.setitem(sys.modules, "skops.io", None)
    with pytest.raises(InvalidParameterValue, match="pip install skops"):
        load_model_dir(tmp_path / "m")


def test_log_model_register_and_load_by_every_uri(fluent: Settings, iris: tuple[Any, Any, LogisticRegression],
                                                  tmp_path: Path) -> None:
    x, _, model = iris
    name = unique("iris")
    with capstan.start_run(experiment=unique("models")) as run:
        info = capstan.log_model(model, "model", input_example=x.head(3), registered_model_name=name,
                                 serialization_format="pickle")
    assert info.model_uri == f"models:/{info.model_id}" and info.run_id == run.run_id
    assert info.artifact_location == f"mlflow-artifacts:/{run.experiment_id}/models/{info.model_id}/artifacts"
    assert info.flavors == ("python_function", "sklearn") and info.registered_model_version == 1
    client = capstan.Client()
    version = client.get_model_version(name, 1)
    assert (version.run_id, version.model_id) == (run.run_id, info.model_id)  # lineage run -> version
    assert [o.model_id for o in client.get_run(run.run_id).outputs] == [info.model_id]
    assert client.get_logged_model(info.model_id).status == "READY"
    client.set_registered_model_alias(name, "champion", 1)

    expected = model.predict(x)
    for uri in (f"models:/{name}@champion", f"models:/{name}/1", f"models:/{name}/latest", info.model_uri,
                f"runs:/{run.run_id}/model"):
        loaded = capstan.load_model(uri)
        assert isinstance(loaded, LogisticRegression), uri
        assert (loaded.predict(x) == expected).all(), uri
    wrapper = capstan.load_model(f"models:/{name}@champion", as_pyfunc=True)
    assert wrapper.model_id == info.model_id and wrapper.run_id == run.run_id
    assert wrapper.load_input_example().shape == (3, 4)
    kept = capstan.load_model(f"models:/{name}/1", dst_path=tmp_path / "kept")
    assert isinstance(kept, LogisticRegression) and (tmp_path / "kept" / "MLmodel").is_file()

    with pytest.raises(ResourceDoesNotExist):
        capstan.load_model(f"models:/{name}@nobody")
    with pytest.raises(InvalidParameterValue):
        capstan.load_model("s3://bucket/model")
    with pytest.raises(InvalidParameterValue, match="VERSION"):
        capstan.load_model(f"models:/{name}/one")


def test_register_an_existing_logged_model_as_a_new_version(fluent: Settings,
                                                            iris: tuple[Any, Any, LogisticRegression]) -> None:
    _, _, model = iris
    name = unique("second")
    with capstan.start_run(experiment=unique("models")):
        first = capstan.log_model(model, "model", registered_model_name=name, serialization_format="pickle")
        second = capstan.log_model(model, "other", serialization_format="pickle")
    version = capstan.register_model(second.model_uri, name)
    assert version.version == 2 and version.model_id == second.model_id
    assert capstan.Client().get_model_version(name, 1).model_id == first.model_id


def test_mlflow_pyfunc_loads_a_model_capstan_logged(fluent: Settings, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    iris: tuple[Any, Any, LogisticRegression]) -> None:
    mlflow_pyfunc = pytest.importorskip("mlflow.pyfunc")
    x, _, model = iris
    name = unique("for-mlflow")
    with capstan.start_run(experiment=unique("models")):
        capstan.log_model(model, "model", input_example=x.head(3), registered_model_name=name)  # default format
    folder = capstan.Client().download_model(f"models:/{name}/1", tmp_path / "dl")
    assert yaml.safe_load((folder / "MLmodel").read_text())["flavors"]["sklearn"]["serialization_format"] == "skops"
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "true")
    loaded = mlflow_pyfunc.load_model(str(folder))
    assert (np.asarray(loaded.predict(x.head(10))) == model.predict(x.head(10))).all()
    assert loaded.metadata.signature.inputs.input_names()[0] == "sepal length (cm)"


@pytest.mark.filterwarnings("ignore:Hint. Inferred schema contains integer:UserWarning")
def test_models_the_real_mlflow_client_logged_into_a_capstan_server_load(
        server: ServerProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        iris: tuple[Any, Any, LogisticRegression]) -> None:
    pytest.importorskip("mlflow")
    import mlflow.sklearn

    for key in [k for k in os.environ if k.startswith("MLFLOW_")]:
        monkeypatch.delenv(key)
    x, _, model = iris
    name = unique("from-mlflow")
    mlflow.set_tracking_uri(server.url)
    mlflow.set_registry_uri(server.url)
    try:
        mlflow.set_experiment(unique("mlflow-client"))
        with mlflow.start_run() as run:
            mlflow.sklearn.log_model(model, name="model", input_example=x.head(3), registered_model_name=name,
                                     pip_requirements=["scikit-learn"])  # skips a slow inference subprocess
            mlflow.sklearn.log_model(model, name="pickled", serialization_format="cloudpickle",
                                     pip_requirements=["scikit-learn"])
        run_id = run.info.run_id
    finally:
        mlflow.set_tracking_uri("")
        mlflow.set_registry_uri("")
    remote = capstan.Client(settings=Settings.for_home(tmp_path / "client", url=server.url))
    local = capstan.Client(settings=Settings.for_home(server.home))  # the server's own store, no HTTP
    try:
        for client in (remote, local):
            skops_model = client.load_model(f"models:/{name}/1")
            assert isinstance(skops_model, LogisticRegression)
            assert (skops_model.predict(x) == model.predict(x)).all()
            pickled = client.load_model(f"runs:/{run_id}/pickled")
            assert (pickled.predict(x) == model.predict(x)).all()
    finally:
        remote.close()
        local.close()

