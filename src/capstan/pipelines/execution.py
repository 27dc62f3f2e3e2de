"""Running one attempt of a step, shared by the thread executor and the worker processes.

`execute` resolves the step's inputs, calls the function (or runs the command), checks the return value against
the annotation, stores it (`capstan.pipelines.serialize`), uploads the attempt's captured output to the artifact
store and returns an `Outcome`: a plain record that travels back to the orchestrator, and that worker processes
also write to a result file so that a resumed orchestrator can adopt attempts that finished while it was down.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from capstan.errors import InvalidState
from capstan.pipelines.dsl import Step
from capstan.pipelines.graph import Binding, call_args, decode
from capstan.pipelines.serialize import (
    OutputRef,
    StepValueError,
    check_return,
    encode_output,
    load_output,
    output_prefix,
)

if TYPE_CHECKING:
    from capstan.artifacts.store import ArtifactStore
    from capstan.settings import Settings

OOM_MARKERS = ("MemoryError", "std::bad_alloc", "Cannot allocate memory", "Out of memory", "out of memory")

# Failure reasons (also the event reasons users see).
EXCEPTION = "Exception"
NON_ZERO_EXIT = "NonZeroExit"
OOM_KILLED = "OOMKilled"
TIMEOUT = "Timeout"
CANCELLED = "Cancelled"
INTERRUPTED = "Interrupted"
WORKER_LOST = "WorkerLost"
INPUT_UNAVAILABLE = "InputUnavailable"
COMMAND_NOT_FOUND = "CommandNotFound"
UNSCHEDULABLE = "Unschedulable"


@dataclass(frozen=True, slots=True)
class Task:
    """Everything one attempt needs, picklable for worker processes."""

    run_id: str
    step_id: str
    step_name: str
    attempt: int
    project: str
    kind: str
    module: str
    file: str | None
    qualname: str
    command: tuple[str, ...] | None
    args: dict[str, Binding]
    inputs: dict[str, OutputRef]
    env: dict[str, str]
    location: str
    isolation: str
    live_log: str
    result_file: str | None
    output_file: str
    timeout: float | None = None

    @property
    def key(self) -> str:
        """``run/step#attempt``: unique per attempt."""
        return f"{self.run_id}/{self.step_id}#{self.attempt}"


@dataclass(frozen=True, slots=True)
class Outcome:
    """How an attempt ended."""

    run_id: str
    step_id: str
    attempt: int
    ok: bool
    reason: str
    message: str
    retryable: bool
    exit_code: int | None
    started_at: int
    finished_at: int
    peak_memory: int | None = None
    output: OutputRef | None = None
    log_path: str | None = None
    retire: bool = False
    value: Any = field(default=None, compare=False)

    @property
    def key(self) -> str:
        """``run/step#attempt``."""
        return f"{self.run_id}/{self.step_id}#{self.attempt}"

    @property
    def duration_ms(self) -> int:
        """Wall time of the attempt."""
        return max(0, self.finished_at - self.started_at)

    def to_json(self) -> bytes:
        """The result-file form (without the in-memory value)."""
        data = {"run_id": self.run_id, "step_id": self.step_id, "attempt": self.attempt, "ok": self.ok,
                "reason": self.reason, "message": self.message, "retryable": self.retryable,
                "exit_code": self.exit_code, "started_at": self.started_at, "finished_at": self.finished_at,
                "peak_memory": self.peak_memory, "log_path": self.log_path,
                "output": self.output.to_json() if self.output else None}
        return orjson.dumps(data)

    @classmethod
    def from_json(cls, raw: bytes) -> Outcome:
        """Inverse of `to_json`."""
        d = orjson.loads(raw)
        out = d.pop("output")
        return cls(**d, output=OutputRef.from_json(out) if out else None)


def failed(task: Task, reason: str, message: str, *, started_at: int, finished_at: int, retryable: bool = True,
           exit_code: int | None = None, log_path: str | None = None) -> Outcome:
    """An unsuccessful `Outcome` for ``task``."""
    return Outcome(task.run_id, task.step_id, task.attempt, False, reason, message, retryable, exit_code,
                   started_at, finished_at, None, None, log_path)


def now_ms() -> int:
    """Wall-clock milliseconds (attempt timestamps are facts about the outside world, not scheduling input)."""
    return time.time_ns() // 1_000_000


