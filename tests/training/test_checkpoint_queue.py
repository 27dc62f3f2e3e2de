"""`capstan.checkpoint.save` reports each save to the queue workload its process runs in (``CAPSTAN_WORKLOAD_ID``):
in this process against the local store (rank 0 only; a failed report never fails the save), and end to end from
the workers of a training job and from a pipeline step the queue admitted."""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from training_helpers import CPU_QUEUE, GIB, Env, make_env

import capstan
import capstan.checkpoint as ckpt
from capstan.queue.admission import QueueAdmission
from capstan.queue.manager import Backoff, QueueManager
from capstan.queue.model import PodSet
from capstan.queue.records import ADMITTED, FINISHED, WorkloadRecord
from capstan.queue.sql import SqlQueueStore
from capstan.resources.machine import Capacity
from capstan.sdk import fluent as sdk
from capstan.sdk.workloads import record_checkpoint
from capstan.services import Services
from capstan.settings import Settings


@pytest.fixture
def local(tmp_path: Path) -> Iterator[tuple[Settings, Services]]:
    """The fluent SDK on a local home whose queue has one admitted workload ``w/train`` and one pending ``w/wait``."""
    settings = Settings.for_home(tmp_path / "home", metric_flush_interval_s=0.05)
    services = Services.open(settings)
    store = services.queue.get()
    with services.queue_lock.hold(getattr(store, "transaction", None)):
        mgr = QueueManager(store, clock=services.clock)
        mgr.apply_config(CPU_QUEUE)
        mgr.submit("w/train", "main", [PodSet("main", 1, {"cpu": 4000})])
        mgr.submit("w/wait", "main", [PodSet("main", 1, {"cpu": 4000})])
        mgr.cycle()
    sdk.configure(settings)
    yield settings, services
    while sdk.active_run() is not None:
        sdk.end_run()
    sdk.configure(Settings.for_home(tmp_path / "idle"))
    services.close()


def stored(services: Services, workload_id: str) -> WorkloadRecord:
    record = services.queue.get().get_workload(workload_id)
    assert record is not None
    return record


def test_saves_are_reported_to_the_local_queue_by_rank_zero(local: tuple[Settings, Services],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    settings, services = local
    assert stored(services, "w/train").state == ADMITTED and stored(services, "w/train").checkpointed_at is None
    monkeypatch.setenv("CAPSTAN_WORKLOAD_ID", "w/train")
    with capstan.start_run() as run:
        for step in range(3):
            assert ckpt.save({"step": step}, step)
    first = stored(services, "w/train")
    assert first.checkpoint_step == 2 and first.checkpointed_at is not None
    sdk.configure(dataclasses.replace(settings, rank=1, checkpoint_uri=f"runs:/{run.run_id}/checkpoints"))
    assert ckpt.save({"mine": 1}, 7, per_rank=True)  # rank 1 writes its own series but does not report
    assert ckpt.save({"shared": 1}, 8) is False
    assert stored(services, "w/train").checkpoint_step == 2
    # The SDK call itself: an explicit id and step, the same record as JSON.
    sdk.configure(settings)
    data = record_checkpoint("w/train", step=9)
    assert data["id"] == "w/train" and data["checkpoint_step"] == 9 and stored(services, "w/train").checkpoint_step == 9


def test_a_failed_report_never_fails_the_save_and_is_logged_once(local: tuple[Settings, Services],
                                                                 monkeypatch: pytest.MonkeyPatch,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    _settings, services = local
    monkeypatch.setattr(ckpt, "_REPORT_WARNED", threading.Event())
    caplog.set_level(logging.WARNING, logger="capstan.checkpoint")
    monkeypatch.setenv("CAPSTAN_WORKLOAD_ID", "w/wait")  # pending: nothing of it runs that could have saved
    with capstan.start_run():
        assert ckpt.save({"a": 1}, 1)
        monkeypatch.setenv("CAPSTAN_WORKLOAD_ID", "no-such-workload")
        assert ckpt.save({"a": 2}, 2)
        assert ckpt.load_latest() == ({"a": 2}, 2)
    warnings = [r.getMessage() for r in caplog.records if r.name == "capstan.checkpoint"]
    assert len(warnings) == 1
    assert "the checkpoint of step 1 is saved, but the queue was not told" in warnings[0]
    assert "'w/wait' is Pending, not running" in warnings[0]
    assert stored(services, "w/wait").checkpointed_at is None
    monkeypatch.delenv("CAPSTAN_WORKLOAD_ID")
    with pytest.raises(capstan.errors.InvalidParameterValue, match="CAPSTAN_WORKLOAD_ID is not set"):
        record_checkpoint(step=1)


@pytest.fixture
def queued(tmp_path: Path) -> Iterator[Env]:
    """Training jobs admitted by the queue of the local SQL store, which their workers report to."""
    settings = Settings.for_home(tmp_path / "home")
    base = Services.open(settings)
    queue = QueueAdmission(SqlQueueStore(base.engine), capacity=Capacity(cpu=4, memory=8 * GIB), clock=base.clock,
                           events=base.events, lock=base.queue_lock, backoff=Backoff(base_s=0), default="")
    with queue.session() as mgr:
        mgr.apply_config(CPU_QUEUE)
    try:
        yield from make_env(tmp_path, queue)
    finally:
        base.close()


def test_the_workers_of_a_training_job_report_their_checkpoints(queued: Env) -> None:
    env = queued
    assert isinstance(env.admission, QueueAdmission)
    spec = env.spec("steps.py", str(env.out), "3", "0.05", workers=2, cpu=1)
    final = env.submit_and_run(spec)
    assert final.state == "Succeeded", final.message
    workload = f"job/{final.id}"
    with env.admission.session() as mgr:
        record = mgr.get(workload)
    assert record.state == FINISHED and record.admitted_at is not None
    # rank 0 saved steps 0, 1 and 2 and told the queue each time; the finished record keeps the last one
    assert record.checkpoint_step == 2
    assert record.checkpointed_at is not None and record.finished_at is not None
    assert record.admitted_at <= record.checkpointed_at <= record.finished_at


STEP_FLOW = '''
import capstan.checkpoint
import capstan.pipelines as cp


@cp.step(resources={"cpu": 0.5})
def train(steps: int) -> int:
    for step in range(steps):
        assert capstan.checkpoint.save({"step": step}, step)
    return steps


@cp.pipeline
def flow(steps: int = 3):
    return train(steps)
'''


def test_a_pipeline_step_admitted_by_the_queue_reports_its_checkpoints(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from capstan.pipelines.executors import close_pools
    from capstan.pipelines.loader import load_pipeline
    from helpers.pipelines import open_runner

    code = tmp_path / "code"
    code.mkdir()
    (code / "stepflow.py").write_text(STEP_FLOW)
    settings = Settings.for_home(tmp_path / "home", declared_gpus=0)
    close_pools()  # the step's worker process starts afresh, with the stores of this home in its environment
    monkeypatch.setenv("CAPSTAN_HOME", str(settings.home))
    runner = open_runner(settings)
    try:
        pipe, ref = load_pipeline(f"{code / 'stepflow.py'}:flow")
        result = runner.run(pipe, {"steps": 3}, ref=ref)
        assert result.ok, result.run.message
        record = SqlQueueStore(runner.engine).get_workload(f"{result.run_id}/train")
    finally:
        runner.close()
        close_pools()
    assert record is not None and record.state == FINISHED
    assert record.checkpoint_step == 2 and record.checkpointed_at is not None
