"""Authoring pipelines in plain Python: ``@step``, ``@pipeline``, ``command_step`` and ``chunks``.

A step is a plain function. Called outside a pipeline it simply runs. Called while a ``@pipeline`` function is being
built it runs nothing: it records a node of the DAG and returns a `StepOutput` placeholder that later calls take
as an argument, which is how the edges of the DAG are found. This module imports only the standard library so
that ``import capstan`` stays fast.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import inspect
import json
import marshal
import os
import string
import sys
import textwrap
import time
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, overload

from capstan.errors import InvalidParameterValue
from capstan.pipelines.state import Backoff
from capstan.settings import parse_size

Isolation = Literal["process", "thread"]
ISOLATIONS: tuple[str, ...] = ("process", "thread")

class PipelineDefinitionError(InvalidParameterValue):
    """A pipeline or step that cannot be built: the message starts with the ``file:line`` it concerns."""


@functools.lru_cache(maxsize=1024)
def _shown(file: str, cwd: str) -> str:
    try:
        rel = os.path.relpath(file, cwd)
    except ValueError:
        return file
    return file if rel.startswith("..") else rel


_CWD: list[tuple[float, str]] = []


def _cwd() -> str:
    # os.getcwd() is a system call; a pipeline build asks for it once per step call, so keep it for a second.
    now = time.monotonic()
    if not _CWD or now - _CWD[0][0] > 1.0:
        _CWD[:] = [(now, os.getcwd())]
    return _CWD[0][1]


def where(file: str, line: int) -> str:
    """``file:line`` with ``file`` relative to the working directory when it lies below it."""
    return f"{_shown(file, _cwd())}:{line}"


def parse_memory(value: object, *, field_name: str = "memory") -> int:
    """Bytes from ``512Mi``, ``2GB``, ``1.5g`` or a number of bytes."""
    if isinstance(value, bool):
        raise InvalidParameterValue(f"{field_name}: {value!r} is not a memory size such as 512Mi or 2GB")
    if isinstance(value, int | float):
        if value < 0:
            raise InvalidParameterValue(f"{field_name}: {value!r} must not be negative")
        return int(value)
    if not isinstance(value, str):
        raise InvalidParameterValue(f"{field_name}: {value!r} is not a memory size such as 512Mi or 2GB")
    return parse_size(value, field_name=field_name, what="memory size")


@dataclass(frozen=True, slots=True)
class Resources:
    """What one attempt of a step needs. ``None`` CPU means the isolation's default (1 for a process, 0 for a
    thread). ``gpu`` may be fractional (0.5 shares a device); ``gpu_flavor`` names the kind of GPU (``h100``)."""

    cpu: float | None = None
    memory: int = 0
    gpu: float = 0.0
    gpu_flavor: str | None = None

    @classmethod
    def of(cls, value: Resources | Mapping[str, object] | None) -> Resources:
        """Accept a `Resources` or a mapping such as ``{"cpu": 2, "memory": "4Gi", "gpu": 0.5}``."""
        if value is None:
            return cls()
        if isinstance(value, Resources):
            return value
        if not isinstance(value, Mapping):
            raise InvalidParameterValue(f"resources: expected a mapping such as {{'cpu': 2}}, got {value!r}")
        unknown = set(value) - {"cpu", "memory", "gpu", "gpu_flavor"}
        if unknown:
            raise InvalidParameterValue(
                f"resources: unknown key(s) {', '.join(sorted(map(str, unknown)))} (use cpu, memory, gpu, gpu_flavor)")
        cpu = value.get("cpu")
        gpu = value.get("gpu", 0)
        flavor = value.get("gpu_flavor")
        if cpu is not None and (not isinstance(cpu, int | float) or isinstance(cpu, bool) or cpu < 0):
            raise InvalidParameterValue(f"resources.cpu: {cpu!r} must be a non-negative number")
        if not isinstance(gpu, int | float) or isinstance(gpu, bool) or gpu < 0:
            raise InvalidParameterValue(f"resources.gpu: {gpu!r} must be a non-negative number")
        if gpu > 1 and gpu != int(gpu):
            raise InvalidParameterValue(f"resources.gpu: {gpu!r}: fractions are allowed below one GPU only")
        if flavor is not None and not isinstance(flavor, str):
            raise InvalidParameterValue(f"resources.gpu_flavor: {flavor!r} must be a string")
        return cls(cpu=None if cpu is None else float(cpu),
                   memory=parse_memory(value.get("memory", 0), field_name="resources.memory"),
                   gpu=float(gpu), gpu_flavor=flavor)

    def cpu_for(self, isolation: str) -> float:
        """The CPU request, with the isolation's default filled in."""
        if self.cpu is not None:
            return self.cpu
        return 1.0 if isolation == "process" else 0.0


