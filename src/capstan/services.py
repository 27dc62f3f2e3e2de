"""The composition root: every adapter Capstan uses, built once from one `Settings` object and passed down.

`Services.open` is the one function that chooses adapters: the SQL stores over one engine, the artifact store, the
workload queue as the admission every workload asks (and the lock its sessions hold across processes: a file for
SQLite, an advisory lock for PostgreSQL), the executors that run pipeline steps (local threads and processes), and
the pipeline runner over them. The CLI, the server, the SDK's local backend and the quickstart all
get theirs from it; nothing below this module picks an adapter of another package.

Parts that only some commands need (the queue, the admission, the executors, the pipeline runner) are built on first
use, so a command that only reads runs does not import the pipeline engine; each is still built here, once per
bundle.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from capstan.clock import Clock, system_clock
from capstan.settings import Settings

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from capstan.artifacts.store import ArtifactStore
    from capstan.auth.ports import AuthStore
    from capstan.events.ports import EventLog
    from capstan.pipelines.dsl import Pipeline
    from capstan.pipelines.executor_port import ExecutorFactory
    from capstan.pipelines.runner import PipelineRunner, RunResult
    from capstan.queue.locking import QueueLock
    from capstan.queue.store import QueueStore
    from capstan.registry.ports import RegistryStore
    from capstan.resources.admission import Admission
    from capstan.serving.manage import DeploymentManager
    from capstan.serving.outcomes import OutcomeStore
    from capstan.serving.ports import DeploymentStore
    from capstan.tracking.ports import TrackingStore
    from capstan.training.ports import JobStore
    from capstan.training.runner import JobRunner
    from capstan.troubleshoot.reader import TimelineReader
    from capstan.tuning.ports import StudyStore

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Deferred(Generic[T]):
    """A part of the bundle built on first `get` (once, thread-safe) by the factory the composition root gave it."""

    factory: Callable[[], T]
    _value: list[T] = field(default_factory=list, repr=False, compare=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def get(self) -> T:
        """The part, built by the first call."""
        if not self._value:
            with self._lock:
                if not self._value:
                    self._value.append(self.factory())
        return self._value[0]

    @property
    def built(self) -> bool:
        """Whether `get` has built the part yet."""
        return bool(self._value)


@dataclass(frozen=True, slots=True)
class Services:
    """The adapters of one process, each typed by the port it implements, sharing one engine and one clock."""

    settings: Settings
    clock: Clock
    engine: Engine
    events: EventLog
    artifacts: ArtifactStore
    tracking: TrackingStore
    registry: RegistryStore
    auth: AuthStore
    deployments: DeploymentStore
    outcomes: OutcomeStore
    jobs: JobStore
    studies: StudyStore
    queue_lock: QueueLock
    queue: Deferred[QueueStore]
    admission: Deferred[Admission]
    workload_admission: Deferred[Admission]
    executors: Deferred[ExecutorFactory]
    pipelines: Deferred[PipelineRunner]

    @classmethod
    def open(cls, settings: Settings, *, clock: Clock = system_clock, migrate: bool = True,
             admission: Admission | None = None) -> Services:
        """Connect to the stores named by ``settings`` (applying pending migrations first) and wire every adapter.

        ``admission`` replaces the workload queue as what pipeline steps ask before they start (tests and embedded
        use pass a `capstan.resources.local.LocalAdmission`). With the ``kubernetes`` backend in Kueue mode
        (``settings.kube_admission == "kueue"``) pipeline steps and training jobs ask a
        `capstan.k8s.kueue_admission.KueueAdmission` instead (``workload_admission``), which leaves admission to
        Kueue; serving deployments still ask ``admission``. ``kube_admission == "none"`` gives them the same
        pass-through (nobody admits; the scheduler places the pods: a study controller pod, decision 0745)."""
        from capstan.artifacts.store import ArtifactStore
        from capstan.queue.locking import queue_lock_for
        from capstan.serving.deployments_sql import SqlDeploymentStore
        from capstan.store.artifact_index_sql import SqlArtifactIndex
        from capstan.store.auth_sql import SqlAuthStore
        from capstan.store.deployment_outcomes_sql import SqlOutcomeStore
        from capstan.store.engine import create_store_engine
        from capstan.store.events_sql import SqlEventLog
        from capstan.store.registry_sql import SqlRegistryStore
        from capstan.store.tracking_sql import SqlTrackingStore
        from capstan.training.jobs_sql import SqlJobStore
        from capstan.tuning.studies_sql import SqlStudyStore

        check_artifact_root(settings)
        engine = create_store_engine(settings, migrate=migrate)
        events = SqlEventLog(engine, clock=clock)
        artifacts = ArtifactStore(settings, SqlArtifactIndex(engine, clock=clock))
        queue_lock = queue_lock_for(settings, engine)  # a file for SQLite, an advisory lock for PostgreSQL

        def open_queue() -> QueueStore:
            from capstan.queue.sql import SqlQueueStore

            return SqlQueueStore(engine)

        def open_admission() -> Admission:
            if admission is not None:
                return admission
            from capstan.queue.admission import QueueAdmission

            return QueueAdmission.open(settings, engine, clock=clock, events=events, lock=queue_lock)

        admissions = Deferred(open_admission)

        def open_workload_admission() -> Admission:
            if settings.backend == "kubernetes" and settings.kube_admission in ("kueue", "none"):
                from capstan.k8s.kueue_admission import KueueAdmission

                # Kueue alone admits the cluster's Jobs (decision 0726), or nobody does (0745): grant at once
                return KueueAdmission()
            return admissions.get()

        workload_admissions = Deferred(open_workload_admission)

        def open_executors() -> ExecutorFactory:
            if settings.backend == "kubernetes":
                from capstan.k8s.executor import kube_executor_factory

                def run_info(run_id: str) -> tuple[str, dict[str, Any]]:
                    run = pipeline_parts.get().store.get_run(run_id)
                    return run.pipeline_ref, dict(run.params)

                return kube_executor_factory(settings=settings, store=artifacts, events=events, run_info=run_info)
            from capstan.pipelines.executors import local_executor_factory

            return local_executor_factory(settings=settings, store=artifacts, clock=clock)

        executor_parts = Deferred(open_executors)

        def open_pipelines() -> PipelineRunner:
            from capstan.pipelines.runner import PipelineRunner

            return PipelineRunner(settings=settings, engine=engine, artifacts=artifacts, events=events,
                                  clock=clock, admission=workload_admissions.get, executors=executor_parts.get())

        pipeline_parts = Deferred(open_pipelines)

        return cls(
            settings=settings,
            clock=clock,
            engine=engine,
            events=events,
            artifacts=artifacts,
            tracking=SqlTrackingStore(engine, clock=clock, events=events),
            registry=SqlRegistryStore(engine, clock=clock, events=events),
            auth=SqlAuthStore(engine, clock=clock),
            deployments=SqlDeploymentStore(engine),
            outcomes=SqlOutcomeStore(engine),
            jobs=SqlJobStore(engine, clock=clock),
            studies=SqlStudyStore(engine),
            queue_lock=queue_lock,
            queue=Deferred(open_queue),
            admission=admissions,
            workload_admission=workload_admissions,
            executors=executor_parts,
            pipelines=pipeline_parts,
        )

    def deployment_manager(self, language_model: Callable[[str], bool] | None = None) -> DeploymentManager:
        """What the API and the CLI change deployments through: the deployment store, model URIs resolved against
        this registry, resources checked against this admission, and (given ``language_model``, which reads a
        model's MLmodel) options checked against the kind of model."""
        from capstan.serving.manage import DeploymentManager, registry_resolver

        return DeploymentManager(self.deployments, resolve=registry_resolver(self.registry, self.tracking),
                                 admission=self.admission.get, events=self.events, outcomes=self.outcomes,
                                 clock=self.clock, language_model=language_model)

    def job_runner(self) -> JobRunner:
        """What submits and runs training jobs: the job store, runs in this tracking store, events in this log,
        gangs admitted by ``workload_admission`` (the queue, or Kueue in Kueue mode) and started by the launcher of
        ``settings.backend`` (processes on this machine, or an indexed Job per attempt on the cluster of the
        ``kubernetes`` backend)."""
        from capstan.training.launcher import GangLauncher
        from capstan.training.runner import JobRunner, local_launcher

        launcher: GangLauncher
        if self.settings.backend == "kubernetes":
            from capstan.k8s.training_launcher import kube_gang_launcher

            launcher = kube_gang_launcher(settings=self.settings, events=self.events, artifacts=self.artifacts)
        else:
            launcher = local_launcher(self.settings)
        return JobRunner(self.jobs, tracking=self.tracking, events=self.events,
                         admission=self.workload_admission.get, settings=self.settings, clock=self.clock,
                         launcher=launcher)

    def timelines(self) -> TimelineReader:
        """What `capstan describe` and ``/api/v1/timeline`` read a workload's timeline through: these stores, this
        event log, the queue and the pipeline store of this bundle, and the files under this home."""
        from capstan.troubleshoot.reader import TimelineReader
        from capstan.troubleshoot.sources import Sources

        return TimelineReader(Sources(home=self.settings.home, clock=self.clock, events=self.events,
                                      tracking=self.tracking, jobs=self.jobs, studies=self.studies,
                                      deployments=self.deployments, queue=self.queue.get,
                                      pipelines=self.pipelines.get))

    def close(self) -> None:
        """Release database connections."""
        self.engine.dispose()


def run_here(pipe: Pipeline, params: Mapping[str, Any], *, settings: Settings | None = None,
             no_cache: bool = False) -> RunResult:
    """Run ``pipe`` in this process with the local stores (``Settings.from_env`` unless given)."""
    from capstan.pipelines.loader import ref_for

    services = Services.open(settings or Settings.from_env())
    try:
        return services.pipelines.get().run(pipe, params, ref=ref_for(pipe), no_cache=no_cache, source="sdk")
    finally:
        services.close()


def check_artifact_root(settings: Settings) -> None:
    """Fail with one line naming ``CAPSTAN_ARTIFACTS`` when the artifact root cannot be used: an unsupported
    scheme, a missing filesystem package (``s3fs``), or a local folder that is a file or cannot be created."""
    from pathlib import Path

    from capstan.settings import check_artifacts

    name = settings.source_of("artifacts")
    location = check_artifacts(settings.artifacts, field_name=name)
    if "://" in location and not location.startswith("file://"):
        return
    root = Path(location.removeprefix("file://")).expanduser()
    from capstan.store.engine import ensure_home, ensure_writable_folder

    if root.absolute() == settings.home / "artifacts" or settings.home in root.absolute().parents:
        ensure_home(settings)  # the home is created (and checked) first, so its own errors name CAPSTAN_HOME
    ensure_writable_folder(root, name)
