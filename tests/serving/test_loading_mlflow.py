"""Models logged by the unmodified ``mlflow`` client to a real ``capstan server``, loaded by `capstan.serving.loading`
through the HTTP backend (digests from the server's listing): sklearn in each serialization format (skops with the
logger's ``skops_trusted_types``), ONNX, and a pyfunc ``PythonModel``. A subprocess in which ``import mlflow``
fails shows which load without mlflow (sklearn, ONNX) and which are refused naming mlflow (the pyfunc model)."""

from __future__ import annotations

import json
import operator
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer

from capstan.sdk.backends import open_backend
from capstan.sdk.model_source import BackendModelSource
from capstan.serving.loading import load_served_model
from capstan.settings import Settings
from helpers.server import clean_env, start_server

pytest.importorskip("mlflow", reason="the mlflow client is a test extra: pip install -e '.[test]'")

X, Y = load_iris(return_X_y=True)
FORMATS = ("skops", "pickle", "cloudpickle")
WEIGHTS = np.arange(12, dtype=np.float32).reshape(4, 3)


@dataclass(frozen=True)
class Logged:
    url: str
    home: Path
    pipe: Any


def _onnx_model() -> Any:
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])], "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        initializer=[numpy_helper.from_array(WEIGHTS, "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def _python_model_class(base: type) -> type:
    class Doubler(base):  # type: ignore[misc,valid-type]  # mlflow's PythonModel is untyped
        """Defined in a function, so cloudpickle stores it by value (the subprocess cannot import this module)."""

        def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]  # mlflow reads hints
            return np.asarray(model_input, dtype=np.float64).sum(axis=1) * 2

    return Doubler


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Logged]:
    """A capstan server with models logged and registered by mlflow: ``mlf-<format>``, ``mlf-onnx``, ``mlf-pyfunc``."""
    home = tmp_path_factory.mktemp("mlflow-loading")
    names = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK",
             "MLFLOW_HTTP_REQUEST_MAX_RETRIES")
    saved = {n: os.environ.get(n) for n in names}
    with start_server(home) as server:
        os.environ.update({"MLFLOW_TRACKING_URI": server.url, "MLFLOW_REGISTRY_URI": server.url,
                           "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true",
                           "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1"})
        import mlflow

        mlflow.set_tracking_uri(server.url)
        mlflow.set_registry_uri(server.url)
        pipe = make_pipeline(FunctionTransformer(operator.neg), LogisticRegression(max_iter=500)).fit(X, Y)
        try:
            mlflow.set_experiment("loading")
            with mlflow.start_run():
                for fmt in FORMATS:
                    extra = {"skops_trusted_types": ["_operator.neg"]} if fmt == "skops" else {}
                    mlflow.sklearn.log_model(pipe, name=f"sk-{fmt}", registered_model_name=f"mlf-{fmt}",
                                             serialization_format=fmt, input_example=X[:2],
                                             pip_requirements=["scikit-learn"], **extra)
                mlflow.onnx.log_model(_onnx_model(), name="onnx", registered_model_name="mlf-onnx",
                                      pip_requirements=["onnxruntime"])
                mlflow.pyfunc.log_model(name="pyfunc", python_model=_python_model_class(mlflow.pyfunc.PythonModel)(),
                                        registered_model_name="mlf-pyfunc", pip_requirements=["numpy"])
            yield Logged(server.url, home, pipe)
        finally:
            mlflow.set_tracking_uri("")
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


def _load(logged: Logged, uri: str, tmp_path: Path) -> Any:
    backend = open_backend(Settings.for_home(tmp_path / "client", url=logged.url))
    try:
        return load_served_model(BackendModelSource(backend), uri, trusted_local=False)
    finally:
        backend.close()


@pytest.mark.parametrize("fmt", FORMATS)
def test_mlflow_sklearn_loads_over_http(logged: Logged, fmt: str, tmp_path: Path) -> None:
    served = _load(logged, f"models:/mlf-{fmt}/1", tmp_path)
    assert (served.name, served.version, served.platform) == (f"mlf-{fmt}", "1", "sklearn")
    assert [(i.datatype, i.shape) for i in served.inputs] == [("FP64", (-1, 4))]
    assert list(served.predict(X)) == list(logged.pipe.predict(X))


def test_mlflow_onnx_loads_over_http(logged: Logged, tmp_path: Path) -> None:
    served = _load(logged, "models:/mlf-onnx/1", tmp_path)
    assert served.platform == "onnxruntime_onnx"
    assert [(t.datatype, t.shape) for t in served.inputs] == [("FP32", (-1, 4))]
    rows = X[:5].astype(np.float32)
    assert np.allclose(served.predict(rows), rows @ WEIGHTS)


def test_mlflow_pyfunc_loads_when_mlflow_is_installed(logged: Logged, tmp_path: Path) -> None:
    served = _load(logged, "models:/mlf-pyfunc/1", tmp_path)
    assert served.platform == "python"
    assert list(served.predict(np.ones((2, 4)))) == [8.0, 8.0]


_WITHOUT_MLFLOW = textwrap.dedent("""
    import importlib.abc, json, sys
    import numpy as np

    class NoMlflow(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "mlflow" or name.startswith("mlflow."):
                raise ImportError("mlflow is blocked in this test")
            return None

    sys.meta_path.insert(0, NoMlflow())
    from capstan.sdk.backends import open_backend
    from capstan.sdk.model_source import BackendModelSource
    from capstan.serving.loading import load_served_model
    from capstan.settings import Settings

    rows = np.asarray(json.loads(sys.argv[1]))
    backend = open_backend(Settings.from_env())
    results = {}
    for uri in sys.argv[2:]:
        try:
            model = load_served_model(BackendModelSource(backend), uri, trusted_local=False)
            results[uri] = model.predict(rows.astype(model.inputs[0].datatype == "FP32" and "f4" or "f8")).tolist()
        except Exception as exc:
            results[uri] = "error: " + str(exc)
    results["mlflow imported"] = any(m == "mlflow" or m.startswith("mlflow.") for m in sys.modules)
    print(json.dumps(results))
    """)


def test_which_mlflow_models_load_without_mlflow(logged: Logged) -> None:
    uris = [f"models:/mlf-{fmt}/1" for fmt in FORMATS] + ["models:/mlf-onnx/1", "models:/mlf-pyfunc/1"]
    env = clean_env(logged.home, {"CAPSTAN_URL": logged.url})
    done = subprocess.run([sys.executable, "-c", _WITHOUT_MLFLOW, json.dumps(X[:6].tolist()), *uris], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout.strip().splitlines()[-1])
    assert results.pop("mlflow imported") is False
    for fmt in FORMATS:
        assert results[f"models:/mlf-{fmt}/1"] == logged.pipe.predict(X[:6]).tolist()
    assert np.allclose(results["models:/mlf-onnx/1"], X[:6].astype(np.float32) @ WEIGHTS)
    refused = results["models:/mlf-pyfunc/1"]
    assert refused.startswith("error: ") and "pip install mlflow" in refused
