"""Autoscaling language-model deployments on waiting requests and generated tokens per second: the spec's targets,
the engine samples of ``GET /llm/stats`` and the pure autoscaler's decisions on a fake clock."""

from __future__ import annotations

import pytest

from capstan.errors import InvalidParameterValue
from capstan.serving.autoscale import (
    Demand,
    EngineSample,
    ScaleHistory,
    decide,
    engine_demand,
    engine_sample,
    recommend,
    tokens_per_second,
)
from capstan.serving.spec import Autoscaling, parse_spec
from helpers.clock import FakeClock

BY_WAITING = Autoscaling(min_replicas=0, max_replicas=6, target_waiting=4, stabilization_window_seconds=10)
BY_TOKENS = Autoscaling(min_replicas=1, max_replicas=4, target_tokens_per_second=100,
                        stabilization_window_seconds=0)


def _spec(**autoscaling: object) -> dict[str, object]:
    return {"name": "chat", "model": "models:/tiny/1", "autoscaling": {"max_replicas": 4, **autoscaling}}


def test_spec_takes_the_language_model_targets_and_round_trips() -> None:
    spec = parse_spec(_spec(target_waiting=3, min_replicas=0))
    assert spec.autoscaling is not None and spec.autoscaling.metric == "waiting"
    assert spec.autoscaling.target == 3 and spec.autoscaling.reads_engine_load
    assert parse_spec(spec.to_dict()) == spec
    tokens = parse_spec(_spec(target_tokens_per_second=250.5))
    assert tokens.autoscaling is not None and tokens.autoscaling.metric == "tokens_per_second"
    assert tokens.to_dict()["autoscaling"]["target_tokens_per_second"] == 250.5
    concurrency = parse_spec(_spec(target_concurrency=2))
    assert concurrency.autoscaling is not None and not concurrency.autoscaling.reads_engine_load


@pytest.mark.parametrize(("autoscaling", "message"), [
    ({"target_waiting": 2, "target_rps": 1}, r"^spec\.autoscaling: set exactly one of .* \(got target_rps, "
                                             r"target_waiting\)$"),
    ({"target_waiting": 0}, r"^spec\.autoscaling\.target_waiting: must be greater than 0, got 0$"),
    ({"target_tokens_per_second": "fast"}, r"^spec\.autoscaling\.target_tokens_per_second: expected a number"),
    ({"target_tokens_per_second": -5}, r"^spec\.autoscaling\.target_tokens_per_second: must be greater than 0"),
    ({"metric": "waiting"}, r"^spec\.autoscaling: unknown field 'metric'"),
])
def test_spec_errors_name_the_field(autoscaling: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidParameterValue, match=message):
        parse_spec(_spec(**autoscaling))


@pytest.mark.parametrize(("demand", "current", "expected"), [
    (Demand(), 2, 0),                                        # nothing anywhere: scale to zero
    (Demand(engine_waiting=9, engine_running=8), 1, 3),      # ceil(9 / 4)
    (Demand(waiting=2, engine_waiting=6), 1, 2),             # waiting for a replica counts too
    (Demand(engine_running=8), 3, 1),                        # running but none waiting: one replica is enough
    (Demand(in_flight=1), 0, 1),                             # a request in flight keeps a replica
    (Demand(engine_waiting=100), 1, 6),                      # capped at max_replicas
    (Demand(engine_waiting=11), 3, 3),                       # 11 / 12, within the 10% tolerance: stay
])
def test_recommend_on_waiting_requests(demand: Demand, current: int, expected: int) -> None:
    assert recommend(BY_WAITING, demand, current) == expected


@pytest.mark.parametrize(("tokens_per_s", "current", "expected"), [
    (0.0, 3, 1), (250.0, 1, 3), (95.0, 1, 1), (10_000.0, 1, 4), (310.0, 3, 3)])
def test_recommend_on_tokens_per_second(tokens_per_s: float, current: int, expected: int) -> None:
    assert recommend(BY_TOKENS, Demand(tokens_per_s=tokens_per_s), current) == expected


def test_tokens_per_second_from_counter_samples() -> None:
    assert tokens_per_second([]) == 0.0
    assert tokens_per_second([EngineSample(0, 1, 0, 50)]) == 0.0
    steady = [EngineSample(0, 1, 0, 100), EngineSample(1_000, 1, 0, 300), EngineSample(2_000, 1, 0, 500)]
    assert tokens_per_second(steady) == 200.0
    restarted = [EngineSample(0, 1, 0, 9_000), EngineSample(1_000, 1, 0, 40), EngineSample(3_000, 1, 0, 140)]
    assert tokens_per_second(restarted) == 50.0  # from the restart on, never a negative rate
    assert tokens_per_second([EngineSample(5, 0, 0, 1), EngineSample(5, 0, 0, 9)]) == 0.0


def test_engine_samples_from_stats_answers() -> None:
    body = {"running": 3, "waiting": 2, "prompt_tokens_total": 40, "generation_tokens_total": 120}
    assert engine_sample(body, 7) == EngineSample(7, 3, 2, 120)
    broken: object
    for broken in (None, [], {"running": 1}, {**body, "waiting": -1}, {**body, "running": True},
                   {**body, "generation_tokens_total": 1.5}):
        assert engine_sample(broken, 7) is None


def test_engine_demand_sums_replicas() -> None:
    samples = {"a": [EngineSample(0, 4, 1, 0), EngineSample(1_000, 5, 3, 120)],
               "b": [EngineSample(500, 2, 0, 10), EngineSample(1_000, 2, 4, 60)], "c": []}
    demand = engine_demand(Demand(in_flight=7, waiting=1), samples)
    assert (demand.engine_running, demand.engine_waiting, demand.tokens_per_s) == (7, 7, 220.0)
    assert (demand.in_flight, demand.waiting, demand.waiting_total) == (7, 1, 8)
    assert not demand.idle and Demand().idle


def test_waiting_scales_up_at_once_and_down_after_the_window() -> None:
    clock = FakeClock(1_000_000, step=0)
    replicas, history = decide(BY_WAITING, Demand(engine_waiting=10, engine_running=4), 1, ScaleHistory(), clock())
    assert replicas == 3
    for _ in range(9):  # the queue drained but requests still run: kept at 3 for the window
        clock.advance(1_000)
        replicas, history = decide(BY_WAITING, Demand(engine_running=4), replicas, history, clock())
        assert replicas == 3
    clock.advance(1_500)
    replicas, history = decide(BY_WAITING, Demand(engine_running=4), replicas, history, clock())
    assert replicas == 1  # running requests keep one replica even with min_replicas 0
    clock.advance(11_000)
    replicas, history = decide(BY_WAITING, Demand(), replicas, history, clock())
    replicas, history = decide(BY_WAITING, Demand(), replicas, history, clock())
    assert replicas == 0
    replicas, _ = decide(BY_WAITING, Demand(waiting=1), replicas, history, clock())
    assert replicas == 1  # a request waiting at the router wakes it
