"""Pipeline steps go through the workload queue on the local executor, with declared GPUs.

Real ``capstan`` subprocesses, real worker processes and a real SQLite metadata store: steps wait for GPU quota
(and say why), share a GPU by fractions, are rejected when they can never fit, are preempted by a higher-priority
workload and requeued, and show up in ``capstan usage``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from integration_helpers import capstan, cli_env, marks, popen_capstan, wait_for, write_pipeline
from sqlalchemy import Engine

from capstan.pipelines.executors import close_pools
from capstan.pipelines.loader import load_pipeline
from capstan.pipelines.runner import PipelineRunner, RunResult
from capstan.queue.admission import QueueAdmission
from capstan.queue.manager import Backoff
from capstan.queue.model import PodSet
from capstan.queue.records import ADMITTED, FINISHED, PENDING, WorkloadRecord
from capstan.queue.sql import SqlQueueStore
from capstan.settings import Settings
from capstan.store.engine import create_store_engine
from capstan.store.events_sql import SqlEventLog
from helpers.pipelines import open_runner

FLOW = '''
import os
import signal
import time

import capstan.pipelines as cp

ONE_GPU = {"gpu": 1, "cpu": 0.1}
HALF_GPU = {"gpu": 0.5, "cpu": 0.1}


@cp.step(resources=ONE_GPU)
def first(marks: str, hold: float) -> str:
    mark(marks, "first-start")
    time.sleep(hold)
    deadline = time.time() + 60  # held (not timed) until the test has looked at the waiting second step
    while not os.path.exists(os.path.join(marks, "release")) and time.time() < deadline:
        time.sleep(0.05)
    mark(marks, "first-end")
    return "first"


@cp.step(resources=ONE_GPU)
def second(marks: str, hold: float) -> str:
    mark(marks, "second-start")
    time.sleep(hold)
    mark(marks, "second-end")
    return "second"


@cp.pipeline
def sequential(marks: str, hold: float = 1.5):
    first(marks, hold)
    second(marks, hold)


def _together(marks: str, me: str, other: str) -> None:
    """Wait until the other half has started too: proof that both hold the GPU at the same time."""
    mark(marks, me)
    deadline = time.time() + 30
    while time.time() < deadline:
        with open(os.path.join(marks, "events")) as fh:
            if any(f'"what": "{other}"' in line for line in fh):
                return
        time.sleep(0.02)
    raise RuntimeError(f"{other} never ran alongside {me}")


@cp.step(resources=HALF_GPU)
def half_a(marks: str) -> str:
    _together(marks, "half_a", "half_b")
    return os.environ["CUDA_VISIBLE_DEVICES"]


@cp.step(resources=HALF_GPU)
def half_b(marks: str) -> str:
    _together(marks, "half_b", "half_a")
    return os.environ["CUDA_VISIBLE_DEVICES"]


@cp.pipeline
def halves(marks: str):
    return [half_a(marks), half_b(marks)]


@cp.step
def prepare() -> int:
    return 1


@cp.step(resources={"gpu": 2})
def huge(x: int) -> int:
    return x


@cp.pipeline
def too_big():
    return huge(prepare())


@cp.step(resources=ONE_GPU)
def victim(marks: str) -> str:
    mark(marks, "victim-start")
    if os.environ["CAPSTAN_RESTART_COUNT"] == "0":
        def stop(*_args):
            mark(marks, "victim-term")  # a real job would write its checkpoint here
            os._exit(143)

        signal.signal(signal.SIGTERM, stop)
        time.sleep(60)
        return "never preempted"
    time.sleep(0.3)  # resumed from its checkpoint: little left to do
    mark(marks, "victim-end")
    return "resumed"


@cp.step(resources=ONE_GPU, priority_class="high")
def urgent(marks: str) -> str:
    mark(marks, "urgent-start")
    time.sleep(1.0)
    mark(marks, "urgent-end")
    return "done"


@cp.pipeline
def low(marks: str):
    return victim(marks)


@cp.pipeline
def high(marks: str):
    return urgent(marks)
'''


@dataclass
class SequentialRun:
    """What the CLI run of ``sequential`` left behind, and what was seen while it ran."""

    settings: Settings
    run_id: str
    waiting: WorkloadRecord
    holder: WorkloadRecord
    why: str
    marks: list[dict[str, Any]]
    engine: Engine


@pytest.fixture(scope="module")
def sequential_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SequentialRun]:
    """``capstan run`` of two 1-GPU steps on one declared GPU, in project ``vision``; while it runs, the waiting
    step's workload is looked up in the queue and explained with ``capstan why``."""
    tmp = tmp_path_factory.mktemp("sequential")
    settings = Settings.for_home(tmp / "home")
    engine = create_store_engine(settings)  # migrated before the CLI starts
    flow = write_pipeline(tmp / "code", "flow", FLOW)
    folder = tmp / "marks"
    env = cli_env(settings, CAPSTAN_GPUS="1", CAPSTAN_PROJECT="vision")
    proc = popen_capstan(settings, "run", f"{flow}:sequential", "-p", f"marks={folder}", "--json", env=env)
    store = SqlQueueStore(engine)
    try:
        def both() -> tuple[WorkloadRecord, WorkloadRecord] | None:
            active = store.active_workloads()
            pending = [r for r in active if r.state == PENDING]
            admitted = [r for r in active if r.state == ADMITTED]
            return (pending[0], admitted[0]) if pending and admitted else None

        waiting, holder = wait_for("one admitted and one pending workload", both)
        why = capstan(settings, "why", waiting.id, env=env)
        assert why.returncode == 0, why.stderr
        (folder / "release").touch()
        out, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, f"{out}\n{err}"
    run_id = json.loads(out)["run"]["id"]
    yield SequentialRun(settings, run_id, waiting, holder, why.stdout, marks(folder), engine)
    engine.dispose()


