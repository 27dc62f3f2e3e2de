"""TLS on ``capstan server`` and ``capstan serve``: ``--tls-cert``, ``--tls-key`` and ``--tls-client-ca`` (mutual TLS).

A throwaway CA, a server certificate for 127.0.0.1/localhost and a client certificate are made at test time with
``cryptography``; clients are httpx (verifying against that CA) and tritonclient's gRPC client. Bad files are one
``error: ...`` line and exit status 1, and a server beyond loopback with auth but without TLS warns at start-up.
"""

from __future__ import annotations

import datetime
import ipaddress
import re
import signal
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from capstan.errors import InvalidParameterValue
from capstan.server.tls import TlsOptions, plaintext_warning
from helpers.server import capstan_command, clean_env, free_port, pump


# -- a throwaway PKI ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_key: Path

    def client_context(self, *, with_cert: bool) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca))
        if with_cert:
            context.load_cert_chain(self.client_cert, self.client_key)
        return context


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> Path:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return path


def _certificate(subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name | None,
                 issuer_key: ec.EllipticCurvePrivateKey, *, ca: bool = False,
                 server: bool = False) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer or name).public_key(key.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ca:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
            key_encipherment=False, data_encipherment=False, key_agreement=False, encipher_only=False,
            decipher_only=False), critical=True)
        builder = builder.add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    else:
        builder = builder.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
                                        critical=False)
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _pem(cert: x509.Certificate, path: Path) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca_key, server_key, client_key = _key(), _key(), _key()
    ca_cert = _certificate("capstan test CA", ca_key, None, ca_key, ca=True)
    server_cert = _certificate("127.0.0.1", server_key, ca_cert.subject, ca_key, server=True)
    client_cert = _certificate("test client", client_key, ca_cert.subject, ca_key)
    return Pki(ca=_pem(ca_cert, folder / "ca.pem"), server_cert=_pem(server_cert, folder / "server.pem"),
               server_key=_write_key(server_key, folder / "server.key"),
               client_cert=_pem(client_cert, folder / "client.pem"),
               client_key=_write_key(client_key, folder / "client.key"),
               other_key=_write_key(_key(), folder / "other.key"))


# -- the options, checked before anything listens --------------------------------------------------------------
def test_tls_options_are_checked(pki: Pki, tmp_path: Path) -> None:
    assert TlsOptions.from_cli(None, None, None) is None
    options = TlsOptions.from_cli(str(pki.server_cert), str(pki.server_key), str(pki.ca))
    assert options is not None and options.client_ca == pki.ca
    assert options.uvicorn_options() == {"ssl_certfile": str(pki.server_cert), "ssl_keyfile": str(pki.server_key),
                                         "ssl_ca_certs": str(pki.ca), "ssl_cert_reqs": int(ssl.CERT_REQUIRED)}
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    cases = [
        ((str(tmp_path / "absent.pem"), str(pki.server_key), None), "--tls-cert: ", "does not exist"),
        ((str(pki.server_cert), str(tmp_path), None), "--tls-key: ", "is a directory"),
        ((str(pki.server_cert), str(pki.other_key), None), "--tls-cert/--tls-key: ", "key values mismatch"),
        ((str(garbage), str(pki.server_key), None), "--tls-cert/--tls-key: ", "not a PEM certificate"),
        ((str(pki.server_cert), str(pki.server_key), str(garbage)), "--tls-client-ca: ", "not a PEM CA"),
        ((str(pki.server_cert), None, None), "--tls-key is needed", ""),
        ((None, str(pki.server_key), None), "--tls-cert is needed", ""),
        ((None, None, str(pki.ca)), "--tls-client-ca needs", ""),
    ]
    for args, start, inside in cases:
        with pytest.raises(InvalidParameterValue) as caught:
            TlsOptions.from_cli(*args)
        assert caught.value.message.startswith(start) and inside in caught.value.message, caught.value.message


def test_plaintext_warning_only_beyond_loopback_with_auth_and_without_tls(pki: Pki) -> None:
    tls = TlsOptions(pki.server_cert, pki.server_key)
    warning = plaintext_warning("0.0.0.0", tls=None, auth_required=True, what="capstan server")
    assert warning is not None and warning.startswith("warning: capstan server listens on 0.0.0.0 beyond loopback")
    assert plaintext_warning("0.0.0.0", tls=tls, auth_required=True, what="x") is None
    assert plaintext_warning("127.0.0.1", tls=None, auth_required=True, what="x") is None
    assert plaintext_warning("0.0.0.0", tls=None, auth_required=False, what="x") is None


@pytest.mark.parametrize("command", [["server"], ["serve", "models:/m/1"]])
def test_bad_tls_files_are_one_line_errors(pki: Pki, tmp_path: Path, command: list[str]) -> None:
    for args, expected in (
        (["--tls-cert", str(tmp_path / "absent.pem"), "--tls-key", str(pki.server_key)], "does not exist"),
        (["--tls-cert", str(pki.server_cert), "--tls-key", str(pki.other_key)], "key values mismatch"),
    ):
        result = subprocess.run([*capstan_command(), *command, "--port", "0", *args], env=clean_env(tmp_path),
                                text=True, capture_output=True, timeout=60)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: --tls-"), result.stderr
        assert expected in lines[0]


# -- live servers ---------------------------------------------------------------------------------------------
@dataclass
class Running:
    process: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)
    port: int = 0

    @property
    def output(self) -> str:
        return "".join(self.lines)


