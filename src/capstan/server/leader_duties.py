"""The leader's work in one server process, started and stopped as `capstan.server.leader.LeaderElection` decides.

The leader (one process among every server on the metadata store):

- resumes pipeline runs whose orchestrator is gone and runs the schedule loop (`PipelineService.lead`), which
  keeps adopting runs orphaned later;
- reconciles managed deployments (`capstan.serving.controller.DeploymentController`);
- runs submitted training jobs (`capstan.training.controller.JobController`);
- admits workloads whose requeue backoff after a preemption has ended (`ServerQueue.start`).

A process that loses the leader lock stops all four at once (`deposed`); the runs it orchestrates go on, because
a run is claimed by its orchestrator, not by the leader.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fastapi import FastAPI

    from capstan.serving.controller import DeploymentController
    from capstan.training.controller import JobController

log = logging.getLogger("capstan.server")


class LeaderDuties:
    """Starts and stops the leader's work on ``app.state`` (``queue``, ``pipelines``, ``deployments``, ``jobs``).

    Args:
        app: the server application; its ``state.queue`` exists, its ``state.pipelines`` comes later (it starts
            beside the server, and `pipelines_started` says when).
        deployments: builds a deployment controller (a stopped one cannot start again).
        jobs: builds a training job controller.
    """

    def __init__(self, app: FastAPI, *, deployments: Callable[[], DeploymentController],
                 jobs: Callable[[], JobController]) -> None:
        self._app = app
        self._deployments = deployments
        self._jobs = jobs
        self._lock = threading.Lock()
        self._leading = False
        self._pipelines_up = False
        self._pipelines_leading = False

    def elected(self) -> None:
        """This process became the leader: start the leader's work."""
        state = self._app.state
        with self._lock:
            self._leading = True
        state.queue.start(cycles=True)  # requeues workloads after their backoff
        if state.deployments is None:
            state.deployments = self._deployments()
            state.deployments.start()  # adopts replicas left running, then reconciles on its own thread
        if state.jobs is None:
            state.jobs = self._jobs()
            state.jobs.start()  # runs submitted training jobs; adopts those whose runner died
        self._lead_pipelines()

    def pipelines_started(self) -> None:
        """The pipeline service has started (or failed to): the leader resumes and schedules from now on."""
        with self._lock:
            self._pipelines_up = True
        self._lead_pipelines()

    def deposed(self) -> None:
        """This process lost the leader lock: stop the leader's work (deployment replicas and training gangs are
        stopped, so the next leader starts them again rather than running them twice)."""
        state = self._app.state
        with self._lock:
            self._leading = False
            following, self._pipelines_leading = self._pipelines_leading, False
        if following and state.pipelines is not None:
            state.pipelines.follow()
        state.queue.stop()
        self.stop_controllers()

    def stop_controllers(self) -> None:
        """Stop the deployment and job controllers when this process runs them (at deposition and shutdown)."""
        state = self._app.state
        deployments, state.deployments = state.deployments, None
        if deployments is not None:
            deployments.stop()
        jobs, state.jobs = state.jobs, None
        if jobs is not None:  # stops the gangs and hands the jobs back for the next leader
            jobs.stop()

    def _lead_pipelines(self) -> None:
        with self._lock:
            service = self._app.state.pipelines
            if not (self._leading and self._pipelines_up) or self._pipelines_leading or service is None:
                return
            self._pipelines_leading = True
            resumed = service.lead()
        if resumed:
            log.info("resumed %d unfinished pipeline run(s): %s", len(resumed), ", ".join(resumed))
