"""A warm worker process: ``python -m capstan.pipelines.worker FD``.

It receives tasks over the socket ``FD`` from the orchestrator and runs them one at a time. Its stdout and stderr
stay pointed at one log file, emptied before each task (``capstan logs --follow`` reads it while the attempt runs;
afterwards the attempt's output is uploaded to the artifact store). Each outcome is appended to the worker's
results file *before* it is sent back. The worker lives in its own session: when the orchestrator is killed, a
running attempt finishes, its result stays in the file, and a resumed orchestrator adopts it instead of running
the step again.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Any

import orjson

MEMORY_REQUEST_ENV = "CAPSTAN_MEMORY_REQUEST"
"""Task environment variable with the step's ``memory`` request in bytes; a worker enforces it (see `run_one`)."""
MEMORY_SLACK = 16 * 2**20
"""Allowance on top of the request for Capstan's own work inside the attempt (bookkeeping, the result record)."""


def worker_files(home: str | os.PathLike[str], pid: int, started_ms: int | None) -> tuple[str, str]:
    """(log file, results file) of the worker process ``pid`` started at ``started_ms``."""
    base = Path(home) / "pipelines" / "workers" / f"{pid}-{started_ms or 0}"
    return f"{base}.log", f"{base}.results"


def find_result(results_path: str, key: str) -> Any:
    """The outcome recorded for attempt ``key`` (``run/step#attempt``) in a results file, or None."""
    from capstan.pipelines.execution import Outcome

    try:
        with open(results_path, "rb") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            data = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue  # a line cut short by a crash
        if f"{data['run_id']}/{data['step_id']}#{data['attempt']}" == key:
            return Outcome.from_json(line)
    return None


def _limits() -> tuple[Any, ...]:
    try:
        import resource
    except ImportError:
        return ()
    return tuple(resource.getrlimit(r) for r in (resource.RLIMIT_AS, resource.RLIMIT_DATA))


def _restore_environ(before: dict[str, str]) -> None:
    """Make ``os.environ`` (and so the C-level environment its setters and deleters update) equal ``before``
    again: drop what a task added, put back what it changed or removed. Only public mapping operations are used;
    ``os.environ`` decodes with ``surrogateescape``, so values that are not valid UTF-8 round-trip unchanged."""
    if os.environ == before:
        return
    for key in [k for k in os.environ if k not in before]:
        del os.environ[key]
    for key, value in before.items():
        if os.environ.get(key) != value:
            os.environ[key] = value


def _data_size() -> int | None:
    """This process's private writable memory (``VmData``, what ``RLIMIT_DATA`` counts), or None off Linux."""
    try:
        with open("/proc/self/status", "rb") as fh:
            for line in fh:
                if line.startswith(b"VmData:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _limit_memory(task: Any, ctx: Any) -> tuple[int, tuple[int, int]] | None:
    """Cap the attempt's memory at its request: ``RLIMIT_DATA`` = the worker's current data size + the request +
    `MEMORY_SLACK`. Returns (request, previous limit) to restore, or None when nothing was limited (no request,
    or no ``/proc`` to measure the baseline). Command steps inherit the limit."""
    raw = (task.env or {}).get(MEMORY_REQUEST_ENV, "")
    if not raw.isdigit() or int(raw) <= 0:
        return None
    try:
        import resource
    except ImportError:
        return None
    with contextlib.suppress(Exception):
        ctx.store()  # open the artifact store (imports, connection pool) before measuring, not inside the budget
    base = _data_size()
    if base is None:
        return None
    request = int(raw)
    soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    limit = base + request + MEMORY_SLACK
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    if soft != resource.RLIM_INFINITY and soft <= limit:
        return None  # already stricter (set by whoever started the worker)
    try:
        resource.setrlimit(resource.RLIMIT_DATA, (limit, hard))
    except (ValueError, OSError):
        return None
    return request, (soft, hard)


def _restore_memory(previous: tuple[int, int]) -> None:
    import resource

    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_DATA, previous)


def run_one(task: Any, ctx: Any) -> Any:
    """Run one task with its environment and an emptied log, restoring the process afterwards.

    A step with a ``memory`` request runs under ``RLIMIT_DATA`` (see `_limit_memory`): an allocation beyond it
    raises ``MemoryError`` in the step, which fails as ``OOMKilled`` naming the request."""
    import dataclasses

    from capstan.pipelines.execution import OOM_KILLED, execute

    environ = dict(os.environ)
    cwd = os.getcwd()
    limits = _limits()
    if task.env:
        os.environ.update(task.env)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os.ftruncate(1, 0)
    capped = _limit_memory(task, ctx)
    try:
        outcome = execute(task, ctx, in_worker=True)
    finally:
        if capped is not None:
            _restore_memory(capped[1])
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        _restore_environ(environ)
        if os.getcwd() != cwd:
            with contextlib.suppress(OSError):
                os.chdir(cwd)
    if capped is not None and outcome.reason == OOM_KILLED:
        from capstan.resources.quantity import MILLI, format_quantity

        wanted = format_quantity(capped[0] * MILLI, "memory")
        outcome = dataclasses.replace(outcome, retire=True, message=f"MemoryError: step {task.step_name!r} "
                                      f"({task.location}) exceeded its memory request of {wanted}")
    # The value itself stays here: it is stored already, and the orchestrator only needs where.
    # A step that changed this process's resource limits (setrlimit in an OOM test) retires the worker.
    return dataclasses.replace(outcome, value=None, retire=outcome.retire or _limits() != limits)


def main(argv: list[str]) -> int:
    """Serve tasks until the orchestrator closes the socket."""
    from multiprocessing.connection import Connection

    conn = Connection(int(argv[1]))
    try:
        init = conn.recv()
    except (EOFError, OSError):
        return 0
    sys.path[:] = list(init["sys_path"])
    with contextlib.suppress(OSError):
        os.chdir(init["cwd"])
    log_path, results_path = init["log"], init["results"]
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_TRUNC, 0o644)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    results = os.open(results_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(line_buffering=True)
    from capstan.pipelines.execution import ExecContext, import_module_file

    for module, file in init.get("preload", ()):
        with contextlib.suppress(Exception):
            import_module_file(module, file)
    ctx = ExecContext(init["settings"])
    # Only a deliberate goodbye (None) from the pool removes the worker's files: after an EOF the orchestrator may
    # have died before reading the last result, which must then survive for `capstan pipelines resume`.
    clean = False
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            break
        if task is None:
            clean = True
            break
        if task.timeout is not None:
            conn.send(("started", task.key))  # the attempt's timeout counts from here, not from the dispatch
        outcome = run_one(task, ctx)
        os.write(results, outcome.to_json() + b"\n")
        try:
            conn.send(outcome)
        except OSError:
            break  # nobody got the result: it stays in the results file for a resumed orchestrator
        if outcome.retire:
            break  # the pool replaces this worker (its files stay: the orchestrator may not have read the result)
    os.close(results)
    if clean:
        for path in (log_path, results_path):
            with contextlib.suppress(OSError):
                os.unlink(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
