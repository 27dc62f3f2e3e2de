"""The training job spec: one immutable, typed record that the local runner and a Kubernetes renderer both read.

Pure: no I/O, no clock. `parse_job_spec` checks a mapping (a YAML document, the ``/api/v1/jobs`` body, the fields
of ``capstan train``) and raises `InvalidParameterValue` naming the field (``job.workers``...). Whether the entry
point exists on disk is checked by the caller (`capstan.training.runner`), not here.

A job has ``workers`` pods (the gang the queue admits all together), each running ``nproc_per_worker`` processes;
``cpu``, ``memory`` and ``gpus`` are per worker (per pod), as in a Kubernetes pod template.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from capstan.errors import InvalidParameterValue
from capstan.resources.quantity import parse_quantity

__all__ = ["EntryKind", "TrainingJobSpec", "entry_kind_of", "parse_job_spec"]

ROOT = "job"
EntryKind = Literal["script", "module"]

_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_MODULE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_FIELDS = frozenset({"name", "entry", "entry_kind", "args", "workers", "min_workers", "nproc_per_worker", "cpu",
                     "memory", "gpus",
                     "gpu_flavor", "max_restarts", "restart_backoff_s", "experiment", "queue", "priority", "env",
                     "working_dir", "image", "log_all_ranks", "checkpoint_keep", "grace_s"})
# Variables the runner sets for every worker; a spec may not override them.
RESERVED_ENV = frozenset({"RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK",
                          "ROLE_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "CUDA_VISIBLE_DEVICES",
                          "TORCHELASTIC_RESTART_COUNT"})


@dataclass(frozen=True, slots=True)
class TrainingJobSpec:
    """What to run and with what resources.

    - ``entry``: a script path (``train.py``) or a module (``pkg.train``), as ``torchrun`` takes it; ``entry_kind``
      says which (`entry_kind_of` guesses it: a path ending in ``.py`` or containing ``/`` is a script).
    - ``workers``: pods in the gang; ``nproc_per_worker``: processes per pod (``LOCAL_WORLD_SIZE``).
    - ``min_workers``: partial admission (the queue's ``min_count``): when all ``workers`` do not fit, the gang may
      start with fewer, down to this many (None: all or nothing); the attempt's ``WORLD_SIZE`` follows.
    - ``cpu`` (cores), ``memory`` (bytes, 0 = unspecified), ``gpus`` (per worker, fractional below 1),
      ``gpu_flavor`` (a GPU model such as ``a100``).
    - ``max_restarts``: how often the whole gang is restarted after a failure (preemption does not count);
      ``restart_backoff_s``: the first back-off, doubled per restart up to five minutes.
    - ``experiment``: the tracking experiment of the job's run; ``queue`` (a LocalQueue) and ``priority`` (a
      WorkloadPriorityClass name) go to the workload queue.
    - ``env``: extra environment for every worker (reserved rank variables are refused); ``working_dir``: where
      workers start (the caller's directory when empty); ``image``: the container image a cluster renderer uses.
    - ``log_all_ranks``: let every rank's ``capstan.log_metric`` calls through (by default only rank 0 logs).
    - ``checkpoint_keep``: how many checkpoints `capstan.checkpoint.save` retains; ``grace_s``: SIGTERM to SIGKILL.
    """

    name: str
    entry: str
    entry_kind: EntryKind = "script"
    args: tuple[str, ...] = ()
    workers: int = 1
    nproc_per_worker: int = 1
    cpu: float = 1.0
    memory: int = 0
    gpus: float = 0.0
    gpu_flavor: str | None = None
    max_restarts: int = 0
    restart_backoff_s: float = 1.0
    experiment: str | None = None
    queue: str | None = None
    priority: str | None = None
    env: tuple[tuple[str, str], ...] = ()
    working_dir: str | None = None
    image: str | None = None
    log_all_ranks: bool = False
    checkpoint_keep: int = 3
    grace_s: float = 10.0
    min_workers: int | None = None

    @property
    def world_size(self) -> int:
        """Processes in the job: ``workers * nproc_per_worker``."""
        return self.workers * self.nproc_per_worker

    def to_dict(self) -> dict[str, Any]:
        """The spec as plain JSON-able data (what `parse_job_spec` reads back)."""
        return {"name": self.name, "entry": self.entry, "entry_kind": self.entry_kind, "args": list(self.args),
                "workers": self.workers, "min_workers": self.min_workers,
                "nproc_per_worker": self.nproc_per_worker, "cpu": self.cpu,
                "memory": self.memory, "gpus": self.gpus, "gpu_flavor": self.gpu_flavor,
                "max_restarts": self.max_restarts, "restart_backoff_s": self.restart_backoff_s,
                "experiment": self.experiment, "queue": self.queue, "priority": self.priority,
                "env": dict(self.env), "working_dir": self.working_dir, "image": self.image,
                "log_all_ranks": self.log_all_ranks, "checkpoint_keep": self.checkpoint_keep, "grace_s": self.grace_s}


def entry_kind_of(entry: str) -> EntryKind:
    """``script`` for a path (ends in ``.py`` or contains a slash), ``module`` for a dotted module name."""
    return "script" if entry.endswith(".py") or "/" in entry or "\\" in entry else "module"


def _fail(path: str, message: str) -> InvalidParameterValue:
    return InvalidParameterValue(f"{path}: {message}")


def _int(value: object, path: str, *, minimum: int, maximum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(path, f"expected a whole number, got {value!r}")
    if not minimum <= value <= maximum:
        raise _fail(path, f"must be between {minimum} and {maximum}, got {value}")
    return value


def _number(value: object, path: str, *, minimum: float, maximum: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _fail(path, f"expected a number, got {value!r}")
    number = float(value)
    if not minimum <= number <= maximum:
        raise _fail(path, f"must be between {minimum:g} and {maximum:g}, got {number:g}")
    return number


def _text(value: object, path: str) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise _fail(path, f"expected a string, got {value!r}")
    return value


def _gpus(value: object, path: str) -> float:
    gpus = _number(value, path, minimum=0, maximum=1024)
    if gpus > 1 and gpus != int(gpus):
        raise _fail(path, f"a fraction of a GPU is possible only below 1; got {gpus:g}")
    return gpus


def _env(value: object, path: str) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if not isinstance(value, Mapping):
        raise _fail(path, "expected a mapping of variable names to values")
    out: list[tuple[str, str]] = []
    for key, item in value.items():
        if not isinstance(key, str) or not _ENV_NAME.match(key):
            raise _fail(path, f"{key!r} is not an environment variable name")
        if key in RESERVED_ENV:
            raise _fail(f"{path}.{key}", "is set by Capstan for every worker and cannot be overridden")
        if isinstance(item, bool) or not isinstance(item, (str, int, float)):
            raise _fail(f"{path}.{key}", f"expected a string, got {item!r}")
        out.append((key, str(item)))
    return tuple(sorted(out))


def _args(value: object, path: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise _fail(path, "expected a list of strings")
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise _fail(f"{path}[{i}]", f"expected a string, got {item!r}")
    return tuple(value)


def _entry(data: Mapping[str, Any]) -> tuple[str, EntryKind]:
    entry = _text(data.get("entry"), f"{ROOT}.entry")
    if entry is None:
        raise _fail(f"{ROOT}.entry", "is required: a script path (train.py) or a module (pkg.train)")
    kind_raw = data.get("entry_kind") or entry_kind_of(entry)
    if kind_raw not in ("script", "module"):
        raise _fail(f"{ROOT}.entry_kind", f"must be 'script' or 'module', got {kind_raw!r}")
    kind: EntryKind = "script" if kind_raw == "script" else "module"
    if kind == "module" and not _MODULE.match(entry):
        raise _fail(f"{ROOT}.entry", f"{entry!r} is neither a script path ending in .py nor a module name")
    return entry, kind


def parse_job_spec(data: Mapping[str, Any]) -> TrainingJobSpec:
    """A checked `TrainingJobSpec` from plain data; `InvalidParameterValue` names the first bad field."""
    if not isinstance(data, Mapping):
        raise _fail(ROOT, "expected a mapping of job fields")
    unknown = sorted(str(k) for k in data if k not in _FIELDS)
    if unknown:
        raise _fail(f"{ROOT}.{unknown[0]}", f"unknown field (fields: {', '.join(sorted(_FIELDS))})")
    name = _text(data.get("name"), f"{ROOT}.name")
    if name is None or not _NAME.match(name):
        raise _fail(f"{ROOT}.name", f"{name!r} must be 1-63 lowercase letters, digits or '-', starting and ending "
                                    "with a letter or digit")
    entry, kind = _entry(data)
    memory_raw = data.get("memory")
    memory = 0 if memory_raw in (None, "", 0) else parse_quantity(memory_raw, path=f"{ROOT}.memory") // 1000
    keep = _int(data.get("checkpoint_keep", 3), f"{ROOT}.checkpoint_keep", minimum=1, maximum=1000)
    workers = _int(data.get("workers", 1), f"{ROOT}.workers", minimum=1, maximum=1024)
    least = data.get("min_workers")
    min_workers = None if least is None else _int(least, f"{ROOT}.min_workers", minimum=1, maximum=workers)
    return TrainingJobSpec(
        name=name, entry=entry, entry_kind=kind, args=_args(data.get("args"), f"{ROOT}.args"),
        workers=workers, min_workers=min_workers,
        nproc_per_worker=_int(data.get("nproc_per_worker", 1), f"{ROOT}.nproc_per_worker", minimum=1, maximum=256),
        cpu=_number(data.get("cpu", 1.0), f"{ROOT}.cpu", minimum=0.001, maximum=4096),
        memory=memory,
        gpus=_gpus(data.get("gpus", 0), f"{ROOT}.gpus"),
        gpu_flavor=_text(data.get("gpu_flavor"), f"{ROOT}.gpu_flavor"),
        max_restarts=_int(data.get("max_restarts", 0), f"{ROOT}.max_restarts", minimum=0, maximum=1000),
        restart_backoff_s=_number(data.get("restart_backoff_s", 1.0), f"{ROOT}.restart_backoff_s", minimum=0,
                                  maximum=3600),
        experiment=_text(data.get("experiment"), f"{ROOT}.experiment"),
        queue=_text(data.get("queue"), f"{ROOT}.queue"),
        priority=_text(data.get("priority"), f"{ROOT}.priority"),
        env=_env(data.get("env"), f"{ROOT}.env"),
        working_dir=_text(data.get("working_dir"), f"{ROOT}.working_dir"),
        image=_text(data.get("image"), f"{ROOT}.image"),
        log_all_ranks=bool(data.get("log_all_ranks", False)),
        checkpoint_keep=keep,
        grace_s=_number(data.get("grace_s", 10.0), f"{ROOT}.grace_s", minimum=0, maximum=3600),
    )
