"""The local adapters of the `capstan.pipelines.executor_port.Executor` port: `ThreadExecutor` (a thread pool in
the orchestrator's process) and `ProcessExecutor` (a run's use of the shared pool of warm worker processes, which
also re-attaches to attempts left running by an orchestrator that died, through an `AttachWatcher`). Both report
finished attempts as `Outcome` records through the ``deliver`` callback they are built with.

Starting an attempt is split in two so that the orchestrator can persist it in between: `ProcessExecutor.place`
picks (or starts) the worker, whose pid goes into the attempt's row, and `ProcessExecutor.start` sends the task.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from capstan.clock import Clock, monotonic_of, system_clock
from capstan.pipelines.dsl import Step
from capstan.pipelines.execution import (
    CANCELLED,
    INTERRUPTED,
    OOM_KILLED,
    WORKER_LOST,
    ExecContext,
    Outcome,
    Task,
    execute,
    failed,
    now_ms,
)
from capstan.pipelines.executor_port import (
    NO_VALUES,
    NOWHERE,
    Deliver,
    Executor,
    ExecutorFactory,
    Placement,
    Started,
    interrupted,
)

if TYPE_CHECKING:
    from capstan.artifacts.store import ArtifactStore
    from capstan.resources.admission import Lease
    from capstan.settings import Settings

__all__ = ["AttachWatcher", "Deliver", "ProcessExecutor", "ThreadExecutor", "WorkerPool", "close_pools",
           "kill_tree", "local_executor_factory", "local_executors", "process_alive", "process_started_ms",
           "shared_pool"]


def process_started_ms(pid: int) -> int | None:
    """When process ``pid`` started (ms since the epoch), or None when it does not exist."""
    try:
        import psutil

        return round(psutil.Process(pid).create_time() * 1000)
    except Exception:  # noqa: BLE001  # psutil raises NoSuchProcess/AccessDenied/ZombieProcess: all mean "gone"
        return None


def process_alive(pid: int, started_ms: int | None) -> bool:
    """True when ``pid`` runs and is the same process that started at ``started_ms`` (not a reused pid)."""
    try:
        import psutil

        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return started_ms is None or abs(round(proc.create_time() * 1000) - started_ms) <= 20
    except Exception:  # noqa: BLE001  # NoSuchProcess / AccessDenied: treat as gone
        return False


def kill_tree(pid: int, grace_s: float) -> None:
    """SIGTERM the process group led by ``pid``, then SIGKILL it after ``grace_s`` if still there."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)

    def finish() -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)

    if grace_s <= 0:
        finish()
        return
    timer = threading.Timer(grace_s, finish)
    timer.daemon = True
    timer.start()


