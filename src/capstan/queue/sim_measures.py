"""Measures of a replayed schedule and of a trace's offered load (pure functions, no I/O).

`measures` turns per-job outcomes (submission, true duration, finish, GPUs, GPU-seconds lost to preemption) into
the figures `capstan simulate` reports per policy and per queue. `offered_load`, `pool_for_load` and
`proportional_quotas` size a benchmark pool from a trace (how ``examples/queues/itp-cluster*.yaml`` were made).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass

from capstan.errors import InvalidParameterValue

SLOWDOWN_FLOOR_S = 600.0
"""Bounded slowdown divides by at least this many seconds (10 minutes), so short jobs do not dominate it."""


@dataclass(frozen=True, slots=True)
class JobOutcome:
    """How one job fared: ``finish`` is when it completed, ``wasted_gpu_s`` the GPU-seconds of work it lost."""

    submit: float
    duration: float
    finish: float
    gpus: int
    wasted_gpu_s: float = 0.0

    @property
    def jct(self) -> float:
        """Job completion time: finish minus submission."""
        return self.finish - self.submit

    @property
    def wait(self) -> float:
        """Queueing delay: JCT minus the job's own duration (so it includes time lost to preemption)."""
        return max(0.0, self.jct - self.duration)


@dataclass(frozen=True, slots=True)
class Measures:
    """The figures of a set of job outcomes (a whole replay or one queue of it)."""

    jobs: int
    avg_jct_s: float
    p50_jct_s: float
    p99_jct_s: float
    avg_wait_s: float
    p50_wait_s: float
    p99_wait_s: float
    max_wait_s: float
    avg_slowdown: float
    gpu_hours: float
    wasted_gpu_hours: float
    wasted_fraction: float

    def as_dict(self) -> dict[str, float]:
        """The measures as a flat mapping (``jobs`` as a float, for JSON rows of numbers)."""
        return {k: float(v) for k, v in asdict(self).items()}


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an ascending sequence (0 for an empty one)."""
    if not sorted_values:
        return 0.0
    rank = max(0, min(len(sorted_values) - 1, math.ceil(q / 100 * len(sorted_values)) - 1))
    return float(sorted_values[rank])


def jain(values: Sequence[float]) -> float:
    """Jain's fairness index of non-negative values (1 = perfectly even)."""
    if not values:
        return 1.0
    total = sum(values)
    squares = sum(v * v for v in values)
    return 1.0 if squares == 0 else total * total / (len(values) * squares)


def bounded_slowdown(jct: float, duration: float, floor_s: float = SLOWDOWN_FLOOR_S) -> float:
    """``max(1, jct / max(duration, floor_s))``: how many times longer than needed a job took, short jobs bounded."""
    denominator = max(duration, floor_s)
    if denominator <= 0:
        return 1.0
    return max(1.0, jct / denominator)


def wasted_fraction(wasted_gpu_s: float, total_gpu_s: float) -> float:
    """Share of the work that was lost to preemption (0 when there was no work)."""
    return wasted_gpu_s / total_gpu_s if total_gpu_s > 0 else 0.0


def measures(outcomes: Iterable[JobOutcome], *, slowdown_floor_s: float = SLOWDOWN_FLOOR_S) -> Measures:
    """Averages, nearest-rank percentiles and totals of ``outcomes``.

    ``gpu_hours`` is the work the jobs asked for (duration x GPUs), the denominator of ``wasted_fraction``.
    """
    items = list(outcomes)
    n = len(items)
    jcts = sorted(o.jct for o in items)
    waits = sorted(o.wait for o in items)
    total_gpu_s = sum(o.duration * o.gpus for o in items)
    wasted = sum(o.wasted_gpu_s for o in items)
    return Measures(
        jobs=n,
        avg_jct_s=sum(jcts) / n if n else 0.0,
        p50_jct_s=percentile(jcts, 50),
        p99_jct_s=percentile(jcts, 99),
        avg_wait_s=sum(waits) / n if n else 0.0,
        p50_wait_s=percentile(waits, 50),
        p99_wait_s=percentile(waits, 99),
        max_wait_s=waits[-1] if waits else 0.0,
        avg_slowdown=sum(bounded_slowdown(o.jct, o.duration, slowdown_floor_s) for o in items) / n if n else 0.0,
        gpu_hours=total_gpu_s / 3600,
        wasted_gpu_hours=wasted / 3600,
        wasted_fraction=wasted_fraction(wasted, total_gpu_s),
    )


# --------------------------------------------------------------------------------------------- scenarios
@dataclass(frozen=True, slots=True)
class OfferedLoad:
    """A trace's demand: total GPU-hours asked for over the submission span, and the mean GPUs that makes."""

    gpu_hours: float
    span_hours: float

    @property
    def mean_gpus(self) -> float:
        """GPUs busy on average if every job ran as submitted: GPU-hours over the span."""
        return self.gpu_hours / self.span_hours if self.span_hours > 0 else 0.0


def offered_load(jobs: Iterable[tuple[float, float, int]]) -> OfferedLoad:
    """The offered load of ``(submit_s, duration_s, gpus)`` jobs; the span runs from first to last submission."""
    first = math.inf
    last = -math.inf
    gpu_s = 0.0
    for submit, duration, gpus in jobs:
        first = min(first, submit)
        last = max(last, submit)
        gpu_s += duration * gpus
    span = last - first if last > first else 0.0
    return OfferedLoad(gpu_s / 3600, span / 3600)


def pool_for_load(load: OfferedLoad, fraction: float) -> int:
    """GPUs that make ``load`` the given ``fraction`` of capacity (0.85 for 85%), rounded to the nearest GPU."""
    if not 0 < fraction <= 10:
        raise InvalidParameterValue(f"load fraction must be in (0, 10], got {fraction!r}")
    return max(1, round(load.mean_gpus / fraction))


def proportional_quotas(gpu_hours: Mapping[str, float], floors: Mapping[str, int], pool: int) -> dict[str, int]:
    """Split ``pool`` GPUs in proportion to each team's GPU-hours, none below its floor (its largest job).

    Teams whose share falls below their floor get the floor; the rest of the pool is shared among the others in
    proportion, repeated until no share falls below its floor; whole GPUs by largest remainder (ties by name).
    """
    teams = sorted(gpu_hours)
    if sum(floors.get(t, 0) for t in teams) > pool:
        raise InvalidParameterValue(f"a pool of {pool} GPUs cannot hold every team's floor "
                                    f"({sum(floors.get(t, 0) for t in teams)} GPUs)")
    fixed: dict[str, int] = {}
    while True:
        free = [t for t in teams if t not in fixed]
        left = pool - sum(fixed.values())
        weight = sum(gpu_hours[t] for t in free)
        exact = {t: (gpu_hours[t] / weight * left if weight else left / len(free)) for t in free} if free else {}
        below = [t for t in free if exact[t] < floors.get(t, 0)]
        if not below:
            break
        for t in below:
            fixed[t] = floors.get(t, 0)
    quotas = dict(fixed)
    whole = {t: math.floor(v) for t, v in exact.items()}
    spare = pool - sum(fixed.values()) - sum(whole.values())
    for t in sorted(exact, key=lambda t: (-(exact[t] - whole[t]), t))[:spare]:
        whole[t] += 1
    quotas.update(whole)
    return {t: quotas[t] for t in teams}
