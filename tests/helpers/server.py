"""A real ``capstan server`` subprocess for tests.

    from helpers.server import start_server

    @pytest.fixture(scope="module")
    def server(tmp_path_factory):
        with start_server(tmp_path_factory.mktemp("srv")) as srv:
            yield srv

    def test_something(server):
        httpx.get(f"{server.url}/health")
        server.cli("users", "create", "alice", "--admin")   # same CAPSTAN_HOME as the server

The server binds port 0 (a free port, read back from its start-up line) on a fresh ``CAPSTAN_HOME``, and the
helper waits until ``/health`` answers. ``CAPSTAN_*`` variables of the calling environment are not inherited.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

_LISTENING = re.compile(r"listening on http://\[?([^\]\s]+?)\]?:(\d+)")


def capstan_command() -> list[str]:
    """The argv prefix that runs the ``capstan`` CLI of the interpreter running the tests."""
    script = Path(sys.executable).with_name("capstan")
    if script.exists():
        return [str(script)]
    found = shutil.which("capstan")
    if found:
        return [found]
    return [sys.executable, "-c", "import sys; from capstan.cli.main import main; sys.exit(main())"]


def clean_env(home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment without any ``CAPSTAN_*``/``MLFLOW_*`` variable, plus ``CAPSTAN_HOME=home`` and ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CAPSTAN_", "MLFLOW_"))}
    env["CAPSTAN_HOME"] = str(home)
    env.update(extra or {})
    return env


@dataclass
class ServerProcess:
    """A running server: its base URL (always reachable through 127.0.0.1), home and environment."""

    url: str
    home: Path
    env: dict[str, str]
    process: subprocess.Popen[str]
    output: list[str] = field(default_factory=list)
    start_seconds: float = 0.0

    def cli(self, *args: str, env: Mapping[str, str] | None = None, check: bool = True,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run ``capstan ARGS`` against the server's home (local stores); ``check`` asserts exit status 0."""
        result = subprocess.run([*capstan_command(), *args], env={**self.env, **(env or {})}, text=True,
                                capture_output=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"capstan {' '.join(args)} failed ({result.returncode}):\n"
                                 f"{result.stdout}\n{result.stderr}")
        return result

    def remote_cli(self, *args: str, token: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``capstan ARGS`` as a client of this server (``CAPSTAN_URL``, and ``CAPSTAN_TOKEN`` if given)."""
        extra = {"CAPSTAN_URL": self.url}
        if token:
            extra["CAPSTAN_TOKEN"] = token
        return self.cli(*args, env=extra, check=check)

    @property
    def startup_text(self) -> str:
        """Everything the server printed so far."""
        return "".join(self.output)


def pump(stream: object, sink: list[str]) -> None:
    """Append every line of a text-mode pipe to ``sink`` (run it in a daemon thread)."""
    for line in iter(stream.readline, ""):  # type: ignore[attr-defined]  # a text-mode pipe
        sink.append(line)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def start_server(home: Path, *, host: str = "127.0.0.1", workers: int = 1, env: Mapping[str, str] | None = None,
                 args: Sequence[str] = (), timeout: float = 60) -> Iterator[ServerProcess]:
    """Start ``capstan server`` on a free port under ``home``; yield once ``/health`` answers; stop it after."""
    home.mkdir(parents=True, exist_ok=True)
    full_env = clean_env(home, env)
    started = time.perf_counter()
    process = subprocess.Popen([*capstan_command(), "server", "--host", host, "--port", "0",
                                "--workers", str(workers), *args],
                               env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output: list[str] = []
    threading.Thread(target=pump, args=(process.stdout, output), daemon=True).start()
    server = ServerProcess("", home, full_env, process, output)
    try:
        deadline = time.monotonic() + timeout
        port = None
        while port is None:
            match = _LISTENING.search("".join(output))
            if match:
                port = int(match.group(2))
            elif process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"capstan server did not start:\n{''.join(output)}")
            else:
                time.sleep(0.02)
        server.url = f"http://127.0.0.1:{port}"
        while True:
            try:
                if httpx.get(f"{server.url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"capstan server never became healthy:\n{''.join(output)}")
            time.sleep(0.02)
        server.start_seconds = time.perf_counter() - started
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
