"""The durable local orchestrator: drives one run's steps through the state machine.

It works in *rounds*. A round takes the attempts that finished since the last one, decides every consequence with
`capstan.pipelines.state` (successors become ready, cache hits, retries with backoff, failures and skips, map
fan-out, admission of queued steps, timeouts, cancellation), writes all of it in one transaction, and only after
the commit *acts*: sends tasks to executors, kills timed-out or cancelled attempts. A crash at any instant leaves
the database describing what was decided; `capstan pipelines resume` continues from there.

Group commit (decision 0753): a round whose only effects start attempts in this process (thread steps) that hold
no queue workload need not commit before it acts, because a crash ends those attempts with the orchestrator and
nothing outside the run holds them. Its batch waits, and later rounds add to it, until a round must commit (it
starts a worker process or a remote attempt, stops one, or ends the run), or `GROUP_COMMIT_S` has passed since the
first waiting round. A crash loses at most that window of thread-step progress, which resume runs again.
"""

from __future__ import annotations

import os
import queue
import random
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from capstan.clock import Clock, monotonic_of, system_clock
from capstan.events.records import WARNING
from capstan.pipelines import planner
from capstan.pipelines import state as sm
from capstan.pipelines.cache import cache_key
from capstan.pipelines.execution import (
    CANCELLED,
    TIMEOUT,
    UNSCHEDULABLE,
    Outcome,
    thread_capture,
)
from capstan.pipelines.executor_port import ExecutorFactory
from capstan.pipelines.graph import Graph
from capstan.pipelines.serialize import OutputRef, list_ref, load_output
from capstan.pipelines.state import StepState
from capstan.pipelines.steprec import StepRec, new_step_row
from capstan.pipelines.storage import (
    RUN_KIND,
    STEP_KIND,
    Batch,
    CacheEntry,
    PipelineStore,
    RoundWriter,
    RunRecord,
    RunUpdate,
    StepInput,
    StepRecord,
    orchestrator_id,
    pipeline_event,
)
from capstan.pipelines.supervisor import AttemptSupervisor, Effect, resource_request
from capstan.resources.admission import Admission, Rejected, ResourceRequest, Waiting

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from capstan.artifacts.store import ArtifactStore
    from capstan.settings import Settings

S = StepState
_ABSENT = object()
GROUP_COMMIT_S = 0.05
"""The longest a round's changes wait for the commit of a later round (thread steps only)."""


class Observer(Protocol):
    """Told after every committed round (the live view implements it)."""

    def update(self, orchestrator: Orchestrator) -> None:
        """Something changed; read `Orchestrator.recs`."""
        ...


