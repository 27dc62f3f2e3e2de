"""Data drift statistics (pure): a reference profile of the training data and its comparison with a live window.

`profile` summarises reference columns into a `ReferenceProfile` (a JSON-compatible record, stored as an artifact):
numeric features keep quantile bin edges with the reference bin proportions and a bounded sorted sample, categorical
features keep category frequencies. `compare` measures a live window against it: the population stability index
(PSI) and the two-sample Kolmogorov-Smirnov test for numeric features, Pearson's chi-square test for categorical
ones. No I/O, no clock, no scipy: the distribution functions are implemented here (see
docs/decisions/0301-drift-statistics.md) and checked against scipy by the tests.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from capstan.errors import InvalidParameterValue

__all__ = [
    "OTHER",
    "CategoricalFeature",
    "DriftReport",
    "DriftThresholds",
    "FeatureDrift",
    "NumericFeature",
    "ReferenceProfile",
    "chi2_sf",
    "chi_square",
    "compare",
    "ks_pvalue",
    "ks_statistic",
    "profile",
    "psi",
]

Column = npt.NDArray[Any] | Sequence[object]
FeatureKind = Literal["numeric", "categorical"]

OTHER = "__other__"
"""The bucket of live categories the reference never saw (not a key of `CategoricalFeature.frequencies`)."""

PROFILE_FORMAT = 1
PSI_EPS = 1e-4
CHI2_EPS = 1e-4


# --------------------------------------------------------------------------------------------------------- records


@dataclass(frozen=True)
class NumericFeature:
    """A numeric reference feature.

    `edges` are the interior cut points (ascending, distinct) of ``len(edges) + 1`` bins; the first and last bins
    are open, so live values outside the reference range fall into them. A value equal to a cut point belongs to
    the bin on its right. `sample` is a sorted, evenly spaced subset of the sorted reference values (all of them
    when there are at most ``max_sample``), used for the KS test.
    """

    name: str
    count: int
    edges: tuple[float, ...]
    proportions: tuple[float, ...]
    sample: tuple[float, ...]

    kind: Literal["numeric"] = "numeric"


@dataclass(frozen=True)
class CategoricalFeature:
    """A categorical reference feature: category (as ``str(value)``) → its proportion in the reference."""

    name: str
    count: int
    frequencies: tuple[tuple[str, float], ...]

    kind: Literal["categorical"] = "categorical"


Feature = NumericFeature | CategoricalFeature


@dataclass(frozen=True)
class ReferenceProfile:
    """The reference distribution of each feature, in name order."""

    features: tuple[Feature, ...]

    def feature(self, name: str) -> Feature:
        for feature in self.features:
            if feature.name == name:
                return feature
        raise InvalidParameterValue(f"feature {name!r} is not in the reference profile")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(feature.name for feature in self.features)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-compatible dict (every float is finite); `from_dict` reads it back equal."""
        features: list[dict[str, Any]] = []
        for feature in self.features:
            if isinstance(feature, NumericFeature):
                features.append(
                    {
                        "name": feature.name,
                        "kind": "numeric",
                        "count": feature.count,
                        "edges": list(feature.edges),
                        "proportions": list(feature.proportions),
                        "sample": list(feature.sample),
                    }
                )
            else:
                features.append(
                    {
                        "name": feature.name,
                        "kind": "categorical",
                        "count": feature.count,
                        "frequencies": dict(feature.frequencies),
                    }
                )
        return {"format": PROFILE_FORMAT, "features": features}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ReferenceProfile:
        """Read a `to_dict` result; malformed input raises `InvalidParameterValue` naming the field."""
        if not isinstance(data, Mapping) or data.get("format") != PROFILE_FORMAT:
            raise InvalidParameterValue(f"drift profile: format must be {PROFILE_FORMAT}")
        raw_features = data.get("features")
        if not isinstance(raw_features, list):
            raise InvalidParameterValue("drift profile: features must be a list")
        features: list[Feature] = []
        for raw in raw_features:
            if not isinstance(raw, Mapping) or not isinstance(raw.get("name"), str):
                raise InvalidParameterValue("drift profile: each feature needs a string name")
            name: str = raw["name"]
            count = raw.get("count")
            if not isinstance(count, int) or isinstance(count, bool) or count < 1:
                raise InvalidParameterValue(f"drift profile: feature {name!r}: count must be a positive integer")
            kind = raw.get("kind")
            if kind == "numeric":
                edges = _float_list(raw.get("edges"), name, "edges")
                proportions = _float_list(raw.get("proportions"), name, "proportions")
                sample = _float_list(raw.get("sample"), name, "sample")
                if len(proportions) != len(edges) + 1 or not sample:
                    raise InvalidParameterValue(
                        f"drift profile: feature {name!r}: needs len(edges) + 1 proportions and a sample"
                    )
                if any(b <= a for a, b in pairwise(edges)) or any(b < a for a, b in pairwise(sample)):
                    raise InvalidParameterValue(f"drift profile: feature {name!r}: edges and sample must be sorted")
                features.append(NumericFeature(name, count, tuple(edges), tuple(proportions), tuple(sample)))
            elif kind == "categorical":
                frequencies = raw.get("frequencies")
                if (
                    not isinstance(frequencies, Mapping)
                    or not frequencies
                    or not all(isinstance(k, str) for k in frequencies)
                ):
                    raise InvalidParameterValue(
                        f"drift profile: feature {name!r}: frequencies must be a non-empty object"
                    )
                values = _float_list(list(frequencies.values()), name, "frequencies")
                features.append(
                    CategoricalFeature(name, count, tuple(sorted(zip(frequencies.keys(), values, strict=True))))
                )
            else:
                raise InvalidParameterValue(f"drift profile: feature {name!r}: kind must be numeric or categorical")
        names = [feature.name for feature in features]
        if len(set(names)) != len(names):
            raise InvalidParameterValue("drift profile: feature names must be unique")
        return cls(tuple(sorted(features, key=lambda feature: feature.name)))


