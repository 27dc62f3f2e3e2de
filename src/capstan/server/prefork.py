"""Pre-fork worker processes: one listening socket bound by the parent, N forked children serving on it.

This is how ``capstan server --workers N`` and ``capstan serve --workers N`` run several processes on one port. The
parent binds the socket and prepares whatever the workers share (``capstan serve`` loads the model here, so the
children start at once and share its memory copy-on-write), then forks. Each child runs ``worker_main`` (uvicorn on
the inherited socket, whose accepted connections get TCP_NODELAY from `capstan.server.runner`); the kernel hands each
new connection to whichever child accepts it first.

The parent only supervises:

- a worker that exits while the server is not stopping is restarted after a back-off (`RestartBackoff`), with a log
  line naming its pid and how it ended;
- SIGINT and SIGTERM start a graceful stop: each worker gets SIGTERM (uvicorn finishes the requests in flight), a
  second signal forwards SIGINT (uvicorn's "stop now"), and workers still running after ``stop_timeout_s`` are killed;
  the parent then returns 0;
- a worker whose parent dies (even by SIGKILL) is sent SIGTERM by the kernel on Linux (``PR_SET_PDEATHSIG``).

uvicorn's own multi-worker supervisor is not used: it starts workers with ``spawn``, so each re-imports everything
and loads its own model, and it binds with a protocol number of 0, which is what hides TCP_NODELAY (uvicorn#3149).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import select
import signal
import socket
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType

from capstan.clock import MonotonicClock, system_clock

log = logging.getLogger(__name__)

_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@dataclass(frozen=True)
class RestartBackoff:
    """How long a crashed worker waits before it is started again: ``first_s``, doubled for each crash in a row up
    to ``max_s``. A worker that ran for ``healthy_after_s`` or longer before it ended starts the count afresh."""

    first_s: float = 0.5
    max_s: float = 30.0
    healthy_after_s: float = 10.0

    def delay_s(self, crashes_in_a_row: int) -> float:
        """Seconds to wait before the restart that follows ``crashes_in_a_row`` (at least 1) crashes."""
        return float(min(self.max_s, self.first_s * 2 ** max(0, crashes_in_a_row - 1)))

    def crashes_after(self, previous: int, lived_s: float) -> int:
        """The crash count once a worker that lived ``lived_s`` seconds has crashed, ``previous`` before."""
        return 1 if lived_s >= self.healthy_after_s else previous + 1


def is_fork_safe(model: object) -> bool:
    """Whether a loaded model keeps working in a forked child: true unless it says otherwise with a false
    ``fork_safe`` attribute (a model run by a runtime whose thread pools do not survive fork, such as an
    onnxruntime session or a TorchScript module that has run). Such a model is loaded again in each worker.

    Whether a runtime is merely imported says nothing: scikit-learn imports torch when it is installed.
    """
    return bool(getattr(model, "fork_safe", True))


def describe_exit(status: int) -> str:
    """``exited with code N`` or ``was killed by SIGNAME`` for a `os.waitpid` status."""
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = f"signal {number}"
        return f"was killed by {name}"
    return f"exited with code {os.waitstatus_to_exitcode(status)}"


@dataclass
class _Slot:
    """One worker position: the process filling it now (if any) and its crash history."""

    index: int
    pid: int | None = None
    started_at: float = 0.0
    crashes: int = 0
    restart_at: float | None = None


@dataclass
class PreforkSupervisor:
    """Forks ``workers`` children that each call ``worker_main()`` (returning an exit code) with ``sock`` inherited,
    and supervises them until SIGINT or SIGTERM.

    ``name`` prefixes the log lines (``capstan serve``). Call `run` from the main thread of a process with no other
    Python threads: forking copies only the calling thread.
    """

    sock: socket.socket
    workers: int
    worker_main: Callable[[], int]
    name: str = "capstan"
    backoff: RestartBackoff = field(default_factory=RestartBackoff)
    stop_timeout_s: float = 15.0
    clock: MonotonicClock = system_clock
    _slots: list[_Slot] = field(default_factory=list, init=False)
    _signals: list[int] = field(default_factory=list, init=False)
    _stop_deadline: float | None = field(default=None, init=False)

    @property
    def pids(self) -> list[int]:
        """The pids of the workers running now."""
        return [slot.pid for slot in self._slots if slot.pid is not None]

    def run(self) -> int:
        """Start the workers and supervise them; returns 0 once they have all stopped after SIGINT or SIGTERM."""
        if self.workers < 1:
            raise ValueError(f"workers must be at least 1, got {self.workers}")
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_w, False)
        os.set_blocking(wake_r, False)
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (*_STOP_SIGNALS, signal.SIGCHLD)}
        previous_wakeup = signal.set_wakeup_fd(wake_w)
        try:
            self._slots = [_Slot(index) for index in range(1, self.workers + 1)]
            for slot in self._slots:
                self._start(slot, wake_r, wake_w)
            while self._slots_alive() or self._stop_deadline is None:
                self._wait(wake_r)
                self._handle_signals()
                self._reap()
                self._restart_due(wake_r, wake_w)
                self._kill_if_overdue()
            return 0
        finally:
            signal.set_wakeup_fd(previous_wakeup)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            os.close(wake_r)
            os.close(wake_w)

    # -- the parent's loop -------------------------------------------------------------------------------------
    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signals.append(signum)

    def _slots_alive(self) -> bool:
        return any(slot.pid is not None for slot in self._slots)

    def _wait(self, wake_r: int) -> None:
        """Sleep until a signal arrives or the next timer (a restart, the stop deadline) is due."""
        now = self.clock.monotonic()
        timers = [s.restart_at for s in self._slots if s.restart_at is not None]
        if self._stop_deadline is not None:
            timers.append(self._stop_deadline)
        timeout = max(0.0, min(timers) - now) if timers else None
        if not self._signals:
            select.select([wake_r], [], [], timeout)
        with contextlib.suppress(BlockingIOError):
            while os.read(wake_r, 512):
                pass

    def _handle_signals(self) -> None:
        received, self._signals[:] = list(self._signals), []
        for signum in received:
            if signum not in _STOP_SIGNALS:
                continue
            if self._stop_deadline is None:
                log.info("%s: stopping %d worker(s) (%s)", self.name, len(self.pids), signal.Signals(signum).name)
                self._stop_deadline = self.clock.monotonic() + self.stop_timeout_s
                self._send(signal.SIGTERM)
                for slot in self._slots:
                    slot.restart_at = None
            else:
                self._send(signal.SIGINT)  # uvicorn's second signal: stop without waiting for open connections

    def _send(self, signum: int) -> None:
        for pid in self.pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            slot = next((s for s in self._slots if s.pid == pid), None)
            if slot is None:
                continue
            slot.pid = None
            if self._stop_deadline is not None:
                continue
            now = self.clock.monotonic()
            slot.crashes = self.backoff.crashes_after(slot.crashes, now - slot.started_at)
            delay = self.backoff.delay_s(slot.crashes)
            slot.restart_at = now + delay
            log.warning("%s: worker %d (pid %d) %s; restarting it in %.1f s", self.name, slot.index, pid,
                        describe_exit(status), delay)

    def _restart_due(self, wake_r: int, wake_w: int) -> None:
        if self._stop_deadline is not None:
            return
        now = self.clock.monotonic()
        for slot in self._slots:
            if slot.restart_at is not None and slot.restart_at <= now:
                slot.restart_at = None
                self._start(slot, wake_r, wake_w)
                log.warning("%s: worker %d restarted as pid %d", self.name, slot.index, slot.pid)

    def _kill_if_overdue(self) -> None:
        if self._stop_deadline is not None and self.clock.monotonic() >= self._stop_deadline and self.pids:
            log.warning("%s: %d worker(s) did not stop within %.0f s; killing them", self.name, len(self.pids),
                        self.stop_timeout_s)
            self._send(signal.SIGKILL)
            self._stop_deadline = float("inf")  # reaped as they die; no second kill round

    # -- the child --------------------------------------------------------------------------------------------
    def _start(self, slot: _Slot, wake_r: int, wake_w: int) -> None:
        parent = os.getpid()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            os._exit(self._child(parent, wake_r, wake_w))
        slot.pid = pid
        slot.started_at = self.clock.monotonic()

    def _child(self, parent: int, wake_r: int, wake_w: int) -> int:
        """Run in the forked worker: undo the parent's signal set-up, then serve; returns the exit code."""
        code = 1
        try:
            signal.set_wakeup_fd(-1)
            os.close(wake_r)
            os.close(wake_w)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            for sig in _STOP_SIGNALS:
                signal.signal(sig, _exit_quietly)
            _die_with_parent(parent)
            code = self.worker_main()
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else 0
        except BaseException:  # noqa: BLE001  # a worker ends here whatever it raised; the parent logs and restarts
            traceback.print_exc()
        finally:
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
        return code


def _exit_quietly(signum: int, frame: FrameType | None) -> None:
    """A worker's SIGINT/SIGTERM handler outside uvicorn's own (before it starts, and when uvicorn re-raises the
    signal it handled): end the process with status 0."""
    raise SystemExit(0)


def _die_with_parent(parent: int) -> None:
    """Ask Linux to send this process SIGTERM when its parent dies; exit now if it already has."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            pr_set_pdeathsig = 1
            libc.prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0)
    if os.getppid() != parent:
        raise SystemExit(0)
