"""Live drift (capstan.serving.drift_monitor): windows of live rows against a reference, the drift gauge, exactly one
DriftDetected event per crossing (in the real SQL event log), the snapshot report, and the reference a model folder
gets from ``log_model(reference_data=...)``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt
import pandas as pd
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sklearn.linear_model import LogisticRegression

from capstan.errors import InvalidParameterValue
from capstan.events.ports import EventLog
from capstan.sdk.client import Client
from capstan.serving.app import serving_app
from capstan.serving.drift import DriftThresholds
from capstan.serving.drift_monitor import (
    REFERENCE_FILE,
    DriftMonitor,
    ModelReference,
    VersionDrift,
    format_drift_table,
    read_reference,
    reference_from_data,
    write_reference,
)
from capstan.serving.metrics import ServingMetrics
from capstan.serving.model import SklearnServedModel
from capstan.serving.observe import Observers
from capstan.settings import Settings
from capstan.store.engine import create_store_engine
from capstan.store.events_sql import SqlEventLog
from helpers.asgi_server import serve_app

Array = npt.NDArray[Any]
WINDOW = 500
STRICT = DriftThresholds(psi=0.2, ks_p=1e-4, chi2_p=1e-4)  # seeded data far from these in either direction


@pytest.fixture
def events(settings: Settings) -> Iterator[EventLog]:
    engine = create_store_engine(settings)
    yield SqlEventLog(engine)
    engine.dispose()


@pytest.fixture
def training() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame({"age": rng.normal(40, 10, 5000), "income": rng.normal(50, 5, 5000),
                         "plan": rng.choice([0, 1, 2], 5000, p=[0.5, 0.3, 0.2])})


def _live(rng: np.random.Generator, n: int, *, age_shift: float = 0.0, plan_p: tuple[float, ...] = (0.5, 0.3, 0.2)
          ) -> Array:
    """Rows as the served model receives them: float64 columns age, income, plan (the training column order)."""
    return np.column_stack([rng.normal(40 + age_shift, 10, n), rng.normal(50, 5, n),
                            rng.choice([0, 1, 2], n, p=list(plan_p))]).astype(np.float64)


def _feed(monitor: DriftMonitor, rows: Array, *, model: str = "m", version: str = "1", per_request: int = 7) -> None:
    for start in range(0, rows.shape[0], per_request):
        monitor.predicted(model, version, f"r{start}", rows[start:start + per_request], np.zeros(1))
    monitor.drain()


def _drift_events(events: EventLog) -> list[Any]:
    return [e for e in events.list() if e.reason == "DriftDetected"]


def test_unshifted_traffic_raises_nothing_and_a_shift_raises_one_event(events: EventLog,
                                                                        training: pd.DataFrame) -> None:
    metrics = ServingMetrics()
    monitor = DriftMonitor(events, gauge=metrics, window_rows=WINDOW, deployment="churn", thresholds=STRICT)
    monitor.set_reference("m", "1", reference_from_data(training, categorical=["plan"]))
    rng = np.random.default_rng(1)
    try:
        _feed(monitor, _live(rng, 2 * WINDOW))
        assert _drift_events(events) == []
        (report,) = monitor.report()
        assert (report.reference, report.windows, report.rows_seen, report.drifted) == ("training", 2, 1000, False)
        assert {(f.feature, f.stat) for f in report.features} == {
            ("age", "psi"), ("age", "ks"), ("income", "psi"), ("income", "ks"), ("plan", "chi2")}

        _feed(monitor, _live(rng, 3 * WINDOW, age_shift=15.0))  # three drifted windows: still one event per stat
        drifted = _drift_events(events)
        assert sorted(e.data["stat"] for e in drifted) == ["ks", "psi"]
        for event in drifted:
            assert (event.kind, event.object_id, event.type) == ("deployment", "churn", "Warning")
            assert event.data["model"] == "m" and event.data["version"] == "1" and event.data["feature"] == "age"
            assert isinstance(event.data["value"], float) and isinstance(event.data["threshold"], float)
        (report,) = monitor.report()
        assert report.windows == 5 and report.drifted
        assert {f.feature for f in report.features if f.drifted} == {"age"}
    finally:
        monitor.close()

    families = {f.name: f for f in text_string_to_metric_families(metrics.exposition()[0].decode())}
    values = {(s.labels["feature"], s.labels["stat"]): s.value for s in families["capstan_feature_drift"].samples}
    assert values[("age", "psi")] > 0.2 and values[("age", "ks_pvalue")] < 0.01
    assert values[("income", "psi")] < 0.2 and ("plan", "chi2") in values


def test_a_recovered_feature_can_raise_again(events: EventLog, training: pd.DataFrame) -> None:
    monitor = DriftMonitor(events, window_rows=WINDOW, thresholds=STRICT)
    monitor.set_reference("m", "1", reference_from_data(training, categorical=["plan"]))
    rng = np.random.default_rng(2)
    try:
        _feed(monitor, _live(rng, WINDOW, plan_p=(0.1, 0.1, 0.8)))
        _feed(monitor, _live(rng, WINDOW))
        _feed(monitor, _live(rng, WINDOW, plan_p=(0.1, 0.1, 0.8)))
    finally:
        monitor.close()
    drifted = _drift_events(events)
    assert [(e.data["feature"], e.data["stat"]) for e in drifted] == [("plan", "chi2"), ("plan", "chi2")]
    assert all((e.kind, e.object_id) == ("model-version", "m/1") for e in drifted)


def test_without_a_reference_the_first_window_becomes_it(events: EventLog) -> None:
    monitor = DriftMonitor(events, window_rows=WINDOW, thresholds=STRICT)
    rng = np.random.default_rng(3)
    try:
        _feed(monitor, rng.normal(0, 1, (WINDOW, 2)), per_request=WINDOW)
        (report,) = monitor.report()
        assert (report.reference, report.windows, report.features) == ("traffic", 0, ())
        _feed(monitor, rng.normal(0, 1, (WINDOW, 2)) + np.array([0.0, 3.0]), per_request=50)
    finally:
        monitor.close()
    (report,) = monitor.report()
    assert report.windows == 1
    assert {(f.feature, f.stat) for f in report.features if f.drifted} == {("1", "psi"), ("1", "ks")}
    assert {e.data["feature"] for e in _drift_events(events)} == {"1"}


def test_mismatched_or_wide_inputs_are_not_monitored(events: EventLog, training: pd.DataFrame) -> None:
    monitor = DriftMonitor(events, window_rows=10, max_columns=8)
    monitor.set_reference("m", "1", reference_from_data(training))
    try:
        _feed(monitor, np.zeros((20, 2)))
        _feed(monitor, np.zeros((20, 3, 3)), version="2")
    finally:
        monitor.close()
    notes = {r.version: r.note for r in monitor.report()}
    assert "2 columns" in notes["1"] and "3" in notes["1"]
    assert "over 8 columns" in notes["2"]
    assert _drift_events(events) == []
    assert "not monitored" in format_drift_table(monitor.report())


def test_report_records_round_trip_and_print(events: EventLog, training: pd.DataFrame) -> None:
    monitor = DriftMonitor(events, window_rows=WINDOW, thresholds=STRICT)
    monitor.set_reference("m", "1", reference_from_data(training, categorical=["plan"]))
    try:
        _feed(monitor, _live(np.random.default_rng(4), WINDOW, age_shift=15.0))
        monitor.predicted("m", "2", "x", np.zeros((3, 3)), np.zeros(3))
    finally:
        monitor.close()
    reports = monitor.report()
    assert tuple(VersionDrift.from_dict(r.to_dict()) for r in reports) == reports
    table = format_drift_table(reports).splitlines()
    assert table[0].split() == ["MODEL", "VERSION", "FEATURE", "STAT", "VALUE", "P", "THRESH", "DRIFT"]
    assert any(line.split()[2:4] == ["age", "psi"] and line.endswith("yes") for line in table)
    assert any("waiting for a window of 500 rows (3 seen" in line for line in table)


def test_reference_from_data_shapes_and_errors(tmp_path: Path, training: pd.DataFrame) -> None:
    frame = reference_from_data(training, categorical=["plan"])
    assert frame.columns == ("age", "income", "plan")
    assert frame.profile.feature("plan").kind == "categorical"
    array = reference_from_data(training.to_numpy())
    assert array.columns == ("0", "1", "2") and array.profile.feature("2").kind == "numeric"
    assert reference_from_data({"b": [1.0, 2.0], "a": ["x", "y"]}).columns == ("b", "a")
    write_reference(tmp_path, frame)
    assert read_reference(tmp_path) == frame
    assert read_reference(tmp_path / "nothing-here") is None
    (tmp_path / REFERENCE_FILE).write_text("{not json")
    with pytest.raises(InvalidParameterValue, match=REFERENCE_FILE):
        read_reference(tmp_path)
    with pytest.raises(InvalidParameterValue, match="categorical feature 'nope'"):
        reference_from_data(training, categorical=["nope"])
    with pytest.raises(InvalidParameterValue, match="1-D or 2-D"):
        reference_from_data(np.zeros((2, 2, 2)))
    with pytest.raises(InvalidParameterValue, match="format"):
        ModelReference.from_dict({"format": 99})


def test_log_model_reference_data_round_trip(tmp_path: Path, training: pd.DataFrame) -> None:
    x = training.to_numpy()
    model = LogisticRegression(max_iter=200).fit(x, (x[:, 0] > 40).astype(int))
    with Client(Settings.for_home(tmp_path / "home")) as client:
        run = client.create_run(client.create_experiment("drift"))
        pickled = {"serialization_format": "pickle"}  # skops would work as well, but takes seconds to import
        client.log_model(run.info.run_id, model, "with-ref", reference_data=training, registered_model_name="dr",
                         **pickled)
        client.log_model(run.info.run_id, model, "without-ref", registered_model_name="nodr", **pickled)
        with_ref = client.download_model("models:/dr/1", tmp_path / "a")
        without_ref = client.download_model("models:/nodr/1", tmp_path / "b")
        with pytest.raises(InvalidParameterValue, match="reference_data"):
            client.log_model(run.info.run_id, model, "bad", reference_data=np.zeros((2, 2, 2)), **pickled)
    assert read_reference(with_ref) == reference_from_data(training)
    assert read_reference(without_ref) is None


def test_drift_through_the_serving_app_shows_in_metrics(events: EventLog, training: pd.DataFrame) -> None:
    x = training.to_numpy()
    estimator = LogisticRegression(max_iter=200).fit(x, (x[:, 0] > 40).astype(int))
    metrics = ServingMetrics()
    monitor = DriftMonitor(events, gauge=metrics, window_rows=100, thresholds=STRICT)
    monitor.set_reference("churn", "2", reference_from_data(training, categorical=["plan"]))
    app = serving_app({"churn": SklearnServedModel("churn", "2", estimator, 3)}, max_body_bytes=1 << 20,
                      batching=None, observer=Observers([metrics, monitor]), metrics=metrics.exposition)
    shifted = _live(np.random.default_rng(5), 100, age_shift=20.0)
    try:
        with serve_app(app) as url, httpx.Client(base_url=url) as client:
            for start in range(0, 100, 25):
                rows = shifted[start:start + 25]
                assert client.post("/v1/models/churn:predict", json={"instances": rows.tolist()}).status_code == 200
            monitor.drain()
            scrape = client.get("/metrics").text
    finally:
        monitor.close()
    drift = {(s.labels["feature"], s.labels["stat"]): s.value
             for family in text_string_to_metric_families(scrape) if family.name == "capstan_feature_drift"
             for s in family.samples}
    assert drift[("age", "psi")] > 0.2 and drift[("income", "psi")] < 0.2
    assert {e.data["feature"] for e in _drift_events(events)} == {"age"}