class ThreadExecutor:
    """The `Executor` of ``thread`` isolation: attempts run on a thread pool inside the orchestrator's process.

    A Python step that is stopped (timed out, cancelled) cannot be interrupted: it runs to its end and a failure is
    reported with the stop's reason. Command steps run as child processes, which `stop` terminates. An outcome's
    ``value`` is the step's return value (`in_process`); ``peak_memory`` is None for Python steps (they share the
    orchestrator's process) and the child's peak for command steps. What a step thread prints reaches its log while
    `capstan.pipelines.execution.thread_capture` is open (the orchestrator opens it for runs with thread steps)."""

    isolation = "thread"
    reports_start = False
    in_process = True

    def __init__(self, deliver: Deliver, *, settings: Settings | None, store: ArtifactStore | None,
                 max_workers: int = 32, grace_s: float = 3.0, clock: Clock = system_clock) -> None:
        self._deliver = deliver
        self._local = threading.local()
        self._settings = settings
        self._store = store
        self._max = max_workers
        self._threads: list[threading.Thread] = []
        self._idle = 0
        self._lock = threading.Lock()
        self._tasks: queue.SimpleQueue[tuple[Task, ExecContext] | None] = queue.SimpleQueue()
        self._children: dict[str, subprocess.Popen[bytes]] = {}
        self._stopped: dict[str, str] = {}
        self._grace = grace_s
        self._clock = clock

    def _on_child(self, key: str, proc: subprocess.Popen[bytes] | None) -> None:
        if proc is None:
            self._children.pop(key, None)
        else:
            self._children[key] = proc

    def prepare(self, steps: Sequence[Step]) -> None:
        """Nothing to get ready: threads start on demand."""

    def place(self, lease: Lease | None) -> Placement:
        """Threads have nothing to choose: the run's default files."""
        return NOWHERE

    def start(self, task: Task, placement: Placement, *, lease: Lease | None = None, step: Step | None = None,
              values: Mapping[str, Any] = NO_VALUES) -> None:
        """Run ``task`` on a pool thread (calling ``step`` directly when given, with upstream ``values`` from
        memory); its outcome arrives through ``deliver``."""
        ctx = ExecContext(self._settings, self._store, values, self._on_child, step)
        collect = getattr(self._local, "collect", None)
        if collect is not None and not collect:
            # Submitted by a step thread that is running the orchestrator's round: it runs this task next itself.
            collect.append((task, ctx))
            return
        with self._lock:
            if self._idle == 0 and len(self._threads) < self._max:
                thread = threading.Thread(target=self._serve, name=f"capstan-step-{len(self._threads)}",
                                          daemon=True)
                self._threads.append(thread)
                thread.start()
            else:
                self._idle -= 1
        self._tasks.put((task, ctx))

    def _serve(self) -> None:
        item: tuple[Task, ExecContext] | None = None
        while True:
            if item is None:
                item = self._tasks.get()
                if item is None:
                    return
            task, ctx = item
            started = now_ms()
            try:
                outcome = execute(task, ctx, in_worker=False)
            except BaseException as exc:  # noqa: BLE001  # never lose an attempt: report the executor failure
                outcome = failed(task, WORKER_LOST, f"{type(exc).__name__}: {exc}", started_at=started,
                                 finished_at=now_ms())
            if self._stopped:
                reason = self._stopped.pop(task.key, None)
                if reason is not None and not outcome.ok:
                    outcome = dataclasses.replace(outcome, reason=reason, retryable=reason != CANCELLED,
                                                  message=f"step {task.step_name!r} stopped ({reason})")
            collect: list[tuple[Task, ExecContext]] = []
            self._local.collect = collect
            try:
                self._deliver(outcome)
            finally:
                self._local.collect = None
            if collect:
                item = collect[0]
                continue
            item = None
            with self._lock:
                self._idle += 1

    def stop(self, key: str, reason: str, *, grace_s: float | None = None) -> None:
        """Terminate the child process of a command step (SIGTERM, SIGKILL after the grace period); a Python step
        runs to its end. A failure of the attempt is reported with ``reason``."""
        self._stopped[key] = reason
        proc = self._children.get(key)
        if proc is not None:
            kill_tree(proc.pid, self._grace if grace_s is None else grace_s)

    def recover(self, task: Task, placement: Placement, started_at: int) -> Outcome | None:
        """A thread died with its orchestrator: the attempt was interrupted."""
        return interrupted(task, started_at, self._clock())

    def placement_of(self, worker_pid: int | None, worker_started: int | None) -> Placement:
        """Thread attempts name no worker."""
        return NOWHERE

    def shutdown(self, *, kill: bool = False) -> None:
        """Stop accepting work; command children are killed (they would outlive nothing useful), running Python
        threads finish in the background."""
        for proc in list(self._children.values()):
            kill_tree(proc.pid, 0)
        for _ in self._threads:
            self._tasks.put(None)


@dataclass(slots=True)
class Worker:
    """One warm worker process."""

    proc: subprocess.Popen[bytes]
    conn: Any
    pid: int
    started_ms: int | None
    task: Task | None = None
    deliver: Deliver | None = None
    on_started: Started | None = None
    task_started: int = 0
    kill_reason: str | None = None
    usable: bool = True
    idle_since: float = 0.0
    log_path: str = ""
    results_path: str = ""


