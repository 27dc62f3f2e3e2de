"""Traffic decisions (capstan.serving.traffic): the canary split, pinning and deterministic shadow sampling."""

from __future__ import annotations

import math
import random

import pytest

from capstan.errors import ResourceDoesNotExist
from capstan.serving.spec import DeploymentSpec, parse_spec
from capstan.serving.traffic import CANARY, PRIMARY, UnknownVersion, choose_version, shadow_sampled, split_of


def _spec(canary: float | None = None) -> DeploymentSpec:
    data: dict[str, object] = {"name": "a", "model": "models:/m@prod"}
    if canary is not None:
        data["canary"] = {"model": "models:/m/7", "traffic": canary}
    return parse_spec(data)


def _within_four_sigma(hits: int, n: int, p: float) -> bool:
    return abs(hits - n * p) <= 4 * math.sqrt(n * p * (1 - p))


def test_split_of_spec() -> None:
    assert split_of(_spec()) == {PRIMARY: 100.0}
    assert split_of(_spec(10)) == {PRIMARY: 90.0, CANARY: 10.0}
    assert split_of(_spec(0)) == {PRIMARY: 100.0, CANARY: 0.0}
    assert split_of(_spec(100)) == {PRIMARY: 0.0, CANARY: 100.0}


@pytest.mark.parametrize("percent", [1, 10, 25, 50, 90])
def test_canary_split_within_four_sigma(percent: float) -> None:
    weights = split_of(_spec(percent))
    rng = random.Random(1234 + int(percent))
    n = 2000
    hits = sum(choose_version(weights, rng.random(), pinned=None) == CANARY for _ in range(n))
    assert _within_four_sigma(hits, n, percent / 100), (hits, percent)


def test_split_boundaries_and_zero_weights() -> None:
    weights = {"a": 1.0, "b": 0.0, "c": 3.0}
    assert choose_version(weights, 0.0, pinned=None) == "a"
    assert choose_version(weights, 0.2499, pinned=None) == "a"
    assert choose_version(weights, 0.25, pinned=None) == "c"
    assert choose_version(weights, math.nextafter(1.0, 0.0), pinned=None) == "c"
    assert all(choose_version({"x": 0.0, "y": 5.0}, d / 100, pinned=None) == "y" for d in range(100))
    assert choose_version(split_of(_spec(0)), 0.999, pinned=None) == PRIMARY
    assert choose_version(split_of(_spec(100)), 0.0, pinned=None) == CANARY


def test_pinned_version_wins_even_at_zero_weight() -> None:
    weights = split_of(_spec(0))
    assert choose_version(weights, 0.0, pinned=CANARY) == CANARY
    assert choose_version(weights, 0.99, pinned=PRIMARY) == PRIMARY


def test_pinned_unknown_version_names_known_ones() -> None:
    with pytest.raises(UnknownVersion, match=r"version 'v9' is not served here \(known versions: canary, primary\)"):
        choose_version(split_of(_spec(10)), 0.5, pinned="v9")
    with pytest.raises(ResourceDoesNotExist) as info:
        choose_version({PRIMARY: 100.0}, 0.5, pinned=CANARY)
    assert isinstance(info.value, UnknownVersion) and info.value.known == [PRIMARY]
    assert info.value.http_status == 404


@pytest.mark.parametrize("draw", [-0.1, 1.0, float("nan")])
def test_draw_outside_unit_interval_is_a_bug(draw: float) -> None:
    with pytest.raises(ValueError, match="draw must be in"):
        choose_version({PRIMARY: 1.0}, draw, pinned=None)


@pytest.mark.parametrize("weights", [{}, {"a": 0.0}, {"a": -1.0, "b": 2.0}, {"a": float("inf")}])
def test_bad_weights_are_a_bug(weights: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        choose_version(weights, 0.5, pinned=None)


@pytest.mark.parametrize("percent", [1, 5, 20, 50, 75])
def test_shadow_share_over_ten_thousand_ids(percent: float) -> None:
    n = 10_000
    hits = sum(shadow_sampled(f"req-{i}", percent) for i in range(n))
    assert _within_four_sigma(hits, n, percent / 100), (hits, percent)


def test_shadow_sampling_is_deterministic_and_monotone() -> None:
    ids = [f"{i:08x}-request" for i in range(2000)]
    first = [shadow_sampled(i, 30) for i in ids]
    assert first == [shadow_sampled(i, 30) for i in ids]
    # raising the share only adds requests: every id mirrored at 10 % is mirrored at 30 %
    assert all(shadow_sampled(i, 30) for i in ids if shadow_sampled(i, 10))
    assert not any(shadow_sampled(i, 0) for i in ids)
    assert all(shadow_sampled(i, 100) for i in ids)
    assert shadow_sampled("\udcff odd", 50) in (True, False)  # a lone surrogate from a header still hashes


@pytest.mark.parametrize("percent", [-1, 100.5, float("nan")])
def test_shadow_percent_out_of_range_is_a_bug(percent: float) -> None:
    with pytest.raises(ValueError, match="percent must be between 0 and 100"):
        shadow_sampled("r", percent)
