"""The issue's protocol test: a model logged and registered by the unmodified ``mlflow`` client on a real
``capstan server``, served by a real ``capstan serve`` process that fetches it through ``CAPSTAN_URL``, and called by
the real ``tritonclient`` (http and grpc, with their default binary tensors) and with the scoring payloads mlflow
itself builds for ``/invocations``. Every answer must equal the model's own predictions."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from sklearn.datasets import load_iris
from sklearn.ensemble import RandomForestClassifier

from helpers.server import ServerProcess, capstan_command, clean_env, free_port, pump, start_server

mlflow = pytest.importorskip("mlflow", reason="the mlflow client is a test extra: pip install -e '.[test]'")
pytest.importorskip("tritonclient.grpc", reason="tritonclient[grpc] is a test extra")

pytestmark = pytest.mark.slow
X, Y = load_iris(return_X_y=True)
MODEL = RandomForestClassifier(n_estimators=10, random_state=0).fit(X, Y)
ROWS = X[::15]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    home = tmp_path_factory.mktemp("mlflow-serve") / "home"
    saved = {k: v for k, v in os.environ.items() if k.startswith("MLFLOW_")}
    with start_server(home) as running:
        os.environ.update({"MLFLOW_TRACKING_URI": running.url, "MLFLOW_DISABLE_TELEMETRY": "true",
                           "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1"})
        try:
            mlflow.set_tracking_uri(running.url)
            mlflow.set_registry_uri(running.url)
            mlflow.set_experiment("serve-mlflow")
            with mlflow.start_run():
                mlflow.sklearn.log_model(MODEL, name="forest", registered_model_name="mlf-forest",
                                         input_example=X[:3], serialization_format="cloudpickle",
                                         pip_requirements=["scikit-learn"])
            yield running
        finally:
            mlflow.set_tracking_uri("")
            for key in [k for k in os.environ if k.startswith("MLFLOW_")]:
                os.environ.pop(key)
            os.environ.update(saved)


@pytest.fixture(scope="module")
def served(server: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """``capstan serve models:/mlf-forest/1`` through ``CAPSTAN_URL``: (http base URL, gRPC port)."""
    client_home: Path = tmp_path_factory.mktemp("serve-client")
    port, grpc_port = free_port(), free_port()
    process = subprocess.Popen([*capstan_command(), "serve", "models:/mlf-forest/1", "--port", str(port),
                                "--grpc-port", str(grpc_port), "--no-access-log"],
                               env=clean_env(client_home, {"CAPSTAN_URL": server.url}),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    threading.Thread(target=pump, args=(process.stdout, lines), daemon=True).start()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert process.poll() is None and time.monotonic() < deadline, "".join(lines)
            time.sleep(0.05)
        yield url, grpc_port
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_tritonclient_http_with_default_binary_tensors(served: tuple[str, int]) -> None:
    import tritonclient.http as triton

    url, _grpc = served
    client = triton.InferenceServerClient(url.removeprefix("http://"))
    assert client.is_model_ready("mlf-forest")
    tensor = triton.InferInput("input-0", list(ROWS.shape), "FP64")
    tensor.set_data_from_numpy(ROWS)  # binary by default
    result = client.infer("mlf-forest", [tensor])
    assert result.as_numpy("output-0").tolist() == MODEL.predict(ROWS).tolist()


def test_tritonclient_grpc_with_default_raw_contents(served: tuple[str, int]) -> None:
    import tritonclient.grpc as triton

    _url, grpc_port = served
    client = triton.InferenceServerClient(f"127.0.0.1:{grpc_port}")
    assert client.is_server_live() and client.is_model_ready("mlf-forest")
    tensor = triton.InferInput("anything", list(ROWS.shape), "FP32")  # a single input is taken under any name
    tensor.set_data_from_numpy(ROWS.astype(np.float32))
    result = client.infer("mlf-forest", [tensor])
    assert result.as_numpy("output-0").tolist() == MODEL.predict(ROWS.astype(np.float32)).tolist()


def test_mlflow_scoring_payloads_unmodified(served: tuple[str, int]) -> None:
    import pandas as pd
    from mlflow.models import convert_input_example_to_serving_input

    url, _grpc = served
    expected = MODEL.predict(ROWS).tolist()
    frame = pd.DataFrame(ROWS, columns=[f"f{i}" for i in range(4)])
    payloads = [convert_input_example_to_serving_input(frame), convert_input_example_to_serving_input(ROWS),
                json.dumps({"dataframe_records": frame.to_dict(orient="records")}),
                json.dumps({"instances": ROWS.tolist()})]
    for payload in payloads:
        assert payload is not None
        response = httpx.post(f"{url}/invocations", content=payload, headers={"Content-Type": "application/json"},
                              timeout=30)
        assert response.status_code == 200, (payload[:80], response.text)
        assert response.json()["predictions"] == expected, payload[:80]