# -- resolving step functions -----------------------------------------------------------------------------------

_MODULE_LOCK = threading.Lock()
_MTIMES: dict[str, float | None] = {}


def import_module_file(name: str, file: str | None) -> Any:
    """Import module ``name``, loading it from ``file`` when it is not importable by name."""
    with _MODULE_LOCK:
        module = sys.modules.get(name)
        if module is not None and file:
            # A warm worker outlives runs: load the file again when it changed since it was imported.
            try:
                mtime = os.stat(file).st_mtime
            except OSError:
                mtime = None
            if _MTIMES.setdefault(name, mtime) != mtime:
                del sys.modules[name]
                _MTIMES[name] = mtime
                module = None
        if module is not None:
            return module
        if file:
            folder = os.path.dirname(os.path.abspath(file))
            if folder not in sys.path:
                sys.path.insert(0, folder)
            spec = importlib.util.find_spec(name) if name.isidentifier() else None
            if spec is None or spec.origin is None or os.path.abspath(spec.origin) != os.path.abspath(file):
                spec = importlib.util.spec_from_file_location(name, file)
                if spec is None or spec.loader is None:
                    raise InvalidState(f"cannot load {file!r}")
                module = importlib.util.module_from_spec(spec)
                sys.modules[name] = module
                try:
                    spec.loader.exec_module(module)
                except BaseException:
                    sys.modules.pop(name, None)
                    raise
                return module
        return importlib.import_module(name)


def resolve_step(task: Task) -> Step:
    """The `Step` object a task names (module + qualified name)."""
    obj: Any = import_module_file(task.module, task.file)
    for part in task.qualname.split("."):
        obj = getattr(obj, part)
    if isinstance(obj, Step):
        return obj
    raise InvalidState(f"{task.module}.{task.qualname} is not a step")


# -- thread-local output capture --------------------------------------------------------------------------------

class _LazyLog:
    """Opens the attempt's log file on the first write, so silent steps cost nothing."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fh: io.TextIOWrapper | None = None
        self.opened = False

    def write(self, text: str) -> int:
        if self._fh is None:
            self.opened = True
            self._fh = open(self.path, "a", encoding="utf-8", errors="replace")  # noqa: SIM115  # closed in close()
        return self._fh.write(text)

    def flush(self) -> None:
        if self._fh is not None:
            self._fh.flush()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


class _Router(io.TextIOBase):
    """Stands in for ``sys.stdout``/``sys.stderr``: writes from a thread running a step go to its log."""

    def __init__(self, original: Any, local: threading.local) -> None:
        self._original = original
        self._local = local

    def write(self, text: str) -> int:
        sink = getattr(self._local, "sink", None)
        if sink is None:
            return int(self._original.write(text))
        return int(sink.write(text))

    def flush(self) -> None:
        sink = getattr(self._local, "sink", None)
        if sink is not None:
            sink.flush()
        else:
            self._original.flush()

    def isatty(self) -> bool:
        return bool(self._original.isatty())

    @property
    def rich_proxied_file(self) -> Any:
        """Where a Rich console writes from a thread that runs no step: the file beneath Rich's own redirect.

        A Rich live display (a progress bar) replaces ``sys.stdout`` with a proxy that prints lines above the
        display; the console finds the real file through this attribute. Without it, the console's frames went
        through this router into that proxy, which printed them and redrew the display, without end."""
        if getattr(self._local, "sink", None) is not None:
            return self
        return getattr(self._original, "rich_proxied_file", self._original)

    def fileno(self) -> int:
        return int(self._original.fileno())

    @property
    def encoding(self) -> str:  # type: ignore[override]  # TextIOBase declares it as a plain attribute
        return str(getattr(self._original, "encoding", "utf-8"))


_ROUTE = threading.local()
_ROUTE_LOCK = threading.Lock()
_ROUTE_USERS = [0]


@contextlib.contextmanager
def thread_capture() -> Iterator[None]:
    """While open, output written by step threads goes to their attempt logs."""
    with _ROUTE_LOCK:
        if _ROUTE_USERS[0] == 0:
            sys.stdout = _Router(sys.stdout, _ROUTE)
            sys.stderr = _Router(sys.stderr, _ROUTE)
        _ROUTE_USERS[0] += 1
    try:
        yield
    finally:
        with _ROUTE_LOCK:
            _ROUTE_USERS[0] -= 1
            if _ROUTE_USERS[0] == 0:
                for name in ("stdout", "stderr"):
                    stream = getattr(sys, name)
                    if isinstance(stream, _Router):
                        setattr(sys, name, stream._original)


# -- peak memory ------------------------------------------------------------------------------------------------

_PROC_FDS: dict[str, int] = {}


def _proc_fd(name: str, flags: int) -> int | None:
    fd = _PROC_FDS.get(name)
    if fd is None:
        try:
            fd = _PROC_FDS[name] = os.open(f"/proc/self/{name}", flags)
        except OSError:
            return None
    return fd


def reset_peak_memory() -> None:
    """Reset this process's peak-RSS mark (Linux ``clear_refs``), so the next reading covers one attempt."""
    fd = _proc_fd("clear_refs", os.O_WRONLY)
    if fd is not None:
        with contextlib.suppress(OSError):
            os.write(fd, b"5")


