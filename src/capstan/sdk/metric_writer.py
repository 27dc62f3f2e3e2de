"""Non-blocking metric logging: `MetricWriter` buffers metric points and a background thread writes them in batches.

- `MetricWriter.add` only appends to an in-memory buffer (it blocks only when ``max_buffered`` points are waiting,
  so a dead store cannot eat all memory).
- The thread flushes every ``interval_s`` seconds, or as soon as ``batch_size`` points are buffered, calling the
  sink (``TrackingBackend.log_metrics_for_runs``) with at most ``batch_size`` points per call.
- `MetricWriter.flush` writes everything added so far and returns once it is durable (used at run end);
  `MetricWriter.close` also runs at interpreter exit through `atexit`.
- A failed write is retried ``attempts`` times with exponential backoff (an error a retry cannot fix, such as a
  deleted run, is not retried). When the store refuses a batch as bad input, its halves are written separately,
  down to single points, so one bad point never takes the valid points of its batch with it. Points that still fail
  are reported
  loudly (``logging.error`` plus a warning on stderr) and a `MetricFlushError` naming them is raised from the next
  `flush`/`close` (hence from ``end_run``). Nothing is dropped silently.
"""

from __future__ import annotations

import atexit
import logging
import sys
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence

from capstan.errors import CapstanError
from capstan.tracking.records import Metric

log = logging.getLogger("capstan.metrics")

MetricSink = Callable[[Mapping[str, Sequence[Metric]]], None]


class MetricFlushError(CapstanError):
    """Buffered metric points could not be written after every retry.

    ``unwritten`` maps run ids to the points that were not stored, so a caller can log them again.
    """

    code = "TEMPORARILY_UNAVAILABLE"
    http_status = 503

    def __init__(self, message: str, *, unwritten: Mapping[str, Sequence[Metric]],
                 cause: BaseException | None = None) -> None:
        super().__init__(message)
        self.unwritten = {run_id: tuple(points) for run_id, points in unwritten.items()}
        self.cause = cause


