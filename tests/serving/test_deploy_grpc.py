"""Managed deployments over OIP v2 gRPC: a real ``capstan server --grpc-port 0 --workers 2`` with auth on, a
deployment with a canary (real ``capstan serve`` replicas), and the real ``tritonclient.grpc`` client (raw contents)
and its generated stub (typed contents).

Checked: the server RPCs, ModelReady/ModelMetadata through the router, answers equal to the REST answers of the same
version, version pins by ``model_version`` and by ``x-capstan-version`` metadata, the traffic split reaching both
versions, outcomes recorded for A/B, and the errors (unknown deployment or version, bad shape, no token, a token
scoped to another deployment). ``oip.decode_response``, which reads the replica's REST answer, is checked against
``oip.encode_response`` first.
"""

from __future__ import annotations

import datetime
import ipaddress
import re
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from capstan.errors import InvalidParameterValue
from capstan.sdk.client import Client
from capstan.services import Services
from capstan.serving import oip
from capstan.settings import Settings
from helpers.server import ServerProcess, capstan_command, clean_env, free_port, pump, start_server

ROWS = load_iris(return_X_y=True)[0][[0, 1, 50, 51, 100, 101, 70, 83]]


# ------------------------------------------------------------------------------------------ decode_response


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_decode_response_reads_what_encode_response_writes(binary: bool) -> None:
    outputs = (oip.InferOutput.of("labels", np.array([[1, -2], [3, 4]], dtype=np.int64)),
               oip.InferOutput.of("scores", np.array([0.5, np.nan], dtype=np.float64)),
               oip.InferOutput.of("names", np.array([b"a", "caf\u00e9".encode()], dtype=np.object_)))
    body, length = oip.encode_response(oip.InferResponse("m", "3", "r-1", outputs), binary_outputs=binary)
    decoded = oip.decode_response(body, header_length=length)
    assert (decoded.model_name, decoded.model_version, decoded.id) == ("m", "3", "r-1")
    assert [(o.name, o.datatype, o.shape) for o in decoded.outputs] == [
        ("labels", "INT64", (2, 2)), ("scores", "FP64", (2,)), ("names", "BYTES", (2,))]
    assert decoded.outputs[0].data.tolist() == [[1, -2], [3, 4]]
    np.testing.assert_array_equal(decoded.outputs[1].data, [0.5, np.nan])  # JSON null is NaN again
    assert decoded.outputs[2].data.tolist() == [b"a", "caf\u00e9".encode()]


def test_decode_response_names_the_bad_output() -> None:
    body = b'{"model_name": "m", "outputs": [{"name": "y", "datatype": "INT64", "shape": [3], "data": [1, 2]}]}'
    with pytest.raises(InvalidParameterValue, match="output 'y' has 2 elements"):
        oip.decode_response(body, header_length=None)


# ------------------------------------------------------------------------------------------ a live server


@dataclass(frozen=True)
class World:
    server: ServerProcess
    grpc_url: str
    admin: str
    scoped_here: str
    scoped_elsewhere: str

    def rest(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.admin}", **kwargs.pop("headers", {})}
        return httpx.request(method, f"{self.server.url}{path}", headers=headers, timeout=60, **kwargs)

    def auth(self, token: str | None = None, **extra: str) -> dict[str, str]:
        return {"authorization": f"Bearer {token or self.admin}", **extra}


def _register(home: Path) -> None:
    x, y = load_iris(return_X_y=True)
    with Client(Settings.for_home(home)) as client:
        experiment_id = client.create_experiment(f"exp-{uuid.uuid4().hex[:6]}")
        for c in (1.0, 0.01):  # version 2 is regularised hard, so some of ROWS get other labels
            run = client.create_run(experiment_id)
            client.log_model(run.info.run_id, LogisticRegression(C=c, max_iter=300).fit(x, y), "model",
                             registered_model_name="iris")
            client.set_terminated(run.info.run_id)