def _float_list(value: object, name: str, field: str) -> list[float]:
    if not isinstance(value, list) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in value
    ):
        raise InvalidParameterValue(f"drift profile: feature {name!r}: {field} must be a list of finite numbers")
    return [float(v) for v in value]


@dataclass(frozen=True)
class DriftThresholds:
    """A feature drifts when its PSI exceeds `psi`, or a test's p-value is below `ks_p` (KS) or `chi2_p` (chi²)."""

    psi: float = 0.2
    ks_p: float = 0.01
    chi2_p: float = 0.01


@dataclass(frozen=True)
class FeatureDrift:
    """One statistic of one feature: `stat_name` is "psi", "ks" or "chi2"; PSI has no p-value."""

    feature: str
    kind: FeatureKind
    stat_name: Literal["psi", "ks", "chi2"]
    value: float
    p_value: float | None
    drifted: bool


@dataclass(frozen=True)
class DriftReport:
    """Every (feature, statistic) of a comparison, in the profile's feature order."""

    features: tuple[FeatureDrift, ...]

    @property
    def drifted(self) -> bool:
        return any(item.drifted for item in self.features)

    @property
    def drifted_features(self) -> tuple[str, ...]:
        names: list[str] = []
        for item in self.features:
            if item.drifted and item.feature not in names:
                names.append(item.feature)
        return tuple(names)


# --------------------------------------------------------------------------------------------------------- profile


def profile(
    columns: Mapping[str, Column],
    *,
    categorical: Collection[str] = (),
    bins: int = 10,
    max_sample: int = 5000,
) -> ReferenceProfile:
    """Profile reference columns (one 1-D array or sequence per feature, e.g. the training data).

    A feature is categorical when named in `categorical` or when its dtype is not integer or float (strings, bools,
    objects); other features are numeric and must be finite. Numeric bin edges are the reference quantiles at
    ``0, 1/bins, ..., 1``, deduplicated; the sample keeps at most `max_sample` evenly spaced order statistics.
    """
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise InvalidParameterValue(f"bins must be a positive integer, got {bins!r}")
    if isinstance(max_sample, bool) or not isinstance(max_sample, int) or max_sample < 2:
        raise InvalidParameterValue(f"max_sample must be an integer of at least 2, got {max_sample!r}")
    if not columns:
        raise InvalidParameterValue("profile needs at least one column")
    unknown = sorted(set(categorical) - set(columns))
    if unknown:
        raise InvalidParameterValue(f"categorical feature {unknown[0]!r} is not a column")
    features: list[Feature] = []
    for name in sorted(columns):
        if not isinstance(name, str):
            raise InvalidParameterValue(f"feature names must be strings, got {name!r}")
        array = _as_array(name, columns[name])
        if name in categorical or array.dtype.kind not in "iuf":
            features.append(_profile_categorical(name, array))
        else:
            features.append(_profile_numeric(name, _as_numeric(name, array), bins, max_sample))
    return ReferenceProfile(tuple(features))


