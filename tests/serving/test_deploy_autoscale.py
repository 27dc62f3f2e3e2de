"""The pure autoscaler (`capstan.serving.autoscale`) driven by a fake clock: target tracking, tolerance, immediate
scale-up, stabilised scale-down, scale to zero and from zero, request rates."""

from __future__ import annotations

import pytest

from capstan.serving.autoscale import (
    Demand,
    ScaleHistory,
    decide,
    demand_of,
    fresh_reports,
    rate,
    recommend,
    side_replicas,
)
from capstan.serving.controller import restart_delay_ms
from capstan.serving.ports import LoadReport
from capstan.serving.spec import Autoscaling
from helpers.clock import FakeClock

BY_CONCURRENCY = Autoscaling(min_replicas=0, max_replicas=5, target_concurrency=2,
                             stabilization_window_seconds=10)
BY_RPS = Autoscaling(min_replicas=1, max_replicas=4, target_rps=10, stabilization_window_seconds=0)


@pytest.mark.parametrize(("demand", "current", "expected"), [
    (Demand(in_flight=0), 3, 0),
    (Demand(in_flight=1), 0, 1),
    (Demand(in_flight=4), 1, 2),
    (Demand(in_flight=5), 1, 3),
    (Demand(in_flight=100), 1, 5),            # capped at max_replicas
    (Demand(in_flight=6, waiting=1), 3, 4),   # waiting requests count as concurrency
    (Demand(in_flight=0, waiting=1), 0, 1),   # scale from zero
    (Demand(in_flight=4), 2, 2),
    (Demand(in_flight=7), 4, 4),              # 7 / (4 x 2) = 0.875: outside the 10% tolerance -> ceil(3.5) = 4
    (Demand(in_flight=9), 5, 5),              # 9 / 10 = 0.9, within tolerance: stay
])
def test_recommend_tracks_the_concurrency_target(demand: Demand, current: int, expected: int) -> None:
    assert recommend(BY_CONCURRENCY, demand, current) == expected


def test_recommend_by_rate_respects_min_replicas() -> None:
    assert recommend(BY_RPS, Demand(rps=0.0), 3) == 1
    assert recommend(BY_RPS, Demand(rps=25.0), 1) == 3
    assert recommend(BY_RPS, Demand(rps=1000.0), 1) == 4


def test_scale_up_is_immediate_and_scale_down_waits_for_the_window() -> None:
    clock = FakeClock(1_000_000, step=0)
    history = ScaleHistory()
    replicas, history = decide(BY_CONCURRENCY, Demand(in_flight=8), 1, history, clock())
    assert replicas == 4
    for _ in range(9):  # idle for 9 of the 10 seconds: still 4
        clock.advance(1_000)
        replicas, history = decide(BY_CONCURRENCY, Demand(), replicas, history, clock())
        assert replicas == 4
    clock.advance(1_500)
    replicas, history = decide(BY_CONCURRENCY, Demand(), replicas, history, clock())
    assert replicas == 0  # a whole window without requests: scale to zero
    replicas, history = decide(BY_CONCURRENCY, Demand(waiting=1), replicas, history, clock())
    assert replicas == 1  # a waiting request wakes it at once


def test_a_fresh_history_never_scales_down_at_once() -> None:
    clock = FakeClock(5_000, step=0)
    replicas, history = decide(BY_CONCURRENCY, Demand(), 3, ScaleHistory(), clock())
    assert replicas == 3
    clock.advance(10_001)
    assert decide(BY_CONCURRENCY, Demand(), 3, history, clock())[0] == 0


def test_a_zero_window_follows_the_recommendation() -> None:
    assert decide(BY_RPS, Demand(rps=0), 4, ScaleHistory(((0, 4),)), 1)[0] == 1


def test_demand_and_rate_from_reports() -> None:
    reports = [LoadReport("w1", "d", "p", 3, 10, 1, 9_000), LoadReport("w2", "d", "p", 2, 5, 0, 9_500),
               LoadReport("w3", "d", "p", 9, 9, 9, 1_000)]
    fresh = fresh_reports(reports, 10_000, 5_000)
    assert [r.worker for r in fresh] == ["w1", "w2"]
    demand = demand_of(fresh, rate([(9_000, 10), (9_500, 5), (1_000, 100)], 10_000, 5_000))
    assert (demand.in_flight, demand.waiting, demand.concurrency, demand.rps) == (5, 1, 6, 3.0)
    assert not demand.idle and Demand().idle
    assert rate([(1, 5)], 1, 0) == 0.0


@pytest.mark.parametrize(("primary", "traffic", "expected"), [(0, 50, 0), (1, 0, 1), (4, 10, 1), (4, 50, 2),
                                                               (3, 100, 3)])
def test_side_replicas_follow_their_share(primary: int, traffic: float, expected: int) -> None:
    assert side_replicas(primary, traffic) == expected


def test_restart_back_off_doubles_up_to_a_minute() -> None:
    assert [restart_delay_ms(n) for n in (0, 1, 2, 3, 7, 50)] == [0, 1_000, 2_000, 4_000, 60_000, 60_000]