class WorkerPool:
    """Warm worker processes (``python -m capstan.pipelines.worker``), shared by every run of this process and
    grown on demand. Each task carries where its outcome goes, so runs orchestrated side by side (the server)
    share the pool."""

    def __init__(self, settings: Settings, *, grace_s: float = 3.0, idle_timeout_s: float = 60.0,
                 clock: Clock = system_clock) -> None:
        self._settings = settings
        self._mono = monotonic_of(clock)  # idle times: a fake clock moves them
        self._grace = grace_s
        self._idle_timeout = idle_timeout_s
        self._lock = threading.Lock()
        self._idle: list[Worker] = []
        self._workers: dict[int, Worker] = {}
        self._reaper: threading.Thread | None = None

    def _reap(self) -> None:
        # Close workers nobody used for a while, so a long-lived process does not keep idle interpreters.
        while True:
            time.sleep(min(5.0, self._idle_timeout / 2))
            cutoff = self._mono() - self._idle_timeout
            with self._lock:
                stale = [w for w in self._idle if w.idle_since < cutoff]
                for worker in stale:
                    self._idle.remove(worker)
                    worker.usable = False
            for worker in stale:
                with contextlib.suppress(OSError):
                    worker.conn.send(None)

    def size(self) -> int:
        """Workers alive."""
        with self._lock:
            return len(self._workers)

    def prewarm(self, count: int, preload: list[tuple[str, str | None]]) -> None:
        """Start workers until ``count`` exist; new ones import ``preload`` modules right away."""
        with self._lock:
            missing = count - len(self._workers)
        for _ in range(max(0, missing)):
            worker = self._spawn(preload)
            with self._lock:
                self._idle.append(worker)

    def _spawn(self, preload: list[tuple[str, str | None]]) -> Worker:
        parent, child = socket.socketpair()
        try:
            # the step's own SDK calls (capstan.log_metric, capstan.checkpoint.save) read CAPSTAN_* in the worker:
            # they must reach this pool's stores even when the settings were built in code, not from the environment
            proc = subprocess.Popen(
                [sys.executable, "-m", "capstan.pipelines.worker", str(child.fileno())],
                pass_fds=(child.fileno(),), start_new_session=True, stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                env={**os.environ, **self._settings.store_environment()})
        finally:
            child.close()
        from multiprocessing.connection import Connection

        from capstan.pipelines.worker import worker_files

        conn = Connection(parent.detach())
        started = process_started_ms(proc.pid)
        log_path, results_path = worker_files(self._settings.home, proc.pid, started)
        conn.send({"settings": self._settings, "sys_path": list(sys.path), "cwd": os.getcwd(),
                   "preload": preload, "log": log_path, "results": results_path})
        worker = Worker(proc, conn, proc.pid, started, idle_since=self._mono(), log_path=log_path,
                        results_path=results_path)
        with self._lock:
            self._workers[worker.pid] = worker
            if self._reaper is None:
                self._reaper = threading.Thread(target=self._reap, name="capstan-pool-reaper", daemon=True)
                self._reaper.start()
        threading.Thread(target=self._reader, args=(worker,), name=f"capstan-worker-{worker.pid}",
                         daemon=True).start()
        return worker

    def reserve(self) -> Worker:
        """An idle worker (started now if none is idle) set aside for the next `dispatch`."""
        with self._lock:
            while self._idle:
                worker = self._idle.pop()
                if worker.usable:
                    return worker
        return self._spawn([])

    def dispatch(self, worker: Worker, task: Task, deliver: Deliver, on_started: Started | None = None) -> None:
        """Send ``task`` to a reserved worker; its outcome goes to ``deliver`` (and, for a task with a timeout,
        the moment the worker begins it to ``on_started``)."""
        worker.task = task
        worker.deliver = deliver
        worker.on_started = on_started
        worker.task_started = now_ms()
        try:
            worker.conn.send(task)
        except OSError:
            worker.usable = False
            kill_tree(worker.pid, 0)

    def kill(self, key: str, reason: str, grace_s: float | None = None) -> None:
        """Stop the attempt ``key``: its worker (and the worker's children) get SIGTERM, then SIGKILL after
        ``grace_s`` (None: the pool's grace period)."""
        with self._lock:
            target = next((w for w in self._workers.values() if w.task is not None and w.task.key == key), None)
            if target is None:
                return
            target.kill_reason = reason
            target.usable = False
        kill_tree(target.pid, self._grace if grace_s is None else grace_s)

    def _reader(self, worker: Worker) -> None:
        while True:
            try:
                outcome = worker.conn.recv()
            except (EOFError, OSError):
                break
            if isinstance(outcome, tuple):
                if outcome[0] == "started" and worker.on_started is not None:
                    worker.on_started(outcome[1])
                continue
            with self._lock:
                deliver = worker.deliver
                worker.task = None
                worker.deliver = None
                if outcome.retire:
                    worker.usable = False
                elif worker.usable:
                    worker.idle_since = self._mono()
                    self._idle.append(worker)
            if deliver is not None:
                deliver(outcome)
        code = worker.proc.wait()
        with contextlib.suppress(OSError):
            worker.conn.close()
        with self._lock:
            worker.usable = False
            self._workers.pop(worker.pid, None)
            with contextlib.suppress(ValueError):
                self._idle.remove(worker)
            task, reason, deliver = worker.task, worker.kill_reason, worker.deliver
        if task is None or deliver is None:
            return
        if reason is None:
            if code == -signal.SIGKILL:
                reason, message = OOM_KILLED, (f"step {task.step_name!r}: worker {worker.pid} was killed by "
                                               "SIGKILL (out of memory)")
            else:
                reason, message = WORKER_LOST, f"step {task.step_name!r}: worker {worker.pid} exited with {code}"
        else:
            message = f"step {task.step_name!r} stopped ({reason})"
        deliver(failed(task, reason, message, started_at=worker.task_started, finished_at=now_ms(),
                       exit_code=128 - code if code < 0 else code, retryable=reason != CANCELLED))

    def close(self) -> None:
        """Say goodbye to idle workers (they exit and remove their files). Busy workers are left to finish their
        attempt: its result stays in their results file for the run's next orchestrator to adopt."""
        with self._lock:
            workers = list(self._workers.values())
        for worker in workers:
            if worker.task is None:
                with contextlib.suppress(OSError):
                    worker.conn.send(None)


