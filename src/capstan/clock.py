"""Clocks. Code that needs the time takes a `Clock` argument so tests and simulators can inject their own.

A clock is called for wall-clock milliseconds. A clock that also has a ``monotonic()`` reading (a `MonotonicClock`,
as `system_clock` is) drives the timers of code that measures intervals (step timeouts, heartbeats), so a fake clock
can move them; `monotonic_of` picks that reading, or the system's for a plain callable.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final, Protocol, runtime_checkable

Clock = Callable[[], int]
"""A function returning the current time in integer milliseconds since the epoch."""


@runtime_checkable
class MonotonicClock(Protocol):
    """A `Clock` with a monotonic reading for intervals and deadlines."""

    def __call__(self) -> int:
        """Wall-clock milliseconds since the epoch."""
        ...

    def monotonic(self) -> float:
        """Seconds from an arbitrary origin that never go back (compare readings only with each other)."""
        ...


class SystemClock:
    """The system's clocks: `time.time_ns` for the wall clock and `time.monotonic` for intervals."""

    __slots__ = ()

    def __call__(self) -> int:
        """Wall-clock milliseconds since the epoch."""
        return time.time_ns() // 1_000_000

    def monotonic(self) -> float:
        """`time.monotonic`."""
        return time.monotonic()

    def __repr__(self) -> str:
        return "system_clock"


system_clock: Final = SystemClock()
"""Wall-clock milliseconds since the epoch (and `time.monotonic` as its monotonic reading)."""


def monotonic_of(clock: Clock) -> Callable[[], float]:
    """The monotonic reading of ``clock`` when it has one, else `time.monotonic` (a plain function clock)."""
    if isinstance(clock, SystemClock):
        return time.monotonic
    if isinstance(clock, MonotonicClock):
        return clock.monotonic
    return time.monotonic
