"""The background audit writer: batching, flushing, closing and loud failures."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

import pytest

from capstan.auth.audit import AuditWriter
from capstan.auth.records import AuditEntry


class Sink:
    def __init__(self, fail: int = 0) -> None:
        self.batches: list[list[AuditEntry]] = []
        self.fail = fail
        self.gate = threading.Event()
        self.gate.set()

    def record_audit(self, entries: Sequence[AuditEntry]) -> None:
        self.gate.wait(5)
        if self.fail:
            self.fail -= 1
            raise OSError("database is locked")
        self.batches.append(list(entries))


def entry(i: int) -> AuditEntry:
    return AuditEntry(i, "alice", "POST /x", f"t{i}", "p", 200)


def test_entries_are_written_and_batched_under_load() -> None:
    sink = Sink()
    writer = AuditWriter(sink)
    sink.gate.clear()  # hold the first write so that later entries pile up
    for i in range(50):
        writer.submit(entry(i))
    sink.gate.set()
    writer.flush()
    written = [e.time for batch in sink.batches for e in batch]
    assert written == list(range(50))
    assert len(sink.batches) < 50  # group commit: the queued entries shared transactions
    writer.close()
    writer.submit(entry(99))  # after close: written inline
    assert sink.batches[-1][0].time == 99


def test_failures_are_retried_then_reported(caplog: pytest.LogCaptureFixture) -> None:
    sink = Sink(fail=1)
    writer = AuditWriter(sink, attempts=2)
    writer.submit(entry(1))
    writer.flush()
    assert [e.time for b in sink.batches for e in b] == [1] and writer.lost == 0

    sink.fail = 5
    with caplog.at_level(logging.ERROR, logger="capstan.audit"):
        writer.submit(entry(2))
        writer.flush()
    assert writer.lost == 1
    assert "could not write 1 audit entries" in caplog.text
    writer.close()


def writer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "capstan-audit"]


class Wake(threading.Event):
    """The writer's wake-up event, recording each linger: ``lingering`` is set once its thread waits on it."""

    def __init__(self) -> None:
        super().__init__()
        self.lingering = threading.Event()
        self.timeouts: list[float | None] = []

    def wait(self, timeout: float | None = None) -> bool:
        self.timeouts.append(timeout)
        self.lingering.set()
        return super().wait(timeout)


def test_flush_before_any_entry_starts_nothing_and_close_is_idempotent() -> None:
    before = writer_threads()
    sink = Sink()
    writer = AuditWriter(sink)
    writer.flush(timeout=0)  # nothing submitted: returns at once, starts no thread, writes nothing
    assert writer_threads() == before
    writer.close()
    writer.close()  # a second close is a no-op, not an error or a second stop
    assert writer_threads() == before
    assert sink.batches == [] and writer.lost == 0
    writer.submit(entry(1))  # after close: written inline, before submit returns, still without a thread
    assert sink.batches == [[entry(1)]]
    assert writer_threads() == before


def test_close_writes_what_is_queued_and_stops_the_thread() -> None:
    before = writer_threads()
    sink = Sink()
    writer = AuditWriter(sink, linger_s=3600)  # the linger never runs out by itself: only close ends it
    for i in range(3):
        writer.submit(entry(i))
    (thread,) = [t for t in writer_threads() if t not in before]
    writer.close()
    assert [e.time for batch in sink.batches for e in batch] == [0, 1, 2]
    assert not thread.is_alive()
    writer.close()
    assert [e.time for batch in sink.batches for e in batch] == [0, 1, 2]  # nothing written twice


def test_entries_submitted_while_the_first_lingers_share_its_commit() -> None:
    sink = Sink()
    writer = AuditWriter(sink, linger_s=3600)
    wake = writer._wake = Wake()  # observe the linger (AuditWriter has no seam for its wait)
    writer.submit(entry(0))
    assert wake.lingering.wait(10), "the writer thread never lingered on its first entry"
    assert wake.timeouts == [3600]
    assert sink.batches == []  # it lingers instead of writing the first entry alone
    for i in range(1, 20):
        writer.submit(entry(i))
    writer.flush(timeout=10)  # a flush cuts the linger short: no waiting for the hour to pass
    assert [[e.time for e in batch] for batch in sink.batches] == [list(range(20))]
    writer.close()


def test_a_flush_does_not_wait_for_the_linger_to_run_out() -> None:
    sink = Sink()
    writer = AuditWriter(sink, linger_s=3600)
    writer.submit(entry(20))
    writer.flush(timeout=10)  # if flush did not wake the writer, this would give up after 10 s with nothing written
    assert [[e.time for e in batch] for batch in sink.batches] == [[20]]
    writer.close()


def test_the_linger_runs_out_by_itself_without_a_flush() -> None:
    sink = Sink()
    written = threading.Event()
    record = sink.record_audit

    def record_and_signal(entries: Sequence[AuditEntry]) -> None:
        record(entries)
        written.set()

    sink.record_audit = record_and_signal  # type: ignore[method-assign]  # signal the write to the test thread
    writer = AuditWriter(sink, linger_s=0.01)
    wake = writer._wake = Wake()
    writer.submit(entry(7))
    assert written.wait(10), "an entry was never written without flush or close"
    assert wake.timeouts == [0.01]  # it lingered for linger_s, not forever and not at all
    assert [[e.time for e in batch] for batch in sink.batches] == [[7]]
    writer.close()
