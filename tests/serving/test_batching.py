"""Adaptive batching (capstan.serving.batching).

Nothing here depends on a wall-clock timing window: a fake clock drives deadlines and waits, and a gated executor
lets each test decide when a batch's predict may finish, so "what is in flight" and "what is queued" are exact.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from capstan.errors import CapstanError, InvalidParameterValue
from capstan.serving.batching import AdaptiveBatcher, BatcherClosed, QueueFull

Array = npt.NDArray[Any]


def predict(x: Array) -> Array:
    """Deterministic and row-wise: each row's prediction depends on that row only (and keeps the dtype)."""
    flat = x.reshape(len(x), -1)
    return (flat.sum(axis=1) * 2 + 1).astype(x.dtype)


class Recorder:
    """A predict that records the batches it saw."""

    def __init__(self, fn: Callable[[Array], Array] = predict) -> None:
        self.fn = fn
        self.batches: list[Array] = []

    def __call__(self, x: Array) -> Array:
        self.batches.append(x)
        return self.fn(x)


class Gate:
    """A `run_in` that runs predict inline, but only once the test releases that batch (or opens the gate)."""

    def __init__(self) -> None:
        self.calls: list[asyncio.Event] = []
        self.opened = False

    async def __call__(self, fn: Callable[[Array], Array], rows: Array) -> Array:
        event = asyncio.Event()
        if self.opened:
            event.set()
        self.calls.append(event)
        await event.wait()
        return fn(rows)

    def release(self, index: int) -> None:
        self.calls[index].set()

    def open(self) -> None:
        self.opened = True
        for event in self.calls:
            event.set()


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


async def settle() -> None:
    """Let every ready callback and task run (no wall-clock time involved)."""
    for _ in range(20):
        await asyncio.sleep(0)


def rows(n: int, cols: int = 3, *, seed: int = 0, dtype: Any = np.float64) -> Array:
    return np.random.default_rng(seed).normal(size=(n, cols)).astype(dtype)


def run(coro_fn: Callable[[], Awaitable[None]]) -> None:
    async def main() -> None:
        await asyncio.wait_for(coro_fn(), timeout=30)  # a fail-safe against a hang, not a timing assertion

    asyncio.run(main())


# ------------------------------------------------------------------------------------------------- correctness


def test_200_concurrent_random_size_requests_get_their_own_predictions() -> None:
    async def body() -> None:
        recorder = Recorder()
        sizes_seen: list[int] = []
        batcher = AdaptiveBatcher(
            recorder,
            max_batch_size=64,
            max_delay_ms=0,
            max_queue=100_000,
            on_batch=lambda size, wait_ms: sizes_seen.append(size),
        )  # the default run_in: asyncio's thread pool
        rng = np.random.default_rng(7)
        sizes = [int(s) for s in rng.integers(1, 21, size=200)]
        sizes[50] = sizes[120] = 100  # larger than max_batch_size: predicted alone
        requests = [rows(n, seed=i) for i, n in enumerate(sizes)]
        results = await asyncio.gather(*(batcher.submit(r) for r in requests))
        for request, result in zip(requests, results, strict=True):
            np.testing.assert_array_equal(result, predict(request))
        stats = batcher.stats()
        assert stats.requests == 200
        assert stats.rows == sum(sizes)
        assert sum(stats.batch_sizes.values()) == stats.batches == len(recorder.batches)
        assert sizes_seen == [len(b) for b in recorder.batches]
        assert max(s for s in stats.batch_sizes if s != 100) <= 64
        assert stats.batch_sizes[100] == 2  # the two oversized requests, each alone
        assert any(s > 1 for s in stats.batch_sizes)  # merged: the 199 behind the first were queued together
        assert stats.batches < 200
        await batcher.close()

    run(body)


