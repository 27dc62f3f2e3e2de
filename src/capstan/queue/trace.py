"""Reading job traces for the simulator (CSV; the ITP 2021 trace's columns).

Required columns: ``job_id``, ``submit_time_s``, ``duration_s``, ``num_gpus`` and ``cluster`` (the LocalQueue the
job goes to). ``num_cpus`` and ``final_status`` may be present and empty.

Every numeric column goes through one check (`numeric_cell`): a finite number (``nan`` and ``inf`` are refused:
the simulator would never finish such a job) inside the column's range, an integer where the column counts
things. Errors name the file, line and column. The file must be UTF-8 text (a UTF-8 byte-order mark is accepted);
a binary or UTF-16 file is one error, not a traceback.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from capstan.errors import InvalidParameterValue

REQUIRED_COLUMNS = ("job_id", "submit_time_s", "duration_s", "num_gpus", "cluster")


@dataclass(frozen=True, slots=True)
class NumericColumn:
    """How one numeric trace column is checked: inclusive range and whether it must be a whole number."""

    name: str
    maximum: float
    integer: bool = False
    optional: bool = False


NUMERIC_COLUMNS = {
    "submit_time_s": NumericColumn("submit_time_s", 1e10),   # seconds; epoch times up to the year 2286 fit
    "duration_s": NumericColumn("duration_s", 1e9),          # about 31 years
    "num_gpus": NumericColumn("num_gpus", 1e6, integer=True),
    "num_cpus": NumericColumn("num_cpus", 1e6, optional=True),
}
"""The numeric columns and their ranges (all start at 0)."""


@dataclass(frozen=True, slots=True)
class TraceJob:
    """One job of a trace. ``duration`` is the true run time, which only oracle policies may read."""

    id: str
    submit: float
    duration: float
    gpus: int
    queue: str


def numeric_cell(text: str, column: NumericColumn, *, where: str) -> float | None:
    """The value of one numeric cell, checked: finite, within ``0..column.maximum``, whole when it must be.

    ``where`` is ``file:line`` for the message. An empty optional cell is ``None``.
    """
    raw = text.strip()
    if not raw and column.optional:
        return None
    shown = raw if len(raw) <= 20 else raw[:17] + "..."
    try:
        value = float(raw)
    except ValueError:
        raise InvalidParameterValue(f"{where}: column {column.name!r}: {shown!r} is not a number") from None
    if not math.isfinite(value):
        raise InvalidParameterValue(f"{where}: column {column.name!r}: {shown!r} is not a finite number")
    if value < 0 or value > column.maximum:
        raise InvalidParameterValue(f"{where}: column {column.name!r}: {shown!r} is out of range "
                                    f"(0 to {column.maximum:g})")
    if column.integer and value != int(value):
        raise InvalidParameterValue(f"{where}: column {column.name!r}: {shown!r} is not a whole number")
    return value


def _rows(handle: Iterator[str], p: Path) -> Iterator[tuple[int, list[str]]]:
    """(line number, row) of the CSV, turning decoding and format problems into one-line errors."""
    reader = csv.reader(handle)
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except UnicodeDecodeError:
            raise InvalidParameterValue(f"{p}:{reader.line_num + 1}: the trace is not UTF-8 text (a binary or "
                                        "UTF-16 file?); save it as UTF-8 CSV") from None
        except csv.Error as exc:
            raise InvalidParameterValue(f"{p}:{reader.line_num}: not a valid CSV line: {exc}") from None
        if any("\x00" in cell for cell in row):
            raise InvalidParameterValue(f"{p}:{reader.line_num}: the trace contains NUL bytes (a binary or "
                                        "UTF-16 file?); save it as UTF-8 CSV")
        yield reader.line_num, row


def read_trace(path: Path | str, *, limit: int | None = None) -> list[TraceJob]:
    """Read a trace CSV sorted by submission time; ``limit`` keeps the first N rows (for quick runs)."""
    p = Path(path)
    if p.is_dir():
        raise InvalidParameterValue(f"{p}: is a directory, not a trace CSV file")
    try:
        handle = p.open(newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise InvalidParameterValue(f"{p}: cannot read trace: {exc.strerror}") from None
    jobs: list[TraceJob] = []
    with handle:
        rows = _rows(handle, p)
        first = next(rows, None)
        if first is None:
            raise InvalidParameterValue(
                f"{p}: the trace is empty (expected a header with {', '.join(REQUIRED_COLUMNS)})")
        names = [h.strip() for h in first[1]]
        missing = [c for c in REQUIRED_COLUMNS if c not in names]
        if missing:
            raise InvalidParameterValue(f"{p}: missing column {missing[0]!r} (header has: {', '.join(names)})")
        idx = {c: names.index(c) for c in REQUIRED_COLUMNS}
        checked = [(names.index(c), col) for c, col in NUMERIC_COLUMNS.items() if c in names]
        width = max(idx.values()) + 1
        for line, row in rows:
            if not row:
                continue
            if limit is not None and len(jobs) >= limit:
                break
            if len(row) < width:
                raise InvalidParameterValue(f"{p}:{line}: expected {len(names)} columns, got {len(row)}")
            where = f"{p}:{line}"
            values = {col.name: numeric_cell(row[i] if i < len(row) else "", col, where=where) for i, col in checked}
            queue = row[idx["cluster"]].strip()
            if not queue:
                raise InvalidParameterValue(f"{where}: column 'cluster' is empty")
            jobs.append(TraceJob(row[idx["job_id"]], float(values["submit_time_s"] or 0.0),
                                 float(values["duration_s"] or 0.0), int(values["num_gpus"] or 0), queue))
    jobs.sort(key=lambda j: j.submit)
    return jobs