def read_peak_memory() -> int | None:
    """Peak resident memory of this process in bytes since the last reset."""
    fd = _proc_fd("status", os.O_RDONLY)
    if fd is not None:
        try:
            data = os.pread(fd, 8192, 0)
            start = data.find(b"VmHWM:")
            if start >= 0:
                return int(data[start:data.index(b"\n", start)].split()[1]) * 1024
        except (OSError, ValueError):
            pass
    try:
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
    except (ImportError, OSError):
        return None


# -- running one attempt ----------------------------------------------------------------------------------------

class ExecContext:
    """What an attempt needs from its surroundings: the artifact store (opened on first use) and, in thread mode,
    upstream values already in memory."""

    def __init__(self, settings: Settings | None, store: ArtifactStore | None = None,
                 memory: Mapping[str, Any] | None = None,
                 on_child: Callable[[str, subprocess.Popen[bytes] | None], None] | None = None,
                 step: Step | None = None) -> None:
        self._settings = settings
        self._store = store
        self._lock = threading.Lock()
        self.memory = memory or {}
        self.on_child = on_child
        self.step = step

    @property
    def settings(self) -> Settings | None:
        """The settings of the run's stores (None where an attempt runs without them)."""
        return self._settings

    def store(self) -> ArtifactStore:
        """The artifact store."""
        if self._store is None:
            with self._lock:
                if self._store is None:
                    from capstan.artifacts.store import ArtifactStore
                    from capstan.store.artifact_index_sql import SqlArtifactIndex
                    from capstan.store.engine import create_store_engine

                    assert self._settings is not None
                    engine = create_store_engine(self._settings, migrate=False)
                    self._store = ArtifactStore(self._settings, SqlArtifactIndex(engine))
        return self._store


def _format_arg(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool | int | float):
        return str(value).lower() if isinstance(value, bool) else str(value)
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return str(value)


def command_argv(command: tuple[str, ...], values: Mapping[str, Any]) -> list[str]:
    """The command line with ``{name}`` placeholders filled in."""
    texts = {k: _format_arg(v.index if k == "item" and hasattr(v, "count") and hasattr(v, "index") else v)
             for k, v in values.items()}
    return [part.format_map(texts) for part in command]