def test_batches_merge_under_concurrency_and_never_exceed_max_batch_size() -> None:
    async def body() -> None:
        gate, clock, recorder = Gate(), FakeClock(), Recorder()
        batcher = AdaptiveBatcher(
            recorder, max_batch_size=10, max_delay_ms=1e9, max_queue=1000, clock=clock, run_in=gate
        )
        first = asyncio.create_task(batcher.submit(rows(3)))
        await settle()
        assert len(gate.calls) == 1  # dispatched at once
        queued = [rows(4, seed=i) for i in range(8)]
        tasks = [asyncio.create_task(batcher.submit(r)) for r in queued]
        await settle()
        assert len(gate.calls) == 1 and batcher.stats().queued_rows == 32
        for i in range(3):  # 32 queued rows: full batches of 4+4 (a third request of 4 would make 12 > 10)
            gate.release(i)
            await settle()
        assert len(gate.calls) == 4
        assert batcher.stats().queued_rows == 8  # 8 < 10 and the deadline is far: held back
        gate.release(3)
        await settle()
        assert len(gate.calls) == 4 and batcher.stats().queued_rows == 8 and not batcher.stats().in_flight
        closer = asyncio.create_task(batcher.close())  # draining dispatches the rest without waiting
        await settle()
        assert len(gate.calls) == 5
        gate.release(4)
        await closer
        np.testing.assert_array_equal(await first, predict(rows(3)))
        for request, task in zip(queued, tasks, strict=True):
            np.testing.assert_array_equal(await task, predict(request))
        assert [len(b) for b in recorder.batches] == [3, 8, 8, 8, 8]
        assert batcher.stats().batch_sizes == {3: 1, 8: 4}

    run(body)


# ------------------------------------------------------------------------------------------------- dispatch policy


def test_lone_request_is_dispatched_immediately_without_waiting() -> None:
    async def body() -> None:
        gate, clock = Gate(), FakeClock()
        waits: list[tuple[int, float]] = []
        batcher = AdaptiveBatcher(
            predict,
            max_batch_size=100,
            max_delay_ms=1e9,  # were the lone request held for the delay, it would never run
            max_queue=100,
            clock=clock,
            run_in=gate,
            on_batch=lambda size, wait_ms: waits.append((size, wait_ms)),
        )
        for i in range(3):  # each one finds the batcher idle
            task = asyncio.create_task(batcher.submit(rows(5, seed=i)))
            await asyncio.sleep(0)  # only submit's synchronous part has run: no timer can have fired
            assert batcher.stats().batches == i + 1 and batcher.stats().in_flight
            await settle()
            assert len(gate.calls) == i + 1
            gate.release(i)
            np.testing.assert_array_equal(await task, predict(rows(5, seed=i)))
        assert waits == [(5, 0.0)] * 3

    run(body)


def test_delay_counts_from_arrival_and_applies_only_behind_other_work() -> None:
    async def body() -> None:
        gate, clock = Gate(), FakeClock()
        waits: list[tuple[int, float]] = []
        batcher = AdaptiveBatcher(
            predict,
            max_batch_size=100,
            max_delay_ms=50_000,  # 50 s of the fake clock: the loop's real timer cannot fire during the test
            max_queue=100,
            clock=clock,
            run_in=gate,
            on_batch=lambda size, wait_ms: waits.append((size, wait_ms)),
        )
        first = asyncio.create_task(batcher.submit(rows(1)))
        await settle()
        second = asyncio.create_task(batcher.submit(rows(2, seed=1)))  # arrives at t=0 behind a batch in flight
        await settle()
        clock.t = 10.0
        gate.release(0)
        await settle()
        assert len(gate.calls) == 1  # its deadline (t=50 s) has not passed: held to gather more
        clock.t = 60.0
        third = asyncio.create_task(batcher.submit(rows(3, seed=2)))  # others are waiting: it joins them
        await settle()
        assert len(gate.calls) == 2  # the head's deadline has passed: second and third go together
        gate.release(1)
        np.testing.assert_array_equal(await first, predict(rows(1)))
        np.testing.assert_array_equal(await second, predict(rows(2, seed=1)))
        np.testing.assert_array_equal(await third, predict(rows(3, seed=2)))
        assert waits == [(1, 0.0), (5, pytest.approx(60_000.0))]

        # Behind a slow batch (longer than the delay) the queue goes as soon as the batch completes.
        slow = asyncio.create_task(batcher.submit(rows(1)))
        await settle()
        behind = asyncio.create_task(batcher.submit(rows(4, seed=3)))
        await settle()
        clock.t += 100.0
        gate.release(2)
        await settle()
        assert len(gate.calls) == 4
        gate.release(3)
        await asyncio.gather(slow, behind)

    run(body)


