"""``capstan serve`` composed by `capstan.serving.process`: an ONNX model and a Python-class model end to end as real
subprocesses (metrics, the JSON access log, payloads to Parquet, drift on ``/drift`` and as a ``DriftDetected``
event), bad option values, and the in-process pieces (the drift route and the shutdown hooks of the app)."""

from __future__ import annotations

import io
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml

from capstan.models import python_class
from capstan.services import Services
from capstan.serving.drift_monitor import reference_from_data, write_reference
from capstan.serving.process import LoggingEventLog, RemoteStores, ServeOptions, serve_process_app
from capstan.settings import Settings
from helpers.asgi_server import serve_app
from helpers.server import capstan_command, clean_env, free_port, pump

RNG = np.random.default_rng(7)
TRAIN = RNG.normal(0.0, 1.0, size=(2000, 3)).astype(np.float32)
WEIGHTS = np.arange(6, dtype=np.float32).reshape(3, 2)


def _onnx_linear(folder: Path) -> None:
    """An ONNX graph y = x @ W (FP32, [N, 3] -> [N, 2]), with a drift reference profiled from TRAIN."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])], "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])],
        initializer=[numpy_helper.from_array(WEIGHTS, "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    folder.mkdir(parents=True)
    onnx.save(model, str(folder / "model.onnx"))
    (folder / "MLmodel").write_text(yaml.safe_dump({"flavors": {"onnx": {"data": "model.onnx"}}}))
    write_reference(folder, reference_from_data(TRAIN))


@dataclass
class Served:
    process: subprocess.Popen[str]
    port: int
    lines: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextmanager
def serve(home: Path, *args: str) -> Iterator[Served]:
    """``capstan serve ARGS`` on a free port (stdout and stderr kept apart), yielded once ready."""
    port = free_port()
    process = subprocess.Popen([*capstan_command(), "serve", *args, "--port", str(port)], env=clean_env(home),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    served = Served(process, port)
    threading.Thread(target=pump, args=(process.stdout, served.lines), daemon=True).start()
    threading.Thread(target=pump, args=(process.stderr, served.errors), daemon=True).start()
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{served.url}/v2/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"capstan serve did not become ready:\n{''.join(served.lines + served.errors)}")
            time.sleep(0.05)
        yield served
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)


def _stop(served: Served) -> None:
    served.process.send_signal(signal.SIGINT)
    assert served.process.wait(timeout=30) == 0, "".join(served.lines + served.errors)
    time.sleep(0.1)  # let the pumps read the last lines
    assert "Traceback" not in "".join(served.errors), "".join(served.errors)


def _infer(served: Served, name: str, rows: np.ndarray, request_id: str | None = None) -> httpx.Response:
    body = {"inputs": [{"name": "x", "shape": list(rows.shape), "datatype": "FP32" if rows.dtype == np.float32
                        else "FP64", "data": rows.ravel().tolist()}]}
    headers = {"X-Request-Id": request_id} if request_id else {}
    response = httpx.post(f"{served.url}/v2/models/{name}/infer", json=body, headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    return response


def _eventually(check: Any, what: str, timeout: float = 20) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_onnx_model_metrics_access_log_payloads_and_drift(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    home = tmp_path / "home"
    _onnx_linear(tmp_path / "lin")
    with serve(home, str(tmp_path / "lin"), "--payload-sample-rate", "1", "--drift-window", "200") as served:
        assert "model lin version 1" in "".join(served.lines)
        rows = TRAIN[:4]
        response = _infer(served, "lin", rows, request_id="req-onnx-1")
        assert np.allclose(response.json()["outputs"][0]["data"], (rows @ WEIGHTS).ravel())
        rid = response.headers["x-request-id"]
        assert rid == "req-onnx-1"
        access = _eventually(lambda: [line for line in served.errors if f'"request_id":"{rid}"' in line],
                             "the access-log line")
        assert '"path":"/v2/models/lin/infer"' in access[0] and '"status":200' in access[0]

        metrics = httpx.get(f"{served.url}/metrics", timeout=5).text
        assert re.search(r'capstan_serving_requests_total\{[^}]*model="lin"[^}]*version="1"[^}]*\} 1\.0', metrics) \
            or re.search(r'capstan_serving_requests_total\{[^}]*version="1"[^}]*model="lin"[^}]*\} 1\.0', metrics), \
            metrics

        _infer(served, "lin", TRAIN[4:200])  # completes the first window: like the reference, no drift
        shifted = TRAIN[200:400].copy()
        shifted[:, 1] += 4.0
        _infer(served, "lin", shifted)

        def drifted() -> list[dict[str, Any]]:
            report = httpx.get(f"{served.url}/drift", timeout=5).json()
            assert report[0]["model"] == "lin" and report[0]["version"] == "1"
            return [f for f in report[0].get("features", []) if f.get("drifted")] if report[0]["windows"] >= 2 else []

        features = {f["feature"] for f in _eventually(drifted, "drift on /drift")}
        assert features == {"1"}, features
        _stop(served)

    settings = Settings.for_home(home)
    services = Services.open(settings)
    try:
        events = services.events.list(reason="DriftDetected")
        assert events and {e.data["feature"] for e in events} == {"1"}
        assert events[0].object_id == "lin/1" and events[0].type == "Warning"
        files = [item.path for item in services.artifacts.list("serve/lin/payloads", recursive=True)]
        assert files and all(f.endswith(".parquet") for f in files)
        tables = [pq.read_table(io.BytesIO(services.artifacts.read_bytes(f))) for f in files]
    finally:
        services.close()
    assert sum(t.num_rows for t in tables) == 400
    assert "req-onnx-1" in {rid for t in tables for rid in t.column("request_id").to_pylist()}


def _scaler_model(tmp_path: Path) -> Path:
    module = f"capstan_serve_scaler_{tmp_path.name.replace('-', '_')}"
    code = tmp_path / "src" / f"{module}.py"
    code.parent.mkdir(parents=True)
    code.write_text(textwrap.dedent("""
        import numpy as np

        class Scaler:
            def load(self, path):
                self.n_features_in_ = 3

            def predict(self, x):
                return np.asarray(x).sum(axis=1) * 2.0
        """))
    folder = tmp_path / "scaler"
    python_class.save_model(f"{module}:Scaler", folder, code_paths=[code])
    return folder


def test_python_class_model_as_a_deployment_replica_without_access_log(tmp_path: Path) -> None:
    folder = _scaler_model(tmp_path)
    with serve(tmp_path / "home", str(folder), "--name", "dep-model", "--deployment", "churn",
               "--no-access-log") as served:
        response = httpx.post(f"{served.url}/v1/models/dep-model:predict", json={"instances": [[1, 2, 3]]},
                              timeout=10)
        assert response.json() == {"predictions": [12.0]}
        assert httpx.get(f"{served.url}/drift", timeout=5).json()[0]["reference"] == "none"
        _stop(served)
    assert not any('"request_id"' in line for line in served.errors), served.errors


def _fails(home: Path, args: Sequence[str], env: dict[str, str] | None = None) -> str:
    result = subprocess.run([*capstan_command(), "serve", *args], env=clean_env(home, env), text=True,
                            capture_output=True, timeout=60)
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_bad_option_values_are_one_line_errors(tmp_path: Path) -> None:
    folder = _scaler_model(tmp_path)
    home = tmp_path / "home"
    assert "--payload-sample-rate must be between 0 and 1" in _fails(home, [str(folder), "--payload-sample-rate", "2"])
    assert "--drift-window must be at least 2" in _fails(home, [str(folder), "--drift-window", "1"])
    remote = _fails(home, [str(folder), "--payload-sample-rate", "0.5"], {"CAPSTAN_URL": "http://127.0.0.1:9"})
    assert "needs the local stores" in remote
    no_pyarrow = tmp_path / "no-pyarrow" / "pyarrow"
    no_pyarrow.mkdir(parents=True)
    (no_pyarrow / "__init__.py").write_text("raise ImportError('hidden for the test')\n")
    line = _fails(home, [str(folder), "--payload-sample-rate", "0.5"], {"PYTHONPATH": str(no_pyarrow.parent)})
    assert "pip install 'capstan[parquet]'" in line


class _Model:
    name = "m"
    version = "4"
    platform = "test"
    ready = True

    def __init__(self) -> None:
        from capstan.serving.oip import TensorMetadata

        self.inputs = (TensorMetadata("x", "FP64", (-1, 2)),)
        self.outputs = (TensorMetadata("y", "FP64", (-1,)),)

    def predict(self, x: Any) -> Any:
        return np.asarray(x).sum(axis=1)


def test_remote_stores_log_drift_events_and_the_app_closes_its_monitor(caplog: pytest.LogCaptureFixture) -> None:
    """In process: the traffic reference, ``/drift``, a drift event on the ``capstan.serving`` logger, and the
    lifespan's shutdown hooks (the monitor's thread stops)."""
    options = ServeOptions(1 << 20, drift_window=50, access_log=False)
    app = serve_process_app(_Model(), None, options, RemoteStores())
    before = {t.name for t in threading.enumerate()}
    assert "capstan-drift-monitor" in before
    with caplog.at_level("WARNING", logger="capstan.serving"), serve_app(app) as url:
        for shift in (0.0, 5.0):
            rows = RNG.normal(shift, 1.0, size=(50, 2))
            httpx.post(f"{url}/v1/models/m:predict", json={"instances": rows.tolist()}, timeout=10)
        report = _eventually(lambda: [r for r in httpx.get(f"{url}/drift", timeout=5).json() if r["windows"] >= 1],
                             "a drift window")
        assert report[0]["reference"] == "traffic"
        _eventually(lambda: any("DriftDetected" in r.getMessage() for r in caplog.records), "the drift log line")
    assert not any(t.name == "capstan-drift-monitor" and t.is_alive() for t in threading.enumerate())


def test_logging_event_log_keeps_nothing() -> None:
    log = LoggingEventLog(clock=lambda: 5)
    event = log.append("deployment", "p/churn", "DriftDetected", "x", type="Warning", data={"feature": "a"})
    assert (event.id, event.time, event.data) == (0, 5, {"feature": "a"}) and log.list() == ()
    assert sys.modules["capstan.serving.process"].EVENTS_LOGGER == "capstan.serving"