def execute(task: Task, ctx: ExecContext, *, in_worker: bool) -> Outcome:
    """Run one attempt and return its outcome (never raises for a failure of the step itself)."""
    started = now_ms()
    label = f"step {task.step_name!r} ({task.location})"
    log = task.live_log
    peak: int | None = None
    value: Any = None
    try:
        lookup = _lookup(task, ctx)
        values = {name: decode(b, lookup) for name, b in task.args.items()}
    except Exception as exc:  # noqa: BLE001  # an input that cannot be loaded fails the attempt, retryably
        return _finish(task, ctx, failed(task, INPUT_UNAVAILABLE, f"cannot load inputs of {label}: "
                                         f"{type(exc).__name__}: {exc}", started_at=started, finished_at=now_ms()))
    if task.kind == "command":
        assert task.command is not None
        outcome, value = _run_command(task, ctx, values, started, in_worker=in_worker)
        return _finish(task, ctx, outcome, value)
    if in_worker:
        reset_peak_memory()
    sink = None if in_worker else _LazyLog(log)
    wrote: bool | None = None
    if sink is not None:
        _ROUTE.sink = sink
    try:
        step = ctx.step or resolve_step(task)
        args, kwargs = call_args(step, values)
        value = step.fn(*args, **kwargs) if step.fn is not None else None
        check_return(value, step.return_annotation(), label)
        if in_worker:
            peak = read_peak_memory()
        ref = encode_output(value, prefix=output_prefix(task.run_id, task.step_id, task.attempt),
                            project=task.project, store=ctx.store, label=label)
        outcome = Outcome(task.run_id, task.step_id, task.attempt, True, "", "", False, 0, started, now_ms(), peak,
                          ref)
    except StepValueError as exc:
        outcome = failed(task, exc.reason, exc.message, started_at=started, finished_at=now_ms(), retryable=False,
                         exit_code=1)
    except MemoryError as exc:
        traceback.print_exc()
        outcome = failed(task, OOM_KILLED, f"{label} ran out of memory (MemoryError: {exc})", started_at=started,
                         finished_at=now_ms(), exit_code=137)
        outcome = _replace(outcome, retire=in_worker)
        value = None
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if code == 0:
            outcome = Outcome(task.run_id, task.step_id, task.attempt, True, "", "", False, 0, started, now_ms(),
                              peak, encode_output(None, prefix="", project=task.project, store=ctx.store,
                                                  label=label))
        else:
            outcome = failed(task, NON_ZERO_EXIT, f"{label} called sys.exit({exc.code!r})", started_at=started,
                             finished_at=now_ms(), exit_code=code)
    except Exception as exc:  # noqa: BLE001  # the step's own failure: recorded, shown in its log, maybe retried
        traceback.print_exc()
        where_ = _exception_place(exc, task)
        outcome = failed(task, EXCEPTION, f"{type(exc).__name__}: {exc}{where_}", started_at=started,
                         finished_at=now_ms(), exit_code=1)
    finally:
        if sink is not None:
            _ROUTE.sink = None
            wrote = sink.opened
            sink.close()
    if in_worker and outcome.peak_memory is None:
        outcome = _replace(outcome, peak_memory=read_peak_memory())
    return _finish(task, ctx, outcome, value if outcome.ok else None, wrote=wrote)


def _exception_place(exc: BaseException, task: Task) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    here = __file__
    user = [f for f in frames if f.filename != here]
    if not user:
        return ""
    from capstan.pipelines.dsl import where

    return f" (at {where(user[-1].filename, user[-1].lineno or 0)})"


def _replace(outcome: Outcome, **changes: Any) -> Outcome:
    import dataclasses

    return dataclasses.replace(outcome, **changes)


def _lookup(task: Task, ctx: ExecContext) -> Callable[[str], Any]:
    cache: dict[str, Any] = {}

    def lookup(node_id: str) -> Any:
        if node_id in ctx.memory:
            return ctx.memory[node_id]
        if node_id not in cache:
            cache[node_id] = load_output(task.inputs[node_id], project=task.project, store=ctx.store)
        return cache[node_id]

    return lookup


def _finish(task: Task, ctx: ExecContext, outcome: Outcome, value: Any = None, *,
            wrote: bool | None = None) -> Outcome:
    """Upload the attempt's log (when it wrote anything) and attach it to the outcome."""
    if wrote is False:
        # A thread step that printed nothing: no file was opened, nothing to upload.
        return _replace(outcome, value=value) if value is not None else outcome
    if task.isolation == "process":
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
    log_path = None
    in_worker = task.isolation == "process"
    try:
        size = os.fstat(1).st_size if in_worker else os.path.getsize(task.live_log)
    except OSError:
        size = -1
    if size > 0:
        try:
            entry = ctx.store().put_file(f"{output_prefix(task.run_id, task.step_id, task.attempt)}/log.txt",
                                         task.live_log)
            log_path = entry.path
            if not in_worker:
                os.unlink(task.live_log)
        except Exception:  # noqa: BLE001  # losing a log must not lose the step's result; the live file stays
            log_path = None
    elif size == 0 and not in_worker:
        with contextlib.suppress(OSError):
            os.unlink(task.live_log)
    return _replace(outcome, log_path=log_path, value=value)


