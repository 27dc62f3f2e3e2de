"""Writing the audit log off the request path, with group commit.

Handlers never wait for the audit insert: the server hands each entry to an `AuditWriter`, whose thread collects
entries for up to ``linger_s`` (50 ms) and writes them in one transaction. A busy server thus pays one small
commit per batch instead of a second write transaction per request (on SQLite that would contend for the write
lock with the next request). An entry is stored at most ~50 ms after its response; a crash can lose that much.
`flush` writes everything submitted so far at once and waits for it.

Every entry passes `redact_entry` on its way to the store: a token secret in a path, a target or a detail (a
``DELETE /api/v1/tokens/<secret>`` from an old client, a secret pasted into a query string) is cut down to its
display prefix, so the audit log never holds a usable credential.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Sequence
from dataclasses import replace
from typing import Protocol

from capstan.auth.records import AuditEntry
from capstan.auth.tokens import redact_secrets

log = logging.getLogger("capstan.audit")


class AuditSink(Protocol):
    """Where audit entries go (the slice of `capstan.auth.ports.AuthStore` the writer needs)."""

    def record_audit(self, entries: Sequence[AuditEntry]) -> None: ...


_STOP = object()


def _redact_value(value: object) -> object:
    if isinstance(value, str):
        return redact_secrets(value)
    if isinstance(value, dict):
        return {redact_secrets(str(k)): _redact_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_redact_value(v) for v in value]
    return value


def redact_entry(entry: AuditEntry) -> AuditEntry:
    """``entry`` with anything shaped like a token secret removed from its action, target and detail."""
    return replace(entry, action=redact_secrets(entry.action), target=redact_secrets(entry.target),
                   detail={redact_secrets(str(k)): _redact_value(v) for k, v in entry.detail.items()})


class AuditWriter:
    """A background thread that stores submitted audit entries in batches."""

    def __init__(self, sink: AuditSink, *, max_batch: int = 500, attempts: int = 3, linger_s: float = 0.05) -> None:
        self._sink = sink
        self._max_batch = max_batch
        self._linger = linger_s
        self._wake = threading.Event()
        self._attempts = attempts
        self._queue: queue.Queue[object] = queue.Queue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.lost = 0  # entries that could not be stored after every retry (each loss is logged as an error)

    def submit(self, entry: AuditEntry) -> None:
        """Queue ``entry``; it is stored shortly after. Entries submitted after `close` are written inline."""
        if self._closed:
            self._write([entry])
            return
        self._ensure_thread()
        self._queue.put(entry)

    def flush(self, timeout: float = 10.0) -> None:
        """Block until every entry submitted so far has been written (or ``timeout`` seconds passed)."""
        if self._thread is None:
            return
        done = threading.Event()
        self._queue.put(done)
        self._wake.set()
        done.wait(timeout)

    def close(self) -> None:
        """Write what is queued and stop the thread."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            thread = self._thread
        if thread is not None:
            self._queue.put(_STOP)
            self._wake.set()
            thread.join(timeout=30)

    def _ensure_thread(self) -> None:
        if self._thread is not None:
            return
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="capstan-audit", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        stop = False
        while not stop:
            items = [self._queue.get()]
            if isinstance(items[0], AuditEntry):
                # Linger without waiting on the queue, so that submitting the next entries wakes nobody;
                # `flush` and `close` cut the wait short.
                self._wake.wait(self._linger)
            self._wake.clear()
            while len(items) < self._max_batch:
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            entries = [i for i in items if isinstance(i, AuditEntry)]
            self._write(entries)
            for item in items:
                if isinstance(item, threading.Event):
                    item.set()
                elif item is _STOP:
                    stop = True

    def _write(self, entries: list[AuditEntry]) -> None:
        if not entries:
            return
        entries = [redact_entry(e) for e in entries]
        for attempt in range(1, self._attempts + 1):
            try:
                self._sink.record_audit(entries)
                return
            except Exception:  # any store failure is retried, then reported loudly below
                if attempt == self._attempts:
                    self.lost += len(entries)
                    log.exception("could not write %d audit entries after %d attempts; they are lost",
                                  len(entries), attempt)
                else:
                    threading.Event().wait(0.1 * attempt)