@dataclass(frozen=True, slots=True)
class StepOptions:
    """Options of a step (see `step`)."""

    name: str
    retries: int = 0
    retry_backoff: Backoff = field(default_factory=Backoff)
    timeout: float | None = None
    cache: bool = True
    resources: Resources = field(default_factory=Resources)
    isolation: Isolation = "process"
    env: Mapping[str, str] = field(default_factory=dict)
    image: str | None = None
    priority_class: str | None = None
    queue: str | None = None


def _make_options(where_: str, name: str, *, retries: int = 0, retry_backoff: Backoff | float | None = None,
                  timeout: float | None = None, cache: bool = True,
                  resources: Resources | Mapping[str, object] | None = None, isolation: str = "process",
                  env: Mapping[str, str] | None = None, image: str | None = None,
                  priority_class: str | None = None, queue: str | None = None) -> StepOptions:
    def bad(msg: str) -> PipelineDefinitionError:
        return PipelineDefinitionError(f"{where_}: step {name!r}: {msg}")

    if not name or not all(ch.isalnum() or ch in "_-." for ch in name):
        raise bad("names may use letters, digits, '_', '-' and '.'")
    if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
        raise bad(f"retries={retries!r} must be a non-negative integer")
    if retry_backoff is None:
        backoff = Backoff()
    elif isinstance(retry_backoff, Backoff):
        backoff = retry_backoff
    elif isinstance(retry_backoff, int | float) and not isinstance(retry_backoff, bool) and retry_backoff >= 0:
        backoff = Backoff(base_s=float(retry_backoff), max_s=max(60.0, float(retry_backoff)))
    else:
        raise bad(f"retry_backoff={retry_backoff!r} must be seconds or a Backoff(...)")
    if backoff.base_s < 0 or backoff.factor < 1 or backoff.max_s < 0 or not 0 <= backoff.jitter <= 1:
        raise bad(f"retry_backoff={backoff!r}: needs base_s >= 0, factor >= 1, max_s >= 0, 0 <= jitter <= 1")
    if timeout is not None and (not isinstance(timeout, int | float) or isinstance(timeout, bool) or timeout <= 0):
        raise bad(f"timeout={timeout!r} must be a positive number of seconds")
    if not isinstance(cache, bool):
        raise bad(f"cache={cache!r} must be True or False")
    if isolation not in ISOLATIONS:
        raise bad(f"isolation={isolation!r} must be 'process' or 'thread'")
    env_map = dict(env or {})
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in env_map.items()):
        raise bad("env must map strings to strings")
    if image is not None and not isinstance(image, str):
        raise bad(f"image={image!r} must be a string")
    for option, value in (("priority_class", priority_class), ("queue", queue)):
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise bad(f"{option}={value!r} must be a non-empty string")
    try:
        res = Resources.of(resources)
    except InvalidParameterValue as exc:
        raise bad(exc.message) from None
    return StepOptions(name=name, retries=retries, retry_backoff=backoff,
                       timeout=None if timeout is None else float(timeout), cache=cache, resources=res,
                       isolation=isolation, env=env_map, image=image,  # type: ignore[arg-type]  # checked above
                       priority_class=priority_class, queue=queue)


@dataclass(frozen=True, slots=True)
class Chunk:
    """One of ``count`` indexed chunks (like a Kubernetes indexed Job): ``index`` runs from 0 to ``count - 1``."""

    index: int
    count: int

    def slice(self, total: int) -> range:
        """The indices of ``range(total)`` that belong to this chunk (contiguous, sizes differ by at most one)."""
        start = self.index * total // self.count
        stop = (self.index + 1) * total // self.count
        return range(start, stop)


