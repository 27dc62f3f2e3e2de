"""A/B quality from outcomes (capstan.serving.abtest) and reading predictions out of answers
(capstan.serving.answers), checked against scipy on known data."""

from __future__ import annotations

import math
import random

import numpy as np
import orjson
import pytest
from scipy import special, stats

from capstan.serving.abtest import (
    MIN_LABELLED,
    quality_report,
    student_t_two_sided_p,
    two_proportion_z_test,
    welch_t_test,
)
from capstan.serving.answers import disagree, predictions_json, predictions_of
from capstan.serving.outcomes import Outcome


def _outcome(i: int, version: str, role: str, predicted: object, truth: object | None, *, status: int = 200,
             latency: float = 1.0, disagrees: bool | None = None) -> Outcome:
    return Outcome(f"r{i}", "p", "d", version, role, status, latency, i, orjson.dumps([predicted]).decode(),
                   disagrees, None if truth is None else orjson.dumps(truth).decode(), id=i)


def test_z_test_matches_the_normal_distribution() -> None:
    z, p = two_proportion_z_test(45, 100, 60, 100)
    pooled = 105 / 200
    expected_z = (0.45 - 0.60) / math.sqrt(pooled * (1 - pooled) * (2 / 100))
    assert z == pytest.approx(expected_z) and p == pytest.approx(2 * stats.norm.sf(abs(expected_z)))
    assert two_proportion_z_test(10, 10, 20, 20) == (0.0, 1.0)
    with pytest.raises(ValueError):
        two_proportion_z_test(0, 0, 1, 1)


@pytest.mark.parametrize("n_a,n_b,shift,scale", [(3, 4, 0.5, 1.0), (12, 40, 0.3, 3.0), (500, 300, 0.1, 0.5)])
def test_welch_matches_scipy(n_a: int, n_b: int, shift: float, scale: float) -> None:
    rng = random.Random(n_a)
    a = [rng.gauss(0, 1) for _ in range(n_a)]
    b = [rng.gauss(shift, scale) for _ in range(n_b)]
    t, p = welch_t_test(a, b)
    expected = stats.ttest_ind(a, b, equal_var=False)
    assert t == pytest.approx(expected.statistic, rel=1e-9) and p == pytest.approx(expected.pvalue, rel=1e-7)
    assert welch_t_test([1.0, 1.0], [1.0, 1.0]) == (0.0, 1.0)
    assert welch_t_test([1.0, 1.0], [2.0, 2.0])[1] == 0.0


@pytest.mark.parametrize("t,df", [(0.0, 3.0), (0.7, 1.0), (2.1, 4.5), (-3.3, 30.0), (12.0, 200.0), (1.96, 1e6)])
def test_t_distribution_matches_scipy(t: float, df: float) -> None:
    assert student_t_two_sided_p(t, df) == pytest.approx(2 * stats.t.sf(abs(t), df), rel=1e-9, abs=1e-300)
    assert student_t_two_sided_p(t, df) == pytest.approx(special.betainc(df / 2, 0.5, df / (df + t * t)), rel=1e-9)


def test_classification_report_accuracy_latency_errors_and_shadow() -> None:
    rows = []
    for i in range(40):  # version 1 right 30/40, version 2 right 38/40
        rows.append(_outcome(i, "1", "primary", "cat", "cat" if i < 30 else "dog", latency=float(i)))
        rows.append(_outcome(100 + i, "2", "canary", "cat", "cat" if i < 38 else "dog"))
        rows.append(_outcome(200 + i, "3", "shadow", "dog", "cat", disagrees=i % 4 == 0))
    rows.append(_outcome(300, "1", "primary", None, None, status=500))
    rows.append(_outcome(301, "1", "primary", None, None, status=400))
    report = quality_report("p", "d", rows)
    assert report.task == "classification"
    v1, v2, v3 = report.versions
    assert (v1.version, v1.role, v1.requests, v1.errors, v1.client_errors) == ("1", "primary", 42, 1, 1)
    assert (v1.labelled, v1.correct, v1.accuracy) == (40, 30, 0.75)
    assert v1.latency_p50_ms == pytest.approx(np.percentile(range(40), 50))
    assert v1.latency_p99_ms == pytest.approx(np.percentile(range(40), 99))
    assert (v2.correct, v3.role, v3.accuracy) == (38, "shadow", 0.0)
    assert report.shadows[0].version == "3" and report.shadows[0].rate == pytest.approx(0.25)
    comparison = report.comparison
    assert comparison is not None and comparison.metric == "accuracy"
    assert comparison.p_value == pytest.approx(two_proportion_z_test(30, 40, 38, 40)[1])
    assert comparison.verdict.startswith("2 (canary) is significantly better than 1 (primary)")


def test_regression_report_mae_and_welch() -> None:
    rng = random.Random(5)
    rows, errors = [], {"1": [], "2": []}
    for _ in range(60):
        truth = rng.uniform(0, 10)
        for version, role, noise in (("1", "primary", 0.5), ("2", "canary", 0.52)):
            predicted = truth + rng.gauss(0, noise)
            errors[version].append(abs(predicted - truth))
            rows.append(_outcome(len(rows), version, role, predicted, truth))
    report = quality_report("p", "d", rows)
    assert report.task == "regression"
    assert report.versions[0].mae == pytest.approx(np.mean(errors["1"]))
    comparison = report.comparison
    assert comparison is not None and comparison.metric == "mae"
    assert comparison.p_value == pytest.approx(stats.ttest_ind(errors["1"], errors["2"], equal_var=False).pvalue)
    assert comparison.verdict.startswith("no significant difference")


def test_too_few_labels_and_unpaired_truths() -> None:
    rows = [_outcome(i, "1", "primary", 1, 1) for i in range(MIN_LABELLED - 1)]
    rows += [_outcome(50 + i, "2", "canary", 1, 1) for i in range(MIN_LABELLED)]
    rows.append(Outcome("r99", "p", "d", "2", "canary", 200, 1.0, 99, "[1, 1]", truth="[1, 0, 1]", id=99))  # 2 rows
    report = quality_report("p", "d", rows)
    assert report.comparison is not None and report.comparison.p_value is None
    assert "not enough labelled" in report.comparison.verdict
    assert report.versions[1].unpaired == 1
    assert quality_report("p", "d", []).versions == ()


def test_predictions_of_every_protocol_answer() -> None:
    v2 = {"model_name": "m", "outputs": [{"name": "o", "datatype": "FP64", "shape": [2, 2], "data": [1, 2, 3, 4]}]}
    assert predictions_of(orjson.dumps(v2)) == [[1, 2], [3, 4]]
    assert predictions_of(orjson.dumps({"predictions": ["a", "b"]})) == ["a", "b"]
    assert predictions_of(b"[1, 2]") == [1, 2]
    header = orjson.dumps({"outputs": [{"name": "o", "datatype": "FP32", "shape": [3],
                                        "parameters": {"binary_data_size": 12}}]})
    body = header + np.array([1.5, 2.5, 3.5], dtype="<f4").tobytes()
    assert predictions_of(body, header_length=len(header)) == [1.5, 2.5, 3.5]
    assert predictions_of(b"{bad", header_length=None) is None
    assert predictions_of(orjson.dumps({"error": "x"})) is None
    assert predictions_json([np.float64(1.5)]) == "[1.5]"
    assert disagree("[1.0, 2.0]", "[1.0, 2.0000000000001]") is False
    assert disagree("[1]", "[2]") is True and disagree('["a"]', '["a", "b"]') is True
    assert disagree(None, "[1]") is None
