"""``capstan serve --workers N``: N forked processes answering on one port, each accepted connection with TCP_NODELAY,
a crashed worker restarted, and a graceful stop on SIGINT/SIGTERM; plus the supervisor's pure parts.

TCP_NODELAY is read on the server's side of a live connection: the test finds which worker holds the connection
(psutil) and duplicates that socket into the test process with ``pidfd_getfd`` (Linux 5.6+), then asks the kernel
for the option with ``getsockopt``. Nothing in the server exists to make this observable.

The uvicorn installed binds with ``IPPROTO_TCP``, so asyncio already sets TCP_NODELAY on what ``capstan serve``
accepts. uvicorn#3149 is a listening socket with protocol number 0, on which asyncio sets nothing:
`test_nodelay_on_a_protocol_zero_socket_in_every_worker` hands exactly such a socket to the real supervisor and
worker code (`serve_workers`, `run_uvicorn`, `uvicorn_options`), so it fails if Capstan's own TCP_NODELAY is lost.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from capstan.sdk.client import Client
from capstan.server.prefork import RestartBackoff, describe_exit, is_fork_safe
from capstan.settings import Settings
from helpers.server import capstan_command, clean_env, free_port, pump

NAME = "iris-workers"
WORKERS = 2


# -- the supervisor's pure parts ------------------------------------------------------------------------------
def test_restart_backoff_doubles_up_to_the_cap_and_resets_after_a_healthy_run() -> None:
    backoff = RestartBackoff(first_s=0.5, max_s=4.0, healthy_after_s=10.0)
    assert [backoff.delay_s(n) for n in (1, 2, 3, 4, 5, 9)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert backoff.crashes_after(3, lived_s=2.0) == 4
    assert backoff.crashes_after(3, lived_s=10.0) == 1
    assert backoff.crashes_after(0, lived_s=0.1) == 1


def test_exit_descriptions() -> None:
    pid = os.fork()
    if pid == 0:
        os._exit(7)
    assert describe_exit(os.waitpid(pid, 0)[1]) == "exited with code 7"
    pid = os.fork()
    if pid == 0:
        os.kill(os.getpid(), signal.SIGKILL)
    assert describe_exit(os.waitpid(pid, 0)[1]) == "was killed by SIGKILL"


def test_fork_safety_is_what_the_model_says() -> None:
    class Unsafe:
        fork_safe = False

    assert is_fork_safe(object()) and not is_fork_safe(Unsafe())


# -- a real multi-worker server -------------------------------------------------------------------------------
@dataclass
class Served:
    process: subprocess.Popen[str]
    port: int
    lines: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def workers(self) -> set[int]:
        return {child.pid for child in psutil.Process(self.process.pid).children()}


X, Y = load_iris(return_X_y=True)
MODEL = LogisticRegression(max_iter=500).fit(X, Y)
EXPECTED = MODEL.predict(X)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("workers-home")
    with Client(Settings.for_home(home)) as client:
        run = client.create_run(client.create_experiment("workers"))
        client.log_model(run.info.run_id, MODEL, "model", registered_model_name=NAME)
        client.set_terminated(run.info.run_id)
    return home


@contextmanager
def serve(home: Path, *args: str) -> Iterator[Served]:
    """``capstan serve models:/NAME/1 --workers 2 ARGS``, yielded once both workers exist and it answers."""
    port = free_port()
    process = subprocess.Popen([*capstan_command(), "serve", f"models:/{NAME}/1", "--port", str(port),
                                "--workers", str(WORKERS), *args],
                               env=clean_env(home), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    served = Served(process, port)
    threading.Thread(target=pump, args=(process.stdout, served.lines), daemon=True).start()
    try:
        _wait_until(lambda: _ready(served) and len(served.workers()) == WORKERS, served, "did not become ready")
        yield served
    finally:
        if process.poll() is None:
            for pid in served.workers():
                _kill(pid)
            process.kill()
            process.wait(timeout=10)


def _ready(served: Served) -> bool:
    try:
        return httpx.get(f"{served.url}/v2/health/ready", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _wait_until(check: object, served: Served, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]  # a zero-argument callable
        if served.process.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"capstan serve {what}:\n{served.output}")
        time.sleep(0.05)


def _kill(pid: int) -> None:
    with suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _holder(workers: set[int], client: socket.socket) -> tuple[int, int]:
    """(pid, fd) of the worker holding the server side of ``client``'s connection."""
    local = client.getsockname()
    for pid in workers:
        for conn in psutil.Process(pid).net_connections(kind="tcp"):
            if conn.raddr and (conn.raddr.ip, conn.raddr.port) == local[:2]:
                return pid, conn.fd
    raise AssertionError(f"no worker of {workers} holds the connection from {local}")


def _server_side_nodelay(pid: int, fd: int) -> int:
    """TCP_NODELAY of file descriptor ``fd`` of process ``pid``, read through a duplicate (pidfd_getfd)."""
    if not sys.platform.startswith("linux") or not hasattr(os, "pidfd_open"):
        pytest.skip("pidfd_getfd is Linux-only")
    libc = ctypes.CDLL(None, use_errno=True)
    pidfd = os.pidfd_open(pid)
    try:
        sys_pidfd_getfd = 438  # the same number on every Linux architecture
        dup = libc.syscall(sys_pidfd_getfd, pidfd, fd, 0)
        if dup < 0:
            pytest.skip(f"pidfd_getfd refused: {os.strerror(ctypes.get_errno())}")
    finally:
        os.close(pidfd)
    with socket.socket(fileno=dup) as theirs:
        return theirs.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