def test_gpu_steps_wait_for_quota_and_run_one_after_the_other(sequential_run: SequentialRun) -> None:
    run = sequential_run
    # The second step waited in the queue, and `capstan why` said why and who holds the GPU.
    assert run.waiting.reason.value == "WaitingForQuota"
    assert run.waiting.id.startswith(f"{run.run_id}/") and run.holder.id.startswith(f"{run.run_id}/")
    assert run.waiting.workload.project == "vision" and run.waiting.workload.queue == "default"
    assert "Reason:    WaitingForQuota" in run.why
    assert "Detail:    needs 1 local-gpu GPUs; ClusterQueue default uses 1/1 nominal" in run.why
    assert f"Held by:   {run.holder.id} (default, 1 gpu, priority 100)" in run.why
    # One after the other, each on device 0, each with its workload id.
    times = {m["what"]: m for m in run.marks}
    a, b = ("first", "second") if times["first-start"]["t"] < times["second-start"]["t"] else ("second", "first")
    assert times[f"{a}-end"]["t"] <= times[f"{b}-start"]["t"], "the GPU was given to two steps at once"
    assert {times[f"{s}-start"]["cuda"] for s in (a, b)} == {"0"}
    assert {times[f"{s}-start"]["workload"] for s in (a, b)} == {f"{run.run_id}/first", f"{run.run_id}/second"}
    # The pipeline's events show the queued step's reason; the queue recorded its decisions.
    step = run.waiting.id.split("/", 1)[1]
    events = SqlEventLog(run.engine)
    assert events.list("step", run.waiting.id, reason="WaitingForQuota"), f"no WaitingForQuota event for {step}"
    assert [e.reason for e in events.list("workload", run.waiting.id)] == ["Submitted", "Admitted", "Finished"]
    # Quota was returned after each step: nothing is active, every admission record is closed, in sequence.
    store = SqlQueueStore(run.engine)
    assert store.active_workloads() == []
    assert {store.get_workload(w).state for w in (run.waiting.id, run.holder.id)} == {FINISHED}  # type: ignore[union-attr]  # present: this test created it
    usage = sorted(store.usage_since(0), key=lambda u: u.start)
    assert len(usage) == 2 and all(u.end is not None for u in usage)
    assert usage[0].end <= usage[1].start  # type: ignore[operator]  # both set once the workloads finished