@dataclass(frozen=True, slots=True)
class Chunks:
    """``n`` indexed chunks to fan a step out over with ``step.map(chunks(n))``."""

    count: int

    def items(self) -> list[Chunk]:
        """The chunks in index order."""
        return [Chunk(i, self.count) for i in range(self.count)]


def chunks(n: int) -> Chunks:
    """``n`` indexed chunks: ``step.map(capstan.chunks(4), data=...)`` runs the step four times, each receiving a
    `Chunk` as its mapped argument and ``CHUNK_INDEX``/``CHUNK_COUNT`` in its environment (process isolation and
    command steps)."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise InvalidParameterValue(f"chunks: n={n!r} must be a positive integer")
    return Chunks(n)


def current_chunk() -> Chunk | None:
    """The chunk this process runs (from ``CHUNK_INDEX``/``CHUNK_COUNT``), or ``None`` outside a chunked step."""
    index, count = os.environ.get("CHUNK_INDEX"), os.environ.get("CHUNK_COUNT")
    if index is None or count is None:
        return None
    return Chunk(int(index), int(count))


def _caller() -> tuple[str, int]:
    frame = sys._getframe(1)
    here = __file__
    while frame is not None and frame.f_code.co_filename == here:
        frame = frame.f_back  # type: ignore[assignment]  # walks out of this module's helpers
    if frame is None:
        return "<unknown>", 0
    return frame.f_code.co_filename, frame.f_lineno


class StepOutput:
    """Placeholder for a step's output while a pipeline is built; pass it to other steps to connect them.

    ``out[i]`` / ``out["key"]`` selects part of the value, ``a, b = out`` unpacks a step annotated ``-> tuple[A, B]``
    and ``out.after(other)`` adds an ordering-only dependency.
    """

    __slots__ = ("_builder", "_path", "node_id")

    def __init__(self, builder: Any, node_id: str, path: tuple[int | str, ...] = ()) -> None:
        self._builder = builder
        self.node_id = node_id
        self._path = path

    @property
    def path(self) -> tuple[int | str, ...]:
        """The selection applied to the step's value (empty for the whole value)."""
        return self._path

    def __getitem__(self, key: int | str) -> StepOutput:
        if not isinstance(key, int | str) or isinstance(key, bool):
            file, line = _caller()
            raise PipelineDefinitionError(f"{where(file, line)}: outputs can be indexed by int or str only")
        return StepOutput(self._builder, self.node_id, (*self._path, key))

    def __iter__(self) -> Iterator[StepOutput]:
        size = self._builder.tuple_size(self.node_id) if not self._path else None
        if size is None:
            file, line = _caller()
            raise PipelineDefinitionError(
                f"{where(file, line)}: cannot unpack the output of {self.node_id!r}: annotate the step "
                "'-> tuple[A, B]' or index it with out[0]")
        return iter([self[i] for i in range(size)])

    def after(self, *others: StepOutput) -> StepOutput:
        """Run this step only after ``others`` (without passing their values); returns ``self``."""
        file, line = _caller()
        self._builder.add_after(self.node_id, others, where(file, line))
        return self

    def __bool__(self) -> bool:
        file, line = _caller()
        raise PipelineDefinitionError(
            f"{where(file, line)}: the output of step {self.node_id!r} is not known while the pipeline is built; "
            "branch inside a step instead")

    def __repr__(self) -> str:
        sel = "".join(f"[{p!r}]" for p in self._path)
        return f"<output of {self.node_id}{sel}>"


def _qualified_module(fn: Callable[..., Any]) -> str:
    return getattr(fn, "__module__", "") or ""