class MetricWriter:
    """Buffers metric points and writes them from a background thread; see the module docstring."""

    def __init__(self, sink: MetricSink, *, interval_s: float = 0.2, batch_size: int = 1000,
                 max_buffered: int = 200_000, attempts: int = 3, backoff_s: float = 0.2,
                 sleep: Callable[[float], None] = time.sleep, register_atexit: bool = True) -> None:
        if batch_size < 1 or attempts < 1:
            raise ValueError("batch_size and attempts must be at least 1")
        self._sink = sink
        self._interval_s = max(interval_s, 0.001)
        self._batch_size = batch_size
        self._max_buffered = max(max_buffered, batch_size)
        self._attempts = attempts
        self._backoff_s = backoff_s
        self._sleep = sleep
        self._buffer: list[tuple[str, Metric]] = []
        self._cond = threading.Condition()  # guards _buffer, _closed, _pending_error
        self._write_lock = threading.Lock()  # one sink call at a time, in buffer order
        self._pending_error: MetricFlushError | None = None
        self._closed = False
        self._thread: threading.Thread | None = None
        self.points_written = 0
        if register_atexit:
            ref = weakref.ref(self)
            atexit.register(_close_at_exit, ref)

    # -- producer side --------------------------------------------------------------------------------
    def add(self, run_id: str, metric: Metric) -> None:
        """Queue one point; returns at once unless ``max_buffered`` points are already waiting."""
        with self._cond:
            if self._closed or self._thread is None or len(self._buffer) + 1 >= self._batch_size:
                pass  # the general path below handles these cases
            else:
                self._buffer.append((run_id, metric))
                return
        self.add_many(run_id, (metric,))

    def add_many(self, run_id: str, metrics: Sequence[Metric]) -> None:
        """Queue several points of one run."""
        with self._cond:
            if self._closed:
                raise CapstanError("the metric writer is closed")
            while len(self._buffer) >= self._max_buffered:
                self._cond.notify_all()
                self._cond.wait(0.05)
            self._buffer.extend((run_id, m) for m in metrics)
            if len(self._buffer) >= self._batch_size:
                self._cond.notify_all()
            if self._thread is None:
                self._start_thread()

    @property
    def buffered(self) -> int:
        """Points waiting to be written."""
        with self._cond:
            return len(self._buffer)

    # -- durability -----------------------------------------------------------------------------------
    def flush(self, *, run_id: str | None = None) -> None:
        """Write everything queued so far and return when it is stored.

        Raises `MetricFlushError` for points that could not be written, now or by an earlier background flush.
        ``run_id`` only narrows which failure is re-raised: a failure of another run stays pending for its own
        flush.
        """
        self._write_pending()
        self._raise_pending(run_id)

    def close(self) -> None:
        """Flush, stop the background thread and refuse further points. Safe to call twice."""
        with self._cond:
            if self._closed:
                already = True
            else:
                already = False
                self._closed = True
                self._cond.notify_all()
        thread = self._thread
        if not already and thread is not None and thread is not threading.current_thread():
            thread.join()
        self._write_pending()
        self._raise_pending(None)

    # -- internals ------------------------------------------------------------------------------------
    def _start_thread(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="capstan-metric-writer", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            with self._cond:
                if not self._closed and len(self._buffer) < self._batch_size:
                    self._cond.wait(self._interval_s)
                closed = self._closed
            self._write_pending()
            if closed:
                return

    def _write_pending(self) -> None:
        with self._write_lock:
            while True:
                with self._cond:
                    if not self._buffer:
                        return
                    chunk = self._buffer[: self._batch_size]
                    del self._buffer[: self._batch_size]
                    self._cond.notify_all()
                self._write_chunk(chunk)

    def _write_chunk(self, chunk: list[tuple[str, Metric]]) -> None:
        failed: list[tuple[str, Metric]] = []
        last: list[tuple[BaseException, int]] = []
        self._write_part(chunk, failed, last)
        if failed:
            self._report(_by_run(failed), *last[-1])

    def _write_part(self, part: list[tuple[str, Metric]], failed: list[tuple[str, Metric]],
                    last: list[tuple[BaseException, int]]) -> None:
        """Write ``part``; when the store refuses it as bad input, write each half on its own, so one bad point
        is isolated (and reported) while the good points around it are stored."""
        delay = self._backoff_s
        for attempt in range(1, self._attempts + 1):
            try:
                self._sink(_by_run(part))
            except Exception as exc:  # noqa: BLE001  # every failure is retried, then reported loudly
                if len(part) > 1 and _bad_input(exc):
                    middle = len(part) // 2
                    self._write_part(part[:middle], failed, last)
                    self._write_part(part[middle:], failed, last)
                    return
                if attempt < self._attempts and not _permanent(exc):
                    log.warning("writing %d metric points failed (attempt %d of %d): %s; retrying in %.1fs",
                                len(part), attempt, self._attempts, exc, delay)
                    self._sleep(delay)
                    delay *= 2
                    continue
                failed.extend(part)
                last.append((exc, attempt))
                return
            self.points_written += len(part)
            return

    def _report(self, batches: Mapping[str, Sequence[Metric]], exc: BaseException, attempts: int) -> None:
        count = sum(len(points) for points in batches.values())
        runs = ", ".join(sorted(batches))
        tries = f"{attempts} attempts" if attempts > 1 else "1 attempt (the error is not transient)"
        message = f"{count} metric point(s) of run(s) {runs} were NOT stored after {tries}: {exc}"
        log.error(message)
        print(f"capstan: WARNING: {message}", file=sys.stderr, flush=True)
        with self._cond:
            if self._pending_error is None:
                self._pending_error = MetricFlushError(message, unwritten=batches, cause=exc)
            else:
                merged = {k: list(v) for k, v in self._pending_error.unwritten.items()}
                for run_id, points in batches.items():
                    merged.setdefault(run_id, []).extend(points)
                total = sum(len(v) for v in merged.values())
                self._pending_error = MetricFlushError(
                    f"{total} metric point(s) of run(s) {', '.join(sorted(merged))} were NOT stored; last "
                    f"error: {exc}", unwritten=merged, cause=exc)

    def _raise_pending(self, run_id: str | None) -> None:
        with self._cond:
            error = self._pending_error
            if error is None:
                return
            if run_id is not None and run_id not in error.unwritten:
                return
            self._pending_error = None
        raise error


def _by_run(points: Sequence[tuple[str, Metric]]) -> dict[str, list[Metric]]:
    batches: dict[str, list[Metric]] = {}
    for run_id, metric in points:
        batches.setdefault(run_id, []).append(metric)
    return batches


def _bad_input(exc: BaseException) -> bool:
    """The store refused the points themselves (a bad key or value), as opposed to the run or the store."""
    return isinstance(exc, CapstanError) and exc.code == "INVALID_PARAMETER_VALUE"


def _permanent(exc: BaseException) -> bool:
    """Errors a retry cannot fix: the store answered that the request itself is wrong (4xx, except 429)."""
    return isinstance(exc, CapstanError) and 400 <= exc.http_status < 500 and exc.http_status != 429


def _close_at_exit(ref: weakref.ReferenceType[MetricWriter]) -> None:
    writer = ref()
    if writer is None:
        return
    try:
        writer.close()
    except MetricFlushError:
        pass  # already logged and printed to stderr by _report; there is nobody left to raise it to
    except Exception as exc:  # noqa: BLE001  # never let an exit hook hide the real exit status
        print(f"capstan: WARNING: flushing metrics at exit failed: {exc}", file=sys.stderr, flush=True)