@contextmanager
def run(home: Path, args: Sequence[str], ready: str, context: ssl.SSLContext | None) -> Iterator[Running]:
    """``capstan ARGS``, yielded once ``ready`` answers 200 on the port it prints (over https with ``context``)."""
    home.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen([*capstan_command(), *args], env=clean_env(home), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    running = Running(process)
    threading.Thread(target=pump, args=(process.stdout, running.lines), daemon=True).start()
    try:
        deadline = time.monotonic() + 60
        while True:
            found = re.search(r"listening on (https?)://[^:]+:(\d+)", running.output)
            if found:
                running.port = int(found.group(2))
                scheme = found.group(1)
                try:
                    url = f"{scheme}://127.0.0.1:{running.port}{ready}"
                    if httpx.get(url, verify=context or True, timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"capstan {' '.join(args)} did not start:\n{running.output}")
            time.sleep(0.05)
        yield running
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)


def _refused(url: str, context: ssl.SSLContext) -> bool:
    try:
        httpx.get(url, verify=context, timeout=5)
    except httpx.TransportError:
        return True
    return False


def test_server_https_with_mutual_tls(pki: Pki, tmp_path: Path) -> None:
    tls = ["--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key), "--tls-client-ca", str(pki.ca)]
    args = ["server", "--port", "0", "--workers", "2", *tls]
    with run(tmp_path / "home", args, "/health", pki.client_context(with_cert=True)) as server:
        assert f"listening on https://127.0.0.1:{server.port} (2 workers, client certificates required)" \
            in server.output
        url = f"https://127.0.0.1:{server.port}/health"
        with httpx.Client(verify=pki.client_context(with_cert=True), timeout=10) as client:
            assert all(client.get(url).json() == {"status": "ok"} for _ in range(5))  # one TLS connection, kept
        assert _refused(url, pki.client_context(with_cert=False)), "a client without a certificate got in"
        assert _refused(url, ssl.create_default_context()), "the server certificate verified without its CA"
        with pytest.raises(httpx.TransportError):
            httpx.get(f"http://127.0.0.1:{server.port}/health", timeout=5)  # no plain HTTP on the TLS port
        assert "warning" not in server.output.lower()


def test_server_beyond_loopback_without_tls_warns_and_with_tls_does_not(pki: Pki, tmp_path: Path) -> None:
    with run(tmp_path / "plain", ["server", "--host", "0.0.0.0", "--port", "0"], "/health", None) as server:
        warnings = [line for line in server.lines if line.startswith("warning:")]
        assert len(warnings) == 1 and "beyond loopback without TLS" in warnings[0], server.output
    tls = ["--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key)]
    with run(tmp_path / "tls", ["server", "--host", "0.0.0.0", "--port", "0", *tls], "/health",
             pki.client_context(with_cert=False)) as server:
        assert "listening on https://0.0.0.0:" in server.output
        assert "beyond loopback" not in server.output


def test_serve_https_and_grpc_with_mutual_tls(pki: Pki, tmp_path: Path) -> None:
    """``capstan serve`` passes the same TLS files to its gRPC port."""
    import tritonclient.grpc as triton_grpc
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    from capstan.sdk.client import Client
    from capstan.settings import Settings

    home = tmp_path / "home"
    x, y = load_iris(return_X_y=True)
    model = LogisticRegression(max_iter=300).fit(x, y)
    with Client(Settings.for_home(home)) as client:
        run_id = client.create_run(client.create_experiment("tls")).info.run_id
        client.log_model(run_id, model, "model", registered_model_name="iris-tls")
    tls = ["--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key), "--tls-client-ca", str(pki.ca)]
    args = ["serve", "models:/iris-tls/1", "--port", str(free_port()), "--grpc-port", "0", *tls]
    with run(home, args, "/v2/health/ready", pki.client_context(with_cert=True)) as served:
        assert "client certificates required" in served.output and "(TLS)" in served.output
        url = f"https://127.0.0.1:{served.port}/invocations"
        body = {"inputs": x[:5].tolist()}
        response = httpx.post(url, json=body, verify=pki.client_context(with_cert=True), timeout=10)
        assert response.status_code == 200 and response.json()["predictions"] == model.predict(x[:5]).tolist()
        assert _refused(url.replace("/invocations", "/v2/health/ready"), pki.client_context(with_cert=False))

        found = re.search(r"OIP v2 over gRPC on 127\.0\.0\.1:(\d+)", served.output)
        assert found, served.output
        grpc_url = f"localhost:{found.group(1)}"
        client = triton_grpc.InferenceServerClient(url=grpc_url, ssl=True, root_certificates=str(pki.ca),
                                                   private_key=str(pki.client_key),
                                                   certificate_chain=str(pki.client_cert))
        try:
            tensor = triton_grpc.InferInput("input-0", [5, 4], "FP64")
            tensor.set_data_from_numpy(x[:5])
            result = client.infer("iris-tls", [tensor])
            np.testing.assert_array_equal(result.as_numpy("output-0"), model.predict(x[:5]))
        finally:
            client.close()
        anonymous = triton_grpc.InferenceServerClient(url=grpc_url, ssl=True, root_certificates=str(pki.ca))
        try:
            with pytest.raises(Exception, match=r"(?i)unavailable|handshake|ssl|certificate"):
                anonymous.is_server_ready(client_timeout=5)
        finally:
            anonymous.close()
