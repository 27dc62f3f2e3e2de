"""``capstan serve MODEL_URI`` as a real subprocess: a model logged and registered with the SDK into a temporary
``CAPSTAN_HOME``, served, queried with tritonclient (OIP v2) and httpx (MLflow ``/invocations``), then stopped with
SIGINT; and the bad inputs that must end in one ``error: ...`` line."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt
import pytest
import tritonclient.http as triton
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from capstan.sdk.client import Client
from capstan.settings import Settings
from helpers.server import capstan_command, clean_env, free_port, pump, start_server

Array = npt.NDArray[Any]
NAME = "iris-clf"


@dataclass(frozen=True)
class Logged:
    home: Path
    model: LogisticRegression
    x: Array
    run_id: str


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> Logged:
    """An iris classifier logged in a run, registered as NAME version 1 with alias ``champion``."""
    home = tmp_path_factory.mktemp("serve-home")
    x, y = load_iris(return_X_y=True)
    model = LogisticRegression(max_iter=500).fit(x, y)
    with Client(Settings.for_home(home)) as client:
        experiment_id = client.create_experiment("serving")
        run = client.create_run(experiment_id)
        client.log_model(run.info.run_id, model, "model", registered_model_name=NAME)
        client.set_terminated(run.info.run_id)
        client.set_registered_model_alias(NAME, "champion", 1)
    return Logged(home, model, x, run.info.run_id)


@dataclass
class Served:
    process: subprocess.Popen[str]
    port: int
    lines: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextmanager
def serve(home: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 60) -> Iterator[Served]:
    """``capstan serve ARGS --port <free port>``, yielded once ``/v2/health/ready`` answers 200."""
    port = free_port()
    process = subprocess.Popen([*capstan_command(), "serve", *args, "--port", str(port)], env=clean_env(home, env),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    served = Served(process, port)
    threading.Thread(target=pump, args=(process.stdout, served.lines), daemon=True).start()
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if httpx.get(f"{served.url}/v2/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"capstan serve did not become ready:\n{''.join(served.lines)}")
            time.sleep(0.05)
        yield served
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)


def _stop(served: Served) -> str:
    """SIGINT, then the exit status must be 0 and nothing alarming printed; returns the whole output."""
    served.process.send_signal(signal.SIGINT)
    assert served.process.wait(timeout=20) == 0, "".join(served.lines)
    time.sleep(0.1)  # let the pump read the last lines
    output = "".join(served.lines)
    assert "Traceback" not in output and "error" not in output.lower(), output
    return output


def _triton_predict(served: Served, name: str, rows: Array) -> Array:
    client = triton.InferenceServerClient(url=f"127.0.0.1:{served.port}")
    try:
        assert client.is_server_ready() and client.is_model_ready(name)
        tensor = triton.InferInput("input-0", list(rows.shape), "FP64")
        tensor.set_data_from_numpy(rows, binary_data=True)
        result = client.infer(name, [tensor], outputs=[triton.InferRequestedOutput("output-0", binary_data=True)])
        got = result.as_numpy("output-0")
        assert got is not None
        return got
    finally:
        client.close()


def _invocations(served: Served, rows: Array) -> list[Any]:
    body = {"dataframe_split": {"columns": ["a", "b", "c", "d"], "data": rows.tolist()}}
    response = httpx.post(f"{served.url}/invocations", json=body, timeout=10)
    assert response.status_code == 200, response.text
    predictions: list[Any] = response.json()["predictions"]
    return predictions


def test_serve_alias_answers_oip_and_mlflow_then_stops_on_sigint(logged: Logged) -> None:
    rows = logged.x[::5]
    expected = logged.model.predict(rows)
    with serve(logged.home, f"models:/{NAME}@champion") as served:
        start = "".join(served.lines)
        assert f"model {NAME} version 1 (models:/{NAME}@champion) listening on http://127.0.0.1:{served.port}" \
            in start
        np.testing.assert_array_equal(_triton_predict(served, NAME, rows), expected)
        assert _invocations(served, rows) == expected.tolist()
        meta = httpx.get(f"{served.url}/v2/models/{NAME}", timeout=5).json()
        assert meta["versions"] == ["1"] and meta["inputs"][0]["shape"] == [-1, 4]
        _stop(served)


def test_serve_version_uri_with_name_host_and_batching(logged: Logged) -> None:
    rows = logged.x[::3]
    expected = logged.model.predict(rows)
    with serve(logged.home, f"models:/{NAME}/1", "--name", "flowers", "--host", "127.0.0.1",
               "--max-batch-size", "8", "--max-batch-delay-ms", "2") as served:
        assert "model flowers version 1" in "".join(served.lines)
        assert "batches of up to 8 rows" in "".join(served.lines)
        np.testing.assert_array_equal(_triton_predict(served, "flowers", rows), expected)
        assert httpx.get(f"{served.url}/v2/models/{NAME}", timeout=5).status_code == 404
        # Several single-row requests at once go through the batcher and each gets its own answer.
        results: dict[int, Any] = {}

        def one(i: int) -> None:
            body = {"instances": [rows[i].tolist()]}
            results[i] = httpx.post(f"{served.url}/v1/models/flowers:predict", json=body, timeout=10).json()

        threads = [threading.Thread(target=one, args=(i,)) for i in range(len(rows))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert [results[i]["predictions"][0] for i in range(len(rows))] == expected.tolist()
        _stop(served)


def test_serve_runs_uri_and_local_folder(logged: Logged, tmp_path: Path) -> None:
    rows = logged.x[:10]
    expected = logged.model.predict(rows)
    with serve(logged.home, f"runs:/{logged.run_id}/model") as served:
        assert "model model version 1" in "".join(served.lines)
        np.testing.assert_array_equal(_triton_predict(served, "model", rows), expected)
        _stop(served)
    with Client(Settings.for_home(logged.home)) as client:
        folder = client.download_model(f"models:/{NAME}/1", tmp_path / "dl")
    target = tmp_path / "my-model"
    folder.rename(target)
    with serve(logged.home, str(target)) as served:
        assert "model my-model version 1" in "".join(served.lines)
        assert _invocations(served, rows) == expected.tolist()
        _stop(served)


def test_serve_through_capstan_url(tmp_path: Path) -> None:
    """With CAPSTAN_URL the model is found and downloaded through the server's API."""
    x, y = load_iris(return_X_y=True)
    model = LogisticRegression(max_iter=300).fit(x, y)
    with start_server(tmp_path / "server") as server:
        with Client(Settings.for_home(tmp_path / "client", url=server.url)) as client:
            run = client.create_run(client.create_experiment("remote"))
            client.log_model(run.info.run_id, model, "model", registered_model_name="remote-iris")
            client.set_registered_model_alias("remote-iris", "live", 1)
        with serve(tmp_path / "serve", "models:/remote-iris@live", env={"CAPSTAN_URL": server.url}) as served:
            assert "model remote-iris version 1" in "".join(served.lines)
            np.testing.assert_array_equal(_triton_predict(served, "remote-iris", x[:7]), model.predict(x[:7]))
            _stop(served)


