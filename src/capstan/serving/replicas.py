"""Replica processes: ``capstan serve`` subprocesses the deployment controller starts, probes and stops.

A replica is ``capstan serve MODEL --name DEPLOYMENT --host 127.0.0.1 --port 0 --deployment DEPLOYMENT --project
PROJECT`` (plus the spec's batching and ``--payload-sample-rate``, or for a language model its ``llm`` options:
``--backend``, ``--device``, ``--max-num-seqs``, ``--max-waiting``) in its own session (a Ctrl-C at the server's
terminal reaches the server, which then stops its replicas in order). Its port is read from the
``listening on http://HOST:PORT`` line it prints; it is ready when ``/v2/health/ready`` answers 200. Its environment
is the server's minus every ``CAPSTAN_*`` variable, plus the server's stores (``CAPSTAN_HOME``, ``CAPSTAN_DB_URL``,
``CAPSTAN_ARTIFACTS``...) so that ``models:/NAME/VERSION`` resolves against the same registry, and the lease's GPUs
(``CUDA_VISIBLE_DEVICES``).

`AdoptedReplica` is a replica a previous server process started and left running (it crashed, or was killed): the
new server finds it by pid and URL and keeps it (see `capstan.serving.controller`).
"""

from __future__ import annotations

import collections
import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from capstan.resources.memory import vm_hwm
from capstan.serving.spec import DEFAULT_DRIFT_WINDOW, LlmServing
from capstan.settings import Settings

LISTENING = re.compile(r"listening on (https?://\S+?:\d+)")
"""The line ``capstan serve`` prints once its socket is bound."""
OUTPUT_LINES = 40
"""Lines of a replica's output kept for the event that reports why it failed."""
PROBE_TIMEOUT_S = 0.5
DRIFT_TIMEOUT_S = 2.0
"""How long ``GET {replica}/drift`` may take before the replica is listed as unavailable."""
STOP_GRACE_S = 5.0
"""How long a replica has to exit after SIGTERM before it gets SIGKILL."""


class ReplicaProcess(Protocol):
    """A running (or ended) replica process, as the controller drives it."""

    @property
    def pid(self) -> int | None:
        """The operating-system process id."""
        ...

    @property
    def url(self) -> str | None:
        """``http://127.0.0.1:PORT`` once it listens."""
        ...

    def exit_code(self) -> int | None:
        """The exit status once it ended, else None."""
        ...

    def ready(self) -> bool:
        """Whether ``/v2/health/ready`` answers 200 now."""
        ...

    def output_tail(self) -> str:
        """The last lines it printed (its loader's error when it failed to start)."""
        ...

    def sample_peak(self) -> int | None:
        """Read its peak resident memory now (``VmHWM``) while it runs; the largest seen (bytes), None if none."""
        ...

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """SIGTERM, then SIGKILL after ``grace_s``; returns at once (the wait happens on a thread)."""
        ...


class ReplicaLauncher(Protocol):
    """Starts replica processes."""

    def launch(self, model_uri: str, name: str, *, project: str = "", max_batch_size: int | None = None,
               max_batch_delay_ms: float | None = None, payload_sample_rate: float = 0.0,
               drift_window: int = DEFAULT_DRIFT_WINDOW, llm: LlmServing | None = None,
               env: Mapping[str, str] | None = None) -> ReplicaProcess:
        """Start a replica of deployment ``name`` (of ``project``) serving ``model_uri`` (a language model with the
        ``llm`` options), with extra environment ``env``."""
        ...


def probe_ready(url: str, timeout_s: float = PROBE_TIMEOUT_S) -> bool:
    """True when ``{url}/v2/health/ready`` answers 200 within ``timeout_s``."""
    import httpx

    try:
        return httpx.get(f"{url}/v2/health/ready", timeout=timeout_s).status_code == 200
    except httpx.HTTPError:
        return False


def fetch_drift(url: str, timeout_s: float = DRIFT_TIMEOUT_S) -> list[dict[str, Any]]:
    """The drift report (`capstan.serving.drift_monitor.VersionDrift.to_dict` records) of the replica at ``url``;
    `OSError` with the reason when it does not answer one."""
    import httpx

    try:
        response = httpx.get(f"{url}/drift", timeout=timeout_s)
    except httpx.HTTPError as exc:
        raise OSError(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__) from None
    if response.status_code != 200:
        raise OSError(f"GET /drift answered {response.status_code}")
    try:
        body = response.json()
    except ValueError:
        raise OSError("GET /drift answered no JSON") from None
    if not isinstance(body, list):
        raise OSError("GET /drift answered no list of reports")
    return body


