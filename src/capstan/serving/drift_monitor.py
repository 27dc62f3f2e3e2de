"""Live data drift of served models: tumbling windows of input rows compared with a reference, per model version.

A version's reference is a `ModelReference`: the feature name of each input column and a
`capstan.serving.drift.ReferenceProfile`. It comes from the training data given at log time
(``capstan.log_model(..., reference_data=X)`` stores `REFERENCE_FILE` in the model folder; `read_reference` reads
it back and the replica passes it to `DriftMonitor.set_reference`) or, when there is none, from the version's first
window of live traffic (its features are then named by column index, ``"0"``, ``"1"``...).

`DriftMonitor` is a `ServingObserver`: ``predicted`` only appends the request's array to the version's list and
counts its rows (on the event loop). Once ``window_rows`` rows are waiting the list goes to a background thread, which
joins the arrays, cuts them into full windows (keeping the rest for the next) and compares each with the
reference (PSI and KS for numeric features, chi-square for categorical ones), sets ``capstan_feature_drift`` through a
`DriftGauge` and appends one ``DriftDetected`` event when a feature's statistic crosses its threshold; the statistic
must fall back under it before it can raise another. `DriftMonitor.report` is the snapshot that
``capstan deployments drift`` prints (`VersionDrift.to_dict` for the API, `format_drift_table` for the terminal).
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np

from capstan.clock import Clock, system_clock
from capstan.errors import InvalidParameterValue
from capstan.serving.drift import DriftReport, DriftThresholds, ReferenceProfile, compare, profile
from capstan.serving.observe import Array

if TYPE_CHECKING:
    from capstan.events.ports import EventLog

__all__ = [
    "DRIFT_DETECTED",
    "MONITOR_THRESHOLDS",
    "REFERENCE_FILE",
    "DriftGauge",
    "DriftMonitor",
    "FeatureDriftStatus",
    "ModelReference",
    "VersionDrift",
    "format_drift_table",
    "read_reference",
    "reference_from_data",
    "write_reference",
]

log = logging.getLogger(__name__)

REFERENCE_FILE = "reference_profile.json"
"""The file of a model folder holding its `ModelReference` (written by ``log_model(reference_data=...)``)."""
REFERENCE_FORMAT = 1
DRIFT_DETECTED = "DriftDetected"
MONITOR_THRESHOLDS = DriftThresholds(psi=0.2, ks_p=1e-3, chi2_p=1e-3)
"""The monitor's default thresholds: stricter p-values than a one-off test's, since a version is tested every
window (at 0.01, each numeric feature would raise a false alarm about once in a hundred windows)."""
ReferenceSource = Literal["training", "traffic"]
Stat = Literal["psi", "ks", "chi2"]


# ------------------------------------------------------------------------------------------------- reference


@dataclass(frozen=True)
class ModelReference:
    """The reference of a model version: ``columns[i]`` names input column ``i``; ``profile`` has those features."""

    columns: tuple[str, ...]
    profile: ReferenceProfile
    source: ReferenceSource = "training"

    def __post_init__(self) -> None:
        if sorted(self.columns) != sorted(self.profile.names) or len(set(self.columns)) != len(self.columns):
            raise InvalidParameterValue("drift reference: columns must name each profiled feature once")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-compatible dict; `from_dict` reads it back equal."""
        return {"format": REFERENCE_FORMAT, "source": self.source, "columns": list(self.columns),
                "profile": self.profile.to_dict()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelReference:
        """Read a `to_dict` result; malformed input raises `InvalidParameterValue` naming the field."""
        if not isinstance(data, Mapping) or data.get("format") != REFERENCE_FORMAT:
            raise InvalidParameterValue(f"drift reference: format must be {REFERENCE_FORMAT}")
        columns = data.get("columns")
        if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
            raise InvalidParameterValue("drift reference: columns must be a list of feature names")
        source = data.get("source", "training")
        if source not in ("training", "traffic"):
            raise InvalidParameterValue("drift reference: source must be training or traffic")
        raw_profile = data.get("profile")
        if not isinstance(raw_profile, Mapping):
            raise InvalidParameterValue("drift reference: profile must be an object")
        return cls(tuple(columns), ReferenceProfile.from_dict(raw_profile), source)


def reference_from_data(data: Any, *, categorical: Collection[str] = (), bins: int = 10,
                        max_sample: int = 5000) -> ModelReference:
    """Profile reference data: a pandas DataFrame (columns by name), a mapping of name to column, or a 1-D or 2-D
    array-like (columns named ``"0"``, ``"1"``...). Column order is the order of the model's input columns.
    Non-numeric columns and those named in ``categorical`` are categorical."""
    names, columns = _named_columns(data)
    unknown = sorted(set(categorical) - set(names))
    if unknown:
        raise InvalidParameterValue(f"reference_data: categorical feature {unknown[0]!r} is not a column")
    prepared = {name: _categories(columns[name]) if name in categorical else columns[name] for name in names}
    return ModelReference(tuple(names), profile(prepared, categorical=categorical, bins=bins, max_sample=max_sample))


def _named_columns(data: Any) -> tuple[list[str], dict[str, Array]]:
    frame_columns = getattr(data, "columns", None)
    if frame_columns is not None and hasattr(data, "iloc"):  # a pandas DataFrame
        names = [str(c) for c in frame_columns]
        arrays = [np.asarray(data.iloc[:, i]) for i in range(len(names))]
    elif isinstance(data, Mapping):
        names = [str(k) for k in data]
        arrays = [np.asarray(v) for v in data.values()]
    else:
        try:
            matrix = np.asarray(data)
        except (ValueError, TypeError) as exc:
            raise InvalidParameterValue(f"reference_data: not a table of rows ({exc})") from None
        if matrix.ndim == 1:
            matrix = matrix.reshape(-1, 1)
        if matrix.ndim != 2:
            raise InvalidParameterValue(f"reference_data: must be 1-D or 2-D, got shape {list(matrix.shape)}")
        names = [str(i) for i in range(matrix.shape[1])]
        arrays = [matrix[:, i] for i in range(matrix.shape[1])]
    if not names:
        raise InvalidParameterValue("reference_data: has no columns")
    if len(set(names)) != len(names):
        raise InvalidParameterValue("reference_data: column names must be unique")
    return names, dict(zip(names, arrays, strict=True))


def _categories(values: Array) -> Array:
    """Integral floats as integers, so that a category 3 reads the same from training data (``3``) and from a
    float input tensor (``3.0``)."""
    if values.dtype.kind == "f" and np.all(np.isfinite(values)) and np.all(values == np.round(values)):
        return values.astype(np.int64)
    return values


def write_reference(folder: str | Path, reference: ModelReference) -> Path:
    """Write ``reference`` as `REFERENCE_FILE` in the model folder ``folder``; returns the file."""
    path = Path(folder) / REFERENCE_FILE
    path.write_text(json.dumps(reference.to_dict(), separators=(",", ":")))
    return path


def read_reference(folder: str | Path) -> ModelReference | None:
    """The reference stored in the model folder ``folder``, or None when it has none."""
    path = Path(folder) / REFERENCE_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InvalidParameterValue(f"{path}: not a readable JSON drift reference ({exc})") from None
    return ModelReference.from_dict(data)


# ---------------------------------------------------------------------------------------------- records


@dataclass(frozen=True)
class FeatureDriftStatus:
    """One statistic of one feature in the latest window. ``threshold`` applies to ``value`` for PSI and to
    ``p_value`` for KS and chi-square."""

    feature: str
    kind: Literal["numeric", "categorical"]
    stat: Stat
    value: float
    p_value: float | None
    threshold: float
    drifted: bool


@dataclass(frozen=True)
class VersionDrift:
    """The drift of one model version: its reference, how much traffic was seen, and the latest window's stats."""

    model: str
    version: str
    reference: Literal["training", "traffic", "none"]
    window_rows: int
    rows_seen: int
    windows: int
    updated_ms: int | None
    features: tuple[FeatureDriftStatus, ...] = ()
    note: str = ""

    @property
    def drifted(self) -> bool:
        return any(f.drifted for f in self.features)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-compatible dict (for the API); `from_dict` reads it back equal."""
        return {"model": self.model, "version": self.version, "reference": self.reference,
                "window_rows": self.window_rows, "rows_seen": self.rows_seen, "windows": self.windows,
                "updated_ms": self.updated_ms, "drifted": self.drifted, "note": self.note,
                "features": [{"feature": f.feature, "kind": f.kind, "stat": f.stat, "value": f.value,
                              "p_value": f.p_value, "threshold": f.threshold, "drifted": f.drifted}
                             for f in self.features]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> VersionDrift:
        """Read a `to_dict` result (from a replica or the API)."""
        try:
            features = tuple(FeatureDriftStatus(f["feature"], f["kind"], f["stat"], float(f["value"]),
                                                None if f["p_value"] is None else float(f["p_value"]),
                                                float(f["threshold"]), bool(f["drifted"]))
                             for f in data["features"])
            return cls(str(data["model"]), str(data["version"]), data["reference"], int(data["window_rows"]),
                       int(data["rows_seen"]), int(data["windows"]), data["updated_ms"], features,
                       str(data.get("note", "")))
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidParameterValue(f"drift report: malformed record ({exc!r})") from None


def format_drift_table(reports: Sequence[VersionDrift]) -> str:
    """The terminal table of ``capstan deployments drift``: one line per version and statistic."""
    header = f"{'MODEL':<20} {'VERSION':<8} {'FEATURE':<20} {'STAT':<5} {'VALUE':>10} {'P':>10} {'THRESH':>8} DRIFT"
    lines = [header]
    for report in reports:
        if not report.features:
            why = report.note or (f"waiting for a window of {report.window_rows} rows "
                                  f"({report.rows_seen} seen, reference: {report.reference})")
            lines.append(f"{report.model:<20} {report.version:<8} {why}")
        for f in report.features:
            p = "-" if f.p_value is None else f"{f.p_value:.3g}"
            lines.append(f"{report.model:<20} {report.version:<8} {f.feature:<20} {f.stat:<5} {f.value:>10.4g} "
                         f"{p:>10} {f.threshold:>8.3g} {'yes' if f.drifted else 'no'}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- pure steps


def window_columns(columns: Sequence[str], rows: Array, categorical: Collection[str]) -> dict[str, Array]:
    """The live window as named columns: input column ``i`` is feature ``columns[i]``."""
    matrix = rows.reshape(rows.shape[0], -1) if rows.ndim != 1 else rows.reshape(-1, 1)
    if matrix.shape[1] != len(columns):
        raise InvalidParameterValue(f"the inputs have {matrix.shape[1]} columns, the reference {len(columns)}")
    return {name: _categories(matrix[:, i]) if name in categorical else matrix[:, i]
            for i, name in enumerate(columns)}


def statuses_of(report: DriftReport, thresholds: DriftThresholds) -> tuple[FeatureDriftStatus, ...]:
    """The report's statistics with the threshold each was judged by."""
    limit = {"psi": thresholds.psi, "ks": thresholds.ks_p, "chi2": thresholds.chi2_p}
    return tuple(FeatureDriftStatus(item.feature, item.kind, item.stat_name, item.value, item.p_value,
                                    limit[item.stat_name], item.drifted) for item in report.features)


def crossings(drifted_before: frozenset[tuple[str, str]], statuses: Sequence[FeatureDriftStatus]
              ) -> tuple[frozenset[tuple[str, str]], tuple[FeatureDriftStatus, ...]]:
    """The (feature, stat) pairs drifted now, and the statuses that crossed their threshold in this window."""
    now = frozenset((s.feature, s.stat) for s in statuses if s.drifted)
    crossed = tuple(s for s in statuses if s.drifted and (s.feature, s.stat) not in drifted_before)
    return now, crossed


# ----------------------------------------------------------------------------------------------- monitor


class DriftGauge(Protocol):
    """Where drift values go (`capstan.serving.metrics.ServingMetrics` is one)."""

    def set_drift(self, model: str, version: str, feature: str, stat: str, value: float) -> None:
        """Set ``capstan_feature_drift{model,version,feature,stat}``."""
        ...


@dataclass
class _Version:
    """The monitor's state of one model version (guarded by the monitor's lock)."""

    reference: ModelReference | None = None
    buffered: list[Array] = field(default_factory=list)
    buffered_rows: int = 0  # rows not yet in a window: buffered here, or carried over on the background thread
    checked_shape: tuple[int, ...] = ()  # the row shape last found within max_columns
    rows_seen: int = 0
    windows: int = 0
    updated_ms: int | None = None
    statuses: tuple[FeatureDriftStatus, ...] = ()
    drifted: frozenset[tuple[str, str]] = frozenset()
    note: str = ""


class DriftMonitor:
    """Live drift per model version (see the module docstring). Call `close` at shutdown."""

    def __init__(self, events: EventLog, *, gauge: DriftGauge | None = None, window_rows: int = 1000,
                 thresholds: DriftThresholds | None = None, clock: Clock = system_clock,
                 deployment: str | None = None, project: str = "", max_columns: int = 512) -> None:
        if window_rows < 2:
            raise InvalidParameterValue(f"window_rows must be at least 2, got {window_rows}")
        self.events = events
        self.gauge = gauge
        self.window_rows = window_rows
        self.thresholds = thresholds or MONITOR_THRESHOLDS
        self.clock = clock
        self.deployment = deployment
        self.project = project
        self.max_columns = max_columns
        self._versions: dict[tuple[str, str], _Version] = {}
        self._lock = threading.Lock()
        self._windows: queue.Queue[tuple[str, str, list[Array]] | None] = queue.Queue()  # None: stop
        self._carried: dict[tuple[str, str], Array] = {}  # the background thread's rows short of a window
        self._thread = threading.Thread(target=self._run, name="capstan-drift-monitor", daemon=True)
        self._thread.start()

    def set_reference(self, model: str, version: str, reference: ModelReference | None) -> None:
        """Use ``reference`` for a version (None: its first window of traffic becomes the reference)."""
        with self._lock:
            self._versions.setdefault((model, version), _Version()).reference = reference

    def forget(self, model: str, version: str) -> None:
        """Stop tracking a version (its windows already queued are still evaluated)."""
        with self._lock:
            self._versions.pop((model, version), None)

    # ------------------------------------------------------------------------------------ ServingObserver

    def predicted(self, model: str, version: str, request_id: str, inputs: Array, outputs: Array) -> None:
        """Add the request's rows to the version's window; a full window is queued for the background thread."""
        if inputs.ndim == 0 or inputs.dtype.kind not in "biuf":
            return
        with self._lock:
            state = self._versions.setdefault((model, version), _Version())
            if state.note:
                return
            row_shape = inputs.shape[1:]
            if row_shape != state.checked_shape:
                if int(np.prod(row_shape)) > self.max_columns:
                    state.note = f"not monitored: inputs have over {self.max_columns} columns"
                    return
                state.checked_shape = row_shape
            state.buffered.append(inputs)
            rows = inputs.shape[0]
            state.rows_seen += rows
            state.buffered_rows += rows
            if state.buffered_rows < self.window_rows:
                return
            chunks, state.buffered = state.buffered, []
            state.buffered_rows %= self.window_rows  # what the background thread carries over
        self._windows.put((model, version, chunks))

    def request_done(self, model: str, version: str, protocol: str, status: int, seconds: float) -> None:
        """Ignored."""

    def batch_done(self, model: str, version: str, rows: int, seconds: float) -> None:
        """Ignored."""

    def queue_depth(self, model: str, version: str, rows: int) -> None:
        """Ignored."""

    # ----------------------------------------------------------------------------------------- snapshot

    def report(self) -> tuple[VersionDrift, ...]:
        """The drift of every version seen, by model and version."""
        with self._lock:
            items = sorted(self._versions.items())
            return tuple(VersionDrift(model, version, state.reference.source if state.reference else "none",
                                      self.window_rows, state.rows_seen, state.windows, state.updated_ms,
                                      state.statuses, state.note)
                         for (model, version), state in items)

    # ---------------------------------------------------------------------------------------- background

    def drain(self) -> None:
        """Wait until every full window queued so far has been evaluated."""
        self._windows.join()

    def close(self, timeout: float = 30.0) -> None:
        """Evaluate the windows already queued, then stop the background thread."""
        if self._thread.is_alive():
            self._windows.put(None)
            self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            item = self._windows.get()
            try:
                if item is None:
                    return
                model, version, chunks = item
                for window in self._full_windows((model, version), chunks):
                    self._evaluate(model, version, window)
            except Exception:  # a bad window is logged and skipped; the monitor keeps running
                log.exception("drift monitor: evaluating a window failed")
            finally:
                self._windows.task_done()

    def _full_windows(self, key: tuple[str, str], chunks: list[Array]) -> list[Array]:
        """The full windows of the rows carried over for ``key`` followed by ``chunks``; the rest is carried over."""
        carried = self._carried.pop(key, None)
        parts = [carried, *chunks] if carried is not None else chunks
        rows = np.concatenate(parts) if len(parts) > 1 else parts[0]
        full = rows.shape[0] - rows.shape[0] % self.window_rows
        if rows.shape[0] > full:
            self._carried[key] = rows[full:]
        return [rows[start:start + self.window_rows] for start in range(0, full, self.window_rows)]

    def _evaluate(self, model: str, version: str, window: Array) -> None:
        with self._lock:
            state = self._versions.get((model, version))
            reference = state.reference if state else None
        if state is None:
            return
        if reference is None:
            names = tuple(str(i) for i in range(int(np.prod(window.shape[1:])) if window.ndim > 1 else 1))
            columns = window_columns(names, window, ())
            learned = ModelReference(names, profile(columns), "traffic")
            with self._lock:
                if state.reference is None:
                    state.reference = learned
                state.updated_ms = self.clock()
            return
        categorical = {f.name for f in reference.profile.features if f.kind == "categorical"}
        try:
            columns = window_columns(reference.columns, window, categorical)
            statuses = statuses_of(compare(reference.profile, columns, thresholds=self.thresholds),
                                   self.thresholds)
        except InvalidParameterValue as exc:
            with self._lock:
                state.note = f"not monitored: {exc.message}"
            log.warning("drift monitor: %s/%s is not monitored: %s", model, version, exc.message)
            return
        with self._lock:
            state.drifted, crossed = crossings(state.drifted, statuses)
            state.statuses = statuses
            state.windows += 1
            state.updated_ms = self.clock()
        self._publish(model, version, statuses, crossed)

    def _publish(self, model: str, version: str, statuses: Sequence[FeatureDriftStatus],
                 crossed: Sequence[FeatureDriftStatus]) -> None:
        if self.gauge is not None:
            for s in statuses:
                self.gauge.set_drift(model, version, s.feature, s.stat, s.value)
                if s.p_value is not None:
                    self.gauge.set_drift(model, version, s.feature, f"{s.stat}_pvalue", s.p_value)
        # A deployment's events are filed under PROJECT/NAME (as the controller files them), so
        # `capstan deployments status` lists drift beside the replicas' events.
        if self.deployment:
            kind = "deployment"
            object_id = f"{self.project}/{self.deployment}" if self.project else self.deployment
        else:
            kind, object_id = "model-version", f"{model}/{version}"
        for s in crossed:
            measured = f"p-value {s.p_value:.3g} < {s.threshold:g}" if s.p_value is not None else \
                f"{s.value:.3g} > {s.threshold:g}"
            self.events.append(
                kind, object_id, DRIFT_DETECTED,
                f"feature {s.feature!r} of {model} version {version} drifted: {s.stat} {measured}",
                type="Warning", project=self.project,
                data={"model": model, "version": version, "feature": s.feature, "stat": s.stat, "value": s.value,
                      "p_value": s.p_value, "threshold": s.threshold, "window_rows": self.window_rows})