_POOLS: dict[tuple[str, str, str], WorkerPool] = {}
_POOLS_LOCK = threading.Lock()


def shared_pool(settings: Settings, clock: Clock = system_clock) -> WorkerPool:
    """The worker pool of this process for ``settings``' stores (``clock`` times idle workers of a new pool)."""
    key = (str(settings.home), settings.db_url, settings.artifacts)
    with _POOLS_LOCK:
        pool = _POOLS.get(key)
        if pool is None:
            if not _POOLS:
                import atexit

                atexit.register(close_pools)  # workers say goodbye (and remove their files) on a normal exit
            pool = _POOLS[key] = WorkerPool(settings, clock=clock)
        return pool


def close_pools() -> None:
    """Stop every worker pool of this process (tests, server shutdown)."""
    with _POOLS_LOCK:
        pools = list(_POOLS.values())
        _POOLS.clear()
    for pool in pools:
        pool.close()


class ProcessExecutor:
    """The `Executor` of ``process`` isolation: one run's use of the shared `WorkerPool` of warm workers.

    `prepare` starts warm workers importing the run's modules; `place` sets a worker aside (its pid and start time
    go into the attempt's row, its files into the task); `start` sends the task. A worker reports when an attempt
    with a timeout really begins (`reports_start`). Outcomes carry the worker's peak memory; a step beyond its
    ``memory`` request fails as ``OOMKilled`` (``RLIMIT_DATA``), as does a worker killed by SIGKILL (exit code
    137). Attempts of an earlier orchestrator are followed by an `AttachWatcher` (`recover`)."""

    isolation = "process"
    reports_start = True
    in_process = False

    def __init__(self, deliver: Deliver, *, settings: Settings, preload: list[tuple[str, str | None]] | None = None,
                 grace_s: float = 3.0, on_started: Started | None = None, clock: Clock = system_clock) -> None:
        self._deliver = deliver
        self._on_started = on_started
        self._settings = settings
        self._clock = clock
        self._grace = grace_s
        self._pool_ref: WorkerPool | None = None
        self._preload = preload or []
        self._keys: set[str] = set()
        self._watch: AttachWatcher | None = None

    @property
    def _pool(self) -> WorkerPool:
        if self._pool_ref is None:
            self._pool_ref = shared_pool(self._settings, self._clock)
        return self._pool_ref

    def prepare(self, steps: Sequence[Step]) -> None:
        """Start warm workers (one per step, at most one per CPU) that import the steps' modules right away."""
        if not steps:
            return
        from capstan.pipelines.steprec import importable

        modules = {(s.module, s.file) for s in steps if s.fn is not None}
        self._preload = [importable(m, f) for m, f in sorted(modules)]
        self.prewarm(min(len(steps), max(1, len(os.sched_getaffinity(0)))))

    def prewarm(self, count: int) -> None:
        """Make sure ``count`` workers exist."""
        self._pool.prewarm(count, self._preload)

    def place(self, lease: Lease | None) -> Placement:
        """An idle worker (started now if none is idle), set aside for the next `start`."""
        worker = self._pool.reserve()
        return Placement(worker.pid, worker.started_ms, worker.log_path, worker.results_path, worker)

    def start(self, task: Task, placement: Placement, *, lease: Lease | None = None, step: Step | None = None,
              values: Mapping[str, Any] = NO_VALUES) -> None:
        """Send ``task`` to the worker `place` set aside."""
        worker = placement.handle
        assert isinstance(worker, Worker), "start() takes the placement of this executor's place()"
        self._keys.add(task.key)
        self._pool.dispatch(worker, task, self._deliver, self._on_started)

    def stop(self, key: str, reason: str, *, grace_s: float | None = None) -> None:
        """Stop one attempt: its worker gets SIGTERM, then SIGKILL after the grace period."""
        grace = self._grace if grace_s is None else grace_s
        if self._pool_ref is not None:
            self._pool_ref.kill(key, reason, grace)
        if self._watch is not None:
            self._watch.kill(key, reason, grace)

    def placement_of(self, worker_pid: int | None, worker_started: int | None) -> Placement:
        """The worker an attempt row names, with its log and results files."""
        if not worker_pid:
            return NOWHERE
        from capstan.pipelines.worker import worker_files

        log, results = worker_files(self._settings.home, worker_pid, worker_started)
        return Placement(worker_pid, worker_started, log, results)

    def recover(self, task: Task, placement: Placement, started_at: int) -> Outcome | None:
        """Adopt the result the worker wrote to its results file, follow a worker that still runs the attempt, or
        report the attempt interrupted."""
        from capstan.pipelines.worker import find_result

        pid = placement.worker_pid
        if not pid:
            return interrupted(task, started_at, self._clock())
        adopted = cast(Outcome | None, find_result(task.result_file, task.key)) if task.result_file else None
        if adopted is not None:
            return adopted
        if process_alive(pid, placement.worker_started):
            if self._watch is None:
                self._watch = AttachWatcher(self._deliver, grace_s=self._grace)
            self._watch.attach(Attached(task, pid, placement.worker_started, started_at))
            return None
        return interrupted(task, started_at, self._clock())

    def shutdown(self, *, kill: bool = False) -> None:
        """With ``kill``, stop this run's attempts still running; the pool stays warm for later runs."""
        if kill and self._pool_ref is not None:
            for key in list(self._keys):
                self._pool_ref.kill(key, CANCELLED)
        if self._watch is not None:
            self._watch.stop()


