"""Starting, resuming, retrying and cancelling pipeline runs: the API the CLI, the server and schedules share."""

from __future__ import annotations

import dataclasses
import socket
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson
from sqlalchemy import update

from capstan.clock import Clock, system_clock
from capstan.errors import InvalidState
from capstan.events.records import NORMAL, WARNING, Event
from capstan.pipelines import state as sm
from capstan.pipelines.dsl import Pipeline
from capstan.pipelines.graph import Graph, decode
from capstan.pipelines.orchestrator import Observer, Orchestrator
from capstan.pipelines.params import to_jsonable
from capstan.pipelines.serialize import load_output
from capstan.pipelines.steprec import new_step_row
from capstan.pipelines.storage import (
    RUN_KIND,
    STEP_KIND,
    PipelineStore,
    RunRecord,
    StepRecord,
    orchestrator_id,
    pipeline_event,
)
from capstan.pipelines.tables import pipeline_attempts, pipeline_runs, pipeline_steps

if TYPE_CHECKING:
    from sqlalchemy import Connection, Engine

    from capstan.artifacts.store import ArtifactStore
    from capstan.events.ports import EventLog
    from capstan.pipelines.executor_port import ExecutorFactory
    from capstan.resources.admission import Admission
    from capstan.settings import Settings

STALE_HEARTBEAT_MS = 30_000
"""An orchestrator on another host that has not written for this long is presumed dead."""


@dataclass(frozen=True, slots=True)
class RunResult:
    """How a run ended, with its steps; `value` loads what the pipeline function returned."""

    run: RunRecord
    steps: tuple[StepRecord, ...]
    store: ArtifactStore = field(repr=False)

    @property
    def run_id(self) -> str:
        """The run's id."""
        return self.run.id

    @property
    def status(self) -> str:
        """``succeeded``, ``failed`` or ``cancelled``."""
        return self.run.status

    @property
    def ok(self) -> bool:
        """True when the run succeeded."""
        return self.run.status == sm.RunStatus.SUCCEEDED.value

    def step(self, step_id: str) -> StepRecord:
        """One step's record."""
        for record in self.steps:
            if record.step_id == step_id:
                return record
        raise KeyError(step_id)

    def output(self, step_id: str) -> Any:
        """The stored output of one step."""
        ref = self.step(step_id).output
        if ref is None:
            raise InvalidState(f"step {step_id!r} has no output (state {self.step(step_id).state})")
        return load_output(ref, project=self.run.project, store=lambda: self.store)

    def value(self) -> Any:
        """What the pipeline function returned (with step outputs filled in)."""
        binding = self.run.graph.get("result")
        if binding is None:
            return None
        return decode(binding, self.output)


