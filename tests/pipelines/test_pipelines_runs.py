"""Running pipelines end to end with real worker processes: data passing, lineage, logs, caching, retries,
timeouts, OOM, fan-out, bad values, retry of a failed run and unschedulable requests."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from pipeline_helpers import write_pipeline

from capstan.pipelines.executors import process_alive
from capstan.pipelines.loader import load_pipeline
from capstan.pipelines.runner import PipelineRunner, RunResult
from capstan.store.events_sql import SqlEventLog

FLOW = '''
import json
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

import capstan.pipelines as cp


def bump(marks, name):
    path = Path(marks) / name
    with open(path, "a") as fh:
        fh.write("x\\n")
    return len(path.read_text().splitlines())


@cp.step
def make_array(n: int) -> np.ndarray:
    print("making", n, "values")
    print("warning on stderr", file=sys.stderr)
    return np.arange(n, dtype=np.int64)


@cp.step(isolation="thread")
def make_frame(n: int) -> pd.DataFrame:
    print("frame from a thread")
    return pd.DataFrame({"v": range(n)})


@cp.step
def combine(arr: np.ndarray, frame: pd.DataFrame, marks: str) -> dict:
    bump(marks, "combine")
    return {"sum": int(arr.sum()), "rows": len(frame)}


@cp.step(cache=False)
def uncached(summary: dict, marks: str) -> int:
    return bump(marks, "uncached")


@cp.pipeline
def data(n: int = 5, marks: str = "."):
    summary = combine(make_array(n), make_frame(n), marks)
    uncached(summary, marks)
    return summary


@cp.step(retries=2, retry_backoff=cp.Backoff(base_s=0.05, factor=2, max_s=1, jitter=0))
def flaky(marks: str) -> str:
    if bump(marks, "flaky") < 3:
        raise RuntimeError("not yet")
    return "third time lucky"


@cp.step(timeout=0.5)
def sleepy(marks: str) -> None:
    Path(marks, "sleepy.pid").write_text(str(os.getpid()))
    time.sleep(60)


@cp.pipeline
def troubles(marks: str = "."):
    return flaky(marks), sleepy(marks)


@cp.step
def hog() -> int:
    import resource
    resource.setrlimit(resource.RLIMIT_AS, (400 * 2**20, resource.getrlimit(resource.RLIMIT_AS)[1]))
    block = bytearray(800 * 2**20)
    return len(block)


@cp.step
def killed() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


oom_command = cp.command_step([sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"],
                              name="oom_command")


@cp.step
def after_oom() -> int:
    return os.getpid()


@cp.pipeline
def ooms():
    hog()
    killed()
    oom_command()
    return after_oom()


emit = cp.command_step([sys.executable, "-c",
                        "import json, os, sys; json.dump({{'rows': int(sys.argv[1]), 'chunk': os.environ.get("
                        "'CHUNK_INDEX')}}, open(os.environ['CAPSTAN_OUTPUT'], 'w')); print('emitted', sys.argv[1])",
                        "{rows}"], name="emit")
fails = cp.command_step([sys.executable, "-c", "import sys; print('about to fail'); sys.exit(3)"], name="fails")


@cp.pipeline
def commands(rows: int = 4):
    first = emit(rows=rows)
    fails()
    return first


@cp.step
def listing(n: int) -> list[int]:
    return list(range(n))


@cp.step(isolation="thread")
def square(x: int, marks: str) -> int:
    Path(marks, f"start-{x}").write_text(str(time.time()))
    time.sleep(0.15)
    Path(marks, f"end-{x}").write_text(str(time.time()))
    return x * x


@cp.step
def chunked(chunk: cp.Chunk, total: int) -> dict:
    env = cp.current_chunk()
    return {"index": chunk.index, "count": chunk.count, "env": [env.index, env.count] if env else None,
            "items": list(chunk.slice(total))}


@cp.step(isolation="thread")
def gather(squares: list[int], parts: list[dict], emitted: list[dict]) -> dict:
    return {"squares": squares, "parts": parts, "emitted": emitted}


@cp.pipeline
def fanout(n: int = 5, marks: str = "."):
    squares = square.map(listing(n), marks=marks, max_parallel=2)
    parts = chunked.map(cp.chunks(3), total=7)
    emitted = emit.map(cp.chunks(2), rows=2)
    return gather(squares, parts, emitted)


@cp.step
def unpicklable() -> object:
    import threading
    return threading.Lock()


@cp.step
def liar() -> int:
    return "not an int"


@cp.step
def upstream(marks: str) -> int:
    return bump(marks, "upstream")


@cp.step
def needs_fix(value: int, marks: str) -> int:
    if not Path(marks, "fixed").exists():
        raise ValueError("broken until fixed")
    return value + bump(marks, "needs_fix")


@cp.step
def downstream(value: int) -> int:
    return value * 10


@cp.step(resources={"gpu": 64})
def greedy() -> None:
    return None


@cp.pipeline
def bad(marks: str = "."):
    unpicklable()
    liar()
    greedy()
    return downstream(needs_fix(upstream(marks), marks))
'''


@pytest.fixture
def flow(tmp_path: Path) -> Path:
    return write_pipeline(tmp_path / "code", "flow", FLOW)


def run(runner: PipelineRunner, flow: Path, func: str, **params: object) -> RunResult:
    pipe, ref = load_pipeline(f"{flow}:{func}")
    return runner.run(pipe, params, ref=ref)


def reasons(runner: PipelineRunner, run_id: str, step: str) -> list[str]:
    return [e.reason for e in SqlEventLog(runner.engine).list("step", f"{run_id}/{step}")]


def test_data_passing_lineage_logs_and_cache(runner: PipelineRunner, flow: Path, tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    first = run(runner, flow, "data", n=5, marks=str(marks))
    assert first.ok, first.run.message
    assert first.value() == {"sum": 10, "rows": 5}
    np.testing.assert_array_equal(first.output("make_array"), np.arange(5))
    assert first.step("make_array").output.format == "npy"  # type: ignore[union-attr]  # present: this test created it
    assert first.step("make_frame").output.format == "parquet"  # type: ignore[union-attr]  # present: this test created it

    (attempt,) = runner.store.attempts(first.run_id, "make_array")
    assert (attempt.isolation, attempt.exit_code) == ("process", 0)
    assert attempt.duration_ms is not None and attempt.peak_memory and attempt.peak_memory > 10 * 2**20
    log = runner.artifacts.read_bytes(attempt.log_path or "").decode()
    assert "making 5 values" in log and "warning on stderr" in log
    (thread_attempt,) = runner.store.attempts(first.run_id, "make_frame")
    assert runner.artifacts.read_bytes(thread_attempt.log_path or "") == b"frame from a thread\n"

    edges = {e["source_step"]: e for e in runner.store.inputs(first.run_id) if e["step_id"] == "combine"}
    assert set(edges) == {"make_array", "make_frame"}
    array_ref = first.step("make_array").output
    assert array_ref is not None and edges["make_array"]["digest"] == array_ref.digest
    lineage = runner.store.artifact_lineage(array_ref.path or "")
    assert lineage["produced_by"][0]["step"] == "make_array"
    assert [c["step"] for c in lineage["consumed_by"]] == ["combine"]

    second = run(runner, flow, "data", n=5, marks=str(marks))
    states = {s.step_id: s.state for s in second.steps}
    assert states == {"make_array": "cached", "make_frame": "cached", "combine": "cached", "uncached": "succeeded"}
    assert second.step("combine").cached_from == f"{first.run_id}/combine"
    assert "CacheHit" in reasons(runner, second.run_id, "combine")
    assert (marks / "combine").read_text().count("x") == 1 and (marks / "uncached").read_text().count("x") == 2
    assert second.value() == {"sum": 10, "rows": 5}

    pipe, ref = load_pipeline(f"{flow}:data")
    third = runner.run(pipe, {"n": 5, "marks": str(marks)}, ref=ref, no_cache=True)
    assert all(s.state == "succeeded" for s in third.steps)
    assert (marks / "combine").read_text().count("x") == 2
    changed = run(runner, flow, "data", n=6, marks=str(marks))
    assert {s.step_id: s.state for s in changed.steps}["combine"] == "succeeded"


def test_retries_and_timeouts(runner: PipelineRunner, flow: Path, tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    started = time.monotonic()
    result = run(runner, flow, "troubles", marks=str(marks))
    assert time.monotonic() - started < 30
    assert result.status == "failed"
    flaky = result.step("flaky")
    assert (flaky.state, flaky.attempt, flaky.retries_used) == ("succeeded", 3, 2)
    assert result.output("flaky") == "third time lucky"
    attempts = runner.store.attempts(result.run_id, "flaky")
    assert [(a.state, a.reason) for a in attempts] == [("failed", "Exception"), ("failed", "Exception"),
                                                       ("succeeded", "")]
    assert "RuntimeError: not yet" in attempts[0].message
    assert reasons(runner, result.run_id, "flaky").count("RetryScheduled") == 2
    assert b"RuntimeError: not yet" in runner.artifacts.read_bytes(attempts[0].log_path or "")

    sleepy = result.step("sleepy")
    assert (sleepy.state, sleepy.reason) == ("failed", "Timeout")
    assert "Timeout" in reasons(runner, result.run_id, "sleepy")
    pid = int((marks / "sleepy.pid").read_text())
    deadline = time.monotonic() + 10
    while process_alive(pid, None) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not process_alive(pid, None), "the timed-out attempt's worker must be killed"
    assert "step 'sleepy' failed: Timeout" in result.run.message


def test_out_of_memory_is_reported_as_oom(runner: PipelineRunner, flow: Path) -> None:
    result = run(runner, flow, "ooms")
    states = {s.step_id: (s.state, s.reason) for s in result.steps}
    assert states["hog"] == ("failed", "OOMKilled")
    assert states["killed"] == ("failed", "OOMKilled")
    assert states["oom_command"] == ("failed", "OOMKilled")
    assert states["after_oom"] == ("succeeded", "")
    (hog,) = runner.store.attempts(result.run_id, "hog")
    assert hog.exit_code == 137 and "MemoryError" in hog.message
    (killed,) = runner.store.attempts(result.run_id, "killed")
    assert killed.exit_code == 137 and "SIGKILL" in killed.message
    assert "OOMKilled" in reasons(runner, result.run_id, "oom_command")


def test_command_steps(runner: PipelineRunner, flow: Path) -> None:
    result = run(runner, flow, "commands", rows=7)
    assert result.status == "failed"
    assert result.value() == {"rows": 7, "chunk": None}
    emit_attempt = runner.store.attempts(result.run_id, "emit")[0]
    assert runner.artifacts.read_bytes(emit_attempt.log_path or "") == b"emitted 7\n"
    assert emit_attempt.peak_memory and emit_attempt.peak_memory > 0
    fails = result.step("fails")
    assert (fails.state, fails.reason) == ("failed", "NonZeroExit")
    (attempt,) = runner.store.attempts(result.run_id, "fails")
    assert attempt.exit_code == 3 and "exited with code 3" in attempt.message


def test_fan_out_chunks_and_ordered_join(runner: PipelineRunner, flow: Path, tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    result = run(runner, flow, "fanout", n=5, marks=str(marks))
    assert result.ok, result.run.message
    value = result.value()
    assert value["squares"] == [0, 1, 4, 9, 16]
    assert value["parts"] == [{"index": i, "count": 3, "env": [i, 3], "items": items}
                              for i, items in enumerate([[0, 1], [2, 3], [4, 5, 6]])]
    assert value["emitted"] == [{"rows": 2, "chunk": "0"}, {"rows": 2, "chunk": "1"}]
    children = [s.step_id for s in result.steps if s.parent == "square"]
    assert children == [f"square[{i}]" for i in range(5)]
    spans = [(float((marks / f"start-{i}").read_text()), float((marks / f"end-{i}").read_text())) for i in range(5)]
    for t in [s for s, _e in spans]:
        assert sum(1 for s, e in spans if s <= t < e) <= 2, "max_parallel=2 was exceeded"
    events = SqlEventLog(runner.engine).list("step", f"{result.run_id}/square", reason="MapExpanded")
    assert events[0].data["count"] == 5


def test_bad_values_skip_and_retry_of_the_failed_run(runner: PipelineRunner, flow: Path, tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    result = run(runner, flow, "bad", marks=str(marks))
    states = {s.step_id: s for s in result.steps}
    assert (states["unpicklable"].state, states["unpicklable"].reason) == ("failed", "SerializationError")
    assert "flow.py:" in states["unpicklable"].message and "cannot be stored" in states["unpicklable"].message
    assert (states["liar"].state, states["liar"].reason) == ("failed", "TypeMismatch")
    assert "returned str, but its annotation is int" in states["liar"].message
    assert (states["greedy"].state, states["greedy"].reason) == ("failed", "Unschedulable")
    assert "requests 64 GPU(s)" in states["greedy"].message
    assert states["needs_fix"].state == "failed" and states["needs_fix"].attempt == 1
    assert (states["downstream"].state, states["downstream"].reason) == ("skipped", "UpstreamFailed")
    assert "UpstreamFailed" in reasons(runner, result.run_id, "downstream")

    (marks / "fixed").write_text("yes")
    again = runner.retry(result.run_id)
    states = {s.step_id: s for s in again.steps}
    assert again.run_id == result.run_id
    assert states["needs_fix"].state == "succeeded" and states["needs_fix"].attempt == 2
    assert states["downstream"].state == "succeeded"
    assert (marks / "upstream").read_text().count("x") == 1, "upstream steps are reused, not rerun"
    assert again.value() == 20
    assert again.status == "failed"  # the unfixable steps failed again
    assert [a.attempt for a in runner.store.attempts(result.run_id, "liar")] == [1, 2]
