"""Adaptive request batching for model serving, with back-pressure.

`AdaptiveBatcher` sits between the HTTP handlers and a model's blocking ``predict``: concurrent calls of
`AdaptiveBatcher.submit` are concatenated along axis 0, predicted once (in a thread, through the injected
``run_in``), and the result is split back by row offsets so that every caller gets exactly its own rows'
predictions.

Dispatch policy (one batch in flight at a time per batcher; run one batcher per model replica for parallelism):

- Requests are queued per *signature* (the trailing shape ``rows.shape[1:]`` and the dtype): rows of different
  signatures are never merged. Within a signature, requests keep their arrival order (FIFO).
- Every queued request has a *deadline*. A request that arrives while the batcher is idle (no batch in flight and
  nothing queued, in any signature) gets its arrival time as deadline, so it is dispatched at once: a lone request
  is never held back. A request that arrives while a batch is in flight or others are queued gets
  ``arrival + max_delay_ms``.
- Whenever no batch is in flight (on arrival, when a batch completes, when a deadline timer fires) the batcher looks
  for the signatures that are *ready*: their queued rows reach ``max_batch_size`` (waiting could not make the batch
  bigger), their first request's deadline has passed, or the batcher is closing. It dispatches one batch of the
  ready signature whose first request arrived earliest; when none is ready it sets a timer for the earliest
  deadline. Time spent waiting for the in-flight batch counts towards the delay, so under load (a predict slower
  than ``max_delay_ms``) the queue is dispatched as soon as the previous batch completes and never waits on top of
  it. A queued request therefore waits at most ``max_delay_ms`` plus the batches ahead of it.
- A batch takes queued requests of the signature in order while their rows fit in ``max_batch_size``; it stops at
  the first one that does not fit. A request larger than ``max_batch_size`` rows is predicted alone.

Back-pressure: ``max_queue`` bounds the rows waiting to be dispatched (the batch in flight does not count). A
`submit` whose rows would take the queued rows above ``max_queue`` raises `QueueFull` (HTTP 503; the app should
send ``Retry-After`` from `QueueFull.retry_after_s`) instead of queuing; a request that finds the queue empty is
always accepted, so a request larger than ``max_queue`` is still served, alone.

Failures: an exception of ``predict`` (or a result whose length is not the batch's row count) fails every request
of that batch, and only those. `AdaptiveBatcher.close` stops new submissions (`BatcherClosed`, HTTP 503), then
either drains the queue (dispatching it without waiting for deadlines) or fails it with `BatcherClosed`, and
returns once the batch in flight has completed.

Observability: `AdaptiveBatcher.stats` returns counters and a histogram of batch sizes (rows per batch). Optional
callbacks report as it happens, so Prometheus can be wired to them: ``on_batch(size, wait_ms)`` at every dispatch
(``wait_ms``: how long the batch's oldest request waited, by the injected clock), ``on_batch_done(size, seconds)``
when ``predict`` returns or raises for a batch (its service time), and ``on_queue_depth(rows)`` whenever the number
of queued rows (not counting the batch in flight) has changed. Callbacks run on the event loop and must not
raise.

No per-row Python loops: batches are built with one ``np.concatenate`` and results split with one ``np.split`` by
the cumulative row offsets (the loops that remain run once per request).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from capstan.errors import CapstanError, InvalidParameterValue

__all__ = [
    "INLINE_MAX_ROWS",
    "AdaptiveBatcher",
    "BatchStats",
    "BatcherClosed",
    "OnBatch",
    "OnBatchDone",
    "OnQueueDepth",
    "Predict",
    "QueueFull",
    "RunIn",
    "inline_for_small_batches",
]

Array = npt.NDArray[Any]
Predict = Callable[[Array], Array]
"""A model's blocking batch predict: rows (axis 0) in, one prediction per row (axis 0) out."""
RunIn = Callable[[Predict, Array], Awaitable[Array]]
"""Runs ``predict(rows)`` without blocking the event loop (default: asyncio's default thread pool)."""
OnBatch = Callable[[int, float], None]
"""Called at each dispatch with the batch's row count and the milliseconds its oldest request waited."""
OnBatchDone = Callable[[int, float], None]
"""Called when a batch's ``predict`` returned or raised, with the batch's row count and the seconds it took."""
OnQueueDepth = Callable[[int], None]
"""Called with the rows waiting in the queue whenever that number has changed."""

_Signature = tuple[tuple[int, ...], np.dtype[Any]]


class QueueFull(CapstanError):
    """The batcher's queue is full; the app answers HTTP 503 with ``Retry-After: ceil(retry_after_s)``."""

    code = "TEMPORARILY_UNAVAILABLE"
    http_status = 503

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class BatcherClosed(CapstanError):
    """The batcher is closed (the deployment is shutting down); the app answers HTTP 503."""

    code = "TEMPORARILY_UNAVAILABLE"
    http_status = 503


@dataclass(frozen=True)
class BatchStats:
    """Counters of one batcher. ``batch_sizes`` maps a batch's row count to how many batches had it."""

    batches: int
    requests: int
    rows: int
    failed_batches: int
    rejected: int
    queued_rows: int
    in_flight: bool
    batch_sizes: dict[int, int] = field(default_factory=dict)