def test_a_full_signature_goes_before_an_older_one_still_gathering() -> None:
    async def body() -> None:
        gate, clock, recorder = Gate(), FakeClock(), Recorder()
        batcher = AdaptiveBatcher(recorder, max_batch_size=4, max_delay_ms=1e9, max_queue=100, clock=clock, run_in=gate)
        first = asyncio.create_task(batcher.submit(rows(1)))
        await settle()
        older = asyncio.create_task(batcher.submit(rows(1, 5, seed=1)))  # 1 of 4 rows: keeps gathering
        full = asyncio.create_task(batcher.submit(rows(4, seed=2)))  # a full batch of another signature
        await settle()
        gate.release(0)
        await settle()
        assert len(gate.calls) == 2
        gate.release(1)
        np.testing.assert_array_equal(await full, predict(rows(4, seed=2)))
        assert recorder.batches[1].shape == (4, 3)
        assert not older.done() and batcher.stats().queued_rows == 1
        gate.open()
        await batcher.close()
        np.testing.assert_array_equal(await older, predict(rows(1, 5, seed=1)))
        await first

    run(body)


def test_deadline_timer_dispatches_a_held_batch() -> None:
    async def body() -> None:
        gate = Gate()  # the real monotonic clock and a 1 ms delay: the loop's timer must fire
        batcher = AdaptiveBatcher(predict, max_batch_size=100, max_delay_ms=1, max_queue=100, run_in=gate)
        first = asyncio.create_task(batcher.submit(rows(1)))
        await settle()
        second = asyncio.create_task(batcher.submit(rows(2, seed=1)))
        await settle()
        gate.opened = True
        gate.release(0)
        np.testing.assert_array_equal(await second, predict(rows(2, seed=1)))
        await first

    run(body)


def test_incompatible_signatures_are_never_merged() -> None:
    async def body() -> None:
        gate, recorder = Gate(), Recorder()
        batcher = AdaptiveBatcher(recorder, max_batch_size=100, max_delay_ms=0, max_queue=1000, run_in=gate)
        first = asyncio.create_task(batcher.submit(rows(1)))
        await settle()
        kinds = [
            (3, np.float64),
            (3, np.float32),
            (4, np.float64),
            (3, np.int64),
        ]
        requests = [rows(2 + i, cols, seed=i, dtype=dtype) for i, (cols, dtype) in enumerate(kinds * 2)]
        tasks = [asyncio.create_task(batcher.submit(r)) for r in requests]
        await settle()
        gate.open()
        await first
        for request, task in zip(requests, tasks, strict=True):
            result = await task
            assert result.dtype == request.dtype
            np.testing.assert_array_equal(result, predict(request))
        signatures = [(b.shape[1:], b.dtype) for b in recorder.batches[1:]]
        assert len(signatures) == 4 == len(set(signatures))  # one merged batch per signature
        assert [len(b) for b in recorder.batches[1:]] == [2 + 6, 3 + 7, 4 + 8, 5 + 9]

    run(body)


# ------------------------------------------------------------------------------------------------- back-pressure


def test_queue_full_raises_a_typed_error_with_retry_after() -> None:
    async def body() -> None:
        gate = Gate()
        batcher = AdaptiveBatcher(predict, max_batch_size=100, max_delay_ms=20, max_queue=5, run_in=gate)
        in_flight = asyncio.create_task(batcher.submit(rows(50)))  # in flight: does not count against the queue
        await settle()
        queued = asyncio.create_task(batcher.submit(rows(3, seed=1)))
        await settle()
        with pytest.raises(QueueFull) as raised:
            await batcher.submit(rows(3, seed=2))
        error = raised.value
        assert isinstance(error, CapstanError)
        assert error.http_status == 503 and error.code == "TEMPORARILY_UNAVAILABLE"
        assert error.retry_after_s >= 0.02
        fits = asyncio.create_task(batcher.submit(rows(2, seed=3)))  # 3 + 2 = 5: still accepted
        await settle()
        assert batcher.stats().rejected == 1 and batcher.stats().queued_rows == 5
        gate.open()
        await asyncio.gather(in_flight, queued, fits)
        big = await batcher.submit(rows(20, seed=4))  # an empty queue takes a request larger than max_queue
        np.testing.assert_array_equal(big, predict(rows(20, seed=4)))

    run(body)


