"""The pipelines SQL adapter on both metadata-store backends: migrations, runs, round batches, cache, claims,
schedule slots and lineage."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import inspect

import capstan.pipelines as cp
from capstan.errors import ResourceAlreadyExists, ResourceDoesNotExist
from capstan.pipelines.runner import PipelineRunner
from capstan.pipelines.state import StepState
from capstan.pipelines.steprec import StepRec, new_step_row
from capstan.pipelines.storage import RUN_KIND, Batch, RoundWriter, ScheduleRecord, pipeline_event
from capstan.settings import Settings
from capstan.store.engine import current_revisions, script_heads
from capstan.store.events_sql import SqlEventLog
from helpers.pipelines import open_runner


@cp.step(isolation="thread")
def one(x: int) -> int:
    return x + 1


@cp.pipeline
def tiny(x: int = 1):
    return one(one(x))


@pytest.fixture
def backend_runner(backend_settings: Settings) -> Iterator[PipelineRunner]:
    runner = open_runner(backend_settings)
    yield runner
    runner.close()


def test_migration_creates_the_pipelines_branch(backend_runner: PipelineRunner) -> None:
    assert "0200" in current_revisions(backend_runner.engine) == script_heads()
    names = set(inspect(backend_runner.engine).get_table_names())
    assert {"pipeline_runs", "pipeline_steps", "pipeline_attempts", "pipeline_inputs", "pipeline_cache",
            "pipeline_schedules", "pipeline_schedule_slots"} <= names


def test_round_batches_cache_and_claims(backend_runner: PipelineRunner) -> None:
    r = backend_runner
    run, graph = r.create_run(tiny, {"x": "5"}, ref="tests:tiny")
    assert r.store.resolve_run_id(run.id[:8]) == run.id
    with pytest.raises(ResourceDoesNotExist):
        r.store.get_run("f" * 32)
    steps = r.store.steps(run.id, run.project)
    assert [(s.step_id, s.state) for s in steps] == [("one", "pending"), ("one-2", "pending")]
    events = SqlEventLog(r.engine).list(RUN_KIND, run.id)
    assert [e.reason for e in events] == ["PipelineRunCreated"]

    writer = RoundWriter(r.engine)
    rec = StepRec(graph.nodes["one"], StepState.SUCCEEDED, attempt=1, cache_key="k" * 64)
    batch = Batch.new()
    batch.steps["one"] = rec.row(run.id)
    batch.attempts_new.append({"run_id": run.id, "step_id": "one", "attempt": 1, "state": "running", "reason": "",
                               "message": "", "isolation": "thread", "worker_pid": None, "worker_started": None,
                               "started_at": 1, "finished_at": None, "duration_ms": None, "exit_code": None,
                               "peak_memory": None, "log_path": None})
    batch.attempts_done.append({"k_run": run.id, "k_step": "one", "k_attempt": 1, "state": "succeeded",
                                "reason": "", "message": "", "finished_at": 5, "duration_ms": 4, "exit_code": 0,
                                "peak_memory": 123, "log_path": None})
    batch.cache.append({"key": "k" * 64, "run_id": run.id, "step_id": "one", "output_format": "json",
                        "output_inline": "6", "output_path": None, "output_digest": "d" * 64, "output_size": 1,
                        "created_at": 5})
    batch.inputs.append({"run_id": run.id, "step_id": "one-2", "source_step": "one", "source_run": run.id,
                         "digest": "d" * 64, "path": None})
    batch.events.append(pipeline_event(5, run.project, "step", f"{run.id}/one", "StepSucceeded", "ok"))
    batch.new_steps.append(new_step_row(run.id, graph.nodes["one"]) | {"step_id": "extra", "parent": "one",
                                                                        "map_index": 0})
    batch.run = {"id": run.id, "status": "running", "heartbeat_at": 7}
    writer.commit(batch)
    # The same key again (another run finishing the same work) overwrites instead of failing.
    again = Batch.new()
    again.cache.append(dict(batch.cache[0], created_at=9))
    writer.commit(again)
    hits = writer.cache_lookup(["k" * 64, "missing"])
    assert list(hits) == ["k" * 64] and hits["k" * 64]["output_inline"] == "6" and hits["k" * 64]["exists"]
    assert not writer.cancel_requested(run.id)
    r.store.request_cancel(run.id)
    assert writer.cancel_requested(run.id)
    writer.close()

    stored = {s.step_id: s for s in r.store.steps(run.id, run.project)}
    assert stored["one"].state == "succeeded" and stored["extra"].parent == "one"
    (attempt,) = r.store.attempts(run.id, "one")
    assert (attempt.state, attempt.duration_ms, attempt.peak_memory) == ("succeeded", 4, 123)
    assert r.store.get_run(run.id).heartbeat_at == 7
    lineage = r.store.artifact_lineage("d" * 64)
    assert lineage["consumed_by"] == [{"run_id": run.id, "step": "one-2", "source_run": run.id,
                                       "source_step": "one", "digest": "d" * 64}]

    assert r.store.claim(run.id, None, "host:1:2")
    assert not r.store.claim(run.id, None, "host:3:4")  # compare-and-set: someone else holds it
    assert r.store.claim(run.id, "host:1:2", "host:3:4")


def test_schedules_and_slot_uniqueness(backend_runner: PipelineRunner) -> None:
    r = backend_runner
    record = ScheduleRecord("nightly", "default", "f.py:p", "0 3 * * *", {"x": 1}, True, 10, None)
    r.store.create_schedule(record)
    with pytest.raises(ResourceAlreadyExists):
        r.store.create_schedule(record)
    assert r.store.get_schedule("nightly").params == {"x": 1}
    with r.engine.begin() as conn:
        assert r.store.claim_slot(conn, "nightly", 100, "a" * 32)
        assert not r.store.claim_slot(conn, "nightly", 100, "b" * 32)
        r.store.set_last_slot(conn, "nightly", 100)
        r.store.set_last_slot(conn, "nightly", 50)  # never moves back
    assert r.store.slots("nightly") == [(100, "a" * 32)]
    assert r.store.get_schedule("nightly").last_slot == 100
    r.store.delete_schedule("nightly")
    with pytest.raises(ResourceDoesNotExist):
        r.store.delete_schedule("nightly")
    assert r.store.slots("nightly") == []