def local_executor_factory(*, settings: Settings, store: ArtifactStore, clock: Clock = system_clock,
                           grace_s: float = 3.0, max_threads: int | None = None) -> ExecutorFactory:
    """What the composition root hands the pipeline runner: each run gets the local thread and process executors
    (threads: like concurrent.futures' default, enough to overlap I/O and few enough to keep GIL contention low)."""
    threads = max_threads or min(32, (os.cpu_count() or 1) + 4)

    def build(deliver: Deliver, on_started: Started) -> dict[str, Executor]:
        return local_executors(deliver, on_started, settings=settings, store=store, max_threads=threads,
                               grace_s=grace_s, clock=clock)

    return build


def local_executors(deliver: Deliver, on_started: Started, *, settings: Settings, store: ArtifactStore,
                    max_threads: int, grace_s: float, clock: Clock = system_clock) -> dict[str, Executor]:
    """The executors of a local run, by isolation (nothing starts until they are used)."""
    return {"thread": ThreadExecutor(deliver, settings=settings, store=store, max_workers=max_threads,
                                     grace_s=grace_s, clock=clock),
            "process": ProcessExecutor(deliver, settings=settings, grace_s=grace_s, on_started=on_started,
                                       clock=clock)}


@dataclass(slots=True)
class Attached:
    """An attempt started by an earlier orchestrator whose worker may still be running."""

    task: Task
    pid: int
    started_ms: int | None
    started_at: int
    kill_reason: str | None = None


