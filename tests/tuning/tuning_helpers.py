"""Objectives the study tests run (module-level, so the worker processes import them) and small helpers.

Trials that must leave a trace append a line to the file named by ``TUNING_TRACE`` (inherited by the workers from
the test's environment): ``<event> <number-free tag> <time>``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import capstan
from capstan.settings import Settings
from capstan.tuning.ports import StudyResult
from capstan.tuning.sdk import run_study
from capstan.tuning.spec import StudySpec, parse_study_spec

TRACE = "TUNING_TRACE"


def _trace(line: str) -> None:
    path = os.environ.get(TRACE)
    if path:
        with open(path, "a") as out:
            out.write(line + "\n")


def quadratic(params: Mapping[str, Any]) -> float:
    """A smooth objective with its maximum at x=2 (for determinism tests)."""
    bonus = 0.5 if params.get("kind") == "b" else 0.0
    return -(float(params["x"]) - 2.0) ** 2 + bonus


def curve(params: Mapping[str, Any]) -> float | None:
    """Reports ``x * (step + 1)`` for 6 steps and stops when told: a low ``x`` is a bad trial from its first step."""
    x = float(params["x"])
    for step in range(6):
        capstan.report(x * (step + 1), step)
        if capstan.should_prune():
            _trace(f"pruned {x!r} {step}")
            return None
    return x * 6


def always_fails(params: Mapping[str, Any]) -> float:
    """A trial that raises."""
    raise RuntimeError(f"broken trial with x={params['x']}")


def timed(params: Mapping[str, Any]) -> float:
    """Sleeps a little and records when it ran (for the overlap count)."""
    start = time.time()
    time.sleep(0.4)
    _trace(f"ran {start!r} {time.time()!r}")
    return float(params["x"])


def slow(params: Mapping[str, Any]) -> float:
    """Records its start, then runs long enough to be killed in the middle (the resume test)."""
    _trace(f"start {params['x']!r}")
    time.sleep(0.8)
    _trace(f"end {params['x']!r}")
    return float(params["x"])


def spec(name: str, function: str, **fields: Any) -> StudySpec:
    """A study of ``tuning_helpers:<function>`` over ``x`` in 0..1 (and whatever ``fields`` change)."""
    data: dict[str, Any] = {"name": name, "objective": {"metric": "score", "goal": "maximize"},
                            "parameters": {"x": {"type": "float", "min": 0.0, "max": 1.0}},
                            "trial": {"function": f"tuning_helpers:{function}"}, "algorithm": "random",
                            "max_trials": 4, "seed": 7, "working_dir": str(Path(__file__).parent)}
    data.update(fields)
    return parse_study_spec(data)


def run(settings: Settings, study: StudySpec) -> StudyResult:
    """Run ``study`` on ``settings``' stores (their workload queue), quietly."""
    return run_study(study, settings=settings)


@contextmanager
def traced(path: Path) -> Iterator[Path]:
    """Point the trials' trace at ``path`` for the length of the block (workers inherit the environment)."""
    old = os.environ.get(TRACE)
    os.environ[TRACE] = str(path)
    try:
        yield path
    finally:
        if old is None:
            os.environ.pop(TRACE, None)
        else:
            os.environ[TRACE] = old


def intervals(path: Path) -> list[tuple[float, float]]:
    """The (start, end) times the ``timed`` trials recorded."""
    out = []
    for line in path.read_text().splitlines():
        kind, start, end = line.split()
        if kind == "ran":
            out.append((float(start), float(end)))
    return out


def max_overlap(spans: list[tuple[float, float]]) -> int:
    """The most spans running at one moment."""
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    most = now = 0
    for _, delta in events:
        now += delta
        most = max(most, now)
    return most
