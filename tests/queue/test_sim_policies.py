"""The simulator's aging, checkpoint-aware reclaim and minimum run time, on tiny traces with known answers."""

from __future__ import annotations

from dataclasses import replace

from queue_helpers import gpu_queues

from capstan.queue.simulate import POLICIES, SimSettings, replay, sim_settings
from capstan.queue.trace import TraceJob

RECLAIM = POLICIES["capstan-small-first-reclaim"]


def lender_and_borrower() -> list[TraceJob]:
    # b borrows a's 2 GPUs for a long 4-GPU job; a then wants 1 GPU of its own quota back.
    return [TraceJob("big", 0.0, 10_000.0, 4, "b"), TraceJob("small", 100.0, 100.0, 1, "a")]


def test_reclaim_preempts_the_borrower_and_counts_the_work_lost_since_its_checkpoint() -> None:
    settings = SimSettings(checkpoint_interval_s=60.0, restart_overhead_s=0.0, requeue_backoff_s=0.0, min_run_s=0.0)
    r = replay(gpu_queues(("a", 2), ("b", 2)), lender_and_borrower(), RECLAIM, settings)
    assert r.preemptions == 1
    # Preempted at t=100, last checkpoint at t=60: 40 s x 4 GPUs lost.
    assert r.wasted_gpu_hours * 3600 == 160.0
    assert r.jct_by_job["small"] == 100.0  # admitted at once: no wait


def test_minimum_run_time_defers_the_reclaim() -> None:
    settings = SimSettings(checkpoint_interval_s=60.0, restart_overhead_s=0.0, requeue_backoff_s=0.0,
                           min_run_s=1800.0)
    r = replay(gpu_queues(("a", 2), ("b", 2)), lender_and_borrower(), RECLAIM, settings)
    assert r.preemptions == 1
    # "big" is protected until t=1800 and preempted right after its checkpoint then: nothing lost.
    assert r.wasted_gpu_hours == 0.0
    assert r.jct_by_job["small"] == 1800.0


def test_the_fifo_baselines_never_preempt() -> None:
    r = replay(gpu_queues(("a", 2), ("b", 2)), lender_and_borrower(), POLICIES["best-effort-fifo"])
    assert r.preemptions == 0


def starving_trace() -> list[TraceJob]:
    # A 4-GPU job behind a stream of overlapping 1-GPU jobs: small-first always finds a free GPU for a small one.
    jobs = [TraceJob("big", 0.0, 100.0, 4, "a")]
    jobs += [TraceJob(f"s{i}", 10.0 * i, 25.0, 1, "a") for i in range(200)]
    return jobs


def test_small_first_starves_a_large_job_without_aging_and_aging_bounds_its_wait() -> None:
    base = replace(gpu_queues(("a", 4), cohort=None), aging_seconds=None, hold_seconds=None)
    small_first = POLICIES["capstan-small-first"]
    starved = replay(base, starving_trace(), small_first)
    # Without aging "big" runs only once the stream has ended (last small job submitted at t=1990).
    assert starved.jct_by_job["big"] - 100.0 > 1990.0
    aged = replay(replace(base, aging_seconds=300.0, hold_seconds=500.0), starving_trace(), small_first)
    wait = aged.jct_by_job["big"] - 100.0
    # Held from t=500 on: it starts once the small jobs running then end (25 s at most).
    assert 500.0 <= wait <= 525.0
    # The baselines ignore the aging rule.
    fifo = replay(replace(base, aging_seconds=300.0, hold_seconds=500.0), starving_trace(),
                  POLICIES["best-effort-fifo"])
    assert fifo.jct_by_job["big"] == 100.0  # first come, first served: it was first


def test_min_run_seconds_is_read_from_the_simulation_block() -> None:
    assert sim_settings({"minRunSeconds": 600}).min_run_s == 600.0
    assert sim_settings(None).min_run_s == 2700.0