def test_usage_shows_gpu_hours_for_the_pipelines_project(sequential_run: SequentialRun) -> None:
    run = sequential_run
    out = capstan(run.settings, "usage", "--by", "project", "--json")
    assert out.returncode == 0, out.stderr
    rows = {r["key"]: r for r in json.loads(out.stdout)}
    assert set(rows) == {"vision"}
    assert rows["vision"]["workloads"] == 2
    # Two steps each held one GPU for at least their 1.5 s sleep.
    assert 2 * 1.5 / 3600 <= rows["vision"]["gpu_hours"] < 60 / 3600
    table = capstan(run.settings, "usage", "--by", "project")
    assert "vision" in table.stdout and "GPU-H" in table.stdout


@pytest.fixture
def declared_one_gpu(tmp_path: Path) -> Iterator[tuple[Settings, Path, PipelineRunner]]:
    settings = Settings.for_home(tmp_path / "home", declared_gpus=1)
    engine = create_store_engine(settings)
    admission = QueueAdmission.open(settings, engine, backoff=Backoff(base_s=0.5, max_s=2))
    runner = open_runner(settings, admission=admission)
    try:
        yield settings, write_pipeline(tmp_path / "code", "flow", FLOW), runner
    finally:
        runner.close()
        engine.dispose()
        close_pools()


def test_fractional_steps_share_one_gpu_at_the_same_time(declared_one_gpu: tuple[Settings, Path, PipelineRunner],
                                                         tmp_path: Path) -> None:
    _settings, flow, runner = declared_one_gpu
    folder = tmp_path / "marks"
    pipe, ref = load_pipeline(f"{flow}:halves")
    result = runner.run(pipe, {"marks": str(folder)}, ref=ref)
    assert result.ok, result.run.message
    assert result.value() == ["0", "0"]  # both pinned to the one device, at the same time (see _together)
    seen = {m["what"]: m for m in marks(folder)}
    assert {seen["half_a"]["workload"], seen["half_b"]["workload"]} == {f"{result.run_id}/half_a",
                                                                        f"{result.run_id}/half_b"}
    store = SqlQueueStore(runner.engine)
    admission = store.get_workload(f"{result.run_id}/half_a").admission  # type: ignore[union-attr]  # present: this test created it
    assert admission is not None and admission.pod_sets[0].gpus[0].share == 500
    assert admission.pod_sets[0].flavors["gpu"] == "local-gpu"


def test_a_step_that_can_never_fit_fails_fast_with_one_line(tmp_path: Path) -> None:
    settings = Settings.for_home(tmp_path / "home")
    flow = write_pipeline(tmp_path / "code", "flow", FLOW)
    out = capstan(settings, "run", f"{flow}:too_big", "--json", env=cli_env(settings, CAPSTAN_GPUS="1"))
    assert out.returncode == 1
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("error: pipeline 'too_big' failed at step 'huge' (Unschedulable): step 'huge' "
                               "requests 2 GPU(s) and 1 CPU, which LocalQueue default (ClusterQueue default) can "
                               "never admit: needs 2 gpu in flavor local-gpu, at most 1 can ever be available")
    steps = {s["step"]: s for s in json.loads(out.stdout)["steps"]}
    assert steps["prepare"]["state"] == "succeeded"
    assert (steps["huge"]["state"], steps["huge"]["attempt"]) == ("failed", 0)  # never started
    engine = create_store_engine(settings)
    try:
        run_id = json.loads(out.stdout)["run"]["id"]
        assert SqlQueueStore(engine).get_workload(f"{run_id}/huge") is None  # rejected before submission
    finally:
        engine.dispose()


