"""Concurrent writers through the server: 8 processes x 1,000 metrics each, with the mlflow client, lose nothing."""

from __future__ import annotations

import multiprocessing
import time
from typing import Any

import pytest

PROCESSES = 8
POINTS = 1000
SINGLE = 200  # per process: this many one call at a time, the rest in batches of 100


def _writer(tracking_uri: str, run_id: str, worker: int, start: Any) -> None:
    import mlflow
    from mlflow.entities import Metric

    client = mlflow.MlflowClient(tracking_uri)
    own = client.create_run(client.get_run(run_id).info.experiment_id).info.run_id
    start.wait(60)
    now = int(time.time() * 1000)
    key = f"worker{worker}"
    for step in range(SINGLE):
        client.log_metric(run_id, key, step * 0.5, timestamp=now + step, step=step)
    for first in range(SINGLE, POINTS, 100):
        points = [Metric(key, step * 0.5, now + step, step) for step in range(first, first + 100)]
        client.log_batch(run_id, metrics=points)
        client.log_batch(own, metrics=[Metric("shared", float(s), now + s, s) for s in range(first, first + 100)])
    client.log_param(run_id, key, str(worker))
    client.set_terminated(own)


@pytest.mark.slow
def test_eight_processes_lose_nothing(mlflow_env: Any, client: Any, server_url: str, unique: str) -> None:
    mlflow = mlflow_env
    exp_id = mlflow.create_experiment(f"compat-concurrency-{unique}")
    run_id = client.create_run(exp_id).info.run_id
    # forkserver, with mlflow imported once in the server (importing it in every child costs seconds each): a
    # plain fork of this process, whose other threads (servers, flushers of earlier tests) may hold a lock at that
    # moment, once left a child stuck for good.
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["mlflow"])
    start = ctx.Event()
    procs = [ctx.Process(target=_writer, args=(server_url, run_id, worker, start)) for worker in range(PROCESSES)]
    for proc in procs:
        proc.start()
    start.set()
    for proc in procs:
        proc.join(240)
    assert [proc.exitcode for proc in procs] == [0] * PROCESSES

    run = client.get_run(run_id)
    assert run.data.params == {f"worker{w}": str(w) for w in range(PROCESSES)}
    for worker in range(PROCESSES):
        history = client.get_metric_history(run_id, f"worker{worker}")
        assert [(m.step, m.value) for m in history] == [(s, s * 0.5) for s in range(POINTS)]
        assert run.data.metrics[f"worker{worker}"] == (POINTS - 1) * 0.5
    others = client.search_runs([exp_id], filter_string="attributes.status = 'FINISHED'")
    assert len(others) == PROCESSES
    for other in others:
        assert len(client.get_metric_history(other.info.run_id, "shared")) == POINTS - SINGLE