def fetch_llm_stats(url: str, timeout_s: float = PROBE_TIMEOUT_S) -> object | None:
    """The JSON of ``GET {url}/llm/stats`` (a language-model replica's engine load: running, waiting, token
    counters), or None when it does not answer one (not a language model, or busy past ``timeout_s``)."""
    import httpx

    try:
        response = httpx.get(f"{url}/llm/stats", timeout=timeout_s)
        return response.json() if response.status_code == 200 else None
    except (httpx.HTTPError, ValueError):
        return None


def store_environment(settings: Settings) -> dict[str, str]:
    """The ``CAPSTAN_*`` variables that point a child process at the same stores as ``settings`` (never a remote
    server: a replica reads the registry directly)."""
    return settings.store_environment()


def serve_command(model_uri: str, name: str, *, project: str = "", max_batch_size: int | None = None,
                  max_batch_delay_ms: float | None = None, payload_sample_rate: float = 0.0,
                  drift_window: int = DEFAULT_DRIFT_WINDOW, llm: LlmServing | None = None) -> list[str]:
    """The ``capstan serve`` command line of one replica of deployment ``name`` (this interpreter, so the same
    installation): its payloads go to ``deployments/NAME/payloads`` and its drift events name the deployment."""
    command = [sys.executable, "-m", "capstan", "serve", model_uri, "--name", name, "--host", "127.0.0.1",
               "--port", "0", "--deployment", name, "--project", project]
    if max_batch_size:
        command += ["--max-batch-size", str(max_batch_size)]
        if max_batch_delay_ms is not None:
            command += ["--max-batch-delay-ms", f"{max_batch_delay_ms:g}"]
    if payload_sample_rate > 0:
        command += ["--payload-sample-rate", str(payload_sample_rate)]
    if drift_window != DEFAULT_DRIFT_WINDOW:
        command += ["--drift-window", str(drift_window)]
    if llm is not None:
        command += llm.serve_options()
    return command


class SubprocessReplica:
    """A replica this process started (`subprocess.Popen`), its output read by a thread and its exit reaped by
    another with `os.wait4`, whose ``ru_maxrss`` gives its peak memory.

    On Linux ``ru_maxrss`` also counts the memory the child held before its ``exec`` (this server's, at most its
    ``VmHWM`` when the child starts: the floor): above the floor it is the replica's exact peak; otherwise the
    ``VmHWM`` samples taken while it ran (`sample_peak`) are its peak."""

    def __init__(self, command: Sequence[str], env: Mapping[str, str]) -> None:
        self._floor = vm_hwm()
        self._process = subprocess.Popen(list(command), env=dict(env), stdout=subprocess.PIPE,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
                                         start_new_session=True)
        self._url: str | None = None
        self._peak: int | None = None
        self._code: int | None = None
        self._ended = threading.Event()
        self._lines: collections.deque[str] = collections.deque(maxlen=OUTPUT_LINES)
        self._reader = threading.Thread(target=self._read, name=f"replica-{self._process.pid}-output", daemon=True)
        self._reader.start()
        threading.Thread(target=self._reap, name=f"replica-{self._process.pid}-reap", daemon=True).start()

    def _read(self) -> None:
        stream = self._process.stdout
        assert stream is not None
        for line in stream:
            self._lines.append(line.rstrip("\n"))
            if self._url is None and (match := LISTENING.search(line)):
                self._url = match.group(1).replace("[::1]", "127.0.0.1")
        stream.close()

    def _reap(self) -> None:
        try:
            _pid, status, usage = os.wait4(self._process.pid, 0)
        except ChildProcessError:  # reaped by Popen meanwhile: its status is there, its peak is the samples'
            self._code = self._process.wait()
        else:
            self._code = self._process.returncode = os.waitstatus_to_exitcode(status)
            maxrss = usage.ru_maxrss if sys.platform == "darwin" else usage.ru_maxrss * 1024
            if self._floor is None or maxrss > self._floor:
                self._peak = max(maxrss, self._peak or 0)
        self._ended.set()

    @property
    def pid(self) -> int | None:
        """The child's process id."""
        return self._process.pid

    @property
    def url(self) -> str | None:
        """Its base URL, once printed."""
        return self._url

    def exit_code(self) -> int | None:
        """Its exit status once ended."""
        return self._code if self._ended.is_set() else None

    def ready(self) -> bool:
        """Whether it listens and answers ready."""
        return self._url is not None and self.exit_code() is None and probe_ready(self._url)

    def output_tail(self) -> str:
        """What it printed last (waits briefly for the reader to catch up with an ended process)."""
        if self.exit_code() is not None:
            self._reader.join(timeout=1.0)
        return "\n".join(self._lines)

    def sample_peak(self) -> int | None:
        """Its ``VmHWM`` now while it runs; the largest peak known (bytes), the exit's ``ru_maxrss`` included."""
        if not self._ended.is_set():
            seen = vm_hwm(self._process.pid)
            if seen is not None and not self._ended.is_set():  # not read from a reused pid
                self._peak = max(seen, self._peak or 0)
        return self._peak

    def _signal(self, signum: int) -> None:
        if not self._ended.is_set():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._process.pid, signum)

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """SIGTERM now, SIGKILL after ``grace_s`` if it is still there (on a thread)."""
        if self._ended.is_set():
            return
        self._signal(signal.SIGTERM)

        def finish() -> None:
            if not self._ended.wait(grace_s):
                self._signal(signal.SIGKILL)

        threading.Thread(target=finish, name=f"replica-{self._process.pid}-stop", daemon=True).start()

    def wait(self, timeout_s: float) -> int | None:
        """Wait up to ``timeout_s`` for it to end; its exit status, or None."""
        self._ended.wait(timeout_s)
        return self.exit_code()


