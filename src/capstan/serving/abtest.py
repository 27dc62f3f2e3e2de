"""A/B quality of a deployment's versions from its request outcomes: latency, errors, accuracy or MAE, shadow
disagreement, and a significance test between two versions. Pure (apart from `deployment_quality`, which reads the
outcomes through the `OutcomeStore` port and calls `quality_report`).

Quality needs ground truth, which clients send as feedback for a request id; a request's predictions (one per row)
are paired with its truth (a scalar for a one-row request, a list of the same length otherwise), and each pair is one
labelled prediction. The task is told from the data unless given: **regression** when every truth is a number and
some truth or prediction is not a whole number, **classification** otherwise (labels, booleans, whole-number
classes). Classification versions are compared on accuracy with a two-proportion z-test, regression versions on
absolute errors with Welch's t-test; the verdict is plain words at a 5 % level.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import orjson

from capstan.serving.outcomes import Outcome, OutcomeStore

__all__ = [
    "ALPHA",
    "MIN_LABELLED",
    "Comparison",
    "QualityReport",
    "ShadowAgreement",
    "VersionQuality",
    "deployment_quality",
    "quality_report",
    "student_t_two_sided_p",
    "two_proportion_z_test",
    "welch_t_test",
]

Task = Literal["classification", "regression"]
ALPHA = 0.05
"""Significance level of the verdict."""
MIN_LABELLED = 10
"""Labelled predictions each version needs before the two are tested."""
_REL_TOL = 1e-9


@dataclass(frozen=True, slots=True)
class VersionQuality:
    """One version's figures. ``role`` is its role in its newest outcome; a version mirrored as a shadow is listed
    apart (``role="shadow"``) from its live answers. Latency percentiles cover successful answers (status < 400).
    ``labelled`` counts predictions with a truth; ``unpaired`` counts requests whose truth did not fit their
    predictions (a list of another length). ``accuracy`` (classification) or ``mae`` (regression) is None without
    labelled predictions."""

    version: str
    role: str
    requests: int
    errors: int
    client_errors: int
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    latency_p99_ms: float | None
    labelled: int
    unpaired: int
    correct: int | None
    accuracy: float | None
    mae: float | None


@dataclass(frozen=True, slots=True)
class ShadowAgreement:
    """How often a shadow version's answers differed from the live answer of the same request."""

    version: str
    compared: int
    disagreements: int
    rate: float | None


@dataclass(frozen=True, slots=True)
class Comparison:
    """The significance test between two versions (``a`` listed first): the metric, its value per version, the
    test's statistic and two-sided p-value (None when there is too little data) and a plain verdict."""

    a: str
    b: str
    metric: Literal["accuracy", "mae"]
    test: Literal["two-proportion z-test", "Welch's t-test"]
    value_a: float | None
    value_b: float | None
    statistic: float | None
    p_value: float | None
    verdict: str


