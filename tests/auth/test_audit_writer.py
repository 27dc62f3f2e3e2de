"""The background audit writer: batching, flushing, closing and loud failures."""

from __future__ import annotations

import logging
import threading
import time
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


def test_flush_without_entries_and_double_close() -> None:
    writer = AuditWriter(Sink())
    writer.flush()
    writer.close()
    writer.close()


def test_entries_linger_briefly_to_share_a_commit() -> None:
    sink = Sink()
    writer = AuditWriter(sink, linger_s=0.2)
    for i in range(20):
        writer.submit(entry(i))
        time.sleep(0.001)
    deadline = time.monotonic() + 5
    while not sink.batches and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.05)
    assert [len(b) for b in sink.batches] == [20]
    writer.submit(entry(20))
    writer.flush(timeout=0.1)  # a flush does not wait for the linger to run out
    assert sink.batches[-1][0].time == 20
    writer.close()