class Orchestrator:
    """Runs (or continues) one pipeline run to a terminal status.

    It keeps the round loop, the steps' records and the round's batch; the attempts (launching, stopping,
    recovering, the executors' lifecycles) are its `capstan.pipelines.supervisor.AttemptSupervisor`'s, which
    reaches them only through the `capstan.pipelines.executor_port.Executor` port: one executor per isolation,
    those ``executors`` builds (the composition root passes `capstan.pipelines.executors.local_executor_factory`),
    by default the local ones."""

    def __init__(self, *, engine: Engine, store: ArtifactStore, settings: Settings, run: RunRecord, graph: Graph,
                 steps: list[StepRecord], admission: Admission, clock: Clock = system_clock,
                 observer: Observer | None = None, rng: random.Random | None = None, max_threads: int | None = None,
                 grace_s: float = 3.0, poll_s: float = 0.25, heartbeat_s: float = 5.0,
                 executors: ExecutorFactory | None = None) -> None:
        self.run_record = run
        self.run_id = run.id
        self.project = run.project
        self.graph = graph
        self._engine = engine
        self._store = store
        self._clock = clock
        self._mono = monotonic_of(clock)  # polls and heartbeats: a fake clock moves them
        self._observer = observer
        self._rng = rng or random.Random()
        self._poll = poll_s
        self._heartbeat = heartbeat_s
        self._writer = RoundWriter(engine)
        self._pending: Batch | None = None  # rounds whose commit waits (group commit)
        self._pending_since = 0.0
        self._out: queue.SimpleQueue[Outcome | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._error: BaseException | None = None
        self._closed = False
        if executors is None:
            from capstan.pipelines.executors import local_executors

            # Like concurrent.futures' default: enough threads to overlap I/O, few enough to keep GIL contention low.
            threads = max_threads or min(32, (os.cpu_count() or 1) + 4)
            by_isolation = local_executors(self.offer, self.attempt_started, settings=settings, store=store,
                                           max_threads=threads, grace_s=grace_s, clock=clock)
        else:
            by_isolation = dict(executors(self.offer, self.attempt_started))
        self._run_dir = Path(settings.home) / "pipelines" / "runs" / run.id
        self.recs: dict[str, StepRec] = {}
        self._supervisor = AttemptSupervisor(run_id=run.id, project=run.project, run_dir=str(self._run_dir),
                                           recs=self.recs, executors=by_isolation, admission=admission, clock=clock,
                                           transition=self._set, event=self._event)
        self._dependents: dict[str, list[str]] = {n: [] for n in graph.nodes}
        self._ready: list[str] = []
        self._queued: list[str] = []
        self._retrying: set[str] = set()
        self._asking: dict[str, ResourceRequest] = {}  # the request of each waiting step, built once
        self._cancel = run.cancel_requested
        self._cancel_message = "cancelled by request"
        self._done = False
        self.final: dict[str, Any] = {}
        self.started_at: int | None = run.started_at
        self._open = 0
        self._detached = False
        self.status = run.status
        self._now = clock()
        self._last_poll = self._last_beat = self._mono()
        self._load(steps)

    # -- loading ----------------------------------------------------------------------------------------------
    def _load(self, rows: list[StepRecord]) -> None:
        by_id = {r.step_id: r for r in rows}
        has_children = {r.parent for r in rows if r.parent is not None}
        for node in list(self.graph.nodes.values()):
            for dep in node.deps:
                self._dependents[dep].append(node.id)
            self._add_rec(StepRec.of(node, by_id.get(node.id)))
        # Map nodes that were expanded before: recreate their children from the (persisted) item values.
        for rec in list(self.recs.values()):
            node = rec.node
            if node.map is None or node.id not in has_children:
                continue
            items = self.graph.map_items(node, self._lookup)
            for child in self.graph.add_children(node, items):
                self._add_rec(StepRec.of(child, by_id.get(child.id)))

    def _add_rec(self, rec: StepRec) -> None:
        self.recs[rec.node.id] = rec
        if rec.state not in sm.TERMINAL:
            self._open += 1

    def _lookup(self, node_id: str) -> Any:
        values = self._supervisor.values
        if node_id in values:
            return values[node_id]
        output = self.recs[node_id].output
        if output is None:
            raise sm.InvalidTransition(f"step {node_id!r} has no output yet")
        return load_output(output, project=self.project, store=lambda: self._store)

    # -- the loop ---------------------------------------------------------------------------------------------
    def run(self) -> str:
        """Drive the run to a terminal status and return it."""
        self._run_dir.mkdir(parents=True, exist_ok=True)
        has_threads = any(n.step.options.isolation == "thread" for n in self.graph.nodes.values())
        try:
            if has_threads:
                with thread_capture():
                    self._loop()
            else:
                self._loop()
        finally:
            with self._lock:
                self._closed = True
                self._writer.close()
            self._shutdown()
        if self._done:
            import shutil

            shutil.rmtree(self._run_dir, ignore_errors=True)
            self._supervisor.remove_stale_files()  # files left by workers of an earlier orchestrator of this run
        return self.status

    def records(self) -> list[StepRecord]:
        """The steps as they now stand (what the database holds after the last round)."""
        return [rec.record(self.run_id) for rec in self.recs.values()]

    def detach(self) -> None:
        """Stop orchestrating after the current round without cancelling anything (server shutdown): the run
        stays ``running``, process workers finish their attempts, and a later resume picks everything up."""
        self._detached = True

    def offer(self, outcome: Outcome) -> None:
        """Hand over a finished attempt (called on executor threads).

        When no round is in progress the calling thread runs the round itself, so a chain of light steps moves on
        without waking the orchestrator's thread; otherwise the outcome is queued for the next round."""
        if self._closed or self._done or self._detached or self._error is not None or \
                not self._lock.acquire(blocking=False):
            self._out.put(outcome)
            return
        try:
            outcomes = [outcome]
            self._drain(outcomes)
            waiting = self._pending is not None
            self._round(outcomes)
            # A group that starts waiting here needs the orchestrator's thread to commit it when it is due.
            wake = self._done or bool(self._retrying) or self._supervisor.has_deadlines() or \
                (self._pending is not None and not waiting)
        except BaseException as exc:  # noqa: BLE001  # handed to the orchestrator's thread, which re-raises it
            self._error = exc
            wake = True
        finally:
            self._lock.release()
        if wake:
            self._out.put(None)  # let the orchestrator's thread re-plan its wait (done, retry timers, timeouts)

    def attempt_started(self, key: str) -> None:
        """A worker began attempt ``key``: its timeout starts now."""
        with self._lock:
            if not self._supervisor.begun(key):
                return
        self._out.put(None)

    def _drain(self, outcomes: list[Outcome]) -> None:
        while True:
            try:
                item = self._out.get_nowait()
            except queue.Empty:
                return
            if item is not None:
                outcomes.append(item)

    def _loop(self) -> None:
        with self._lock:
            self._start()
            wait = self._wait_s()
        last_checkpoint = self._mono()
        while True:
            outcomes: list[Outcome] = []
            try:
                item = self._out.get(timeout=wait)
                if item is not None:
                    outcomes.append(item)
            except queue.Empty:
                pass
            except KeyboardInterrupt:
                self._cancel, self._cancel_message = True, "interrupted"
            with self._lock:
                if self._error is not None:
                    raise self._error
                if self._done or self._detached:
                    self._flush()
                    self._writer.checkpoint()
                    return
                if self._mono() - last_checkpoint > 1.0:
                    self._writer.checkpoint()
                    last_checkpoint = self._mono()
                self._drain(outcomes)
                try:
                    self._round(outcomes)
                except KeyboardInterrupt:
                    self._writer.rollback()
                    self._cancel, self._cancel_message = True, "interrupted"
                    for outcome in outcomes:
                        self._out.put(outcome)
                if self._done:
                    self._writer.checkpoint()
                    return
                wait = self._wait_s()

    def _start(self) -> None:
        now = self._now = self._clock()
        batch = Batch.new()
        resumed = self.run_record.started_at is not None
        self.started_at = self.run_record.started_at or now
        batch.update_run(RunUpdate(self.run_id, status=sm.RunStatus.RUNNING.value, heartbeat_at=now,
                                   started_at=self.started_at, finished_at=None))
        self.status = sm.RunStatus.RUNNING.value
        self._event(batch, RUN_KIND, self.run_id, "PipelineRunResumed" if resumed else "PipelineRunStarted",
                    f"pipeline {self.graph.pipeline.name!r} {'resumed' if resumed else 'started'} "
                    f"by {orchestrator_id()}")
        self._supervisor.prepare(node.step for node in self.graph.nodes.values())
        for rec in self.recs.values():
            if rec.state is S.RUNNING and rec.node.map is None:
                self._recover(rec)
            elif rec.state is S.QUEUED:
                self._queued.append(rec.node.id)
            elif rec.state is S.RETRYING:
                self._retrying.add(rec.node.id)
            elif rec.state is S.RUNNING and rec.node.map is not None:
                for child in rec.node.children:
                    if self.recs[child].state is S.RUNNING:
                        rec.running_children += 1
        for rec in self.recs.values():
            if rec.state is S.PENDING:
                self._evaluate_pending(rec, batch, now)
        self._round([], batch)  # the start is committed together with the first steps it launches

    def _recover(self, rec: StepRec) -> None:
        """A step the previous orchestrator left running: its supervisor adopts the attempt's result (handled in
        the first round), follows it, or reports it interrupted."""
        rows = PipelineStore(self._engine).attempts(self.run_id, rec.node.id)
        outcome = self._supervisor.recover(rec, rows[-1] if rows else None)
        if outcome is not None:
            self._out.put(outcome)

    def _wait_s(self) -> float:
        wait = self._poll
        if self._pending is not None:
            wait = min(wait, self._pending_since + GROUP_COMMIT_S - time.monotonic())
        deadline = self._supervisor.next_deadline()
        if deadline is not None:
            wait = min(wait, deadline - self._mono())
        if self._retrying:
            now = self._clock()
            due = min(self.recs[s].next_attempt_at or now for s in self._retrying)
            wait = min(wait, (due - now) / 1000)
        return max(0.0, wait)

    def _round(self, outcomes: list[Outcome], batch: Batch | None = None) -> None:
        now = self._now = self._clock()
        batch = batch or Batch.new()
        effects: list[Effect] = []
        light = self._supervisor.light_launches
        mono = self._mono()
        if mono - self._last_poll >= self._poll:
            self._last_poll = mono
            if not self._cancel and self._writer.cancel_requested(self.run_id):
                self._cancel = True
            if not self._cancel:
                self._supervisor.preempt(batch, effects)
        if mono - self._last_beat >= self._heartbeat:
            self._last_beat = mono
            batch.update_run(RunUpdate(self.run_id, heartbeat_at=now))  # on top of the start when in its round
        for outcome in outcomes:
            self._on_outcome(outcome, batch, now)
        for rec, message in self._supervisor.expire(batch, now, effects):
            self._attempt_failed(rec, TIMEOUT, message, True, batch, now)
        if self._cancel:
            self._cancel_all(batch, now, effects)
        else:
            for sid in planner.due_retries(self._retrying, self.recs, now) if self._retrying else ():
                rec = self.recs[sid]
                self._retrying.discard(sid)
                self._set(rec, sm.Trigger.RETRY_DUE, batch)
                rec.next_attempt_at = None
                self._event(batch, STEP_KIND, sid, "StepQueued", f"attempt {rec.attempt + 1} queued")
                self._queued.append(sid)
            self._process_ready(batch, now)
            self._start_queued(batch, now, effects)
        self._supervisor.give_back()  # before the commit: a crash never leaves a finished step holding quota
        self._check_done(batch, now)
        if batch or self._pending is not None:
            light = self._supervisor.light_launches - light
            self._group(batch, defer=not self._done and len(effects) == light)
        for effect in effects:
            effect()
        if self._observer is not None:
            self._observer.update(self)

    # -- transitions ------------------------------------------------------------------------------------------
    def _set(self, rec: StepRec, trigger: sm.Trigger, batch: Batch) -> None:
        old = rec.state
        rec.state = sm.transition(old, trigger)
        if (old in sm.TERMINAL) != (rec.state in sm.TERMINAL):
            self._open += -1 if rec.state in sm.TERMINAL else 1
        batch.touched[rec.node.id] = rec  # the row is rendered once, at commit

    def _touch(self, rec: StepRec, batch: Batch) -> None:
        batch.touched[rec.node.id] = rec

    def _group(self, batch: Batch, *, defer: bool) -> None:
        """Commit ``batch`` with the waiting rounds, or (``defer``) let it wait with them while the group is young.

        The group's age is real time (not the injected clock): it bounds what a crash can lose."""
        mono = time.monotonic()
        if self._pending is None:
            if not batch:
                return
            self._pending, self._pending_since = batch, mono
        elif batch:
            self._pending.absorb(batch)
        if not defer or mono - self._pending_since >= GROUP_COMMIT_S:
            self._flush()

    def _flush(self) -> None:
        """Commit the waiting rounds, if any (they keep waiting when the commit fails)."""
        if self._pending is not None:
            self._commit(self._pending)
            self._pending = None

    def _commit(self, batch: Batch) -> None:
        batch.render(self.run_id)
        self._writer.commit(batch)

    def _event(self, batch: Batch, kind: str, sid: str, reason: str, message: str = "", *, warning: bool = False,
               data: dict[str, Any] | None = None) -> None:
        object_id = sid if kind == RUN_KIND else f"{self.run_id}/{sid}"
        batch.events.append(pipeline_event(self._now, self.project, kind, object_id, reason, message,
                                           type=WARNING if warning else "Normal", data=data))

    def _evaluate_pending(self, rec: StepRec, batch: Batch, now: int) -> None:
        decided = planner.pending_verdict(rec, self.recs)
        if decided is not None:
            self._apply_verdict(rec, *decided, batch, now)

    def _apply_verdict(self, rec: StepRec, verdict: sm.Readiness, waiting: int, batch: Batch, now: int) -> None:
        if verdict is sm.Readiness.READY:
            self._ready.append(rec.node.id)
        elif verdict is sm.Readiness.SKIP:
            self._skip(rec, batch, now)
        elif verdict is sm.Readiness.CANCEL:
            self._set(rec, sm.Trigger.CANCEL, batch)
            rec.finished_at = now
            self._touch(rec, batch)
        else:
            rec.waiting = waiting

    def _process_ready(self, batch: Batch, now: int) -> None:
        # Two phases per batch of ready steps: the planner says what each needs (expansion, a cache look-up with
        # its key, the queue); the look-up reads the database; the planner turns what it found into hits and queued
        # steps. Hits release their dependents, which make the next batch.
        while self._ready:
            ready, self._ready = self._ready, []
            lookups: list[tuple[str, str]] = []
            for sid, action, key in planner.plan_ready(ready, self.recs, no_cache=self.run_record.no_cache,
                                                       key_of=self._cache_key):
                rec = self.recs[sid]
                if action == planner.EXPAND:
                    self._expand(rec, batch, now)
                    continue
                if action != planner.QUEUE:
                    rec.cache_key = key
                    if action == planner.LOOKUP and key:
                        lookups.append((sid, key))
                        continue
                self._queue(rec, batch)
            if not lookups:
                continue
            hits = self._writer.cache_lookup([key for _sid, key in lookups])
            for sid, hit in planner.after_lookup(lookups, hits):
                rec = self.recs[sid]
                if hit is None:
                    self._queue(rec, batch)
                    continue
                self._set(rec, sm.Trigger.CACHE_HIT, batch)
                rec.output = OutputRef.from_columns(hit["output_format"], hit["output_inline"], hit["output_path"],
                                                    hit["output_digest"], hit["output_size"], self.project)
                rec.cached_from = f"{hit['run_id']}/{hit['step_id']}"
                rec.finished_at = now
                self._touch(rec, batch)
                key = rec.cache_key or ""  # set: only steps with a key were looked up
                self._event(batch, STEP_KIND, rec.node.id, "CacheHit",
                            f"reused the output of {rec.cached_from} (key {key[:12]})",
                            data={"cache_key": key, "from": rec.cached_from})
                self._done_ok(rec, batch, now)

    def _cache_key(self, sid: str) -> str | None:
        """A cacheable step's key from its upstream outputs' digests (None when an output it reads is missing)."""
        rec = self.recs[sid]
        node = rec.node
        digests = {d: output.digest for d in node.deps if (output := self.recs[d].output) is not None}
        try:
            return cache_key(project=self.project, code_hash=node.step.code_hash, env=node.step.options.env,
                             args=node.args, digests=digests)
        except KeyError:
            return None

    def _queue(self, rec: StepRec, batch: Batch) -> None:
        self._set(rec, sm.Trigger.READY, batch)
        self._event(batch, STEP_KIND, rec.node.id, "StepQueued", f"attempt {rec.attempt + 1} queued")
        self._queued.append(rec.node.id)

    def _expand(self, rec: StepRec, batch: Batch, now: int) -> None:
        node = rec.node
        try:
            items = self.graph.map_items(node, self._lookup)
        except Exception as exc:  # noqa: BLE001  # bad items (not a list, unreadable): the map node fails
            self._set(rec, sm.Trigger.EXPAND, batch)
            self._fail(rec, "BadMapItems", str(getattr(exc, "message", exc)), batch, now)
            return
        existing = set(node.children)
        children = self.graph.add_children(node, items)
        self._set(rec, sm.Trigger.EXPAND, batch)
        rec.started_at = rec.started_at or now
        self._touch(rec, batch)
        self._event(batch, STEP_KIND, node.id, "MapExpanded", f"{len(children)} item(s)",
                    data={"count": len(children)})
        for child in children:
            if child.id not in existing:
                batch.new_steps.append(new_step_row(self.run_id, child))
                self._add_rec(StepRec(child, S.PENDING))
            child_rec = self.recs[child.id]
            if child_rec.state is S.PENDING:
                self._ready.append(child.id)
        self._check_map(rec, batch, now)

    def _start_queued(self, batch: Batch, now: int, effects: list[Effect]) -> None:
        asking, waiting = planner.admissible(self._queued, self.recs)
        asks: list[tuple[StepRec, ResourceRequest]] = []
        for sid in asking:
            rec = self.recs[sid]
            key = f"{self.run_id}/{sid}#{rec.attempt + 1}"
            request = self._asking.get(sid)
            if request is None or request.key != key:
                request = self._asking[sid] = resource_request(self.run_id, self.project, rec, key)
            asks.append((rec, request))
        verdicts = self._supervisor.settle([request for _rec, request in asks]) if asks else []
        for (rec, _request), verdict in zip(asks, verdicts, strict=True):
            if isinstance(verdict, Rejected):
                self._fail(rec, UNSCHEDULABLE, f"step {rec.node.step.name!r} {verdict.message}", batch, now)
            elif isinstance(verdict, Waiting):
                waiting.append(rec.node.id)
                self._note_waiting(rec, verdict, batch)
                continue
            else:
                self._supervisor.launch(rec, verdict, batch, now, effects)
            self._asking.pop(rec.node.id, None)
        self._queued = waiting

    def _note_waiting(self, rec: StepRec, verdict: Waiting, batch: Batch) -> None:
        """Show why a queued step waits (the queue's reason code and numbers) in its row, and as an event when the
        reason changes."""
        if not verdict.reason:
            return
        message = verdict.message + (f" (capstan why {verdict.workload})" if verdict.workload else "")
        if (rec.reason, rec.message) == (verdict.reason, message):
            return
        changed = rec.reason != verdict.reason
        rec.reason, rec.message = verdict.reason, message
        self._touch(rec, batch)
        if changed:
            self._event(batch, STEP_KIND, rec.node.id, verdict.reason, message,
                        data={"attempt": rec.attempt + 1, "workload": verdict.workload})

    def _on_outcome(self, outcome: Outcome, batch: Batch, now: int) -> None:
        taken = self._supervisor.take(outcome.key)
        if taken is None:
            return  # an attempt already decided (timed out or cancelled): its late result is ignored
        sid, preempted = taken
        rec = self.recs[sid]
        if rec.state is not S.RUNNING or rec.attempt != outcome.attempt:
            return
        # An attempt preempted but finished within its grace period counts as a success.
        verdict = planner.judge_outcome(ok=outcome.ok, reason=outcome.reason, message=outcome.message,
                                        retryable=outcome.retryable, attempt=rec.attempt,
                                        preempted=preempted)
        reason, message = verdict.reason, verdict.message
        self._supervisor.finish(rec, batch, state=S.SUCCEEDED.value if outcome.ok else S.FAILED.value,
                              reason=reason, message=message, finished_at=outcome.finished_at,
                              started_at=outcome.started_at, exit_code=outcome.exit_code,
                              peak_memory=outcome.peak_memory, log_path=outcome.log_path, requeue=verdict.requeue)
        if not outcome.ok:
            if not verdict.requeue:
                self._event(batch, STEP_KIND, sid, reason or "AttemptFailed", f"attempt {rec.attempt}: {message}",
                            warning=True, data={"attempt": rec.attempt, "exit_code": outcome.exit_code})
            self._attempt_failed(rec, reason, message, verdict.retryable, batch, now)
            return
        self._set(rec, sm.Trigger.SUCCEED, batch)
        rec.output = outcome.output
        rec.finished_at = outcome.finished_at
        self._touch(rec, batch)
        self._supervisor.keep_value(rec, outcome.value)
        self._event(batch, STEP_KIND, sid, "StepSucceeded", f"attempt {rec.attempt} in {outcome.duration_ms} ms",
                    data={"attempt": rec.attempt, "duration_ms": outcome.duration_ms,
                          "peak_memory": outcome.peak_memory})
        output = rec.output
        if output is not None and rec.cache_key and rec.node.step.options.cache:
            fmt, inline, path, digest, size = output.columns()
            batch.cache.append(CacheEntry(rec.cache_key, self.run_id, sid, fmt, inline, path, digest, size, now))
        for dep in rec.node.refs():
            src = self.recs[dep]
            if src.output is not None:
                source_run = (src.cached_from or self.run_id).partition("/")[0]
                batch.inputs.append(StepInput(self.run_id, sid, dep, source_run if src.cached_from else self.run_id,
                                              src.output.digest, src.output.path))
        self._done_ok(rec, batch, now)

    def _attempt_failed(self, rec: StepRec, reason: str, message: str, retryable: bool, batch: Batch,
                        now: int) -> None:
        opts = rec.node.step.options
        # A preempted attempt, like an interrupted one, did not fail: it does not use up the step's retries, and the
        # queue's requeue backoff (not the step's) decides when it runs again.
        decision = planner.after_failure(reason=reason, retryable=retryable, retries=opts.retries,
                                         retries_used=rec.retries_used, backoff=opts.retry_backoff, now_ms=now,
                                         rand=self._rng.random)
        if decision.state is S.RETRYING:
            self._set(rec, sm.Trigger.RETRY, batch)
            rec.retries_used = decision.retries_used
            rec.next_attempt_at = decision.next_attempt_at
            rec.reason, rec.message = reason, message
            self._touch(rec, batch)
            self._retrying.add(rec.node.id)
            delay = (decision.next_attempt_at or now) - now
            self._event(batch, STEP_KIND, rec.node.id, "RetryScheduled",
                        f"attempt {rec.attempt + 1} in {delay / 1000:.2f}s after {reason}",
                        data={"attempt": rec.attempt + 1, "delay_ms": delay, "after": reason})
            return
        self._fail(rec, reason, message, batch, now)

    def _cancel_all(self, batch: Batch, now: int, effects: list[Effect]) -> None:
        """Cancel every step that is not finished; running attempts are stopped after the commit."""
        message = self._cancel_message
        open_recs = [rec for rec in self.recs.values() if rec.state not in sm.TERMINAL]
        self._supervisor.cancel(open_recs, batch, now, message, effects)
        for rec in open_recs:
            self._set(rec, sm.Trigger.CANCEL, batch)
            rec.reason, rec.message, rec.finished_at = CANCELLED, message, now
            self._touch(rec, batch)
            self._event(batch, STEP_KIND, rec.node.id, "StepCancelled", message, warning=True)
        self._queued.clear()
        self._retrying.clear()
        self._ready.clear()

    def _fail(self, rec: StepRec, reason: str, message: str, batch: Batch, now: int) -> None:
        self._set(rec, sm.Trigger.FAIL, batch)
        rec.reason, rec.message, rec.finished_at = reason, message, now
        self._touch(rec, batch)
        self._event(batch, STEP_KIND, rec.node.id, "StepFailed", f"{reason}: {message}", warning=True,
                    data={"reason": reason, "attempt": rec.attempt})
        self._after_terminal(rec, batch, now)

    def _skip(self, rec: StepRec, batch: Batch, now: int) -> None:
        message = planner.upstream_failure(rec, self.recs)
        self._set(rec, sm.Trigger.UPSTREAM_FAILED, batch)
        rec.reason, rec.message, rec.finished_at = "UpstreamFailed", message, now
        self._touch(rec, batch)
        self._event(batch, STEP_KIND, rec.node.id, "UpstreamFailed", rec.message, warning=True)
        self._after_terminal(rec, batch, now)

    def _done_ok(self, rec: StepRec, batch: Batch, now: int) -> None:
        for dep_id, waiting in planner.released(self._dependents.get(rec.node.id, ()), self.recs):
            self.recs[dep_id].waiting = waiting
            if waiting == 0:
                self._ready.append(dep_id)
        self._after_terminal(rec, batch, now)

    def _after_terminal(self, rec: StepRec, batch: Batch, now: int) -> None:
        for dep_id, (verdict, waiting) in planner.to_reevaluate(rec, self._dependents.get(rec.node.id, ()),
                                                                self.recs):
            self._apply_verdict(self.recs[dep_id], verdict, waiting, batch, now)
        if rec.node.parent:
            self._check_map(self.recs[rec.node.parent], batch, now)
        values = self._supervisor.values
        if values:
            for dep in planner.droppable_values(rec, values, self._dependents, self.recs):
                values.pop(dep, None)

    def _check_map(self, rec: StepRec, batch: Batch, now: int) -> None:
        done = planner.map_completion(rec, self.recs)
        if done is None:
            return
        if done.state is S.SUCCEEDED:
            outputs = [self.recs[c].output for c in rec.node.children]
            kept = self._supervisor.values
            values = [kept.pop(c, _ABSENT) for c in rec.node.children]
            if all(v is not _ABSENT or (o is not None and o.inline is not None) for v, o in
                   zip(values, outputs, strict=True)):
                kept[rec.node.id] = [
                    v if v is not _ABSENT else self._lookup(c) for c, v in zip(rec.node.children, values,
                                                                                 strict=True)]
            self._set(rec, sm.Trigger.SUCCEED, batch)
            rec.output = list_ref([o for o in outputs if o is not None], self.project)
            rec.finished_at = now
            self._touch(rec, batch)
            self._event(batch, STEP_KIND, rec.node.id, "StepSucceeded", f"{done.count} item(s) done")
            self._done_ok(rec, batch, now)
        elif done.state is S.FAILED:
            self._fail(rec, done.reason, done.message, batch, now)
        else:
            self._set(rec, sm.Trigger.CANCEL, batch)
            rec.finished_at = now
            self._touch(rec, batch)
            self._after_terminal(rec, batch, now)

    def _check_done(self, batch: Batch, now: int) -> None:
        end = planner.run_completion(self._open, self.recs.values(), cancel_requested=self._cancel,
                                     cancel_message=self._cancel_message)
        if end is None:
            return
        done = RunUpdate(self.run_id, status=end.status.value, finished_at=now, message=end.message[:4000],
                         heartbeat_at=now)
        batch.update_run(done)  # on top of the start (and a heartbeat) when they are in this round
        self.final = done.values()
        self._event(batch, RUN_KIND, self.run_id, end.reason, end.message, warning=end.warning)
        self.status = end.status.value
        self._done = True

    def _shutdown(self) -> None:
        self._supervisor.shutdown(kill=self._cancel)
