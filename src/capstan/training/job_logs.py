"""Reading a worker's logs in steps with a cursor, so ``--follow`` works the same on the local files and over HTTP.

`capstan.training.logs` reads the files the launcher keeps (one ``.out`` and one ``.err`` per rank); this module
adds what a client polling a server needs: `read_since` returns the complete lines written since a cursor (the byte
offset reached in each file of the attempt, an opaque string) and the cursor to pass next time. A partial last line
waits for its line break, unless the job has ended (``final``). When the job has restarted since the cursor was
made, the rest of the old attempt comes first and the next call continues with the new attempt, so a follower sees
every line of every attempt once.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from capstan.errors import InvalidParameterValue
from capstan.training.logs import STREAMS, LogLine, attempts_on_disk, format_line, job_log_dir
from capstan.training.spec import TrainingJobSpec

__all__ = ["LogRead", "check_worker", "read_since", "render_lines"]

_RANK = re.compile(r"^rank-(\d+)\.(out|err)$")
_CURSOR = re.compile(r"^(\d+);((?:\d+\.(?:out|err):\d+(?:,\d+\.(?:out|err):\d+)*)?)$")


@dataclass(frozen=True, slots=True)
class LogRead:
    """Lines read in one step: their attempt, the cursor to read on from, and how many ranks the selection covers
    (more than one: print each line with its rank)."""

    attempt: int
    lines: tuple[LogLine, ...]
    cursor: str
    ranks: int


def _parse_cursor(cursor: str | None) -> tuple[int | None, dict[str, int]]:
    if not cursor:
        return None, {}
    match = _CURSOR.match(cursor)
    if not match:
        raise InvalidParameterValue(f"cursor: {cursor[:80]!r} is not a log cursor this server made")
    offsets = {}
    for part in filter(None, match.group(2).split(",")):
        key, _, offset = part.partition(":")
        offsets[key] = int(offset)
    return int(match.group(1)), offsets


def _cursor(attempt: int, offsets: dict[str, int]) -> str:
    return f"{attempt};" + ",".join(f"{key}:{offsets[key]}" for key in sorted(offsets))


def _files(home: Path, job_id: str, attempt: int, worker: int, rank: int | None) -> list[tuple[int, str, Path]]:
    """``(rank, stream, path)`` of one worker's files in an attempt: rank by rank, stdout before stderr."""
    folder = job_log_dir(home, job_id) / f"attempt-{attempt}" / f"worker-{worker}"
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), m.group(2), p) for p in folder.iterdir() if (m := _RANK.match(p.name))]
    return sorted((f for f in found if rank is None or f[0] == rank), key=lambda f: (f[0], STREAMS.index(f[1])))


def _read(path: Path, offset: int, *, final: bool) -> tuple[list[str], int]:
    """Complete lines of ``path`` after ``offset`` (and a partial last one when ``final``); the new offset."""
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            data = fh.read()
    except OSError:
        return [], offset
    end = len(data) if final else data.rfind(b"\n") + 1
    if end <= 0:
        return [], offset
    text = data[:end].decode(errors="replace")
    return [line.rstrip("\r") for line in text.split("\n")[: -1 if text.endswith("\n") else None]], offset + end


def _collect(home: Path, job_id: str, attempt: int, worker: int, rank: int | None, offsets: dict[str, int], *,
             final: bool) -> tuple[list[LogLine], int]:
    lines: list[LogLine] = []
    files = _files(home, job_id, attempt, worker, rank)
    for number, stream, path in files:
        key = f"{number}.{stream}"
        new, offsets[key] = _read(path, offsets.get(key, 0), final=final)
        lines.extend(LogLine(attempt, worker, number, stream, text) for text in new)
    return lines, len({number for number, _s, _p in files})


def read_since(home: Path, job_id: str, *, worker: int, attempt: int | None = None, rank: int | None = None,
               cursor: str | None = None, final: bool = False) -> LogRead:
    """The lines of ``worker`` (only ``rank`` when given) in ``attempt`` (the latest when None) written since
    ``cursor`` (from the start when None). ``final``: the job has ended, so a last line without a line break is
    complete. Before the first attempt, or before the worker has written anything, there is nothing to read
    (attempt 0, no lines); the caller checks that the job has that worker. `InvalidParameterValue` names
    ``attempt`` or ``cursor`` for one the job does not have."""
    found = attempts_on_disk(home, job_id)
    if attempt is not None and attempt not in found:
        listed = ", ".join(map(str, found)) or "none yet"
        raise InvalidParameterValue(f"attempt: job {job_id!r} has no attempt {attempt} (attempts: {listed})")
    at, offsets = _parse_cursor(cursor)
    if at is not None and at not in found:
        raise InvalidParameterValue(f"cursor: job {job_id!r} has no attempt {at}")
    if not found:
        return LogRead(0, (), "", 0)
    target = found[-1] if attempt is None else attempt
    if at is not None and attempt is None and at < target:
        # The gang restarted since the cursor was made: finish the old attempt first (its files are complete).
        lines, ranks = _collect(home, job_id, at, worker, rank, offsets, final=True)
        return LogRead(at, tuple(lines), _cursor(target, {}), ranks)
    if at != target:
        offsets = {}
    lines, ranks = _collect(home, job_id, target, worker, rank, offsets, final=final)
    return LogRead(target, tuple(lines), _cursor(target, offsets), ranks)


def render_lines(lines: Sequence[LogLine], *, prefix: bool) -> str:
    """The lines as text, one per line (each led by ``[rank R]``/``[rank R err]`` with ``prefix``)."""
    return "".join(format_line(line, prefix=prefix) + "\n" for line in lines)


def check_worker(job_id: str, spec: TrainingJobSpec, worker: int, rank: int | None = None) -> None:
    """`InvalidParameterValue` naming ``worker``/``rank`` when the job has no such worker, or the rank is not one
    of that worker's processes."""
    if not 0 <= worker < spec.workers:
        raise InvalidParameterValue(f"worker: job {job_id!r} has {spec.workers} worker(s), numbered from 0 to "
                                    f"{spec.workers - 1}; got {worker}")
    first = worker * spec.nproc_per_worker
    if rank is not None and not first <= rank < first + spec.nproc_per_worker:
        raise InvalidParameterValue(f"rank: worker {worker} of job {job_id!r} runs ranks {first} to "
                                    f"{first + spec.nproc_per_worker - 1}; got {rank}")
