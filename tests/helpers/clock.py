"""One fake clock for every test that injects time.

    from helpers.clock import FakeClock

    clock = FakeClock()                       # wall time T0 (ms since the epoch), monotonic time 1000.0 s
    store = SqlTrackingStore(engine, clock=clock)
    clock.advance(5_000)                      # both clocks move 5 s forward
    clock.now = expiry                        # the wall clock jumps (the monotonic clock does not move)
    auth = Authenticator(..., clock=clock, monotonic=clock.monotonic)

A `FakeClock` is a `capstan.clock.Clock` (a callable returning integer milliseconds since the epoch) and also
offers ``monotonic()`` (float seconds), so it fits code that takes either. Nothing moves unless the test moves it,
except with ``step``: ``FakeClock(step=1)`` returns a strictly increasing time, one millisecond later on each
call, for code whose orderings (creation times, event ids) must be deterministic.
"""

from __future__ import annotations

T0 = 1_700_000_000_000
"""The default start of the wall clock: 2023-11-14T22:13:20Z in milliseconds since the epoch."""

MONOTONIC0 = 1000.0
"""The default start of the monotonic clock, in seconds (arbitrary, like the real one)."""


class FakeClock:
    """A settable, advanceable millisecond wall clock with a matching monotonic clock.

    ``now`` is the wall time in integer milliseconds; set it to jump the wall clock (forward or back). ``mono``
    is the monotonic time in float seconds; `advance` moves both, so code timing an interval with either clock
    sees the same elapsed time.
    """

    def __init__(self, now: int = T0, *, mono: float = MONOTONIC0, step: int = 0) -> None:
        if step < 0:
            raise ValueError("step must not be negative: a clock that runs backwards on every call is no clock")
        self.now = now
        self.mono = mono
        self.step = step
        self.calls = 0  # how many times the wall clock was read

    def __call__(self) -> int:
        """The wall time in milliseconds since the epoch (then ``step`` ms later, if a step is set)."""
        self.calls += 1
        current = self.now
        if self.step:
            self.advance(self.step)
        return current

    def monotonic(self) -> float:
        """The monotonic time in seconds; it only moves with `advance` (or when the test sets ``mono``)."""
        return self.mono

    def advance(self, ms: int = 1) -> int:
        """Move the wall and the monotonic clock ``ms`` milliseconds forward; return the new wall time."""
        if ms < 0:
            raise ValueError("advance() moves time forward; set `now` to make the wall clock jump back")
        self.now += ms
        self.mono += ms / 1000
        return self.now

    def advance_s(self, seconds: float) -> int:
        """`advance` by ``seconds`` (rounded to whole milliseconds); return the new wall time."""
        return self.advance(round(seconds * 1000))

    def __repr__(self) -> str:
        return f"FakeClock(now={self.now}, mono={self.mono}, step={self.step})"