class AttachWatcher:
    """Follows re-attached attempts: reports their result file when it appears, or an interruption when their
    worker is gone without one."""

    def __init__(self, deliver: Deliver, *, poll_s: float = 0.05, grace_s: float = 3.0) -> None:
        self._deliver = deliver
        self._poll = poll_s
        self._grace = grace_s
        self._items: dict[str, Attached] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def attach(self, item: Attached) -> None:
        """Watch ``item`` until it finishes."""
        with self._lock:
            self._items[item.task.key] = item
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="capstan-attach", daemon=True)
                self._thread.start()

    def kill(self, key: str, reason: str, grace_s: float | None = None) -> None:
        """Stop a re-attached attempt (SIGTERM, then SIGKILL after ``grace_s``; None: the watcher's default)."""
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return
            item.kill_reason = reason
        kill_tree(item.pid, self._grace if grace_s is None else grace_s)

    def _loop(self) -> None:
        while not self._stop.wait(self._poll):
            with self._lock:
                items = list(self._items.values())
            for item in items:
                outcome = self._check(item)
                if outcome is not None:
                    with self._lock:
                        self._items.pop(item.task.key, None)
                    self._deliver(outcome)

    def _check(self, item: Attached) -> Outcome | None:
        from capstan.pipelines.worker import find_result

        path = item.task.result_file
        found: Outcome | None = cast(Outcome | None, find_result(path, item.task.key)) if path else None
        if found is not None:
            return found
        if process_alive(item.pid, item.started_ms):
            return None
        found = cast(Outcome | None, find_result(path, item.task.key)) if path else None
        if found is not None:
            return found
        reason = item.kill_reason or INTERRUPTED
        return failed(item.task, reason, f"step {item.task.step_name!r}: its worker {item.pid} ended without a "
                      "result while the orchestrator was down" if reason == INTERRUPTED else
                      f"step {item.task.step_name!r} stopped ({reason})",
                      started_at=item.started_at, finished_at=now_ms(), retryable=reason != CANCELLED)

    def stop(self) -> None:
        """Stop watching."""
        self._stop.set()
