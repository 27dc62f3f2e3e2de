"""Reading an attempt's captured output: from the artifact store once the attempt ended, from its live file while
it runs (``capstan logs --follow``)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

from capstan.errors import ResourceDoesNotExist
from capstan.pipelines.runner import PipelineRunner
from capstan.pipelines.storage import AttemptRecord


def pick_attempt(runner: PipelineRunner, run_id: str, step_id: str, attempt: int | None) -> AttemptRecord:
    """The attempt to show: number ``attempt``, or the latest."""
    attempts = runner.store.attempts(run_id, step_id)
    if not attempts:
        known = {s.step_id for s in runner.store.steps(run_id, "")}
        if step_id not in known:
            raise ResourceDoesNotExist(f"run {run_id} has no step {step_id!r} (steps: "
                                       f"{', '.join(sorted(known)[:20])})")
        children = mapped_instances(step_id, known)
        if children:
            raise ResourceDoesNotExist(
                f"step {step_id!r} of run {run_id} is mapped: its output is in its instances {children}; ask for "
                f"one, e.g. `capstan logs {run_id} '{step_id}[0]'`")
        raise ResourceDoesNotExist(f"step {step_id!r} of run {run_id} has not started an attempt")
    if attempt is None:
        return attempts[-1]
    for record in attempts:
        if record.attempt == attempt:
            return record
    raise ResourceDoesNotExist(f"step {step_id!r} of run {run_id} has no attempt {attempt} "
                               f"(attempts: {', '.join(str(a.attempt) for a in attempts)})")


def mapped_instances(step_id: str, steps: set[str]) -> str:
    """``name[0..3]``: the mapped instances of ``step_id`` among ``steps`` (listed one by one when not a range);
    empty when it has none."""
    prefix = f"{step_id}["
    found = [s[len(prefix):-1] for s in steps if s.startswith(prefix) and s.endswith("]")]
    indexes = sorted(int(i) for i in found if i.isdigit())
    if not found:
        return ""
    if len(indexes) == len(found) and indexes == list(range(indexes[0], indexes[0] + len(indexes))):
        return f"{step_id}[{indexes[0]}]" if len(indexes) == 1 else f"{step_id}[{indexes[0]}..{indexes[-1]}]"
    return ", ".join(f"{prefix}{i}]" for i in sorted(found)[:20])


def live_path(runner: PipelineRunner, record: AttemptRecord) -> Path:
    """Where a running attempt writes its output: its worker's log file (process isolation), or a file of its
    own (thread isolation)."""
    if record.isolation == "process" and record.worker_pid:
        from capstan.pipelines.worker import worker_files

        return Path(worker_files(runner.settings.home, record.worker_pid, record.worker_started)[0])
    return (Path(runner.settings.home) / "pipelines" / "runs" / record.run_id
            / f"{quote(record.step_id, safe='')}.{record.attempt}.log")


def read_log(runner: PipelineRunner, record: AttemptRecord) -> bytes:
    """Everything an attempt has written so far."""
    if record.log_path:
        return runner.artifacts.read_bytes(record.log_path)
    if record.finished_at is not None:
        return b""  # finished without output (or its upload failed)
    path = live_path(runner, record)
    try:
        return path.read_bytes()
    except OSError:
        return b""


def follow_log(runner: PipelineRunner, record: AttemptRecord, *, poll_s: float = 0.2) -> Iterator[bytes]:
    """The attempt's output as it is written, until the attempt ends."""
    offset = 0
    path = live_path(runner, record)
    while True:
        current = pick_attempt(runner, record.run_id, record.step_id, record.attempt)
        finished = current.finished_at is not None
        data = b""
        if finished and current.log_path:
            data = runner.artifacts.read_bytes(current.log_path)[offset:]
        elif not finished and os.path.exists(path):
            try:
                with open(path, "rb") as fh:
                    fh.seek(offset)
                    data = fh.read()
            except OSError:
                data = b""
            if os.path.getsize(path) < offset:
                data = b""  # the worker moved on to its next task: wait for the uploaded log
        if data:
            offset += len(data)
            yield data
        if finished:
            return
        time.sleep(poll_s)


def tail(text: bytes, lines: int = 20) -> str:
    """The last ``lines`` lines of a log."""
    return "\n".join(text.decode("utf-8", "replace").rstrip("\n").splitlines()[-lines:])