def _wait_for(what: str, check: Callable[[], Any], timeout: float = 90) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)
    return value


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    home = tmp_path_factory.mktemp("deploy-grpc") / "home"
    _register(home)
    services = Services.open(Settings.for_home(home))
    try:
        services.auth.create_user("root", admin=True)
        admin = services.auth.create_token("root").secret
        scoped_here = services.auth.create_token("root", scope="deployment:default/fraud").secret
        scoped_elsewhere = services.auth.create_token("root", scope="deployment:default/other").secret
    finally:
        services.close()
    with start_server(home, workers=2, args=["--grpc-port", "0", "--log-level", "info"]) as server:
        found = re.search(r"OIP v2 over gRPC on 127\.0\.0\.1:(\d+)", server.startup_text)
        assert found, server.startup_text
        world = World(server, f"127.0.0.1:{found.group(1)}", admin, scoped_here, scoped_elsewhere)
        created = world.rest("POST", "/api/v1/deployments", json={
            "name": "fraud", "model": "models:/iris/1", "canary": {"model": "models:/iris/2", "traffic": 50}})
        assert created.status_code == 201, created.text
        _wait_for("a ready replica of both versions", lambda: all(
            t["ready_replicas"] for t in world.rest("GET", "/api/v1/deployments/fraud").json()["traffic"]))
        yield world


@pytest.fixture
def client(world: World) -> Iterator[triton.InferenceServerClient]:
    client = triton.InferenceServerClient(world.grpc_url)
    yield client
    client.close()


def _raw_infer(client: triton.InferenceServerClient, name: str, rows: np.ndarray[Any, Any],
               headers: dict[str, str], version: str = "") -> triton.InferResult:
    tensor = triton.InferInput("input-0", list(rows.shape), "FP64")
    tensor.set_data_from_numpy(rows)
    return client.infer(name, [tensor], model_version=version, headers=headers)


def _rest_predictions(world: World, version: str) -> list[int]:
    body = {"inputs": [{"name": "input-0", "shape": list(ROWS.shape), "datatype": "FP64",
                        "data": ROWS.ravel().tolist()}]}
    answer = world.rest("POST", "/deployments/fraud/v2/models/fraud/infer", json=body,
                        headers={"x-capstan-version": version})
    assert answer.status_code == 200 and answer.headers["x-capstan-version"] == version, answer.text
    return list(answer.json()["outputs"][0]["data"])


def _error(call: Callable[[], object]) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as caught:
        call()
    return caught.value


