"""Reading job traces for the simulator (CSV; the ITP 2021 trace's columns).

Required columns: ``job_id``, ``submit_time_s``, ``duration_s``, ``num_gpus`` and ``cluster`` (the LocalQueue the
job goes to). ``num_cpus`` and ``final_status`` may be present and empty.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from capstan.errors import InvalidParameterValue

REQUIRED_COLUMNS = ("job_id", "submit_time_s", "duration_s", "num_gpus", "cluster")


@dataclass(frozen=True, slots=True)
class TraceJob:
    """One job of a trace. ``duration`` is the true run time, which only oracle policies may read."""

    id: str
    submit: float
    duration: float
    gpus: int
    queue: str


def read_trace(path: Path | str, *, limit: int | None = None) -> list[TraceJob]:
    """Read a trace CSV sorted by submission time; ``limit`` keeps the first N rows (for quick runs)."""
    p = Path(path)
    try:
        handle = p.open(newline="", encoding="utf-8")
    except OSError as exc:
        raise InvalidParameterValue(f"{p}: cannot read trace: {exc.strerror}") from None
    jobs: list[TraceJob] = []
    with handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None:
            raise InvalidParameterValue(
                f"{p}: the trace is empty (expected a header with {', '.join(REQUIRED_COLUMNS)})")
        names = [h.strip() for h in header]
        missing = [c for c in REQUIRED_COLUMNS if c not in names]
        if missing:
            raise InvalidParameterValue(f"{p}: missing column {missing[0]!r} (header has: {', '.join(names)})")
        idx = {c: names.index(c) for c in REQUIRED_COLUMNS}
        i_id, i_sub, i_dur, i_gpu, i_q = (idx[c] for c in REQUIRED_COLUMNS)
        width = max(idx.values()) + 1
        for line, row in enumerate(reader, start=2):
            if not row:
                continue
            if limit is not None and len(jobs) >= limit:
                break
            if len(row) < width:
                raise InvalidParameterValue(f"{p}:{line}: expected {len(names)} columns, got {len(row)}")
            try:
                submit = float(row[i_sub])
                duration = float(row[i_dur])
                gpus = int(float(row[i_gpu]))
            except ValueError:
                raise InvalidParameterValue(
                    f"{p}:{line}: submit_time_s, duration_s and num_gpus must be numbers") from None
            if duration < 0 or gpus < 0 or submit < 0:
                raise InvalidParameterValue(f"{p}:{line}: negative submit_time_s, duration_s or num_gpus")
            if not row[i_q]:
                raise InvalidParameterValue(f"{p}:{line}: column 'cluster' is empty")
            jobs.append(TraceJob(row[i_id], submit, duration, gpus, row[i_q]))
    jobs.sort(key=lambda j: j.submit)
    return jobs