def _request(sock: socket.socket, request: bytes) -> bytes:
    """Send one HTTP/1.1 request on a keep-alive socket and read exactly its response body."""
    sock.sendall(request)
    buffer = b""
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(65536)
        assert chunk, "server closed the connection"
        buffer += chunk
    head, _, body = buffer.partition(b"\r\n\r\n")
    length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    while len(body) < length:
        body += sock.recv(65536)
    assert head.startswith(b"HTTP/1.1 200"), head
    return body


READY = b"GET /v2/health/ready HTTP/1.1\r\nHost: t\r\n\r\n"


def _nodelay_everywhere(served: Served, request: bytes, body: bytes) -> set[int]:
    """Open connections (kept open) until each worker has accepted one; on each, check the server side has
    TCP_NODELAY and that two requests are answered. Returns the pids that answered."""
    workers = served.workers()
    answered: set[int] = set()
    held: list[socket.socket] = []
    try:
        while answered != workers and len(held) < 200:
            sock = socket.create_connection(("127.0.0.1", served.port), timeout=10)
            held.append(sock)  # held open, so a worker that is busy with one leaves the next to another
            assert _request(sock, request) == body
            pid, fd = _holder(workers, sock)
            answered.add(pid)
            assert _server_side_nodelay(pid, fd) != 0, f"worker {pid} left Nagle on for fd {fd}"
            assert _request(sock, request) == body  # and the connection stays usable
    finally:
        for sock in held:
            sock.close()
    return answered


def test_workers_share_the_port_with_nodelay_and_keep_alive(home: Path) -> None:
    with serve(home, "--max-batch-size", "4") as served:
        assert f"listening on http://127.0.0.1:{served.port}, batches of up to 4 rows, {WORKERS} workers" \
            in served.output
        workers = served.workers()
        assert len(workers) == WORKERS

        # Several requests over one keep-alive connection, all answered (by the worker that accepted it).
        with httpx.Client(base_url=served.url, timeout=10) as client:
            for i in range(0, 150, 10):
                response = client.post(f"/v2/models/{NAME}/infer", json={"inputs": [
                    {"name": "x", "shape": [10, 4], "datatype": "FP64", "data": X[i:i + 10].ravel().tolist()}]})
                assert response.status_code == 200, response.text
                assert response.json()["outputs"][0]["data"] == EXPECTED[i:i + 10].tolist()

        # Every worker accepts connections, and every accepted connection has TCP_NODELAY on the server's side.
        assert _nodelay_everywhere(served, READY, b'{"ready":true}') == workers

        # The model loaded once in the parent answers right in each worker, through each worker's batcher.
        results: dict[int, list[int]] = {}

        def one(i: int) -> None:
            response = httpx.post(f"{served.url}/v1/models/{NAME}:predict",
                                  json={"instances": X[i:i + 1].tolist()}, timeout=10)
            results[i] = response.json()["predictions"]

        threads = [threading.Thread(target=one, args=(i,)) for i in range(0, 150, 3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        np.testing.assert_array_equal([results[i][0] for i in sorted(results)], EXPECTED[::3])

        served.process.send_signal(signal.SIGINT)
        assert served.process.wait(timeout=30) == 0, served.output
    assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
                   for pid in workers), "a worker outlived its parent"
    assert "Traceback" not in served.output, served.output


PROTO_ZERO_SERVER = """
import socket, sys, uvicorn
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from capstan.server.runner import run_uvicorn, serve_workers, uvicorn_options

app = Starlette(routes=[Route("/", lambda request: PlainTextResponse("ok"))])
sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, 0)  # protocol number 0: uvicorn#3149
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sock.bind(("127.0.0.1", 0))
sock.listen(128)
options = uvicorn_options("127.0.0.1", 0)
print("listening on http://127.0.0.1:%d" % sock.getsockname()[1], flush=True)
serve_workers(sock, int(sys.argv[1]), lambda: run_uvicorn(uvicorn.Config(app, **options), sock), name="t")
"""


def test_nodelay_on_a_protocol_zero_socket_in_every_worker() -> None:
    process = subprocess.Popen([sys.executable, "-c", PROTO_ZERO_SERVER, str(WORKERS)], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    threading.Thread(target=pump, args=(process.stdout, lines), daemon=True).start()
    served = Served(process, 0, lines)
    try:
        _wait_until(lambda: "listening on" in served.output, served, "did not start")
        served.port = int(served.output.split("127.0.0.1:")[1].split()[0])
        _wait_until(lambda: len(served.workers()) == WORKERS, served, "did not fork its workers")
        answered = _nodelay_everywhere(served, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n", b"ok")
        assert answered == served.workers()
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0, served.output
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)


def test_a_crashed_worker_is_restarted_and_sigterm_stops_all(home: Path) -> None:
    with serve(home) as served:
        before = served.workers()
        victim = min(before)
        os.kill(victim, signal.SIGKILL)
        # The new worker may be up before the supervisor has said so (its output is read on another thread).
        _wait_until(lambda: len(served.workers()) == WORKERS and victim not in served.workers()
                    and "restarted as pid" in served.output, served, "did not restart the killed worker")
        assert f"(pid {victim}) was killed by SIGKILL; restarting it in" in served.output
        # The new worker serves too: with the old one gone, all connections land on the survivor or the new one.
        for _ in range(20):
            assert httpx.get(f"{served.url}/v2/health/ready", timeout=10).status_code == 200
        after = served.workers()
        served.process.send_signal(signal.SIGTERM)
        assert served.process.wait(timeout=30) == 0, served.output
    for pid in after:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_workers_are_checked(home: Path) -> None:
    result = subprocess.run([*capstan_command(), "serve", f"models:/{NAME}/1", "--workers", "0"],
                            env=clean_env(home), text=True, capture_output=True, timeout=60)
    assert result.returncode == 2 and "--workers" in result.stderr and "Traceback" not in result.stderr
