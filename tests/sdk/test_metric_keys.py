"""Metric keys and values are checked at the call with the store's own rules, and one bad point never takes the
valid points around it: the writer stores the good ones and reports the bad one, and the run does not end
FINISHED when points were lost."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest

import capstan
from capstan.errors import InvalidParameterValue
from capstan.sdk import fluent as sdk
from capstan.sdk.backends_local import LocalBackend
from capstan.sdk.metric_writer import MetricFlushError, MetricWriter
from capstan.settings import Settings
from capstan.store import tracking_validation
from capstan.tracking.records import Metric

BAD_KEYS = ["a/../b", "./a", "a/", "a//b", "/a", "..", "bad*key", "tab\tkey", "", "x" * 251]
GOOD_KEYS = ["loss", "train/loss", "a.b-c_d", "epoch 1: acc", "x" * 250]


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.mark.parametrize("key", BAD_KEYS)
def test_sdk_refuses_exactly_what_the_store_refuses(key: str) -> None:
    with pytest.raises(InvalidParameterValue) as store_error:
        tracking_validation.check_key(key, "metric key")
    with pytest.raises(InvalidParameterValue, match=r"^metric key: ") as sdk_error:
        sdk.check_metric(key, 1.0, None, None)
    assert str(sdk_error.value) == str(store_error.value)


@pytest.mark.parametrize("key", GOOD_KEYS)
def test_good_keys_pass_both(key: str) -> None:
    assert tracking_validation.check_key(key, "metric key") == key
    assert sdk.check_metric(key, 1.0, 3, 1_000).key == key


def test_reviewers_case_bad_key_fails_at_the_call_and_the_good_points_are_stored(fluent: Settings) -> None:
    with pytest.raises(InvalidParameterValue, match=re.escape("metric key: invalid name 'a/../b'")):  # noqa: SIM117
        with capstan.start_run(experiment=unique("keys")) as run:
            for step in range(5):
                capstan.log_metric("loss", 1.0 / (step + 1), step=step)
            capstan.log_metric("a/../b", 1.0)
    client = capstan.Client()
    stored = client.get_run(run.run_id)
    assert stored.info.status == "FAILED"  # the block raised; the run says so
    assert [m.step for m in client.get_metric_history(run.run_id, "loss")] == [0, 1, 2, 3, 4]


def test_bad_values_steps_and_times_fail_at_the_call(fluent: Settings) -> None:
    with capstan.start_run(experiment=unique("values")) as run:
        capstan.log_metric("loss", 0.5, step=0)
        for args, message in ((("loss", "high"), "not a number"), (("loss", True), "not a number"),
                              (("loss", 1.0, 1.5), "step"), (("loss", 1.0, 1, -5), "timestamp")):
            with pytest.raises(InvalidParameterValue, match=message):
                capstan.log_metric(*args)  # type: ignore[arg-type]  # deliberately ill-typed input under test
        with pytest.raises(InvalidParameterValue, match="metric key"):
            capstan.log_metrics({"fine": 1.0, "a//b": 2.0}, step=1)  # the call is refused as a whole
        capstan.log_metric("loss", 0.25, step=1)
    client = capstan.Client()
    assert client.get_run(run.run_id).info.status == "FINISHED"
    assert [m.value for m in client.get_metric_history(run.run_id, "loss")] == [0.5, 0.25]
    assert client.get_metric_history(run.run_id, "fine") == []


def test_writer_stores_the_good_points_and_reports_only_the_bad_one(tmp_path: Path) -> None:
    backend = LocalBackend(Settings.for_home(tmp_path))
    try:
        experiment_id = backend.create_experiment(unique("writer"))
        run_id = backend.create_run(experiment_id, run_name="r", start_time=1).run_id
        writer = MetricWriter(backend.log_metrics_for_runs, interval_s=60.0, register_atexit=False,
                              sleep=lambda _s: None)
        bad = Metric("a/../b", 1.0, 1_000, 0)  # what a caller bypassing the SDK's check could queue
        writer.add_many(run_id, [Metric("loss", float(i), 1_000 + i, i) for i in range(5)])
        writer.add(run_id, bad)
        writer.add_many(run_id, [Metric("loss", float(i), 1_000 + i, i) for i in range(5, 10)])
        with pytest.raises(MetricFlushError, match="1 metric point") as caught:
            writer.flush()
        assert caught.value.unwritten == {run_id: (bad,)}
        assert [m.step for m in backend.get_metric_history(run_id, "loss").items] == list(range(10))
        assert writer.points_written == 10
        writer.close()
    finally:
        backend.close()


def test_a_run_whose_points_were_lost_does_not_end_finished(fluent: Settings) -> None:
    with pytest.raises(MetricFlushError):  # noqa: SIM117
        with capstan.start_run(experiment=unique("lost")) as run:
            capstan.log_metric("loss", 0.5)
            # A point the store refuses although it passed the caller's checks (e.g. a stricter server): queued
            # directly on the process's writer.
            sdk._STATE.writer.add(run.run_id, Metric("a/../b", 1.0, 1_000, 0))
    stored = capstan.Client().get_run(run.run_id)
    assert stored.info.status == "FAILED"
    assert "NOT stored" in stored.data.tags[sdk.METRIC_FLUSH_TAG]
    assert [m.key for m in stored.data.metrics] == ["loss"]