@dataclass(eq=False)
class _Pending:
    rows: Array
    arrival: float
    deadline: float
    future: asyncio.Future[Array]


async def _default_run_in(predict: Predict, rows: Array) -> Array:
    return await asyncio.get_running_loop().run_in_executor(None, predict, rows)


INLINE_MAX_ROWS = 64
"""The largest batch `inline_for_small_batches` predicts on the event loop by default."""


def inline_for_small_batches(max_rows: int = INLINE_MAX_ROWS) -> RunIn:
    """A ``run_in`` for a model whose predict is cheap (well under a millisecond for a small batch): batches of up to
    ``max_rows`` rows run on the event loop, saving the thread hand-off and its GIL contention; larger ones go to
    the default thread pool."""

    async def run_in(predict: Predict, rows: Array) -> Array:
        if rows.shape[0] <= max_rows:
            return predict(rows)
        return await _default_run_in(predict, rows)

    return run_in


class AdaptiveBatcher:
    """Merges concurrent `submit` calls into batches for ``predict`` (see the module's dispatch policy).

    ``clock`` is a monotonic reading in seconds (default `time.monotonic`); deadlines, waits and the service-time
    estimate behind `QueueFull.retry_after_s` use it. ``run_in`` runs the blocking ``predict`` off the event loop.
    Create and use a batcher inside one running event loop.
    """

    def __init__(
        self,
        predict: Predict,
        *,
        max_batch_size: int,
        max_delay_ms: float,
        max_queue: int,
        clock: Callable[[], float] = time.monotonic,
        run_in: RunIn | None = None,
        on_batch: OnBatch | None = None,
        on_batch_done: OnBatchDone | None = None,
        on_queue_depth: OnQueueDepth | None = None,
    ) -> None:
        if max_batch_size < 1:
            raise InvalidParameterValue(f"max_batch_size must be at least 1, got {max_batch_size}")
        if not (max_delay_ms >= 0 and math.isfinite(max_delay_ms)):
            raise InvalidParameterValue(f"max_delay_ms must be a finite number >= 0, got {max_delay_ms}")
        if max_queue < 0:
            raise InvalidParameterValue(f"max_queue must be at least 0, got {max_queue}")
        self._predict = predict
        self._max_batch_size = max_batch_size
        self._max_delay_s = max_delay_ms / 1000.0
        self._max_queue = max_queue
        self._clock = clock
        self._run_in: RunIn = run_in if run_in is not None else _default_run_in
        self._on_batch = on_batch
        self._on_batch_done = on_batch_done
        self._on_queue_depth = on_queue_depth
        self._reported_depth = 0
        self._queues: dict[_Signature, deque[_Pending]] = {}
        self._queued_rows: dict[_Signature, int] = {}
        self._total_queued = 0
        self._in_flight: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._closing = False
        self._idle: asyncio.Event | None = None
        self._batch_s = self._max_delay_s  # moving average of a batch's service time, for retry_after_s
        self._batches = 0
        self._requests = 0
        self._rows = 0
        self._failed_batches = 0
        self._rejected = 0
        self._sizes: dict[int, int] = {}

    # ------------------------------------------------------------------------------------------------ public API

    async def submit(self, rows: Array) -> Array:
        """Predict ``rows`` (axis 0 = rows) as part of a batch and return this request's predictions only.

        Raises `QueueFull` when the queue cannot take the rows, `BatcherClosed` after `close`, and whatever
        ``predict`` raised for the batch this request was part of.
        """
        if not isinstance(rows, np.ndarray) or rows.ndim < 1:
            raise InvalidParameterValue("rows must be a numpy array with at least one dimension (axis 0 = rows)")
        if self._closing:
            raise BatcherClosed("the batcher is closed")
        n = int(rows.shape[0])
        if self._total_queued > 0 and self._total_queued + n > self._max_queue:
            self._rejected += 1
            raise QueueFull(
                f"serving queue is full ({self._total_queued} rows waiting, limit {self._max_queue})",
                retry_after_s=self._retry_after_s(),
            )
        loop = asyncio.get_running_loop()
        now = self._clock()
        idle = self._in_flight is None and self._total_queued == 0 and not self._queues
        pending = _Pending(rows, now, now if idle else now + self._max_delay_s, loop.create_future())
        signature: _Signature = (tuple(rows.shape[1:]), rows.dtype)
        self._queues.setdefault(signature, deque()).append(pending)
        self._queued_rows[signature] = self._queued_rows.get(signature, 0) + n
        self._total_queued += n
        self._pump()
        return await pending.future

    async def close(self, *, drain: bool = True) -> None:
        """Refuse new submissions, then dispatch (``drain``) or fail (`BatcherClosed`) the queue.

        Returns when nothing is queued and no batch is in flight.
        """
        self._closing = True
        if not drain:
            error = BatcherClosed("the batcher was closed before this request was dispatched")
            for queue in self._queues.values():
                for pending in queue:
                    if not pending.future.done():
                        pending.future.set_exception(error)
            self._queues.clear()
            self._queued_rows.clear()
            self._total_queued = 0
        self._pump()
        while self._in_flight is not None or self._queues:
            if self._idle is None:
                self._idle = asyncio.Event()
            self._idle.clear()
            await self._idle.wait()

    def stats(self) -> BatchStats:
        """A snapshot of the counters and the batch-size histogram."""
        return BatchStats(
            batches=self._batches,
            requests=self._requests,
            rows=self._rows,
            failed_batches=self._failed_batches,
            rejected=self._rejected,
            queued_rows=self._total_queued,
            in_flight=self._in_flight is not None,
            batch_sizes=dict(sorted(self._sizes.items())),
        )

    # ------------------------------------------------------------------------------------------------ dispatch

    def _retry_after_s(self) -> float:
        batches_ahead = math.ceil(self._total_queued / self._max_batch_size) + (self._in_flight is not None)
        return round(max(0.001, self._max_delay_s, batches_ahead * self._batch_s), 3)

    def _pump(self) -> None:
        """Dispatch a batch or set the deadline timer, then report the queue depth; called on every change."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._in_flight is None:
            self._schedule()
        if self._on_queue_depth is not None and self._total_queued != self._reported_depth:
            self._reported_depth = self._total_queued
            self._on_queue_depth(self._total_queued)

    def _schedule(self) -> None:
        """With no batch in flight: dispatch the ready signature that arrived first, or time the next deadline."""
        now = self._clock()
        ready: _Signature | None = None
        ready_arrival = math.inf
        next_deadline = math.inf
        for signature in list(self._queues):
            queue = self._queues[signature]
            while queue and queue[0].future.done():  # the caller was cancelled while queued
                self._unqueue(signature, queue.popleft())
            if not queue:
                del self._queues[signature]
                del self._queued_rows[signature]
                continue
            head = queue[0]
            if self._closing or self._queued_rows[signature] >= self._max_batch_size or now >= head.deadline:
                if head.arrival < ready_arrival:
                    ready, ready_arrival = signature, head.arrival
            else:
                next_deadline = min(next_deadline, head.deadline)
        if ready is not None:
            self._dispatch(ready, now)
        elif next_deadline < math.inf:
            self._timer = asyncio.get_running_loop().call_later(next_deadline - now, self._pump)
        elif self._idle is not None:
            self._idle.set()

    def _unqueue(self, signature: _Signature, pending: _Pending) -> None:
        n = int(pending.rows.shape[0])
        self._queued_rows[signature] -= n
        self._total_queued -= n

    def _dispatch(self, signature: _Signature, now: float) -> None:
        queue = self._queues[signature]
        batch = [queue.popleft()]
        self._unqueue(signature, batch[0])
        size = int(batch[0].rows.shape[0])
        while queue and size + queue[0].rows.shape[0] <= self._max_batch_size:
            pending = queue.popleft()
            self._unqueue(signature, pending)
            if pending.future.done():
                continue
            batch.append(pending)
            size += int(pending.rows.shape[0])
        if not queue:
            del self._queues[signature]
            del self._queued_rows[signature]
        wait_ms = max(0.0, (now - batch[0].arrival) * 1000.0)
        self._batches += 1
        self._requests += len(batch)
        self._rows += size
        self._sizes[size] = self._sizes.get(size, 0) + 1
        self._in_flight = asyncio.get_running_loop().create_task(self._run(batch, size, now))
        if self._on_batch is not None:
            self._on_batch(size, wait_ms)

    async def _run(self, batch: list[_Pending], size: int, started: float) -> None:
        try:
            rows = batch[0].rows if len(batch) == 1 else np.concatenate([p.rows for p in batch], axis=0)
            try:
                result = np.asarray(await self._run_in(self._predict, rows))
                if result.ndim < 1 or result.shape[0] != size:
                    got = "a scalar" if result.ndim < 1 else f"{result.shape[0]} rows"
                    raise CapstanError(f"predict returned {got} for a batch of {size} rows")
            except Exception as error:  # noqa: BLE001 - every request of the batch gets predict's error
                self._failed_batches += 1
                for pending in batch:
                    if not pending.future.done():
                        pending.future.set_exception(error)
                return
            except asyncio.CancelledError:  # the event loop is shutting down: nobody will wait for this batch
                stopped = BatcherClosed("the batcher was stopped while this request's batch was running")
                for pending in batch:
                    if not pending.future.done():
                        pending.future.set_exception(stopped)
                raise
            if len(batch) == 1:
                parts = [result]
            else:
                offsets = np.cumsum([p.rows.shape[0] for p in batch[:-1]])
                parts = np.split(result, offsets, axis=0)
            for pending, part in zip(batch, parts, strict=True):
                if not pending.future.done():
                    pending.future.set_result(part)
        finally:
            elapsed = max(0.0, self._clock() - started)
            self._batch_s = 0.8 * self._batch_s + 0.2 * elapsed
            self._in_flight = None
            self._pump()
            if self._on_batch_done is not None:
                self._on_batch_done(size, elapsed)