class PipelineRunner:
    """Creates runs and orchestrates them in this process.

    Every step attempt is admitted by the ``admission`` the composition root provides (`capstan.services`): the
    workload queue of the metadata store, so pipeline steps share quota, priorities and preemption with every other
    workload of this machine.
    """

    def __init__(self, *, settings: Settings, engine: Engine, artifacts: ArtifactStore,
                 events: EventLog, admission: Callable[[], Admission], executors: ExecutorFactory | None = None,
                 clock: Clock = system_clock) -> None:
        self.settings = settings
        self.engine = engine
        self.artifacts = artifacts
        self.events = events
        self.executors = executors
        self.clock = clock
        self.store = PipelineStore(engine, clock=clock)
        self._admission = admission

    def close(self) -> None:
        """Release database connections."""
        self.engine.dispose()

    def ensure_admission(self) -> Admission:
        """The admission port runs use, as the composition root (`capstan.services`) provides it."""
        return self._admission()

    # -- creating -----------------------------------------------------------------------------------------------
    def create_run(self, pipe: Pipeline, params: Mapping[str, Any] | None = None, *, ref: str, no_cache: bool = False,
                   source: str = "cli", project: str | None = None, schedule: str | None = None,
                   slot: int | None = None, conn: Connection | None = None,
                   orchestrator: str | None = None) -> tuple[RunRecord, Graph]:
        """Build the DAG (validating everything) and store the run with its steps, in one transaction."""
        graph = pipe.build(dict(params or {}))
        run_id = uuid.uuid4().hex
        now = self.clock()
        project = project or self.settings.project
        stored_params = {k: to_jsonable(v) for k, v in graph.params.items()}
        heartbeat = now if orchestrator else None
        row = {"id": run_id, "project": project, "name": pipe.name, "pipeline_ref": ref,
               "params": orjson.dumps(stored_params).decode(), "graph": orjson.dumps(graph.spec()).decode(),
               "status": sm.RunStatus.PENDING.value, "no_cache": no_cache, "cancel_requested": False,
               "source": source, "schedule": schedule, "slot": slot, "orchestrator": orchestrator,
               "heartbeat_at": heartbeat,
               "created_at": now, "started_at": None, "finished_at": None, "message": ""}
        steps = [new_step_row(run_id, node) for node in graph.nodes.values()]
        event = pipeline_event(now, project, RUN_KIND, run_id, "PipelineRunCreated",
                          f"pipeline {pipe.name!r} ({len(steps)} steps) from {source}",
                          data={"params": stored_params, "no_cache": no_cache})
        if conn is not None:
            self.store.insert_run(conn, row, steps, event)
        else:
            with self.engine.begin() as own:
                self.store.insert_run(own, row, steps, event)
        record = RunRecord(run_id, project, pipe.name, ref, stored_params, graph.spec(), sm.RunStatus.PENDING.value,
                           no_cache, False, source, schedule, slot, orchestrator, heartbeat, now, None, None,
                           "")
        return record, graph

    def run(self, pipe: Pipeline, params: Mapping[str, Any] | None = None, *, ref: str, no_cache: bool = False,
            observer: Observer | None = None, source: str = "cli", project: str | None = None) -> RunResult:
        """Create a run and orchestrate it here until it ends (the run is created already claimed by this
        process, so nothing else can pick it up in between)."""
        record, graph = self.create_run(pipe, params, ref=ref, no_cache=no_cache, source=source, project=project,
                                        orchestrator=orchestrator_id())
        return self._orchestrate(record, graph, [], observer)

    def graph_for(self, run: RunRecord) -> Graph:
        """Rebuild a stored run's DAG from its pipeline file and check it is still the same DAG."""
        from capstan.pipelines.loader import load_pipeline

        pipe, _ref = load_pipeline(run.pipeline_ref)
        graph: Graph = pipe.build(run.params)
        if orjson.loads(orjson.dumps(graph.spec())) != run.graph:
            raise InvalidState(f"pipeline {run.name!r} ({pipe.location}) changed since run {run.id} started; its "
                               "DAG or arguments differ, so the run cannot continue; start a new run")
        return graph

    # -- orchestrating ------------------------------------------------------------------------------------------
    def execute(self, run_id: str, *, graph: Graph | None = None, observer: Observer | None = None) -> RunResult:
        """Become the run's orchestrator and drive it to the end."""
        run = self.store.get_run(run_id)
        if run.status not in (sm.RunStatus.PENDING.value, sm.RunStatus.RUNNING.value):
            raise InvalidState(f"run {run_id} has already {run.status}; use `capstan pipelines retry` to rerun "
                               "its failed steps")
        self._check_not_orchestrated(run)
        graph = graph or self.graph_for(run)
        me = orchestrator_id()
        if not self.store.claim(run.id, run.orchestrator, me):
            raise InvalidState(f"run {run_id} was taken over by another orchestrator")
        run = dataclasses.replace(run, orchestrator=me)
        return self._orchestrate(run, graph, self.store.steps(run.id, run.project), observer)

    def _orchestrate(self, run: RunRecord, graph: Graph, steps: list[StepRecord],
                     observer: Observer | None) -> RunResult:
        orch = Orchestrator(engine=self.engine, store=self.artifacts, settings=self.settings, run=run, graph=graph,
                            steps=steps, admission=self.ensure_admission(), clock=self.clock, observer=observer,
                            executors=self.executors)
        orch.run()
        if not orch.final:  # detached (server shutdown): read what is stored
            return self.result(run.id)
        started = run.started_at or orch.started_at
        return RunResult(dataclasses.replace(run, started_at=started, **orch.final), tuple(orch.records()),
                         self.artifacts)

    def result(self, run_id: str) -> RunResult:
        """The stored state of a run."""
        run = self.store.get_run(run_id)
        return RunResult(run, tuple(self.store.steps(run_id, run.project)), self.artifacts)

    def orchestrator_alive(self, run: RunRecord) -> bool:
        """Whether some process is orchestrating ``run`` right now."""
        if not run.orchestrator:
            return False
        host, _, rest = run.orchestrator.partition(":")
        pid_text, _, started = rest.partition(":")
        if host == socket.gethostname():
            from capstan.pipelines.executors import process_alive

            try:
                return process_alive(int(pid_text), int(started) or None)
            except ValueError:
                return False
        return run.heartbeat_at is not None and self.clock() - run.heartbeat_at < STALE_HEARTBEAT_MS

    def _check_not_orchestrated(self, run: RunRecord) -> None:
        if run.orchestrator and run.orchestrator != orchestrator_id() and self.orchestrator_alive(run):
            raise InvalidState(f"run {run.id} is being orchestrated by {run.orchestrator}; wait for it or cancel it")

    def resume(self, run_id: str, *, observer: Observer | None = None) -> RunResult:
        """Continue an unfinished run whose orchestrator stopped (crashed, killed): steps that succeeded are not
        run again, steps that were running are re-attached or retried."""
        return self.execute(run_id, observer=observer)

    def retry(self, run_id: str, *, observer: Observer | None = None) -> RunResult:
        """Run a failed or cancelled run's unsuccessful steps again, reusing everything that succeeded."""
        graph = self.prepare_retry(run_id)
        return self.execute(run_id, graph=graph, observer=observer)

    def prepare_retry(self, run_id: str) -> Graph:
        """Put a failed or cancelled run's failed, skipped and cancelled steps back to pending (one transaction);
        the run is then ``pending`` until an orchestrator executes it."""
        run = self.store.get_run(run_id)
        if run.status not in (sm.RunStatus.FAILED.value, sm.RunStatus.CANCELLED.value):
            raise InvalidState(f"run {run_id} is {run.status}; only failed or cancelled runs can be retried"
                               + (" (use `capstan pipelines resume` for an interrupted run)"
                                  if run.status in ("pending", "running") else ""))
        graph = self.graph_for(run)
        states = {s.step_id: sm.StepState(s.state) for s in self.store.steps(run_id, run.project)}
        reset = sm.to_reset(states)
        now = self.clock()
        with self.engine.begin() as conn:
            if reset:
                conn.execute(update(pipeline_steps).where(pipeline_steps.c.run_id == run_id,
                                                          pipeline_steps.c.step_id.in_(reset))
                             .values(state=sm.StepState.PENDING.value, retries_used=0, reason="", message="",
                                     next_attempt_at=None, output_format=None, output_inline=None,
                                     output_path=None, output_digest=None, output_size=None, finished_at=None,
                                     cached_from=None))
            conn.execute(update(pipeline_runs).where(pipeline_runs.c.id == run_id).values(
                status=sm.RunStatus.PENDING.value, cancel_requested=False, finished_at=None, message=""))
            self.events.append_within(conn, [
                Event(0, now, RUN_KIND, run_id, NORMAL, "PipelineRunRetried",
                      f"{len(reset)} step(s) reset: {', '.join(reset[:20])}", run.project),
                *(Event(0, now, STEP_KIND, f"{run_id}/{s}", NORMAL, "StepReset", f"was {states[s].value}",
                        run.project) for s in reset)])
        return graph

    def cancel(self, run_id: str, *, wait_s: float = 30.0) -> RunRecord:
        """Cancel a run: its orchestrator stops running steps (SIGTERM, then SIGKILL) and records it. With no live
        orchestrator, the steps are stopped and recorded here."""
        import time

        run = self.store.get_run(run_id)
        if run.status not in (sm.RunStatus.PENDING.value, sm.RunStatus.RUNNING.value):
            raise InvalidState(f"run {run_id} has already {run.status}")
        self.store.request_cancel(run_id)
        if self.orchestrator_alive(run):
            deadline = time.monotonic() + wait_s
            while time.monotonic() < deadline:
                current = self.store.get_run(run_id)
                if current.status not in (sm.RunStatus.PENDING.value, sm.RunStatus.RUNNING.value):
                    return current
                time.sleep(0.05)
            raise InvalidState(f"run {run_id}: cancellation requested, but its orchestrator "
                               f"{run.orchestrator} has not finished it within {wait_s:g}s")
        if not self.store.claim(run_id, run.orchestrator, orchestrator_id()):
            return self.store.get_run(run_id)
        self._cancel_here(run)
        return self.store.get_run(run_id)

    def _cancel_here(self, run: RunRecord) -> None:
        from capstan.pipelines.executors import kill_tree, process_alive

        now = self.clock()
        steps = self.store.steps(run.id, run.project)
        active = [s for s in steps if s.state not in {st.value for st in sm.TERMINAL}]
        for s in active:
            if s.state == sm.StepState.RUNNING.value:
                for attempt in self.store.attempts(run.id, s.step_id)[-1:]:
                    if attempt.worker_pid and process_alive(attempt.worker_pid, attempt.worker_started):
                        kill_tree(attempt.worker_pid, 3.0)
        admission = self.ensure_admission()
        for s in active:
            admission.withdraw(f"{run.id}/{s.step_id}#{s.attempt + 1}")  # queued or held workloads of the step
        with self.engine.begin() as conn:
            for s in active:
                conn.execute(update(pipeline_steps).where(pipeline_steps.c.run_id == run.id,
                                                          pipeline_steps.c.step_id == s.step_id)
                             .values(state=sm.StepState.CANCELLED.value, reason="Cancelled",
                                     message="cancelled by request", finished_at=now))
                if s.state == sm.StepState.RUNNING.value and s.attempt:
                    conn.execute(update(pipeline_attempts).where(
                        pipeline_attempts.c.run_id == run.id, pipeline_attempts.c.step_id == s.step_id,
                        pipeline_attempts.c.attempt == s.attempt, pipeline_attempts.c.finished_at.is_(None))
                        .values(state="cancelled", reason="Cancelled", message="cancelled by request",
                                finished_at=now))
            conn.execute(update(pipeline_runs).where(pipeline_runs.c.id == run.id).values(
                status=sm.RunStatus.CANCELLED.value, finished_at=now, message="cancelled by request"))
            self.events.append_within(conn, [
                *(Event(0, now, STEP_KIND, f"{run.id}/{s.step_id}", WARNING, "StepCancelled", "cancelled by request",
                        run.project) for s in active),
                Event(0, now, RUN_KIND, run.id, WARNING, "PipelineRunCancelled", "cancelled by request", run.project)])
