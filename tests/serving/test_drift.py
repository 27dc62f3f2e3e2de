"""Drift statistics (capstan.serving.drift), checked against scipy as the reference implementation."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats

from capstan.errors import InvalidParameterValue
from capstan.serving.drift import (
    CategoricalFeature,
    DriftThresholds,
    NumericFeature,
    ReferenceProfile,
    chi2_sf,
    chi_square,
    compare,
    ks_pvalue,
    ks_statistic,
    profile,
    psi,
)


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


# --------------------------------------------------------------------------------------------- KS against scipy

KS_CASES = [
    # (reference, live) generators
    ("same normal, equal sizes", lambda r: (r.normal(size=800), r.normal(size=800))),
    ("same normal, unequal sizes", lambda r: (r.normal(size=5000), r.normal(size=300))),
    ("shift 0.1", lambda r: (r.normal(size=2000), r.normal(0.1, 1.0, size=1500))),
    ("shift 0.5", lambda r: (r.normal(size=1000), r.normal(0.5, 1.0, size=1000))),
    ("scale change", lambda r: (r.normal(size=3000), r.normal(0.0, 1.3, size=700))),
    ("normal vs uniform", lambda r: (r.normal(size=400), r.uniform(-2, 2, size=250))),
    ("small samples", lambda r: (r.normal(size=12), r.normal(0.3, 1.0, size=9))),
    ("tiny samples", lambda r: (r.normal(size=4), r.normal(size=3))),
    ("ties (integers)", lambda r: (r.poisson(3.0, size=1200).astype(float), r.poisson(3.2, size=900).astype(float))),
    ("exponential vs lognormal", lambda r: (r.exponential(size=2500), r.lognormal(-0.3, 0.8, size=2500))),
    ("large live window", lambda r: (r.normal(size=5000), r.normal(0.02, 1.0, size=200_000))),
    ("disjoint", lambda r: (r.uniform(0, 1, size=300), r.uniform(2, 3, size=200))),
]


@pytest.mark.parametrize(("label", "make"), KS_CASES, ids=[c[0] for c in KS_CASES])
def test_ks_matches_scipy_asymp(label: str, make: object) -> None:
    reference, live = make(_rng(len(label)))  # type: ignore[operator]  # the case table holds lambdas
    expected = stats.ks_2samp(reference, live, method="asymp")
    d = ks_statistic(np.sort(reference), live)
    p = ks_pvalue(d, reference.size, live.size)
    assert d == pytest.approx(expected.statistic, abs=1e-12)
    assert p == pytest.approx(expected.pvalue, rel=1e-6, abs=1e-300)


def test_ks_pvalue_matches_scipy_over_a_grid() -> None:
    # ks_2samp(method="asymp") is kstwo.sf(d, round(n1 * n2 / (n1 + n2))): cover every branch of it.
    worst = 0.0
    for n1, n2 in [(2, 2), (5, 7), (20, 30), (200, 180), (280, 280), (1000, 400), (5000, 5000), (5000, 400_000)]:
        n = round(n1 * n2 / (n1 + n2))
        for d in [*np.linspace(0.001, 0.999, 120), 0.4 / n, 0.7 / n, 1.0 / n]:
            expected = stats.kstwo.sf(d, n)
            got = ks_pvalue(float(d), n1, n2)
            if expected > 1e-250:
                worst = max(worst, abs(got - expected) / expected)
            else:
                assert got < 1e-240
    assert worst < 1e-8


def test_ks_statistic_is_symmetric_and_bounded() -> None:
    r = _rng(1)
    a, b = r.normal(size=100), r.normal(size=60)
    assert ks_statistic(np.sort(a), b) == pytest.approx(ks_statistic(np.sort(b), a), abs=1e-15)
    assert ks_statistic(np.sort(a), a) == 0.0
    assert ks_statistic([0.0, 1.0], [5.0, 6.0]) == 1.0


# ------------------------------------------------------------------------------------- chi-square against scipy


@pytest.mark.parametrize("dof", [1, 2, 3, 4, 7, 10, 31, 100, 999])
def test_chi2_sf_matches_scipy(dof: int) -> None:
    for x in [1e-6, 0.01, 0.5, *np.linspace(0.1, 4 * dof + 60, 200)]:
        expected = stats.chi2.sf(x, dof)
        assert chi2_sf(float(x), dof) == pytest.approx(expected, rel=1e-9, abs=1e-300)
    assert chi2_sf(0.0, dof) == 1.0


def test_chi_square_matches_scipy_chisquare() -> None:
    freqs = np.array([0.5, 0.3, 0.15, 0.05])
    for counts in ([50, 30, 15, 5], [40, 35, 20, 5], [10, 60, 20, 10], [480, 330, 140, 50]):
        observed = np.asarray(counts, dtype=float)
        expected = stats.chisquare(observed, f_exp=freqs * observed.sum())
        statistic, p = chi_square(freqs, observed)
        assert statistic == pytest.approx(expected.statistic, rel=1e-12, abs=1e-12)
        assert p == pytest.approx(expected.pvalue, rel=1e-9)


def test_chi_square_unseen_bucket_is_smoothed_or_left_out() -> None:
    # An empty "other" bucket (zero reference proportion, zero count) changes nothing.
    with_other = chi_square([0.6, 0.4, 0.0], [55, 45, 0])
    without = stats.chisquare([55, 45], f_exp=[60, 40])
    assert with_other[0] == pytest.approx(without.statistic)
    assert with_other[1] == pytest.approx(without.pvalue, rel=1e-9)
    # A non-empty one is compared with an eps proportion and is a large drift.
    statistic, p = chi_square([0.6, 0.4, 0.0], [55, 40, 5])
    probabilities = np.array([0.6, 0.4, 1e-4]) / 1.0001
    reference = stats.chisquare([55, 40, 5], f_exp=probabilities * 100)
    assert statistic == pytest.approx(reference.statistic, rel=1e-12)
    assert p == pytest.approx(reference.pvalue, rel=1e-9, abs=1e-300)
    assert p < 1e-10


# ------------------------------------------------------------------------------------------------------------ PSI


def test_psi_hand_computed() -> None:
    expected = [0.25, 0.25, 0.25, 0.25]
    actual = [0.10, 0.20, 0.30, 0.40]
    by_hand = (
        (0.10 - 0.25) * math.log(0.10 / 0.25)
        + (0.20 - 0.25) * math.log(0.20 / 0.25)
        + (0.30 - 0.25) * math.log(0.30 / 0.25)
        + (0.40 - 0.25) * math.log(0.40 / 0.25)
    )
    # 0.15 ln 2.5 + 0.05 ln 1.25 + 0.05 ln 1.2 + 0.15 ln 1.6 = 0.137444 + 0.011157 + 0.009116 + 0.070501
    assert by_hand == pytest.approx(0.228217, abs=1e-6)
    assert psi(expected, actual) == pytest.approx(by_hand, rel=1e-12)
    assert psi(expected, expected) == 0.0


def test_psi_smooths_empty_bins_with_eps() -> None:
    value = psi([0.5, 0.5, 0.0], [0.5, 0.4, 0.1], eps=1e-4)
    by_hand = (0.4 - 0.5) * math.log(0.4 / 0.5) + (0.1 - 1e-4) * math.log(0.1 / 1e-4)
    assert value == pytest.approx(by_hand, rel=1e-12)
    with pytest.raises(InvalidParameterValue):
        psi([0.5, 0.5], [1.0])


# -------------------------------------------------------------------------------------------------------- profile


def test_profile_numeric_bins_and_sample() -> None:
    values = np.arange(1000, dtype=float)
    prof = profile({"x": values}, bins=10, max_sample=100)
    feature = prof.feature("x")
    assert isinstance(feature, NumericFeature)
    assert feature.count == 1000
    assert feature.edges == pytest.approx(np.quantile(values, np.linspace(0, 1, 11))[1:-1])
    assert len(feature.proportions) == 10
    assert feature.proportions == pytest.approx([0.1] * 10, abs=0.0011)
    assert sum(feature.proportions) == pytest.approx(1.0)
    assert len(feature.sample) == 100
    assert feature.sample[0] == 0.0 and feature.sample[-1] == 999.0
    assert list(feature.sample) == sorted(feature.sample)
    # Deterministic: the same data in another order gives the same profile.
    assert profile({"x": values[::-1].copy()}, bins=10, max_sample=100) == prof


def test_profile_deduplicates_edges_and_keeps_small_samples_whole() -> None:
    values = np.array([0.0] * 50 + [1.0] * 30 + [2.0] * 20)
    feature = profile({"x": values}).feature("x")
    assert isinstance(feature, NumericFeature)
    assert len(set(feature.edges)) == len(feature.edges)
    assert list(feature.edges) == sorted(feature.edges)
    assert len(feature.proportions) == len(feature.edges) + 1
    assert sum(feature.proportions) == pytest.approx(1.0)
    assert feature.sample == tuple(sorted(values.tolist()))
    constant = profile({"c": [3.0] * 10}).feature("c")
    assert isinstance(constant, NumericFeature)
    assert constant.edges == () and constant.proportions == (1.0,)


def test_profile_kinds_by_dtype_unless_named() -> None:
    prof = profile(
        {
            "f": np.array([1.5, 2.5, 3.5]),
            "i": [1, 2, 3],
            "s": ["a", "b", "a"],
            "b": np.array([True, False, True]),
            "code": [10, 20, 10],
        },
        categorical={"code"},
    )
    kinds = {feature.name: feature.kind for feature in prof.features}
    assert kinds == {"b": "categorical", "code": "categorical", "f": "numeric", "i": "numeric", "s": "categorical"}
    assert prof.names == ("b", "code", "f", "i", "s")
    code = prof.feature("code")
    assert isinstance(code, CategoricalFeature)
    assert dict(code.frequencies) == pytest.approx({"10": 2 / 3, "20": 1 / 3})


def test_profile_round_trips_through_json() -> None:
    r = _rng(7)
    prof = profile(
        {"x": r.normal(size=12_000), "n": r.integers(0, 5, size=300), "color": r.choice(["red", "green"], 500)},
        max_sample=5000,
    )
    data = json.loads(json.dumps(prof.to_dict(), allow_nan=False))
    assert ReferenceProfile.from_dict(data) == prof
    x = prof.feature("x")
    assert isinstance(x, NumericFeature) and len(x.sample) == 5000


@pytest.mark.parametrize(
    "data",
    [
        {},
        {"format": 2, "features": []},
        {"format": 1, "features": {}},
        {"format": 1, "features": [{"name": "x", "kind": "numeric", "count": 3}]},
        {"format": 1, "features": [{"name": "x", "kind": "weird", "count": 3}]},
        {"format": 1, "features": [{"name": "x", "kind": "categorical", "count": 0, "frequencies": {"a": 1.0}}]},
        {"format": 1, "features": [{"name": "x", "kind": "categorical", "count": 2, "frequencies": {}}]},
        {
            "format": 1,
            "features": [
                {"name": "x", "kind": "numeric", "count": 2, "edges": [1.0], "proportions": [1.0], "sample": [1.0]}
            ],
        },
        {
            "format": 1,
            "features": [
                {"name": "x", "kind": "numeric", "count": 2, "edges": [], "proportions": [1.0], "sample": [2.0, 1.0]}
            ],
        },
    ],
)
def test_from_dict_rejects_malformed(data: dict[str, object]) -> None:
    with pytest.raises(InvalidParameterValue):
        ReferenceProfile.from_dict(data)


# -------------------------------------------------------------------------------------------------------- compare


def test_same_distribution_does_not_drift() -> None:
    r = _rng(11)
    prof = profile({"x": r.normal(size=20_000), "color": r.choice(["r", "g", "b"], 20_000, p=[0.5, 0.3, 0.2])})
    live = {"x": r.normal(size=2000), "color": r.choice(["r", "g", "b"], 2000, p=[0.5, 0.3, 0.2]), "extra": [1]}
    report = compare(prof, live)
    assert [(f.feature, f.stat_name) for f in report.features] == [("color", "chi2"), ("x", "psi"), ("x", "ks")]
    assert not report.drifted
    assert report.drifted_features == ()
    by_stat = {f.stat_name: f for f in report.features}
    assert by_stat["psi"].value < 0.05 and by_stat["psi"].p_value is None
    assert by_stat["ks"].p_value is not None and by_stat["ks"].p_value > 0.01


def test_shifted_normal_and_changed_mix_drift() -> None:
    r = _rng(12)
    prof = profile({"x": r.normal(size=20_000), "color": r.choice(["r", "g", "b"], 20_000, p=[0.5, 0.3, 0.2])})
    live = {"x": r.normal(1.0, 1.0, size=2000), "color": r.choice(["r", "g", "b"], 2000, p=[0.3, 0.3, 0.4])}
    report = compare(prof, live)
    assert report.drifted
    assert report.drifted_features == ("color", "x")
    assert all(f.drifted for f in report.features)
    psi_item = next(f for f in report.features if f.stat_name == "psi")
    assert psi_item.value > 0.2


def test_compare_ks_equals_scipy_on_the_stored_sample() -> None:
    r = _rng(13)
    reference, live = r.normal(size=3000), r.normal(0.05, 1.0, size=1200)
    report = compare(profile({"x": reference}), {"x": live})
    ks = next(f for f in report.features if f.stat_name == "ks")
    expected = stats.ks_2samp(reference, live, method="asymp")
    assert ks.value == pytest.approx(expected.statistic, abs=1e-12)
    assert ks.p_value == pytest.approx(expected.pvalue, rel=1e-6)


def test_unseen_categories_go_to_other_and_drift() -> None:
    prof = profile({"color": ["r"] * 60 + ["g"] * 40})
    report = compare(prof, {"color": ["r"] * 55 + ["g"] * 40 + ["purple"] * 5})
    (item,) = report.features
    assert item.kind == "categorical" and item.drifted
    assert item.value == pytest.approx(chi_square([0.4, 0.6, 0.0], [40, 55, 5])[0])


def test_thresholds_decide_drift() -> None:
    r = _rng(14)
    prof = profile({"x": r.normal(size=5000)})
    live = {"x": r.normal(0.15, 1.0, size=3000)}
    strict = compare(prof, live, thresholds=DriftThresholds(psi=0.001, ks_p=0.5, chi2_p=0.5))
    lax = compare(prof, live, thresholds=DriftThresholds(psi=10.0, ks_p=1e-300, chi2_p=1e-300))
    assert strict.drifted and not lax.drifted


# --------------------------------------------------------------------------------------------------------- errors


def test_missing_feature_and_empty_window_name_the_feature() -> None:
    prof = profile({"x": [1.0, 2.0, 3.0], "color": ["a", "b", "a"]})
    with pytest.raises(InvalidParameterValue, match="'x'"):
        compare(prof, {"color": ["a"]})
    with pytest.raises(InvalidParameterValue, match="'color'"):
        compare(prof, {"x": [1.0], "color": []})
    with pytest.raises(InvalidParameterValue, match="'x'"):
        compare(prof, {"x": np.array([], dtype=float), "color": ["a"]})


@pytest.mark.parametrize(
    ("columns", "kwargs"),
    [
        ({}, {}),
        ({"x": []}, {}),
        ({"x": [1.0, float("nan")]}, {}),
        ({"x": [1.0, float("inf")]}, {}),
        ({"x": [[1.0, 2.0]]}, {}),
        ({"x": [1.0]}, {"bins": 0}),
        ({"x": [1.0]}, {"max_sample": 1}),
        ({"x": [1.0]}, {"categorical": {"y"}}),
    ],
)
def test_profile_rejects_bad_input(columns: dict[str, object], kwargs: dict[str, object]) -> None:
    with pytest.raises(InvalidParameterValue):
        profile(columns, **kwargs)  # type: ignore[arg-type]  # deliberately bad input


def test_compare_rejects_non_numeric_live_values_for_numeric_features() -> None:
    prof = profile({"x": [1.0, 2.0, 3.0]})
    with pytest.raises(InvalidParameterValue, match="'x'"):
        compare(prof, {"x": ["a", "b"]})
    with pytest.raises(InvalidParameterValue, match="'x'"):
        compare(prof, {"x": [1.0, float("nan")]})
    with pytest.raises(InvalidParameterValue):
        prof.feature("nope")


def test_statistic_argument_errors() -> None:
    with pytest.raises(InvalidParameterValue):
        ks_statistic([], [1.0])
    with pytest.raises(InvalidParameterValue):
        ks_pvalue(0.5, 0, 3)
    with pytest.raises(InvalidParameterValue):
        chi_square([0.5, 0.5], [0, 0])
    with pytest.raises(InvalidParameterValue):
        chi_square([0.5, 0.5], [1, 2, 3])
    with pytest.raises(InvalidParameterValue):
        chi2_sf(1.0, 0)