def _run_command(task: Task, ctx: ExecContext, values: Mapping[str, Any], started: int, *,
                 in_worker: bool) -> tuple[Outcome, Any]:
    assert task.command is not None
    label = f"step {task.step_name!r} ({task.location})"
    argv = command_argv(task.command, values)
    env = dict(os.environ)
    if ctx.settings is not None:  # a command that calls the SDK uses the run's stores, not ~/.capstan
        env.update(ctx.settings.store_environment())
    env.update(task.env)
    env["CAPSTAN_OUTPUT"] = task.output_file
    with contextlib.suppress(OSError):
        os.unlink(task.output_file)
    with open(task.live_log, "ab") as log:
        try:
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                    start_new_session=not in_worker)
        except OSError as exc:
            return failed(task, COMMAND_NOT_FOUND, f"{label}: cannot run {argv[0]!r}: {exc.strerror or exc}",
                          started_at=started, finished_at=now_ms(), retryable=False, exit_code=127), None
        if ctx.on_child is not None:
            ctx.on_child(task.key, proc)
        try:
            _pid, status, usage = os.wait4(proc.pid, 0)
        finally:
            if ctx.on_child is not None:
                ctx.on_child(task.key, None)
    code = os.waitstatus_to_exitcode(status)
    proc.returncode = code
    peak = int(usage.ru_maxrss) * 1024
    finished = now_ms()
    if code == 0:
        value = None
        if os.path.exists(task.output_file):
            try:
                with open(task.output_file, "rb") as fh:
                    value = orjson.loads(fh.read())
            except (OSError, orjson.JSONDecodeError) as exc:
                return failed(task, "SerializationError", f"{label} wrote invalid JSON to $CAPSTAN_OUTPUT: {exc}",
                              started_at=started, finished_at=finished, retryable=False, exit_code=0), None
        try:
            ref = encode_output(value, prefix=output_prefix(task.run_id, task.step_id, task.attempt),
                                project=task.project, store=ctx.store, label=label)
        except StepValueError as exc:
            return failed(task, exc.reason, exc.message, started_at=started, finished_at=finished, retryable=False,
                          exit_code=0), None
        return Outcome(task.run_id, task.step_id, task.attempt, True, "", "", False, 0, started, finished, peak,
                       ref), value
    if code < 0:
        sig = -code
        name = signal.Signals(sig).name if sig in signal.valid_signals() else str(sig)
        if sig == signal.SIGKILL:
            return _replace(failed(task, OOM_KILLED, f"{label}: {argv[0]} was killed by SIGKILL (out of memory)",
                                   started_at=started, finished_at=finished, exit_code=128 + sig),
                            peak_memory=peak), None
        return _replace(failed(task, NON_ZERO_EXIT, f"{label}: {argv[0]} was killed by {name}",
                               started_at=started, finished_at=finished, exit_code=128 + sig),
                        peak_memory=peak), None
    reason = OOM_KILLED if _log_mentions_oom(task.live_log) else NON_ZERO_EXIT
    what = "ran out of memory" if reason == OOM_KILLED else f"exited with code {code}"
    return _replace(failed(task, reason, f"{label}: {argv[0]} {what}", started_at=started, finished_at=finished,
                           exit_code=code), peak_memory=peak), None


def _log_mentions_oom(path: str) -> bool:
    try:
        with open(path, "rb") as fh:
            fh.seek(max(0, os.path.getsize(path) - 4096))
            tail = fh.read().decode("utf-8", "replace")
    except OSError:
        return False
    return any(marker in tail for marker in OOM_MARKERS)


def run_command_direct(step: Step, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Call a command step outside a pipeline: run it here and return its ``$CAPSTAN_OUTPUT`` JSON (or None)."""
    import tempfile

    if args:
        raise InvalidState(f"command step {step.name!r} takes keyword arguments only")
    assert step.command is not None
    from capstan.pipelines.dsl import placeholders

    missing = placeholders(step.command) - set(kwargs)
    if missing:
        raise InvalidState(f"command step {step.name!r} needs {', '.join(sorted(missing))}= for its placeholders")
    argv = command_argv(step.command, kwargs)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "output.json"
        env = {**os.environ, **step.options.env, "CAPSTAN_OUTPUT": str(out)}
        try:
            code = subprocess.call(argv, env=env)
        except OSError as exc:
            raise InvalidState(f"command step {step.name!r}: cannot run {argv[0]!r}: {exc}") from None
        if code != 0:
            raise InvalidState(f"command step {step.name!r}: {argv[0]} exited with code {code}")
        return orjson.loads(out.read_bytes()) if out.exists() else None
