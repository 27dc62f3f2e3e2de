"""Reading a training job's worker logs, as the launcher keeps them (``capstan logs JOB --worker N [--follow]``).

Each rank has two files per attempt, ``rank-<r>.out`` and ``rank-<r>.err``, under
``$CAPSTAN_HOME/jobs/<job id>/attempt-<n>/worker-<g>/`` (see `capstan.training.launcher`). A worker is a pod: with
``nproc_per_worker > 1`` its logs are those of all its processes. `read_logs` returns what is there now (by
default of the latest attempt); `follow_logs` yields new lines as they are written, moves on to the next attempt
when the gang restarts, and ends once the caller says the job is done and everything has been read.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from capstan.errors import InvalidParameterValue, ResourceDoesNotExist
from capstan.training.launcher import JOBS_DIR

__all__ = ["LogLine", "attempts_on_disk", "follow_logs", "format_line", "job_log_dir", "read_logs"]

STREAMS = ("out", "err")
_ATTEMPT = re.compile(r"^attempt-(\d+)$")
_RANK = re.compile(r"^rank-(\d+)\.(out|err)$")
_WORKER = re.compile(r"^worker-(\d+)$")


@dataclass(frozen=True, slots=True)
class LogLine:
    """One line a worker process wrote: its attempt, worker (pod), global rank, stream (``out``/``err``) and text
    (without the line break)."""

    attempt: int
    worker: int
    rank: int
    stream: str
    text: str


def job_log_dir(home: Path, job_id: str) -> Path:
    """Where the job's attempts keep their logs."""
    return home / JOBS_DIR / job_id


def attempts_on_disk(home: Path, job_id: str) -> list[int]:
    """The attempts (numbers, ascending) that have a log folder."""
    root = job_log_dir(home, job_id)
    if not root.is_dir():
        return []
    found = (_ATTEMPT.match(p.name) for p in root.iterdir() if p.is_dir())
    return sorted(int(m.group(1)) for m in found if m)


def _files(home: Path, job_id: str, attempt: int, worker: int | None) -> list[tuple[int, int, str, Path]]:
    """``(worker, rank, stream, path)`` of an attempt's log files, by worker, rank, then stdout before stderr."""
    folder = job_log_dir(home, job_id) / f"attempt-{attempt}"
    out: list[tuple[int, int, str, Path]] = []
    if not folder.is_dir():
        return out
    for pod in folder.iterdir():
        match = _WORKER.match(pod.name)
        if not match or not pod.is_dir() or (worker is not None and int(match.group(1)) != worker):
            continue
        for file in pod.iterdir():
            rank = _RANK.match(file.name)
            if rank:
                out.append((int(match.group(1)), int(rank.group(1)), rank.group(2), file))
    return sorted(out, key=lambda item: (item[0], item[1], STREAMS.index(item[2])))


def _pick_attempt(home: Path, job_id: str, attempt: int | None) -> int:
    found = attempts_on_disk(home, job_id)
    if not found:
        raise ResourceDoesNotExist(f"job {job_id!r} has no worker logs yet (it has not started)")
    if attempt is None:
        return found[-1]
    if attempt not in found:
        raise InvalidParameterValue(f"attempt: job {job_id!r} has no attempt {attempt} "
                                    f"(attempts: {', '.join(map(str, found))})")
    return attempt


def _check_worker(home: Path, job_id: str, attempt: int, worker: int | None) -> None:
    if worker is None or _files(home, job_id, attempt, worker):
        return
    workers = sorted({w for w, _r, _s, _p in _files(home, job_id, attempt, None)})
    raise InvalidParameterValue(f"worker: job {job_id!r} has no worker {worker} in attempt {attempt} "
                                f"(workers: {', '.join(map(str, workers)) or 'none'})")


def read_logs(home: Path, job_id: str, *, worker: int | None = None, attempt: int | None = None,
              streams: tuple[str, ...] = STREAMS) -> list[LogLine]:
    """Every line of the logs of ``worker`` (all workers when None) in ``attempt`` (the latest when None), rank by
    rank, each rank's stdout before its stderr. `ResourceDoesNotExist` before the first attempt;
    `InvalidParameterValue` naming ``worker``/``attempt`` for one the job does not have."""
    number = _pick_attempt(home, job_id, attempt)
    _check_worker(home, job_id, number, worker)
    lines: list[LogLine] = []
    for pod, rank, stream, path in _files(home, job_id, number, worker):
        if stream not in streams:
            continue
        with open(path, "rb") as fh:
            for raw in fh:
                lines.append(LogLine(number, pod, rank, stream, raw.decode(errors="replace").rstrip("\r\n")))
    return lines


def format_line(line: LogLine, *, prefix: bool) -> str:
    """The line as printed: with ``prefix`` led by ``[rank R]`` (``[rank R err]`` for stderr), else as written."""
    if not prefix:
        return line.text
    tag = f"rank {line.rank}" + (" err" if line.stream == "err" else "")
    return f"[{tag}] {line.text}"


class _Tail:
    """New complete lines of one file since the last read (a partial last line waits for its line break)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.partial = b""

    def read(self, *, final: bool) -> list[str]:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self.offset)
                data = fh.read()
        except OSError:
            return []
        self.offset += len(data)
        data = self.partial + data
        parts = data.split(b"\n")
        self.partial = parts.pop()
        if final and self.partial:
            parts.append(self.partial)
            self.partial = b""
        return [p.decode(errors="replace").rstrip("\r") for p in parts]


def follow_logs(home: Path, job_id: str, *, worker: int | None = None, done: Callable[[], bool],
                poll_s: float = 0.5, sleep: Callable[[float], None] = time.sleep) -> Iterator[LogLine]:
    """Lines of ``worker``'s logs as they are written, starting with the latest attempt's lines so far; when the
    gang restarts, the next attempt's. Ends once ``done()`` (the job has ended) and every file is read to its end.
    Waits for the first attempt to start."""
    current: int | None = None
    tails: dict[Path, tuple[int, int, str, _Tail]] = {}
    while True:
        finished = done()
        found = attempts_on_disk(home, job_id)
        if found and (current is None or found[-1] > current):
            if current is not None:
                yield from _drain(tails, current, final=True)
            current, tails = found[-1], {}
        if current is not None:
            for pod, rank, stream, path in _files(home, job_id, current, worker):
                if path not in tails:
                    tails[path] = (pod, rank, stream, _Tail(path))
            yield from _drain(tails, current, final=finished)
        if finished:
            return
        sleep(poll_s)


def _drain(tails: dict[Path, tuple[int, int, str, _Tail]], attempt: int, *, final: bool) -> Iterator[LogLine]:
    for pod, rank, stream, tail in tails.values():
        for text in tail.read(final=final):
            yield LogLine(attempt, pod, rank, stream, text)
