"""Clocks. Code that needs the time takes a `Clock` argument so tests and simulators can inject their own."""

from __future__ import annotations

import time
from collections.abc import Callable

Clock = Callable[[], int]
"""A function returning the current time in integer milliseconds since the epoch."""


def system_clock() -> int:
    """Wall-clock milliseconds since the epoch."""
    return time.time_ns() // 1_000_000