def test_a_higher_priority_workload_preempts_a_running_step_which_is_requeued_and_succeeds(
        declared_one_gpu: tuple[Settings, Path, PipelineRunner], tmp_path: Path) -> None:
    settings, flow, runner = declared_one_gpu
    folder = tmp_path / "marks"
    pipe, ref = load_pipeline(f"{flow}:low")
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(runner.run, pipe, {"marks": str(folder)}, ref=ref)
        wait_for("the low-priority step to start", lambda: any(m["what"] == "victim-start" for m in marks(folder)))
        # Another process (`capstan run` of a pipeline whose step has priority_class="high") needs the GPU.
        urgent = capstan(settings, "run", f"{flow}:high", "-p", f"marks={folder}", "--json",
                         env=cli_env(settings, CAPSTAN_GPUS="1"), timeout=120)
        assert urgent.returncode == 0, urgent.stderr
        result: RunResult = future.result(timeout=90)
    assert result.ok, result.run.message
    assert result.value() == "resumed"
    order = [m["what"] for m in marks(folder)]
    assert order == ["victim-start", "victim-term", "urgent-start", "urgent-end", "victim-start", "victim-end"]
    restarts = [m["restart"] for m in marks(folder) if m["what"] == "victim-start"]
    assert restarts == ["0", "1"]  # CAPSTAN_RESTART_COUNT tells the step to resume from its checkpoint
    # The pipeline recorded the preemption; it did not use up the step's retries (it has none).
    step = result.step("victim")
    assert (step.state, step.attempt, step.retries_used) == ("succeeded", 2, 0)
    attempts = runner.store.attempts(result.run_id, "victim")
    assert [(a.state, a.reason) for a in attempts] == [("failed", "Preempted"), ("succeeded", "")]
    events = SqlEventLog(runner.engine)
    preempted = events.list("step", f"{result.run_id}/victim", reason="Preempted")
    assert len(preempted) == 1 and "preempted by" in preempted[0].message
    assert events.list("step", f"{result.run_id}/victim", reason="RetryScheduled")
    # The queue stopped, requeued (with backoff) and finally finished the same workload.
    record = SqlQueueStore(runner.engine).get_workload(f"{result.run_id}/victim")
    assert record is not None and (record.state, record.preemptions) == (FINISHED, 1)
    reasons = [e.reason for e in events.list("workload", record.id)]
    assert reasons[:3] == ["Submitted", "Admitted", "Preempted"] and "Requeued" in reasons
    assert reasons[-1] == "Finished" and reasons.count("Admitted") == 2
    # While it waited for the urgent step to finish, its row said why.
    waits = [e.reason for e in events.list("step", f"{result.run_id}/victim")]
    assert "Preempted" in waits and waits.index("Preempted") < waits.index("StepSucceeded")


def test_a_waiting_step_shows_its_reason_and_cancelling_the_run_withdraws_its_workload(
        declared_one_gpu: tuple[Settings, Path, PipelineRunner], tmp_path: Path) -> None:
    settings, flow, runner = declared_one_gpu
    admission = runner.ensure_admission()
    assert isinstance(admission, QueueAdmission)
    with admission.session() as mgr:  # a training job of another executor holds the only GPU
        mgr.submit("train-1", "default", [PodSet("main", 1, {"gpu": 1000})], priority_class="high")
        mgr.cycle()
    pipe, ref = load_pipeline(f"{flow}:low")
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(runner.run, pipe, {"marks": str(tmp_path / "marks")}, ref=ref)

        def waiting_row() -> str | None:
            runs = runner.store.list_runs(limit=1)
            if not runs:
                return None
            step = next((s for s in runner.store.steps(runs[0].id, runs[0].project) if s.step_id == "victim"), None)
            return runs[0].id if step is not None and step.reason == "WaitingForQuota" else None

        run_id = wait_for("the step to wait for quota", waiting_row)
        env = cli_env(settings, CAPSTAN_GPUS="1")
        shown = capstan(settings, "pipelines", "show", run_id, env=env)
        assert shown.returncode == 0, shown.stderr
        row = next(line for line in shown.stdout.splitlines() if "victim" in line)
        assert "queued" in row and "WaitingForQuota: needs 1 local-gpu GPUs" in row
        why = capstan(settings, "why", f"{run_id}/victim", env=env)
        assert "Reason:    WaitingForQuota" in why.stdout and "Held by:   train-1" in why.stdout
        cancelled = capstan(settings, "pipelines", "cancel", run_id, env=env)
        assert cancelled.returncode == 0, cancelled.stderr
        result: RunResult = future.result(timeout=60)
    assert result.status == "cancelled"
    store = SqlQueueStore(runner.engine)
    assert store.get_workload(f"{run_id}/victim").state == "Cancelled"  # type: ignore[union-attr]  # present: this test created it
    assert [r.id for r in store.active_workloads()] == ["train-1"]
