"""The background metric writer: batching, flushing, retries, loud failures and the flush at interpreter exit."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from capstan.errors import InvalidState, StoreUnavailable
from capstan.sdk import fluent as sdk
from capstan.sdk.metric_writer import MetricFlushError, MetricWriter
from capstan.settings import Settings
from capstan.tracking.records import Metric
from helpers.server import clean_env


class RecordingSink:
    """Stores what it is given; fails the first ``failures`` calls; can block until released."""

    def __init__(self, failures: int = 0) -> None:
        self.calls: list[dict[str, list[Metric]]] = []
        self.failures = failures
        self.attempts = 0
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, batches: Mapping[str, Sequence[Metric]]) -> None:
        self.gate.wait(10)
        self.attempts += 1
        if self.failures:
            self.failures -= 1
            raise StoreUnavailable("store is down")
        self.calls.append({k: list(v) for k, v in batches.items()})

    def points(self, run_id: str) -> list[Metric]:
        return [m for call in self.calls for m in call.get(run_id, [])]


def point(i: int) -> Metric:
    return Metric("loss", float(i), 1_000 + i, i)


def make(sink: RecordingSink, **kwargs: object) -> MetricWriter:
    options: dict[str, object] = {"interval_s": 60.0, "register_atexit": False, "sleep": lambda _s: None}
    options.update(kwargs)
    return MetricWriter(sink, **options)  # type: ignore[arg-type]  # options from a test dict


def test_add_returns_at_once_and_flush_makes_points_durable() -> None:
    sink = RecordingSink()
    writer = make(sink)
    sink.gate.clear()  # the store is slow: add() must still not wait for it
    started = time.perf_counter()
    for i in range(500):
        writer.add("r1", point(i))
    assert time.perf_counter() - started < 1.0
    assert writer.buffered == 500 and not sink.calls
    sink.gate.set()
    writer.flush()
    assert [m.step for m in sink.points("r1")] == list(range(500))
    assert writer.buffered == 0 and writer.points_written == 500
    writer.close()


def test_full_batches_are_written_without_waiting_for_the_interval() -> None:
    sink = RecordingSink()
    writer = make(sink, batch_size=100)
    for i in range(250):
        writer.add("r1", point(i))
    # Whenever 100 points are buffered a flush starts, so at most a partial batch (< 100) may wait for the interval.
    deadline = time.monotonic() + 5
    while len(sink.points("r1")) <= 150 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(sink.points("r1")) > 150
    assert all(sum(len(v) for v in call.values()) <= 100 for call in sink.calls)
    writer.close()
    assert [m.step for m in sink.points("r1")] == list(range(250))


def test_the_interval_flushes_a_partial_batch() -> None:
    sink = RecordingSink()
    writer = make(sink, interval_s=0.05)
    writer.add_many("r1", [point(1), point(2)])
    deadline = time.monotonic() + 5
    while not sink.calls and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [m.step for m in sink.points("r1")] == [1, 2]
    writer.close()


def test_points_of_several_runs_are_grouped_per_run() -> None:
    sink = RecordingSink()
    writer = make(sink)
    writer.add("a", point(1))
    writer.add("b", point(2))
    writer.add("a", point(3))
    writer.flush()
    assert sink.calls == [{"a": [point(1), point(3)], "b": [point(2)]}]
    writer.close()


def test_a_failed_write_is_retried_with_backoff() -> None:
    sink = RecordingSink(failures=2)
    sleeps: list[float] = []
    writer = make(sink, attempts=3, backoff_s=0.5, sleep=sleeps.append)
    writer.add("r1", point(1))
    writer.flush()
    assert sink.attempts == 3 and sleeps == [0.5, 1.0]
    assert sink.points("r1") == [point(1)]
    writer.close()


def test_a_write_that_keeps_failing_is_reported_loudly_and_raised(caplog: pytest.LogCaptureFixture,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    sink = RecordingSink(failures=3)
    writer = make(sink, attempts=3)
    writer.add_many("r1", [point(1), point(2)])
    with caplog.at_level(logging.ERROR, logger="capstan.metrics"), pytest.raises(MetricFlushError) as info:
        writer.flush()
    assert info.value.unwritten == {"r1": (point(1), point(2))}
    assert isinstance(info.value.cause, StoreUnavailable)
    assert "NOT stored after 3 attempts" in info.value.message
    assert any("NOT stored" in r.message for r in caplog.records if r.levelno == logging.ERROR)
    assert "capstan: WARNING: 2 metric point(s) of run(s) r1 were NOT stored" in capsys.readouterr().err
    writer.add("r1", point(3))  # the writer keeps working once the store is back
    writer.flush()
    assert sink.points("r1") == [point(3)]
    writer.close()


def test_an_error_a_retry_cannot_fix_is_reported_without_retrying() -> None:
    attempts: list[int] = []

    def rejecting(_batches: Mapping[str, Sequence[Metric]]) -> None:
        attempts.append(1)
        raise InvalidState("Run 'r1' is deleted")

    writer = MetricWriter(rejecting, interval_s=60, register_atexit=False, sleep=lambda _s: None)
    writer.add("r1", point(1))
    with pytest.raises(MetricFlushError, match="not transient"):
        writer.flush()
    assert len(attempts) == 1
    writer.close()


def test_a_background_failure_is_raised_by_the_next_flush_of_that_run() -> None:
    sink = RecordingSink(failures=1)
    writer = make(sink, interval_s=0.02, attempts=1)
    writer.add("bad", point(1))
    deadline = time.monotonic() + 5
    while sink.attempts == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.05)
    writer.flush(run_id="other")  # another run's flush does not consume the error
    with pytest.raises(MetricFlushError, match="bad"):
        writer.flush(run_id="bad")
    writer.flush(run_id="bad")  # reported once
    writer.close()


def test_add_blocks_when_the_buffer_is_full_instead_of_growing_forever() -> None:
    sink = RecordingSink()
    sink.gate.clear()
    writer = make(sink, batch_size=10, max_buffered=20, interval_s=0.01)
    done = threading.Event()

    def produce() -> None:
        for i in range(100):
            writer.add("r1", point(i))
        done.set()

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    assert not done.wait(0.3)  # blocked: the store is not accepting writes
    assert writer.buffered <= 20
    sink.gate.set()
    assert done.wait(10)
    writer.close()
    assert [m.step for m in sink.points("r1")] == list(range(100))


def test_close_flushes_and_refuses_more_points() -> None:
    sink = RecordingSink()
    writer = make(sink)
    writer.add("r1", point(1))
    writer.close()
    assert sink.points("r1") == [point(1)]
    with pytest.raises(Exception, match="closed"):
        writer.add("r1", point(2))
    writer.close()


def test_end_run_raises_when_its_metrics_could_not_be_stored(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """Failure injection on the real local store: the run is deleted while points are still buffered."""
    settings = Settings.for_home(tmp_path / "home", metric_flush_interval_s=30)
    sdk.configure(settings)
    try:
        run = sdk.start_run(experiment="doomed")
        sdk.log_metric("loss", 0.5)
        sdk.process_backend().delete_run(run.run_id)  # every write to this run now fails
        with pytest.raises(MetricFlushError) as info:
            sdk.end_run()
        assert list(info.value.unwritten) == [run.run_id]
        assert "NOT stored" in capsys.readouterr().err
    finally:
        sdk.configure(Settings.for_home(tmp_path / "idle"))


_EXIT_SCRIPT = textwrap.dedent("""
    import capstan
    run = capstan.start_run(experiment="atexit", run_name="never-ended")
    for i in range(5000):
        capstan.log_metric("loss", 1.0 / (i + 1), step=i)
    print(run.run_id, flush=True)
    # no end_run(): the interpreter exits with 5,000 points still buffered
""")


def test_metrics_are_flushed_and_the_run_ended_at_interpreter_exit(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = clean_env(home, {"CAPSTAN_METRIC_FLUSH_INTERVAL": "60"})
    result = subprocess.run([sys.executable, "-c", _EXIT_SCRIPT], env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    run_id = result.stdout.strip()
    from capstan.sdk.client import Client

    with Client(settings=Settings.for_home(home)) as client:
        history = client.get_metric_history(run_id, "loss")
        assert [m.step for m in history] == list(range(5000))
        assert client.get_run(run_id).info.status == "FINISHED"


def test_a_flush_failure_at_exit_is_printed_not_swallowed(tmp_path: Path) -> None:
    script = textwrap.dedent("""
        import capstan
        from capstan.sdk import fluent as sdk
        run = capstan.start_run(experiment="atexit-fail")
        capstan.log_metric("loss", 1.0)
        sdk.process_backend().delete_run(run.run_id)
    """)
    env = clean_env(tmp_path / "home", {"CAPSTAN_METRIC_FLUSH_INTERVAL": "60"})
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert "capstan: WARNING: 1 metric point(s) of run(s)" in result.stderr
    assert "NOT stored" in result.stderr
