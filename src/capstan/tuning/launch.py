"""How trials run: function trials in a pool of long-lived worker processes, script trials as subprocesses, and the
listener that script (and training-job) trials report to.

Each connection to a trial has a reader thread that answers its reports through ``on_report`` (the controller asks
the pruner) and hands its end to ``on_end`` (the controller records it). Both are called from those threads.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import pickle
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, Listener
from typing import Any, Final, Protocol

from capstan.errors import InvalidParameterValue
from capstan.settings import Settings

__all__ = ["STUDY_VARIABLE", "TCP_SCHEME", "ScriptProcess", "TrialEnd", "TrialListener", "WorkerPool", "shared_key",
           "start_method_for"]

TCP_SCHEME: Final = "tcp://"
"""How a TCP listener's address starts (``tcp://HOST:PORT``); anything else is a local socket's path."""
STUDY_VARIABLE: Final = "CAPSTAN_STUDY"
"""Set, beside ``CAPSTAN_TRIAL_NUMBER``, in a training-job trial's environment: its study's name. Nothing reads it
from a process's environment; the Kubernetes gang launcher reads it from the job's spec to label the trial's Job,
pods and Service (`capstan.k8s.render_studies.trial_labels`)."""


@dataclass(frozen=True, slots=True)
class TrialEnd:
    """How a trial process ended: ``outcome`` ``ok`` or ``error`` (with ``error``'s text), what a function
    returned, and when it ran (epoch ms)."""

    number: int
    outcome: str
    result: Any = None
    error: str = ""
    started_ms: int = 0
    ended_ms: int = 0


class ReportSink(Protocol):
    """Where a trial's reports go: returns the pruner's verdict."""

    def __call__(self, number: int, value: float, step: int, metrics: Mapping[str, float]) -> bool: ...


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _serve(connection: Connection, on_report: ReportSink, on_message: Callable[[tuple[Any, ...]], bool]) -> None:
    """Answer ``connection``'s reports until it closes or ``on_message`` (other messages) says stop."""
    while True:
        try:
            message = connection.recv()
        except (EOFError, OSError):
            return
        if message[0] == "report":
            _, number, value, step, metrics = message
            try:
                verdict = on_report(number, value, step, metrics)
            except Exception:  # noqa: BLE001  # a report the controller cannot take must not kill the trial
                verdict = False
            try:
                connection.send(("prune", verdict))
            except (OSError, ValueError):
                return
        elif not on_message(message):
            return


def start_method_for(target: Callable[..., Any] | str) -> str:
    """``spawn`` when the worker can import the function by name (a ``module:function`` or a module-level function
    of a module or script file), else ``fork`` (a lambda, a closure, a function typed into a notebook)."""
    if isinstance(target, str):
        return "spawn"
    module = sys.modules.get(getattr(target, "__module__", "") or "")
    interactive = module is not None and module.__name__ == "__main__" and not getattr(module, "__file__", None)
    try:
        pickle.dumps(target)
        importable = not interactive
    except Exception:  # noqa: BLE001  # pickling by reference fails for lambdas and closures
        importable = False
    if importable:
        return "spawn"
    if "fork" in multiprocessing.get_all_start_methods():
        return "fork"
    return "spawn"


class _Worker:
    def __init__(self, context: Any, settings: Settings, target: Callable[..., Any] | str,
                 working_dir: str | None) -> None:
        parent_end, child_end = context.Pipe()
        self.connection: Connection = parent_end
        self.process = context.Process(target=_worker_entry, args=(child_end, settings, target, working_dir,
                                                                   os.getpid()),
                                       daemon=True, name="capstan-trial-worker")
        self.process.start()
        child_end.close()
        self.busy: int | None = None
        self.lock = threading.Lock()


def _worker_entry(connection: Connection, settings: Settings, target: Callable[..., Any] | str,
                  working_dir: str | None, parent: int) -> None:
    from capstan.tuning.worker import worker_main

    worker_main(connection, settings, target, working_dir, parent)
    os._exit(0)  # every trial's run was ended (its metrics flushed): skip the interpreter's slow teardown


class WorkerPool:
    """``size`` worker processes running function trials; a worker that dies is replaced for the next trial."""

    def __init__(self, size: int, settings: Settings, target: Callable[..., Any] | str, *,
                 working_dir: str | None, on_report: ReportSink, on_end: Callable[[TrialEnd], None]) -> None:
        self._context = multiprocessing.get_context(start_method_for(target))
        self._settings, self._target, self._dir = settings, target, working_dir
        self._on_report, self._on_end = on_report, on_end
        self._size = size
        self._workers: list[_Worker] = []
        self._lock = threading.Lock()
        self._closed = False

    def start(self) -> None:
        """Start every worker now (they import in the background while the first trials are admitted)."""
        with self._lock:
            while len(self._workers) < self._size:
                self._workers.append(self._spawn())

    def _spawn(self) -> _Worker:
        worker = _Worker(self._context, self._settings, self._target, self._dir)
        threading.Thread(target=self._read, args=(worker,), daemon=True, name="capstan-trial-reader").start()
        return worker

    def _read(self, worker: _Worker) -> None:
        def other(message: tuple[Any, ...]) -> bool:
            if message[0] == "done":
                _, number, outcome, result, error, started, ended = message
                with worker.lock:
                    worker.busy = None
                self._on_end(TrialEnd(number, outcome, result, error, started, ended))
            return True

        _serve(worker.connection, self._on_report, other)
        worker.process.join(timeout=5)
        with worker.lock:
            number, worker.busy = worker.busy, None
        if number is not None and not self._closed:
            code = worker.process.exitcode
            self._on_end(TrialEnd(number, "error", error=f"the worker process running the trial died (exit code "
                                                          f"{code})", ended_ms=_now_ms()))

    def run(self, number: int, params: Mapping[str, Any], run_id: str | None, log_path: str | None) -> int:
        """Hand the trial to an idle worker (replacing dead ones); returns the worker's pid."""
        with self._lock:
            self._workers = [w for w in self._workers if w.process.is_alive() or w.busy is not None]
            idle = next((w for w in self._workers if w.busy is None and w.process.is_alive()), None)
            if idle is None:
                idle = self._spawn()
                self._workers.append(idle)
            with idle.lock:
                idle.busy = number
            idle.connection.send(("run", number, dict(params), run_id, log_path))
            return int(idle.process.pid or 0)

    def stop(self, number: int) -> None:
        """Stop the worker running trial ``number`` (it is replaced for the next trial)."""
        with self._lock:
            doomed = [w for w in self._workers if w.busy == number]
        for worker in doomed:
            worker.process.kill()

    def close(self) -> None:
        """Stop every worker."""
        self._closed = True
        with self._lock:
            workers, self._workers = self._workers, []
        for worker in workers:
            with contextlib.suppress(OSError, ValueError):
                worker.connection.send(("stop",))
        deadline = time.monotonic() + 2.0
        for worker in workers:
            worker.process.join(timeout=max(0.0, deadline - time.monotonic()))
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join(timeout=2)
            with contextlib.suppress(OSError):
                worker.connection.close()


class TrialListener:
    """Where script and training-job trials connect to report (``CAPSTAN_TRIAL_ADDRESS``).

    By default a local socket with a fresh random key, both given to each trial in its environment. With
    ``listen`` (``HOST:PORT``, `capstan.settings.Settings.trial_listen`) it listens on TCP port PORT of every
    interface and tells the trials ``tcp://HOST:PORT`` (PORT 0: a free port, the one chosen); the key is then
    ``key``, which the trials get from where the controller got it (a Kubernetes Secret), so `environment` leaves
    it out. Every connection proves the key (both ways, `multiprocessing.connection`'s challenge) on its own thread
    before anything it sends is read: a peer that never answers holds only its thread.
    """

    def __init__(self, on_report: ReportSink, *, listen: str | None = None, key: str | None = None) -> None:
        self._on_report = on_report
        self._closed = False
        self._socket: socket.socket | None = None
        self._listener: Listener | None = None
        if listen is None:
            self.key = secrets.token_hex(16)
            self.shared_key = False
            self._listener = Listener(authkey=bytes.fromhex(self.key))
            self.address = str(self._listener.address)
            target: Callable[[], None] = self._accept
        else:
            self.key = shared_key(key)
            self.shared_key = True
            host, _, port = listen.rpartition(":")
            self._socket = socket.create_server(("", int(port)), family=socket.AF_INET, backlog=64)
            self.address = f"{TCP_SCHEME}{host}:{self._socket.getsockname()[1]}"
            target = self._accept_tcp
        threading.Thread(target=target, daemon=True, name="capstan-trial-listener").start()

    def _accept(self) -> None:
        assert self._listener is not None
        while not self._closed:
            try:
                connection = self._listener.accept()
            except Exception:  # noqa: BLE001  # a bad key or a closed listener: go on, or stop when closed
                continue
            threading.Thread(target=_serve, args=(connection, self._on_report, lambda m: m[0] == "hello"),
                             daemon=True, name="capstan-trial-reader").start()

    def _accept_tcp(self) -> None:
        assert self._socket is not None
        while not self._closed:
            try:
                peer, _ = self._socket.accept()
            except OSError:
                if self._closed:
                    return
                continue
            threading.Thread(target=self._greet, args=(peer,), daemon=True, name="capstan-trial-reader").start()

    def _greet(self, peer: socket.socket) -> None:
        """Check the peer's key (as `multiprocessing.connection.Listener` does), then serve its reports."""
        from multiprocessing import connection as mpc

        conn = Connection(peer.detach())
        key = bytes.fromhex(self.key)
        try:
            mpc.deliver_challenge(conn, key)
            mpc.answer_challenge(conn, key)
        except Exception:  # noqa: BLE001  # a wrong key, a peer that went away, garbage: drop it
            with contextlib.suppress(OSError):
                conn.close()
            return
        _serve(conn, self._on_report, lambda m: m[0] == "hello")

    def environment(self, number: int) -> dict[str, str]:
        """The variables a trial process needs to reach this listener (without the key when it is shared: the
        trial has it from the same Secret as the controller)."""
        env = {"CAPSTAN_TRIAL_ADDRESS": self.address, "CAPSTAN_TRIAL_NUMBER": str(number)}
        if not self.shared_key:
            env["CAPSTAN_TRIAL_KEY"] = self.key
        return env

    def close(self) -> None:
        """Stop listening."""
        self._closed = True
        with contextlib.suppress(OSError):
            if self._listener is not None:
                self._listener.close()
            if self._socket is not None:
                with contextlib.suppress(OSError):
                    self._socket.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept
                self._socket.close()


def shared_key(key: str | None) -> str:
    """The shared key of a TCP listener: required, hex, at least 16 bytes; `InvalidParameterValue` otherwise."""
    if not key:
        raise InvalidParameterValue("CAPSTAN_TRIAL_KEY: a controller listening on TCP (CAPSTAN_TRIAL_LISTEN) needs "
                                    "the trials' key from its environment (a Secret's key); none is set")
    try:
        raw = bytes.fromhex(key.strip())
    except ValueError:
        raise InvalidParameterValue("CAPSTAN_TRIAL_KEY: not a hex string (e.g. openssl rand -hex 32)") from None
    if len(raw) < 16:
        raise InvalidParameterValue(f"CAPSTAN_TRIAL_KEY: {len(raw)} bytes; at least 16 are needed (32 hex digits)")
    return key.strip()


class ScriptProcess:
    """One script trial: a subprocess in its own session, its output in the trial's log file; ``on_end`` is
    called when it exits."""

    def __init__(self, number: int, command: Sequence[str], *, env: Mapping[str, str], cwd: str | None,
                 log_path: str, on_end: Callable[[TrialEnd], None]) -> None:
        self.number = number
        self.started_ms = _now_ms()
        with open(log_path, "ab") as log:
            self.process = subprocess.Popen(list(command), cwd=cwd, env=dict(env), stdout=log,
                                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            start_new_session=True)
        self.stopped = False
        threading.Thread(target=self._wait, args=(on_end,), daemon=True, name="capstan-trial-wait").start()

    @property
    def pid(self) -> int:
        """The process id (also its process group's)."""
        return self.process.pid

    def _wait(self, on_end: Callable[[TrialEnd], None]) -> None:
        code = self.process.wait()
        ended = _now_ms()
        if code == 0:
            on_end(TrialEnd(self.number, "ok", started_ms=self.started_ms, ended_ms=ended))
        else:
            how = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
            on_end(TrialEnd(self.number, "error", error=f"the script ended with {how}", started_ms=self.started_ms,
                            ended_ms=ended))

    def stop(self, grace_s: float = 5.0) -> None:
        """SIGTERM the trial's process group, then SIGKILL after ``grace_s``."""
        self.stopped = True
        kill_group(self.process.pid, grace_s, lambda: self.process.poll() is not None)


def kill_group(pid: int, grace_s: float, ended: Callable[[], bool]) -> None:
    """SIGTERM the process group ``pid`` leads, wait up to ``grace_s`` for ``ended``, then SIGKILL the group."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and not ended():
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