def test_grpc_port_with_two_workers_answers_tritonclient_grpc(logged: Logged) -> None:
    """--grpc-port: OIP v2 over gRPC from each forked worker on one port (SO_REUSEPORT), next to REST."""
    import tritonclient.grpc as triton_grpc

    rows = logged.x[::4]
    with serve(logged.home, f"models:/{NAME}@champion", "--grpc-port", "0", "--workers", "2") as served:
        match = re.search(r"OIP v2 over gRPC on 127\.0\.0\.1:(\d+)", "".join(served.lines))
        assert match, "".join(served.lines)
        for _ in range(4):  # new channels, so more than one worker is likely to answer; each must be right
            client = triton_grpc.InferenceServerClient(url=f"127.0.0.1:{match.group(1)}")
            try:
                assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(NAME)
                tensor = triton_grpc.InferInput("input-0", list(rows.shape), "FP64")
                tensor.set_data_from_numpy(rows)
                result = client.infer(NAME, [tensor])
                np.testing.assert_array_equal(result.as_numpy("output-0"), logged.model.predict(rows))
            finally:
                client.close()
        np.testing.assert_array_equal(_triton_predict(served, NAME, rows), logged.model.predict(rows))
        _stop(served)


def test_grpc_port_in_use_is_one_line_error(logged: Logged) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = _fails(logged.home, [f"models:/{NAME}@champion", "--port", "0", "--grpc-port", str(port)])
    assert f"cannot listen for gRPC on 127.0.0.1:{port}" in line


def _fails(home: Path, args: Sequence[str]) -> str:
    result = subprocess.run([*capstan_command(), "serve", *args], env=clean_env(home), text=True,
                            capture_output=True, timeout=60)
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_unknown_model_is_one_line_error(logged: Logged) -> None:
    assert "nope" in _fails(logged.home, ["models:/nope@champion", "--port", str(free_port())])
    assert "missing" in _fails(logged.home, [f"models:/{NAME}@missing", "--port", str(free_port())])


def test_malformed_uri_is_one_line_error(logged: Logged, tmp_path: Path) -> None:
    assert "VERSION" in _fails(logged.home, [f"models:/{NAME}/one", "--port", str(free_port())])
    assert "is not models:/NAME@ALIAS" in _fails(logged.home, [str(tmp_path / "absent"), "--port", "0"])
    assert "no MLmodel" in _fails(logged.home, [str(tmp_path), "--port", "0"])


def test_unservable_flavor_is_one_line_error(logged: Logged, tmp_path: Path) -> None:
    folder = tmp_path / "h2o-model"
    folder.mkdir()
    (folder / "MLmodel").write_text("flavors:\n  h2o:\n    h2o_version: 3.0\n")
    line = _fails(logged.home, [str(folder), "--port", "0"])
    assert "has flavors h2o" in line and "Capstan serves sklearn, onnx" in line


def test_port_in_use_is_one_line_error(logged: Logged) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = _fails(logged.home, [f"models:/{NAME}@champion", "--port", str(port)])
    assert f"cannot listen on 127.0.0.1:{port}" in line


def test_bad_batching_options_are_refused(logged: Logged) -> None:
    result = subprocess.run([*capstan_command(), "serve", f"models:/{NAME}/1", "--max-batch-size", "-1"],
                            env=clean_env(logged.home), text=True, capture_output=True, timeout=60)
    assert result.returncode == 2 and "Traceback" not in result.stderr and "--max-batch-size" in result.stderr