class SubprocessLauncher:
    """`ReplicaLauncher` that runs ``capstan serve`` with the stores of ``settings``."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    def launch(self, model_uri: str, name: str, *, project: str = "", max_batch_size: int | None = None,
               max_batch_delay_ms: float | None = None, payload_sample_rate: float = 0.0,
               drift_window: int = DEFAULT_DRIFT_WINDOW, llm: LlmServing | None = None,
               env: Mapping[str, str] | None = None) -> ReplicaProcess:
        """Start ``capstan serve`` for ``model_uri`` in a new session."""
        full = {k: v for k, v in os.environ.items() if not k.startswith("CAPSTAN_")}
        full.update(store_environment(self._settings))
        full["PYTHONUNBUFFERED"] = "1"
        full.update(env or {})
        return SubprocessReplica(serve_command(model_uri, name, project=project, max_batch_size=max_batch_size,
                                               max_batch_delay_ms=max_batch_delay_ms,
                                               payload_sample_rate=payload_sample_rate,
                                               drift_window=drift_window, llm=llm), full)


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    with contextlib.suppress(OSError):
        return stat.read_text().rpartition(")")[2].split()[0] != "Z"
    return True


def is_replica_process(pid: int) -> bool:
    """Whether ``pid`` runs ``capstan serve`` (so a recycled pid of some other program is never signalled)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return any(a == b"capstan" or a.endswith(b"/capstan") for a in argv) and b"serve" in argv


class AdoptedReplica:
    """A replica left running by an earlier server process: known by pid and URL only."""

    def __init__(self, pid: int, url: str) -> None:
        self._pid = pid
        self._url = url
        self._ended = False
        self._peak: int | None = None

    @property
    def pid(self) -> int | None:
        """Its process id."""
        return self._pid

    @property
    def url(self) -> str | None:
        """Its base URL."""
        return self._url

    def exit_code(self) -> int | None:
        """-1 once the process is gone (its real status went to the process that started it)."""
        if not self._ended and not pid_alive(self._pid):
            self._ended = True
        return -1 if self._ended else None

    def ready(self) -> bool:
        """Whether it is alive and answers ready."""
        return self.exit_code() is None and probe_ready(self._url)

    def output_tail(self) -> str:
        """Nothing: its output went to the server process that started it."""
        return ""

    def sample_peak(self) -> int | None:
        """Its ``VmHWM`` now while it runs (its exit status, and ``ru_maxrss``, go to the process that started it);
        the largest seen (bytes)."""
        if self.exit_code() is None and (seen := vm_hwm(self._pid)) is not None:
            self._peak = max(seen, self._peak or 0)
        return self._peak

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """SIGTERM, then SIGKILL after ``grace_s`` (on a thread), if it still runs ``capstan serve``."""
        if self.exit_code() is not None or not is_replica_process(self._pid):
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self._pid, signal.SIGTERM)

        def finish() -> None:
            deadline = time.monotonic() + grace_s
            while time.monotonic() < deadline:
                if not pid_alive(self._pid):
                    return
                time.sleep(0.05)
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._pid, signal.SIGKILL)

        threading.Thread(target=finish, name=f"replica-{self._pid}-stop", daemon=True).start()


def adopt(pid: int | None, url: str | None) -> AdoptedReplica | None:
    """The replica at ``pid``/``url`` when it still runs ``capstan serve`` and answers ready, else None."""
    if pid is None or url is None or not pid_alive(pid) or not is_replica_process(pid):
        return None
    replica = AdoptedReplica(pid, url)
    return replica if probe_ready(url, timeout_s=2.0) else None
