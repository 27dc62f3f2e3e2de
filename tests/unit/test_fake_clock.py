"""The shared test clock (`helpers.clock.FakeClock`) behaves as the tests that inject it assume."""

from __future__ import annotations

import pytest

from capstan.clock import Clock
from helpers.clock import MONOTONIC0, T0, FakeClock


def test_it_is_a_clock_that_moves_only_when_told() -> None:
    clock = FakeClock()
    as_clock: Clock = clock  # what code taking a `Clock` receives
    assert (as_clock(), as_clock(), clock.monotonic()) == (T0, T0, MONOTONIC0)
    assert clock.calls == 2
    assert clock.advance(1500) == T0 + 1500
    assert (clock(), clock.monotonic()) == (T0 + 1500, MONOTONIC0 + 1.5)  # both clocks moved together
    assert clock.advance_s(0.25) == T0 + 1750 and clock.monotonic() == MONOTONIC0 + 1.75


def test_the_wall_clock_can_jump_but_the_monotonic_one_cannot() -> None:
    clock = FakeClock(5_000, mono=10.0)
    clock.now = 1_000  # e.g. an NTP correction
    assert (clock(), clock.monotonic()) == (1_000, 10.0)
    with pytest.raises(ValueError, match="forward"):
        clock.advance(-1)


def test_a_step_makes_every_reading_strictly_later() -> None:
    clock = FakeClock(1_000, step=1)
    assert [clock() for _ in range(3)] == [1_000, 1_001, 1_002]
    assert clock.now == 1_003
    with pytest.raises(ValueError):
        FakeClock(step=-1)


def test_code_that_reads_a_monotonic_clock_gets_the_fake_one() -> None:
    import capstan.clock

    monotonic_of = getattr(capstan.clock, "monotonic_of", None)
    if monotonic_of is None:
        pytest.skip("capstan.clock has no monotonic_of (the Clock protocol has no monotonic reading)")
    clock = FakeClock()
    reading = monotonic_of(clock)
    clock.advance(2000)
    assert reading() == MONOTONIC0 + 2.0