@dataclass(frozen=True, slots=True)
class QualityReport:
    """A deployment's per-version quality, shadow agreement and the comparison between its two main versions."""

    project: str
    deployment: str
    task: Task | None
    versions: tuple[VersionQuality, ...]
    shadows: tuple[ShadowAgreement, ...]
    comparison: Comparison | None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (for the API and ``capstan deployments status --json``)."""
        return asdict(self)


# ------------------------------------------------------------------------------------------------ the tests


def two_proportion_z_test(successes_a: int, n_a: int, successes_b: int, n_b: int) -> tuple[float, float]:
    """Two-sided two-proportion z-test with the pooled proportion: ``(z, p_value)``. When both proportions are 0 or
    both 1 there is no variance and no evidence of a difference: ``(0.0, 1.0)``. ``ValueError`` for empty samples."""
    if n_a <= 0 or n_b <= 0:
        raise ValueError("both samples need at least one observation")
    pooled = (successes_a + successes_b) / (n_a + n_b)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
    if se == 0:
        return 0.0, 1.0
    z = (successes_a / n_a - successes_b / n_b) / se
    return z, math.erfc(abs(z) / math.sqrt(2))


def welch_t_test(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """Two-sided Welch's t-test (unequal variances): ``(t, p_value)``, as ``scipy.stats.ttest_ind(a, b,
    equal_var=False)`` (no scipy here: the t distribution is computed by `student_t_two_sided_p`). Two samples
    without variance: ``(0.0, 1.0)`` when their means agree, else ``(±inf, 0.0)``.
    ``ValueError`` for a sample of fewer than two values."""
    if len(a) < 2 or len(b) < 2:
        raise ValueError("both samples need at least two observations")
    mean_a, mean_b = math.fsum(a) / len(a), math.fsum(b) / len(b)
    var_a = math.fsum((x - mean_a) ** 2 for x in a) / (len(a) - 1) / len(a)
    var_b = math.fsum((x - mean_b) ** 2 for x in b) / (len(b) - 1) / len(b)
    se2 = var_a + var_b
    if se2 == 0:
        if math.isclose(mean_a, mean_b, rel_tol=_REL_TOL):
            return 0.0, 1.0
        return math.copysign(math.inf, mean_a - mean_b), 0.0
    t = (mean_a - mean_b) / math.sqrt(se2)
    df = se2 ** 2 / (var_a ** 2 / (len(a) - 1) + var_b ** 2 / (len(b) - 1))
    return t, student_t_two_sided_p(t, df)


def student_t_two_sided_p(t: float, df: float) -> float:
    """P(|T| >= |t|) for Student's t with ``df`` degrees of freedom: the regularized incomplete beta
    I_{df/(df+t²)}(df/2, 1/2)."""
    if math.isinf(t):
        return 0.0
    return min(1.0, max(0.0, _incomplete_beta(df / 2, 0.5, df / (df + t * t))))


def _incomplete_beta(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b), by its continued fraction (evaluated with Lentz's
    method) on whichever side of the mean converges fast."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1) / (a + b + 2):
        return math.exp(log_front) * _beta_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_fraction(b, a, 1 - x) / b


def _beta_fraction(a: float, b: float, x: float) -> float:
    tiny = 1e-300

    def nonzero(value: float) -> float:
        return value if abs(value) >= tiny else tiny

    c, d = 1.0, 1.0 / nonzero(1 - (a + b) * x / (a + 1))
    result = d
    for m in range(1, 1000):
        even = m * (b - m) * x / ((a - 1 + 2 * m) * (a + 2 * m))
        d = 1.0 / nonzero(1 + even * d)
        c = nonzero(1 + even / c)
        result *= d * c
        odd = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 1 + 2 * m))
        d = 1.0 / nonzero(1 + odd * d)
        c = nonzero(1 + odd / c)
        step = d * c
        result *= step
        if abs(step - 1) < 1e-15:
            break
    return result


# ------------------------------------------------------------------------------------------------ the report


@dataclass
class _Group:
    version: str
    role: str
    shadow: bool
    requests: int = 0
    errors: int = 0
    client_errors: int = 0
    unpaired: int = 0
    compared: int = 0
    disagreements: int = 0

    def __post_init__(self) -> None:
        self.latencies: list[float] = []
        self.pairs: list[tuple[object, object]] = []


def quality_report(project: str, deployment: str, outcomes: Sequence[Outcome], *,
                   task: Task | None = None) -> QualityReport:
    """The quality report of ``outcomes`` (any order). ``task`` forces classification or regression."""
    groups: dict[tuple[str, bool], _Group] = {}
    for outcome in sorted(outcomes, key=lambda o: (o.time_ms, o.id)):
        _add(groups, outcome)
    pairs = [pair for g in groups.values() for pair in g.pairs]
    chosen: Task | None = task or (_task_of(pairs) if pairs else None)
    qualities = {key: _quality(g, chosen) for key, g in groups.items()}
    ordered = sorted(groups, key=lambda k: (k[1], _ROLE_ORDER.get(groups[k].role, 9), _version_key(k[0])))
    shadows = tuple(ShadowAgreement(g.version, g.compared, g.disagreements,
                                    g.disagreements / g.compared if g.compared else None)
                    for key, g in ((k, groups[k]) for k in ordered) if key[1])
    comparison = _compare(ordered, groups, qualities, chosen) if chosen else None
    return QualityReport(project, deployment, chosen, tuple(qualities[k][0] for k in ordered), shadows, comparison)


def deployment_quality(outcomes: OutcomeStore, project: str, deployment: str, *, limit: int = 100_000,
                       task: Task | None = None) -> QualityReport:
    """The quality report of a deployment's newest ``limit`` outcomes, read through ``outcomes``."""
    return quality_report(project, deployment, outcomes.outcomes(project, deployment, limit=limit), task=task)


_ROLE_ORDER = {"primary": 0, "canary": 1, "shadow": 2}


def _version_key(version: str) -> tuple[int, str]:
    return (int(version), "") if version.isdigit() else (1 << 62, version)


def _add(groups: dict[tuple[str, bool], _Group], outcome: Outcome) -> None:
    shadow = outcome.role == "shadow"
    group = groups.setdefault((outcome.version, shadow), _Group(outcome.version, outcome.role, shadow))
    group.role = outcome.role
    group.requests += 1
    if outcome.status == 0 or outcome.status >= 500:
        group.errors += 1
        return
    if outcome.status >= 400:
        group.client_errors += 1
        return
    group.latencies.append(outcome.latency_ms)
    if shadow and outcome.disagrees is not None:
        group.compared += 1
        group.disagreements += int(outcome.disagrees)
    if outcome.truth is None or outcome.predictions is None:
        return
    pairs = _pairs(outcome.predictions, outcome.truth)
    if pairs is None:
        group.unpaired += 1
    else:
        group.pairs.extend(pairs)