# ------------------------------------------------------------------------------------------------- failures


def test_a_failing_predict_fails_only_the_requests_of_its_batch() -> None:
    def fragile(x: Array) -> Array:
        if (x < -100).any():
            raise ValueError("poisoned row")
        return predict(x)

    async def body() -> None:
        gate, recorder = Gate(), Recorder(fragile)
        batcher = AdaptiveBatcher(recorder, max_batch_size=4, max_delay_ms=0, max_queue=100, run_in=gate)
        good_first = asyncio.create_task(batcher.submit(rows(2)))
        await settle()
        poisoned = rows(2, seed=1)
        poisoned[1, 0] = -1000.0
        bad = asyncio.create_task(batcher.submit(poisoned))
        bad_neighbour = asyncio.create_task(batcher.submit(rows(2, seed=2)))  # same batch as the poisoned one
        later = [asyncio.create_task(batcher.submit(rows(2, seed=3 + i))) for i in range(2)]  # the next batch
        await settle()
        gate.open()
        np.testing.assert_array_equal(await good_first, predict(rows(2)))
        for task in (bad, bad_neighbour):
            with pytest.raises(ValueError, match="poisoned row"):
                await task
        for i, task in enumerate(later):
            np.testing.assert_array_equal(await task, predict(rows(2, seed=3 + i)))
        assert [len(b) for b in recorder.batches] == [2, 4, 4]
        assert batcher.stats().failed_batches == 1
        # The batcher keeps serving after a failed batch.
        np.testing.assert_array_equal(await batcher.submit(rows(1, seed=9)), predict(rows(1, seed=9)))

    run(body)


def test_hooks_report_each_batch_done_and_every_change_of_queue_depth() -> None:
    def fragile(x: Array) -> Array:
        if len(x) == 7:
            raise ValueError("no batches of seven")
        return predict(x)

    async def body() -> None:
        gate, clock = Gate(), FakeClock()
        done: list[tuple[int, float]] = []
        depths: list[int] = []
        batcher = AdaptiveBatcher(fragile, max_batch_size=10, max_delay_ms=0, max_queue=100, clock=clock,
                                  run_in=gate, on_batch_done=lambda n, s: done.append((n, s)),
                                  on_queue_depth=depths.append)
        first = asyncio.create_task(batcher.submit(rows(2)))  # dispatched at once: the queue stays empty
        await settle()
        queued = [asyncio.create_task(batcher.submit(rows(n, seed=n))) for n in (3, 4)]
        await settle()
        assert depths == [3, 7] and done == []
        clock.t = 0.5
        gate.release(0)
        np.testing.assert_array_equal(await first, predict(rows(2)))
        await settle()
        assert done == [(2, 0.5)] and depths == [3, 7, 0]  # the two queued requests left as one batch of 7
        clock.t = 0.75
        gate.release(1)
        for task in queued:
            with pytest.raises(ValueError, match="seven"):
                await task
        await settle()
        assert done == [(2, 0.5), (7, 0.25)]  # a failed batch is reported too

    run(body)


def test_a_result_of_the_wrong_length_fails_the_batch() -> None:
    async def body() -> None:
        batcher = AdaptiveBatcher(lambda x: x[:-1], max_batch_size=4, max_delay_ms=0, max_queue=10)
        with pytest.raises(CapstanError, match="returned 2 rows for a batch of 3 rows"):
            await batcher.submit(rows(3))
        scalar = AdaptiveBatcher(lambda x: np.float64(x.sum()), max_batch_size=4, max_delay_ms=0, max_queue=10)
        with pytest.raises(CapstanError, match="returned a scalar"):
            await scalar.submit(rows(3))

    run(body)


def test_a_cancelled_caller_is_dropped_from_the_queue() -> None:
    async def body() -> None:
        gate, recorder = Gate(), Recorder()
        batcher = AdaptiveBatcher(recorder, max_batch_size=100, max_delay_ms=0, max_queue=100, run_in=gate)
        first = asyncio.create_task(batcher.submit(rows(1)))
        await settle()
        cancelled = asyncio.create_task(batcher.submit(rows(5, seed=1)))
        kept = asyncio.create_task(batcher.submit(rows(2, seed=2)))
        await settle()
        cancelled.cancel()
        await settle()
        gate.open()
        await first
        np.testing.assert_array_equal(await kept, predict(rows(2, seed=2)))
        assert [len(b) for b in recorder.batches] == [1, 2]
        assert batcher.stats().queued_rows == 0

    run(body)