class Step:
    """A pipeline step: a Python function (or a command line) with its options. Create with `step` or
    `command_step`."""

    def __init__(self, fn: Callable[..., Any] | None, options: StepOptions, *, file: str, line: int,
                 command: tuple[str, ...] | None = None) -> None:
        self.fn = fn
        self.options = options
        self.command = command
        self.file = file
        self.line = line
        self._code_hash: str | None = None
        self._signature: inspect.Signature | None = None
        self._hints: dict[str, Any] | None = None
        self._plan: tuple[tuple[str, Any], ...] | None = None
        if fn is not None:
            self.__doc__ = fn.__doc__
            self.__wrapped__ = fn

    @property
    def name(self) -> str:
        """The step's name (the function name unless given)."""
        return self.options.name

    @property
    def kind(self) -> str:
        """``python`` or ``command``."""
        return "command" if self.command is not None else "python"

    @property
    def location(self) -> str:
        """``file:line`` where the step is defined."""
        return where(self.file, self.line)

    @property
    def module(self) -> str:
        """Module of the function (empty for command steps)."""
        return _qualified_module(self.fn) if self.fn is not None else ""

    @property
    def qualname(self) -> str:
        """Qualified name of the function inside its module (empty for command steps)."""
        return getattr(self.fn, "__qualname__", "") if self.fn is not None else ""

    @property
    def signature(self) -> inspect.Signature:
        """The function's signature (command steps take keyword arguments only)."""
        if self._signature is None:
            if self.fn is None:
                self._signature = inspect.Signature()
            else:
                self._signature = inspect.signature(self.fn)
        return self._signature

    def call_plan(self) -> tuple[tuple[str, Any], ...]:
        """(name, kind) of each parameter in order, for building calls quickly."""
        if self._plan is None:
            self._plan = tuple((p.name, p.kind) for p in self.signature.parameters.values())
        return self._plan

    def return_annotation(self) -> Any:
        """The resolved return annotation, or ``inspect.Signature.empty`` when absent or unresolvable."""
        if self._hints is None:
            try:
                self._hints = typing.get_type_hints(self.fn) if self.fn is not None else {}
            except Exception:  # noqa: BLE001  # unresolvable forward references: skip the check, never fail
                self._hints = {}
        return self._hints.get("return", inspect.Signature.empty)

    @property
    def code_hash(self) -> str:
        """sha256 of the step's source (the command line and env for command steps); part of the cache key."""
        if self._code_hash is None:
            digest = hashlib.sha256()
            if self.command is not None:
                digest.update(json.dumps([list(self.command), sorted(self.options.env.items())]).encode())
            else:
                assert self.fn is not None
                try:
                    digest.update(textwrap.dedent(inspect.getsource(self.fn)).encode())
                except (OSError, TypeError):
                    digest.update(marshal.dumps(self.fn.__code__))
            self._code_hash = digest.hexdigest()
        return self._code_hash

    def with_options(self, **changes: Any) -> Step:
        """A copy of this step with some options replaced (same names as `step`)."""
        current = {f.name: getattr(self.options, f.name) for f in dataclasses.fields(StepOptions)}
        current.update(changes)
        name = current.pop("name")
        return Step(self.fn, _make_options(self.location, name, **current), file=self.file, line=self.line,
                    command=self.command)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from capstan.pipelines.graph import current_builder

        builder = current_builder()
        if builder is None:
            return self._run_direct(args, kwargs)
        file, line = _caller()
        return builder.add_call(self, args, kwargs, where(file, line))

    def map(self, items: Any, /, *args: Any, max_parallel: int | None = None, **kwargs: Any) -> Any:
        """Run this step once per element of ``items`` (a list, another step's output, or `chunks`), each run
        receiving one element as the first argument not given in ``args``/``kwargs``; the result is the list of
        outputs in order. At most ``max_parallel`` run at once."""
        from capstan.pipelines.graph import current_builder

        file, line = _caller()
        if max_parallel is not None and (not isinstance(max_parallel, int) or max_parallel < 1):
            raise PipelineDefinitionError(f"{where(file, line)}: max_parallel={max_parallel!r} must be >= 1")
        builder = current_builder()
        if builder is None:
            values = items.items() if isinstance(items, Chunks) else list(items)
            if self.fn is None:
                return [self._run_direct(args, {**kwargs, "item": item}) for item in values]
            return [self._run_direct((item, *args), kwargs) for item in values]
        return builder.add_map(self, items, args, kwargs, max_parallel, where(file, line))

    def _run_direct(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if self.fn is not None:
            return self.fn(*args, **kwargs)
        from capstan.pipelines.execution import run_command_direct

        return run_command_direct(self, args, kwargs)

    def __repr__(self) -> str:
        return f"<step {self.name} at {self.location}>"


@overload
def step(fn: Callable[..., Any], /) -> Step: ...


@overload
def step(*, name: str | None = None, retries: int = 0, retry_backoff: Backoff | float | None = None,
         timeout: float | None = None, cache: bool = True,
         resources: Resources | Mapping[str, object] | None = None, isolation: Isolation = "process",
         env: Mapping[str, str] | None = None, image: str | None = None, priority_class: str | None = None,
         queue: str | None = None) -> Callable[[Callable[..., Any]], Step]: ...


def step(fn: Callable[..., Any] | None = None, /, *, name: str | None = None, retries: int = 0,
         retry_backoff: Backoff | float | None = None, timeout: float | None = None, cache: bool = True,
         resources: Resources | Mapping[str, object] | None = None, isolation: Isolation = "process",
         env: Mapping[str, str] | None = None, image: str | None = None, priority_class: str | None = None,
         queue: str | None = None) -> Step | Callable[[Callable[..., Any]], Step]:
    """Make a function a pipeline step: ``@step`` or ``@step(retries=3, timeout=60, ...)``.

    Options: ``retries`` (extra attempts after a failure), ``retry_backoff`` (seconds, or a `Backoff` for the
    capped, jittered exponential delay), ``timeout`` (seconds per attempt), ``cache`` (reuse an earlier output
    when code, parameters and inputs are unchanged; on by default), ``resources`` (``cpu``, ``memory``, ``gpu``
    which may be fractional, ``gpu_flavor``), ``isolation`` (``"process"``, the default, runs in a warm worker
    process; ``"thread"`` runs light steps in the orchestrator's process), ``env`` (extra environment, process
    isolation), ``image`` (the container image used when the pipeline runs on Kubernetes), and for the workload
    queue ``priority_class`` (a priority class of the queue configuration: ``low``, ``normal``, ``high`` by default)
    and ``queue`` (a LocalQueue; default: the LocalQueue of the run's project).
    """

    def wrap(func: Callable[..., Any]) -> Step:
        if isinstance(func, Step):
            raise PipelineDefinitionError(f"{func.location}: {func.name!r} is already a step")
        if not callable(func):
            raise PipelineDefinitionError(f"@step applies to functions, got {func!r}")
        code = getattr(func, "__code__", None)
        file = code.co_filename if code else "<unknown>"
        line = code.co_firstlineno if code else 0
        opts = _make_options(where(file, line), name or str(getattr(func, "__name__", "step")), retries=retries,
                             retry_backoff=retry_backoff, timeout=timeout, cache=cache, resources=resources,
                             isolation=isolation, env=env, image=image, priority_class=priority_class,
                             queue=queue)
        if opts.env and opts.isolation == "thread":
            raise PipelineDefinitionError(
                f"{where(file, line)}: step {opts.name!r}: env= needs isolation='process' (threads share one "
                "environment)")
        return Step(func, opts, file=file, line=line)

    if fn is not None:
        return wrap(fn)
    return wrap


def command_step(command: Sequence[str], *, name: str | None = None, retries: int = 0,
                 retry_backoff: Backoff | float | None = None, timeout: float | None = None, cache: bool = True,
                 resources: Resources | Mapping[str, object] | None = None, isolation: Isolation = "process",
                 env: Mapping[str, str] | None = None, image: str | None = None, priority_class: str | None = None,
                 queue: str | None = None) -> Step:
    """A step that runs an executable: ``prep = command_step(["python", "prep.py", "--rows", "{rows}"])``.

    Call it with keyword arguments inside a pipeline (``prep(rows=rows)``); ``{name}`` placeholders in the command
    are filled from them (another step's output included) with `str.format` rules, so a literal brace is written
    ``{{`` or ``}}``. In ``step.map`` the element fills ``{item}``. A
    non-zero exit fails the step. The command may write JSON to the file named by ``$CAPSTAN_OUTPUT``: that JSON is
    the step's output; otherwise the output is ``None``. Options are those of `step`.
    """
    file, line = _caller()
    here = where(file, line)
    argv = tuple(command) if not isinstance(command, str) else ()
    if not argv or not all(isinstance(a, str) for a in argv):
        raise PipelineDefinitionError(f"{here}: command_step needs a non-empty list of strings, got {command!r}")
    for part in argv:
        try:
            list(string.Formatter().parse(part))
        except ValueError as exc:
            raise PipelineDefinitionError(f"{here}: command_step: bad placeholder in {part!r}: {exc}") from None
    script = len(argv) > 1 and os.path.basename(argv[0]).startswith("python") and not argv[1].startswith("-")
    default = os.path.splitext(os.path.basename(argv[1] if script else argv[0]))[0].replace(" ", "_")
    opts = _make_options(here, name or default, retries=retries, retry_backoff=retry_backoff, timeout=timeout,
                         cache=cache, resources=resources, isolation=isolation, env=env, image=image,
                         priority_class=priority_class, queue=queue)
    return Step(None, opts, file=file, line=line, command=argv)


def placeholders(command: Sequence[str]) -> set[str]:
    """Names of the ``{name}`` placeholders in a command line."""
    names: set[str] = set()
    for part in command:
        for _text, field_name, _spec, _conv in string.Formatter().parse(part):
            if field_name:
                names.add(field_name.split(".")[0].split("[")[0])
    return names


_MISSING: Any = inspect.Parameter.empty


@dataclass(frozen=True, slots=True)
class Param:
    """A pipeline parameter: its name, annotation (``str`` when absent) and default (``Param.REQUIRED`` if none)."""

    name: str
    annotation: Any
    default: Any

    REQUIRED: typing.ClassVar[Any] = _MISSING

    @property
    def required(self) -> bool:
        """True when the parameter has no default."""
        return self.default is _MISSING


class Pipeline:
    """A pipeline: a function whose calls to steps define a DAG. Create with `pipeline`."""

    def __init__(self, fn: Callable[..., Any], name: str) -> None:
        self.fn = fn
        self.name = name
        code = getattr(fn, "__code__", None)
        self.file = code.co_filename if code else "<unknown>"
        self.line = code.co_firstlineno if code else 0
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn
        self._params: tuple[Param, ...] | None = None

    @property
    def location(self) -> str:
        """``file:line`` where the pipeline is defined."""
        return where(self.file, self.line)

    @property
    def params(self) -> tuple[Param, ...]:
        """The pipeline's parameters with their annotations and defaults."""
        if self._params is None:
            sig = inspect.signature(self.fn)
            try:
                hints = typing.get_type_hints(self.fn)
            except Exception:  # noqa: BLE001  # unresolvable annotations fall back to the raw ones
                hints = {}
            out = []
            for p in sig.parameters.values():
                if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                    raise PipelineDefinitionError(f"{self.location}: pipeline {self.name!r}: *args/**kwargs "
                                                  "are not supported; declare each parameter")
                ann = hints.get(p.name, p.annotation)
                out.append(Param(p.name, str if ann is inspect.Parameter.empty else ann, p.default))
            self._params = tuple(out)
        return self._params

    def build(self, params: Mapping[str, Any] | None = None) -> Any:
        """The DAG (a `capstan.pipelines.graph.Graph`) for ``params`` (defaults filled in, values checked)."""
        from capstan.pipelines.graph import build_graph

        return build_graph(self, dict(params or {}))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from capstan.pipelines.graph import current_builder

        if current_builder() is not None:
            return self.fn(*args, **kwargs)
        # Calling a pipeline outside a pipeline is an SDK entry point, like `capstan.start_run`: it runs here with the
        # adapters of the composition root (the one import of `capstan.services` from this package).
        from capstan.services import run_here

        bound = inspect.signature(self.fn).bind(*args, **kwargs)
        return run_here(self, dict(bound.arguments))

    def __repr__(self) -> str:
        return f"<pipeline {self.name} at {self.location}>"


@overload
def pipeline(fn: Callable[..., Any], /) -> Pipeline: ...


@overload
def pipeline(*, name: str | None = None) -> Callable[[Callable[..., Any]], Pipeline]: ...


def pipeline(fn: Callable[..., Any] | None = None, /, *,
             name: str | None = None) -> Pipeline | Callable[[Callable[..., Any]], Pipeline]:
    """Make a function a pipeline. Its parameters (with typed defaults) are the pipeline's parameters; calling
    steps inside it builds the DAG. Calling the pipeline outside another pipeline runs it locally and returns a
    `capstan.pipelines.runner.RunResult`."""

    def wrap(func: Callable[..., Any]) -> Pipeline:
        return Pipeline(func, name or str(getattr(func, "__name__", "pipeline")))

    if fn is not None:
        return wrap(fn)
    return wrap