def _pairs(predictions: str, truth: str) -> list[tuple[object, object]] | None:
    try:
        predicted, expected = orjson.loads(predictions), orjson.loads(truth)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(predicted, list):
        return None
    if not isinstance(expected, list) or (len(predicted) == 1 and len(expected) != 1):
        expected = [expected]
    if len(expected) != len(predicted):
        return None
    return list(zip(predicted, expected, strict=True))


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _task_of(pairs: Sequence[tuple[object, object]]) -> Task:
    if not all(_is_number(truth) for _, truth in pairs):
        return "classification"
    fractional = any(_is_number(v) and not float(v).is_integer()  # type: ignore[arg-type]  # checked numeric
                     for pair in pairs for v in pair)
    return "regression" if fractional else "classification"


def _equal(predicted: object, truth: object) -> bool:
    if _is_number(predicted) and _is_number(truth):
        return math.isclose(float(predicted), float(truth), rel_tol=_REL_TOL)  # type: ignore[arg-type]  # numeric
    return predicted == truth


def _quality(group: _Group, task: Task | None) -> tuple[VersionQuality, list[float]]:
    """The version's figures, and its absolute errors (regression) for the t-test."""
    p50, p95, p99 = (_percentile(group.latencies, q) for q in (50, 95, 99))
    labelled, correct, accuracy, mae, errors = 0, None, None, None, []
    if task == "classification":
        labelled = len(group.pairs)
        correct = sum(_equal(p, t) for p, t in group.pairs)
        accuracy = correct / labelled if labelled else None
    elif task == "regression":
        errors = [abs(float(p) - float(t)) for p, t in group.pairs  # type: ignore[arg-type]  # both checked numeric
                  if _is_number(p) and _is_number(t)]
        labelled = len(errors)
        mae = math.fsum(errors) / labelled if labelled else None
    unpaired = group.unpaired + len(group.pairs) - labelled if task == "regression" else group.unpaired
    quality = VersionQuality(group.version, group.role, group.requests, group.errors, group.client_errors,
                             p50, p95, p99, labelled, unpaired, correct, accuracy, mae)
    return quality, errors


def _percentile(values: Sequence[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _compare(ordered: Sequence[tuple[str, bool]], groups: dict[tuple[str, bool], _Group],
             qualities: dict[tuple[str, bool], tuple[VersionQuality, list[float]]], task: Task) -> Comparison | None:
    """Primary against canary (the first two live versions); with one live version, against the first shadow."""
    live = [k for k in ordered if not k[1]]
    shadow = [k for k in ordered if k[1]]
    candidates = live[:2] if len(live) >= 2 else live[:1] + shadow[:1]
    if len(candidates) < 2:
        return None
    (qa, errors_a), (qb, errors_b) = qualities[candidates[0]], qualities[candidates[1]]
    name_a, name_b = _label(groups[candidates[0]]), _label(groups[candidates[1]])
    if task == "classification":
        comparison = Comparison(name_a, name_b, "accuracy", "two-proportion z-test", qa.accuracy, qb.accuracy,
                                None, None, "")
        if min(qa.labelled, qb.labelled) < MIN_LABELLED:
            return _too_few(comparison)
        z, p = two_proportion_z_test(qa.correct or 0, qa.labelled, qb.correct or 0, qb.labelled)
        return _verdict(comparison, z, p, higher_is_better=True)
    comparison = Comparison(name_a, name_b, "mae", "Welch's t-test", qa.mae, qb.mae, None, None, "")
    if min(len(errors_a), len(errors_b)) < MIN_LABELLED:
        return _too_few(comparison)
    t, p = welch_t_test(errors_a, errors_b)
    return _verdict(comparison, t, p, higher_is_better=False)


def _label(group: _Group) -> str:
    return f"{group.version} ({group.role})"


def _too_few(comparison: Comparison) -> Comparison:
    return _with(comparison, None, None, f"not enough labelled predictions to compare (each version needs "
                                         f"{MIN_LABELLED}); send ground truth to /deployments/NAME/feedback")


def _verdict(comparison: Comparison, statistic: float, p_value: float, *, higher_is_better: bool) -> Comparison:
    a, b = comparison.value_a, comparison.value_b
    assert a is not None and b is not None  # both versions have labelled predictions here
    if p_value >= ALPHA or a == b:
        text = (f"no significant difference in {comparison.metric} between {comparison.a} and {comparison.b} "
                f"(p = {p_value:.3g})")
    else:
        a_better = (a > b) == higher_is_better
        better, worse = (comparison.a, comparison.b) if a_better else (comparison.b, comparison.a)
        text = f"{better} is significantly better than {worse} on {comparison.metric} (p = {p_value:.3g})"
    return _with(comparison, statistic, p_value, text)


def _with(comparison: Comparison, statistic: float | None, p_value: float | None, verdict: str) -> Comparison:
    return Comparison(comparison.a, comparison.b, comparison.metric, comparison.test, comparison.value_a,
                      comparison.value_b, statistic, p_value, verdict)