def test_server_rpcs_need_no_credential(world: World, client: triton.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.get_server_metadata().name == "capstan"
    # each of the two workers listens on the one port (SO_REUSEPORT)
    _wait_for("two gRPC listeners", lambda: world.server.startup_text.count("OIP v2 gRPC listening on") == 2, 10)


def test_model_ready_and_metadata_through_the_router(world: World, client: triton.InferenceServerClient) -> None:
    assert client.is_model_ready("fraud", headers=world.auth())
    assert client.is_model_ready("fraud", "2", headers=world.auth())
    meta = client.get_model_metadata("fraud", "1", headers=world.auth(), as_json=True)
    assert meta["name"] == "fraud" and meta["versions"] == ["1"] and meta["platform"] == "sklearn"
    assert meta["inputs"] == [{"name": "input-0", "datatype": "FP64", "shape": ["-1", "4"]}]


def test_raw_and_typed_answers_match_rest_for_each_pinned_version(world: World,
                                                                  client: triton.InferenceServerClient) -> None:
    expected = {version: _rest_predictions(world, version) for version in ("1", "2")}
    assert expected["1"] != expected["2"], "the two versions should disagree on some of ROWS"
    for version in ("1", "2"):
        by_field = _raw_infer(client, "fraud", ROWS, world.auth(), version=version)
        assert by_field.as_numpy("output-0").tolist() == expected[version]
        response = by_field.get_response()
        assert response.model_version == version and len(response.raw_output_contents) == 1
        by_metadata = _raw_infer(client, "fraud", ROWS, world.auth(**{"x-capstan-version": version}))
        assert by_metadata.get_response().model_version == version

        request = service_pb2.ModelInferRequest(model_name="fraud", model_version=version, id="typed-1")
        tensor = request.inputs.add(name="features", datatype="FP32", shape=list(ROWS.shape))
        tensor.contents.fp32_contents.extend(ROWS.astype(np.float32).ravel().tolist())
        with grpc.insecure_channel(world.grpc_url) as channel:
            typed, call = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer.with_call(
                request, metadata=[*world.auth().items(), ("x-request-id", f"typed-{version}")])
        assert typed.id == "typed-1" and typed.model_version == version and not typed.raw_output_contents
        assert list(typed.outputs[0].contents.int64_contents) == expected[version]
        trailing = dict(call.trailing_metadata())
        assert trailing["x-request-id"] == f"typed-{version}" and trailing["x-capstan-version"] == version


def test_the_traffic_split_reaches_both_versions_and_outcomes_are_recorded(
        world: World, client: triton.InferenceServerClient) -> None:
    seen = {_raw_infer(client, "fraud", ROWS[:1], world.auth()).get_response().model_version for _ in range(24)}
    assert seen == {"1", "2"}  # 50 % canary: 24 draws miss one version with probability 2**-23

    def both_recorded() -> dict[str, Any] | None:  # the other worker's outcomes reach the store within a second
        quality: dict[str, Any] = world.rest("GET", "/deployments/fraud/quality").json()
        answered = {v["version"] for v in quality["versions"] if v["requests"]}
        return quality if answered == {"1", "2"} and sum(v["requests"] for v in quality["versions"]) >= 24 else None

    _wait_for("outcomes of both versions", both_recorded, timeout=15)


def test_errors_are_grpc_status_codes(world: World, client: triton.InferenceServerClient) -> None:
    error = _error(lambda: _raw_infer(client, "nope", ROWS, world.auth()))
    assert error.status() == "StatusCode.NOT_FOUND" and "'nope'" in str(error.message())
    error = _error(lambda: _raw_infer(client, "fraud", ROWS, world.auth(), version="9"))
    assert error.status() == "StatusCode.NOT_FOUND" and "'9'" in str(error.message())
    error = _error(lambda: _raw_infer(client, "fraud", ROWS[:, :3].copy(), world.auth()))
    assert error.status() == "StatusCode.INVALID_ARGUMENT" and "'input-0'" in str(error.message())
    error = _error(lambda: _raw_infer(client, "fraud", ROWS, {}))
    assert error.status() == "StatusCode.UNAUTHENTICATED"
    error = _error(lambda: client.is_model_ready("fraud", headers=world.auth("not-a-token")))
    assert error.status() == "StatusCode.UNAUTHENTICATED"
    error = _error(lambda: _raw_infer(client, "fraud", ROWS, world.auth(world.scoped_elsewhere)))
    assert error.status() == "StatusCode.PERMISSION_DENIED" and "default/other" in str(error.message())
    # a token scoped to the deployment reaches it, in its own project without x-capstan-project
    assert _raw_infer(client, "fraud", ROWS, world.auth(world.scoped_here)).as_numpy("output-0").shape == (8,)
    error = _error(lambda: _raw_infer(client, "fraud", ROWS, world.auth(**{"x-capstan-project": "beta"})))
    assert error.status() == "StatusCode.NOT_FOUND" and "'beta'" in str(error.message())


# ------------------------------------------------------------------------------------------ start-up


def test_a_grpc_port_in_use_is_one_line_error(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run([*capstan_command(), "server", "--port", "0", "--grpc-port", str(port)],
                                env=clean_env(tmp_path), text=True, capture_output=True, timeout=60)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: cannot listen for gRPC on 127.0.0.1:{port}")


def _self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 that is its own CA, and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    return folder / "cert.pem", folder / "key.pem"


def test_the_server_tls_options_apply_to_grpc(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    process = subprocess.Popen([*capstan_command(), "server", "--port", str(free_port()), "--grpc-port", "0",
                                "--tls-cert", str(cert), "--tls-key", str(key)], env=clean_env(tmp_path / "home"),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    threading.Thread(target=pump, args=(process.stdout, lines), daemon=True).start()
    try:
        found = _wait_for("the gRPC line", lambda: re.search(
            r"OIP v2 over gRPC on 127\.0\.0\.1:(\d+) \(TLS\)", "".join(lines)) or process.poll() is not None, 60)
        assert isinstance(found, re.Match), "".join(lines)  # not an exit
        secure = triton.InferenceServerClient(f"127.0.0.1:{found.group(1)}", ssl=True, root_certificates=str(cert))
        plain = triton.InferenceServerClient(f"127.0.0.1:{found.group(1)}")
        try:
            _wait_for("a TLS answer", lambda: _answers(secure), 30)
            assert _error(lambda: plain.is_server_live(client_timeout=5)).status() == "StatusCode.UNAVAILABLE"
        finally:
            secure.close()
            plain.close()
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


def _answers(client: triton.InferenceServerClient) -> bool:
    try:
        return bool(client.is_server_live(client_timeout=2))
    except InferenceServerException:
        return False