def _as_array(name: str, values: Column) -> npt.NDArray[Any]:
    try:
        array = np.asarray(values)
    except (ValueError, TypeError) as exc:
        raise InvalidParameterValue(f"feature {name!r}: not a 1-D column ({exc})") from exc
    if array.ndim != 1:
        raise InvalidParameterValue(f"feature {name!r}: must be 1-D, got shape {array.shape}")
    if array.size == 0:
        raise InvalidParameterValue(f"feature {name!r}: no values")
    return array


def _as_numeric(name: str, array: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
    if array.dtype.kind not in "iufb":
        raise InvalidParameterValue(f"feature {name!r}: numeric feature got values of dtype {array.dtype}")
    numeric = array.astype(np.float64)
    if not np.all(np.isfinite(numeric)):
        raise InvalidParameterValue(f"feature {name!r}: numeric values must be finite (no NaN or infinity)")
    return numeric


def _profile_numeric(name: str, values: npt.NDArray[np.float64], bins: int, max_sample: int) -> NumericFeature:
    ordered = np.sort(values)
    quantiles = np.unique(np.quantile(ordered, np.linspace(0.0, 1.0, bins + 1)))
    edges = quantiles[1:-1]
    counts = np.bincount(np.searchsorted(edges, ordered, side="right"), minlength=edges.size + 1)
    if ordered.size > max_sample:
        ordered = ordered[np.round(np.linspace(0, ordered.size - 1, max_sample)).astype(np.int64)]
    return NumericFeature(
        name=name,
        count=int(values.size),
        edges=tuple(float(x) for x in edges),
        proportions=tuple(float(c) / values.size for c in counts),
        sample=tuple(float(x) for x in ordered),
    )


def _profile_categorical(name: str, array: npt.NDArray[Any]) -> CategoricalFeature:
    counts = _category_counts(array)
    total = sum(counts.values())
    return CategoricalFeature(name, total, tuple(sorted((k, c / total) for k, c in counts.items())))


def _category_counts(array: npt.NDArray[Any]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for value in array.tolist():
        key = str(value)
        counts[key] = counts.get(key, 0) + 1
    return counts


# --------------------------------------------------------------------------------------------------------- compare


def compare(
    reference: ReferenceProfile,
    live_columns: Mapping[str, Column],
    *,
    thresholds: DriftThresholds = DriftThresholds(),  # a frozen record, never mutated
) -> DriftReport:
    """Compare a live window with the reference: PSI and KS per numeric feature, chi-square per categorical one.

    Every profiled feature must be present and non-empty (`InvalidParameterValue` names it); extra live columns are
    ignored.
    """
    results: list[FeatureDrift] = []
    for feature in reference.features:
        if feature.name not in live_columns:
            raise InvalidParameterValue(f"feature {feature.name!r}: missing from the live window")
        array = _as_array(feature.name, live_columns[feature.name])
        if isinstance(feature, NumericFeature):
            live = _as_numeric(feature.name, array)
            edges = np.asarray(feature.edges, dtype=np.float64)
            counts = np.bincount(np.searchsorted(edges, live, side="right"), minlength=edges.size + 1)
            value = psi(feature.proportions, counts / live.size)
            results.append(FeatureDrift(feature.name, "numeric", "psi", value, None, value > thresholds.psi))
            sample = np.asarray(feature.sample, dtype=np.float64)
            d = ks_statistic(sample, live)
            p = ks_pvalue(d, sample.size, live.size)
            results.append(FeatureDrift(feature.name, "numeric", "ks", d, p, p < thresholds.ks_p))
        else:
            live_counts = _category_counts(array)
            categories = [category for category, _ in feature.frequencies]
            expected = [frequency for _, frequency in feature.frequencies] + [0.0]
            observed = [live_counts.pop(category, 0) for category in categories] + [sum(live_counts.values())]
            stat, p = chi_square(expected, observed)
            results.append(FeatureDrift(feature.name, "categorical", "chi2", stat, p, p < thresholds.chi2_p))
    return DriftReport(tuple(results))


# ------------------------------------------------------------------------------------------------------ statistics


def psi(expected_props: Sequence[float] | npt.ArrayLike, actual_props: npt.ArrayLike, eps: float = PSI_EPS) -> float:
    """Population stability index ``sum((a - e) * ln(a / e))``; proportions below `eps` count as `eps`."""
    expected = np.maximum(np.asarray(expected_props, dtype=np.float64), eps)
    actual = np.maximum(np.asarray(actual_props, dtype=np.float64), eps)
    if expected.shape != actual.shape or expected.ndim != 1:
        raise InvalidParameterValue("psi: expected and actual proportions must be 1-D of the same length")
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def ks_statistic(ref_sorted: npt.ArrayLike, live: npt.ArrayLike) -> float:
    """Two-sample Kolmogorov-Smirnov D: the largest distance between the two empirical CDFs.

    `ref_sorted` must be sorted ascending; `live` need not be.
    """
    reference = np.asarray(ref_sorted, dtype=np.float64)
    window = np.sort(np.asarray(live, dtype=np.float64))
    if reference.size == 0 or window.size == 0:
        raise InvalidParameterValue("ks_statistic: both samples must be non-empty")
    points = np.concatenate([reference, window])
    cdf_ref = np.searchsorted(reference, points, side="right") / reference.size
    cdf_live = np.searchsorted(window, points, side="right") / window.size
    return float(np.max(np.abs(cdf_ref - cdf_live)))


def ks_pvalue(d: float, n1: int, n2: int) -> float:
    """Asymptotic two-sided p-value of a two-sample KS statistic, as ``scipy.stats.ks_2samp(method="asymp")``.

    That is the survival function of the one-sample Kolmogorov distribution of ``D_n`` at `d` for the effective size
    ``n = round(n1 * n2 / (n1 + n2))``, computed as in Simard & L'Ecuyer (2011): exact (Ruben-Gambino, the Durbin
    matrix, twice the one-sided Smirnov sum) where that is cheap, the Pelz-Good expansion otherwise.
    """
    if n1 < 1 or n2 < 1:
        raise InvalidParameterValue("ks_pvalue: both sample sizes must be positive")
    n = round(n1 * n2 / (n1 + n2))
    return _kolmogorov_sf(max(n, 1), d)


def chi_square(ref_freqs: npt.ArrayLike, live_counts: npt.ArrayLike, eps: float = CHI2_EPS) -> tuple[float, float]:
    """Pearson's chi-square goodness-of-fit of live counts to reference proportions: (statistic, p-value).

    A bucket with a zero reference proportion (the unseen-category bucket) gets proportion `eps` and the proportions
    are renormalised; a bucket with zero proportion and zero count is left out. Degrees of freedom: buckets - 1.
    """
    freqs = np.asarray(ref_freqs, dtype=np.float64)
    counts = np.asarray(live_counts, dtype=np.float64)
    if freqs.shape != counts.shape or freqs.ndim != 1:
        raise InvalidParameterValue("chi_square: reference frequencies and live counts must be 1-D of the same length")
    if np.any(freqs < 0) or np.any(counts < 0) or not np.all(np.isfinite(freqs)):
        raise InvalidParameterValue("chi_square: frequencies and counts must be non-negative")
    keep = (freqs > 0) | (counts > 0)
    freqs, counts = freqs[keep], counts[keep]
    total = float(counts.sum())
    if total <= 0:
        raise InvalidParameterValue("chi_square: the live window is empty")
    if freqs.size < 2:
        return 0.0, 1.0
    probabilities = np.where(freqs > 0, freqs, eps)
    expected = probabilities / probabilities.sum() * total
    statistic = float(np.sum((counts - expected) ** 2 / expected))
    return statistic, chi2_sf(statistic, freqs.size - 1)


def chi2_sf(x: float, dof: int) -> float:
    """Survival function of the chi-square distribution: the regularised upper incomplete gamma Q(dof/2, x/2)."""
    if dof < 1:
        raise InvalidParameterValue(f"chi2_sf: degrees of freedom must be positive, got {dof}")
    if x <= 0:
        return 1.0
    return _gamma_q(dof / 2.0, x / 2.0)


# ------------------------------------------------------------------------------------- distribution functions


_MAX_ITER = 100_000
_TINY = 1e-300


def _gamma_q(a: float, x: float) -> float:
    """Regularised upper incomplete gamma Q(a, x): the series for P when x < a + 1, Lentz's continued fraction else."""
    log_prefix = a * math.log(x) - x - math.lgamma(a)
    if x < a + 1.0:
        term = total = 1.0 / a
        ap = a
        for _ in range(_MAX_ITER):
            ap += 1.0
            term *= x / ap
            total += term
            if abs(term) < abs(total) * 1e-16:
                break
        return min(max(1.0 - total * math.exp(log_prefix), 0.0), 1.0)
    b = x + 1.0 - a
    c = 1.0 / _TINY
    d = 1.0 / b
    h = d
    for i in range(1, _MAX_ITER):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        d = _TINY if abs(d) < _TINY else d
        c = b + an / c
        c = _TINY if abs(c) < _TINY else c
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-16:
            break
    return min(max(math.exp(log_prefix) * h, 0.0), 1.0)


def _log_factorial_over_power(n: int) -> float:
    """log(n! / n**n)."""
    return math.lgamma(n + 1) - n * math.log(n)


def _kolmogorov_sf(n: int, x: float) -> float:
    """P(D_n >= x) for the one-sample two-sided KS statistic (the branches of scipy's ``kstwo.sf``)."""
    if x >= 1.0:
        return 0.0
    if x <= 0.0:
        return 1.0
    t = n * x
    if t <= 1.0:  # Ruben-Gambino: exact for 1/(2n) <= x <= 1/n
        if t <= 0.5:
            return 1.0
        return _clip(1.0 - math.exp(_log_factorial_over_power(n) + n * math.log(2 * t - 1)))
    if t >= n - 1:  # Ruben-Gambino
        return _clip(2.0 * (1.0 - x) ** n)
    if x >= 0.5:  # exact: the two one-sided events cannot both happen
        return _clip(2.0 * _smirnov_sf(n, x))
    nxx = t * x
    if n <= 140:
        if nxx <= 4.0:
            return _clip(1.0 - _kolmogorov_cdf_durbin(n, x))
        return _clip(2.0 * _smirnov_sf(n, x))
    if nxx >= 370.0:
        return 0.0
    if nxx >= 2.2:
        return _clip(2.0 * _smirnov_sf(n, x))
    if n <= 100_000 and n * x**1.5 <= 1.4:
        return _clip(1.0 - _kolmogorov_cdf_durbin(n, x))
    return _clip(1.0 - _kolmogorov_cdf_pelz_good(n, x))


def _clip(p: float) -> float:
    return min(max(float(p), 0.0), 1.0)


def _smirnov_sf(n: int, x: float) -> float:
    """P(D_n^+ >= x), exactly (Birnbaum-Tingey): ``x * sum_j C(n, j) (x + j/n)^(j-1) (1 - x - j/n)^(n-j)``."""
    jmax = math.floor(n * (1.0 - x))
    j = np.arange(0, jmax + 1, dtype=np.float64)
    rest = 1.0 - x - j / n
    j, rest = j[rest > 0], rest[rest > 0]
    log_choose = np.array([math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) for k in j.tolist()])
    log_terms = log_choose + (j - 1.0) * np.log(x + j / n) + (n - j) * np.log(rest)
    if log_terms.size == 0:
        return 0.0
    top = float(np.max(log_terms))
    return float(x * math.exp(top) * np.sum(np.exp(log_terms - top)))


def _kolmogorov_cdf_durbin(n: int, d: float) -> float:
    """P(D_n <= d) by the Durbin matrix algorithm (Marsaglia, Tsang and Wang 2003), scaling the powers of H."""
    nd = n * d
    if nd <= 0.5:
        return 0.0
    k = math.ceil(nd)
    h = k - nd
    m = 2 * k - 1
    steps = np.arange(1, m + 1, dtype=np.float64)
    inverse_factorials = np.ones(m + 1)
    for j in range(1, m + 1):
        inverse_factorials[j] = inverse_factorials[j - 1] / j
    v = (1.0 - h**steps) * inverse_factorials[1:]
    v[-1] = (1.0 - 2.0 * h**m + max(2.0 * h - 1.0, 0.0) ** m) * inverse_factorials[m]
    matrix = np.zeros((m, m))
    for i in range(1, m):
        matrix[i - 1 :, i] = inverse_factorials[: m - i + 1]
    matrix[:, 0] = v
    matrix[-1, :] = v[::-1]

    power = np.eye(m)
    log_power = 0.0  # power is scaled by exp(-log_power)
    log_matrix = 0.0
    remaining = n
    while remaining > 0:
        if remaining % 2:
            power = power @ matrix
            log_power += log_matrix
            peak = float(np.max(np.abs(power)))
            if peak > 1e100:
                power /= peak
                log_power += math.log(peak)
        remaining //= 2
        if remaining:
            matrix = matrix @ matrix
            log_matrix *= 2
            peak = float(np.max(np.abs(matrix)))
            if peak > 1e100:
                matrix /= peak
                log_matrix += math.log(peak)
    value = float(power[k - 1, k - 1])
    if value <= 0:
        return 0.0
    return _clip(math.exp(math.log(value) + log_power + _log_factorial_over_power(n)))


def _kolmogorov_cdf_pelz_good(n: int, x: float) -> float:
    """P(D_n <= x) by the Pelz-Good (1976) asymptotic expansion to order n^(-3/2)."""
    z = math.sqrt(n) * x
    z2, z3, z4, z6 = z**2, z**3, z**4, z**6
    log_q = -(math.pi**2) / 8 / z2
    if log_q < -708:
        return 0.0
    q = math.exp(log_q)
    pi2, pi4, pi6 = math.pi**2, math.pi**4, math.pi**6
    k1a, k1b = -z2, pi2 / 4
    k2a, k2b, k2c = 6 * z6 + 2 * z4, (2 * z4 - 5 * z2) * pi2 / 4, pi4 * (1 - 2 * z2) / 16
    k3d = pi6 * (5 - 30 * z2) / 64
    k3c = pi4 * (-60 * z2 + 212 * z4) / 16
    k3b = pi2 * (135 * z4 - 96 * z6) / 4
    k3a = -30 * z6 - 90 * z**8
    sums = [0.0, 0.0, 0.0, 0.0]
    maxk = math.ceil(16 * z / math.pi)
    for k in range(maxk, 0, -1):
        m = 2 * k - 1
        m2, m4, m6 = m**2, m**4, m**6
        q_power = q ** (8 * k)
        coefficients = (
            1.0,
            k1a + k1b * m2,
            k2a + k2b * m2 + k2c * m4,
            k3a + k3b * m2 + k3c * m4 + k3d * m6,
        )
        sums = [s * q_power + c for s, c in zip(sums, coefficients, strict=True)]
    root = math.sqrt(2 * math.pi)
    divisors = (z, 6 * z4, 72 * z**7, 6480 * z**10)
    terms = [s * q * root / dv for s, dv in zip(sums, divisors, strict=True)]
    q2 = math.exp(-pi2 / 2 / z2)
    extra2 = 0.0
    extra3 = 0.0
    sqrt3z = math.sqrt(3) * z
    for k in range(maxk, 0, -1):
        weight = k * k * q2 ** (k * k)
        extra2 += weight
        extra3 += (sqrt3z + math.pi * k) * (sqrt3z - math.pi * k) * weight
    terms[2] += extra2 * pi2 * root / (-36 * z3)
    terms[3] += extra3 * pi2 * root / (216 * z6)
    return _clip(sum(term / n ** (i / 2.0) for i, term in enumerate(terms)))
