"""The pipelines part of ``capstan server``: orchestrates submitted and scheduled runs on background threads,
runs the schedule loop, and resumes unfinished runs whose orchestrator is gone (in the leader process).

The server core creates one `PipelineService` for the app, calls `start` in its lifespan start-up, `lead` and
`follow` as the process becomes the leader or stops being it, and `stop` at shutdown, and exposes it as
``app.state.pipelines`` for `capstan.server.pipelines_api`.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from capstan.errors import CapstanError
from capstan.pipelines.runner import PipelineRunner
from capstan.pipelines.schedules import Scheduler
from capstan.pipelines.storage import RunRecord

if TYPE_CHECKING:
    from capstan.pipelines.orchestrator import Orchestrator

log = logging.getLogger("capstan.pipelines")

SERVER_SOURCES = ("api", "schedule", "backfill")
"""Runs the server owns: it resumes these after a restart (runs started by ``capstan run`` stay the CLI's)."""


class _Track:
    def __init__(self, service: PipelineService, run_id: str) -> None:
        self._service = service
        self._run_id = run_id

    def update(self, orchestrator: Orchestrator) -> None:
        self._service._active.setdefault(self._run_id, orchestrator)


class PipelineService:
    """Background orchestration for the server: `submit` runs, `start`/`stop` with the app.

    The runs share the runner's admission: by default the workload queue, which every step asks before it starts.
    """

    def __init__(self, runner: PipelineRunner, *, max_runs: int = 4, scheduler_interval_s: float = 1.0) -> None:
        self.runner = runner
        self.scheduler = Scheduler(runner, self.submit, clock=runner.clock, interval_s=scheduler_interval_s,
                                   on_tick=self._adopt)
        self._max_runs = max_runs
        self._pool: ThreadPoolExecutor | None = None
        self._active: dict[str, Orchestrator] = {}
        self._futures: dict[str, Future[Any]] = {}
        self._lock = threading.Lock()

    def start(self, *, schedules: bool = True, resume: bool = True) -> list[str]:
        """Start orchestrating submitted runs; with ``resume`` pick up this server's unfinished runs, with
        ``schedules`` start the schedule loop. Returns the resumed run ids. Of the processes of the servers on one
        store, the leader resumes and schedules (`lead`, see `capstan.server.leader`); the others only run what is
        submitted to them."""
        self._pool = ThreadPoolExecutor(max_workers=self._max_runs, thread_name_prefix="capstan-run")
        if not resume:
            return []
        resumed = self.resume_orphans()
        if schedules:
            self.scheduler.start()
        return resumed

    def lead(self) -> list[str]:
        """Take up the leader's part (this process was elected, `capstan.server.leader`): resume the server's runs
        whose orchestrator is gone and start the schedule loop, which also adopts runs orphaned later. Returns the
        resumed run ids."""
        self.scheduler.start()  # first: should resuming fail now, the loop's ticks retry it
        return self.resume_orphans()

    def follow(self) -> None:
        """Give the leader's part up (this process lost the leader lock): stop the schedule loop. The runs this
        process orchestrates go on; each is claimed by its orchestrator, not by the leader."""
        self.scheduler.stop()

    def resume_orphans(self) -> list[str]:
        """Submit the server's unfinished runs that no live process orchestrates: never claimed, or claimed by a
        process that is gone (at once on this machine; on another, once its heartbeat is stale). Returns their
        ids."""
        resumed = []
        for run in self.runner.store.unfinished_runs(SERVER_SOURCES):
            with self._lock:
                known = run.id in self._futures and not self._futures[run.id].done()
            if not known and not self.runner.orchestrator_alive(run):
                self.submit(run.id)
                resumed.append(run.id)
        return resumed

    def _adopt(self) -> None:
        """The schedule loop's tick: runs recorded for the server that nobody orchestrates (never claimed, or
        claimed by a process that died since)."""
        self.adopt_pending()
        for run_id in self.resume_orphans():
            log.info("adopted pipeline run %s: no live process orchestrates it", run_id)

    def adopt_pending(self) -> list[str]:
        """Submit runs recorded for the server while it was running (``schedules backfill --submit-only``, another
        server's API) that nobody orchestrates yet."""
        adopted = []
        for run in self.runner.store.list_runs(status="pending", sources=SERVER_SOURCES, limit=100):
            with self._lock:
                known = run.id in self._futures
            if not known and not run.orchestrator:
                self.submit(run.id)
                adopted.append(run.id)
        return adopted

    def stop(self) -> None:
        """Stop the schedule loop and detach from running runs (they stay ``running`` and are resumed by the
        next start; process workers finish the attempts they are running)."""
        self.scheduler.stop()
        with self._lock:
            active = list(self._active.values())
        for orch in active:
            orch.detach()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def submit(self, run_id: str) -> None:
        """Orchestrate a stored run in the background."""
        if self._pool is None:
            raise CapstanError("the pipeline service is not started")
        with self._lock:
            if run_id in self._futures and not self._futures[run_id].done():
                return
            self._futures[run_id] = self._pool.submit(self._execute, run_id)

    def _execute(self, run_id: str) -> None:
        try:
            self.runner.execute(run_id, observer=_Track(self, run_id))
        except CapstanError as exc:
            log.warning("pipeline run %s: %s", run_id, exc.message)
        except Exception:  # a broken run must not take the server's worker thread down
            log.exception("pipeline run %s failed in the orchestrator", run_id)
        finally:
            with self._lock:
                self._active.pop(run_id, None)

    def create(self, pipeline_ref: str, params: dict[str, Any], *, no_cache: bool = False,
               project: str | None = None) -> RunRecord:
        """Validate and store a run of ``pipeline_ref`` (``FILE:FUNC`` on the server's machine) and start it."""
        from capstan.pipelines.loader import load_pipeline

        pipe, ref = load_pipeline(pipeline_ref)
        record, _graph = self.runner.create_run(pipe, params, ref=ref, no_cache=no_cache, source="api",
                                                project=project)
        self.submit(record.id)
        return record

    def wait(self, run_id: str, timeout: float | None = None) -> None:
        """Block until a submitted run's orchestration ends (for tests and tools)."""
        with self._lock:
            future = self._futures.get(run_id)
        if future is not None:
            future.result(timeout=timeout)