# ------------------------------------------------------------------------------------------------- close


def test_close_drains_the_queue_then_refuses_new_requests() -> None:
    async def body() -> None:
        gate, clock = Gate(), FakeClock()
        batcher = AdaptiveBatcher(
            predict, max_batch_size=100, max_delay_ms=1e9, max_queue=100, clock=clock, run_in=gate
        )
        first = asyncio.create_task(batcher.submit(rows(1)))
        await settle()
        queued = asyncio.create_task(batcher.submit(rows(2, seed=1)))
        await settle()
        closer = asyncio.create_task(batcher.close())
        await settle()
        assert not closer.done()
        with pytest.raises(BatcherClosed):
            await batcher.submit(rows(1))
        gate.open()
        await closer
        np.testing.assert_array_equal(await first, predict(rows(1)))
        np.testing.assert_array_equal(await queued, predict(rows(2, seed=1)))
        stats = batcher.stats()
        assert stats.queued_rows == 0 and not stats.in_flight
        assert BatcherClosed("x").http_status == 503

    run(body)


def test_close_without_drain_fails_the_queue_and_finishes_the_batch_in_flight() -> None:
    async def body() -> None:
        gate = Gate()
        batcher = AdaptiveBatcher(predict, max_batch_size=100, max_delay_ms=0, max_queue=100, run_in=gate)
        first = asyncio.create_task(batcher.submit(rows(1)))
        await settle()
        queued = asyncio.create_task(batcher.submit(rows(2, seed=1)))
        await settle()
        closer = asyncio.create_task(batcher.close(drain=False))
        await settle()
        with pytest.raises(BatcherClosed):
            await queued
        assert not closer.done()  # waits for the batch in flight
        gate.open()
        await closer
        np.testing.assert_array_equal(await first, predict(rows(1)))
        assert len(gate.calls) == 1

    run(body)


def test_close_of_an_idle_batcher_returns_at_once() -> None:
    async def body() -> None:
        batcher = AdaptiveBatcher(predict, max_batch_size=4, max_delay_ms=5, max_queue=10)
        await batcher.close()
        await batcher.close()
        with pytest.raises(BatcherClosed):
            await batcher.submit(rows(1))

    run(body)


# ------------------------------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_batch_size": 0, "max_delay_ms": 1, "max_queue": 1}, "max_batch_size"),
        ({"max_batch_size": 1, "max_delay_ms": -1, "max_queue": 1}, "max_delay_ms"),
        ({"max_batch_size": 1, "max_delay_ms": float("nan"), "max_queue": 1}, "max_delay_ms"),
        ({"max_batch_size": 1, "max_delay_ms": 1, "max_queue": -1}, "max_queue"),
    ],
)
def test_invalid_settings_are_refused(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidParameterValue, match=message):
        AdaptiveBatcher(predict, **kwargs)


def test_rows_must_have_an_axis_zero() -> None:
    async def body() -> None:
        batcher = AdaptiveBatcher(predict, max_batch_size=4, max_delay_ms=0, max_queue=10)
        with pytest.raises(InvalidParameterValue, match="at least one dimension"):
            await batcher.submit(np.float64(1.0))  # type: ignore[arg-type]

    run(body)


def test_inline_for_small_batches_predicts_small_batches_on_the_loop_and_large_ones_in_a_thread() -> None:
    import threading

    from capstan.serving.batching import inline_for_small_batches

    threads: list[int] = []

    def predict(rows: np.ndarray) -> np.ndarray:
        threads.append(threading.get_ident())
        return rows * 2

    async def main() -> tuple[np.ndarray, np.ndarray]:
        run_in = inline_for_small_batches(max_rows=4)
        return await run_in(predict, np.ones((4, 2))), await run_in(predict, np.ones((5, 2)))

    small, large = asyncio.run(main())
    assert small.shape == (4, 2) and large.shape == (5, 2) and float(small[0, 0]) == 2.0
    assert threads[0] == threading.get_ident() != threads[1]
