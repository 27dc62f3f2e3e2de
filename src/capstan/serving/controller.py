"""The deployment control plane: turns stored deployments into supervised replica processes.

One `DeploymentController` runs in the leader process of ``capstan server`` (`capstan.server.app`). Every
`RECONCILE_INTERVAL_S` (at once after `wake`) it reads the deployments, decides how many replicas each version
needs (fixed, or `capstan.serving.autoscale` from the routers' `LoadReport`s) and moves every replica along its
life, writing a `ReplicaRecord` at each change:

``pending`` (asks the `Admission` port; waits with its reason) -> ``starting`` (``capstan serve`` launched, polled
until ``/v2/health/ready`` answers) -> ``ready`` (receives traffic) -> ``draining`` (its version left the routing
table: kept `DRAIN_S` for routers' cached tables and in-flight requests) -> stopped (row deleted, lease released).

A replica that exits is ``failed``: restarted with exponential back-off (`restart_delay_ms`) and a ``ReplicaCrashed``
event, or ``ModelLoadFailed`` (with the loader's output) when it never became ready; ``ReplicaRestarted`` when it is
launched again. Every pass reads a running replica's peak resident memory (``VmHWM``; at its exit the kernel's
``ru_maxrss``) onto its row (``peak_memory``), and the event of its exit carries it. Scale from zero is timed from
the first waiting report to the first ready replica (``ColdStart``).

A deployment that scales on a language model's load (``target_waiting`` or ``target_tokens_per_second``) has its
ready replicas' ``GET /llm/stats`` read every `ENGINE_POLL_MS`; the samples of the last `ENGINE_WINDOW_MS` give each
replica's waiting requests and token rate to the autoscaler (`capstan.serving.autoscale.engine_demand`).

With a `ControllerMetrics` (``capstan server`` passes a `capstan.serving.metrics.ServingMetrics` shown on its
``/metrics``), every pass sets the replicas by state and the desired replicas of each deployment's versions, labelled
``model="PROJECT/NAME"`` and ``version`` as clients pin it (``3`` of ``models:/NAME/3``), and counts cold starts.

On `start` the controller adopts replicas an earlier server left running (pid alive, ``capstan serve``, ready) and
forgets the rest, which the next pass starts again. `stop` (clean shutdown) stops every replica and deletes its row.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from capstan.clock import Clock, system_clock
from capstan.errors import InvalidState
from capstan.events.ports import EventLog
from capstan.events.records import WARNING
from capstan.resources.admission import Admission, Lease, Rejected, ResourceRequest, Waiting
from capstan.resources.quantity import MILLI, format_quantity
from capstan.serving.autoscale import (
    EngineSample,
    ScaleHistory,
    decide,
    demand_of,
    engine_demand,
    engine_sample,
    fresh_reports,
    rate,
    side_replicas,
)
from capstan.serving.ports import DeploymentRecord, DeploymentStore, ReplicaRecord, Role
from capstan.serving.replicas import (
    STOP_GRACE_S,
    ReplicaLauncher,
    ReplicaProcess,
    adopt,
    fetch_llm_stats,
    is_replica_process,
    pid_alive,
)

log = logging.getLogger("capstan.serving.controller")

EVENT_KIND = "deployment"
RECONCILE_INTERVAL_S = 0.5
DRAIN_S = 5.0
"""How long a replica whose version left the routing table keeps running: routers refresh their table at least
every second, and a request in flight finishes well within the rest."""
LOAD_MAX_AGE_MS = 10_000
"""A router worker's report older than this no longer counts (the worker stopped)."""
RPS_WINDOW_MS = 10_000
"""The request rate is averaged over this window."""
ENGINE_POLL_MS = 1_000
"""How often the ready replicas of a deployment scaling on a language model's load are asked for ``/llm/stats``."""
ENGINE_WINDOW_MS = 10_000
"""The token rate of a replica is its counter's growth over this window (a steadier figure than one poll's)."""
BACKOFF_BASE_MS = 1_000
BACKOFF_MAX_MS = 60_000


class ControllerMetrics(Protocol):
    """Where the controller reports its replicas and cold starts (`capstan.serving.metrics.ServingMetrics`)."""

    def set_replicas(self, model: str, version: str, by_state: Mapping[str, int]) -> None:
        """Replicas of a version by state."""
        ...

    def set_desired_replicas(self, model: str, version: str, count: int) -> None:
        """Replicas of a version the controller aims for."""
        ...

    def cold_start(self, model: str, version: str, seconds: float) -> None:
        """One scale from zero that took ``seconds`` until a replica was ready."""
        ...

    def forget(self, model: str, version: str) -> None:
        """Drop a version's series (it is no longer served)."""
        ...


def restart_delay_ms(failures: int) -> int:
    """Back-off before the next start after ``failures`` consecutive failures: 1 s, 2 s, 4 s... at most 60 s."""
    if failures <= 0:
        return 0
    return int(min(BACKOFF_MAX_MS, BACKOFF_BASE_MS << min(failures - 1, 16)))


def object_id(project: str, name: str) -> str:
    """The event-log object id of a deployment: ``PROJECT/NAME``."""
    return f"{project}/{name}"


def resource_request(record: DeploymentRecord, replica_id: str) -> ResourceRequest:
    """What one replica of ``record`` asks the admission for (its key names the replica).

    A spec without resources asks for nothing and needs no admission; one that names a queue asks for at least one
    milli-CPU, so that every replica is a workload of that queue."""
    res = record.spec.resources
    labels = (("queue", res.queue),) if res.queue else ()
    cpu = (res.cpu_milli or 0) / 1000
    memory = (res.memory_milli or 0) // 1000
    if res.queue and cpu <= 0 and memory <= 0 and not res.gpus:
        cpu = 0.001
    return ResourceRequest(key=f"deployment/{record.project}/{record.name}/{replica_id}", cpu=cpu, memory=memory,
                           gpu=float(res.gpus), project=record.project, labels=labels)


@dataclass
class _Replica:
    record: ReplicaRecord
    process: ReplicaProcess | None = None
    lease: Lease | None = None
    not_before_ms: int = 0
    drain_until_ms: int = 0
    failures: int = 0


@dataclass
class _Scaling:
    history: ScaleHistory = field(default_factory=ScaleHistory)
    completed: collections.deque[tuple[int, int]] = field(default_factory=collections.deque)
    seen: dict[str, int] = field(default_factory=dict)
    cold_since_ms: int | None = None
    engines: dict[str, collections.deque[EngineSample]] = field(default_factory=dict)
    engines_polled_ms: int | None = None


class DeploymentController:
    """Reconciles every deployment of the store with the replica processes of this server process."""

    def __init__(self, store: DeploymentStore, *, events: EventLog, launcher: ReplicaLauncher,
                 admission: Callable[[], Admission], clock: Clock = system_clock,
                 interval_s: float = RECONCILE_INTERVAL_S, drain_s: float = DRAIN_S,
                 metrics: ControllerMetrics | None = None,
                 engine_stats: Callable[[str], object | None] = fetch_llm_stats) -> None:
        self._store = store
        self._engine_stats = engine_stats
        self._metrics = metrics
        self._published: set[tuple[str, str]] = set()
        self._events = events
        self._launcher = launcher
        self._admission = admission
        self._clock = clock
        self._interval_s = interval_s
        self._drain_ms = int(drain_s * 1000)
        self._replicas: dict[str, _Replica] = {}
        self._scaling: dict[tuple[str, str], _Scaling] = {}
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # -- life -------------------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Adopt what an earlier server left running, then reconcile on a thread until `stop`."""
        self._thread = threading.Thread(target=self._run, name="capstan-deployments", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Reconcile now (a router saw a request waiting for a replica)."""
        self._wake.set()

    def detach(self) -> None:
        """Stop reconciling and leave the replicas running (what a crash does; tests use it)."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()

    def stop(self) -> None:
        """Stop reconciling, stop every replica (SIGTERM, then SIGKILL) and forget them. Returns once they have
        ended (at most the stop grace and a second): the server process exits next, and with it the threads that
        would send the SIGKILL."""
        self.detach()
        with self._lock:
            processes = [r.process for r in self._replicas.values() if r.process is not None]
            for replica in list(self._replicas.values()):
                self._retire(replica)
        deadline = time.monotonic() + STOP_GRACE_S + 1.0
        while any(p.exit_code() is None for p in processes) and time.monotonic() < deadline:
            time.sleep(0.05)

    def _run(self) -> None:
        try:
            self.adopt()
        except Exception:  # replicas that could not be adopted are started again by the passes
            log.exception("adopting running replicas failed")
        while not self._stopping.is_set():
            try:
                self.reconcile()
            except Exception:  # the store may be briefly unavailable; the next pass retries
                log.exception("reconciling deployments failed")
            self._wake.wait(self._interval_s)
            self._wake.clear()

    def adopt(self) -> None:
        """Keep the replicas an earlier server process left running and ready; forget (and stop) the others."""
        now = self._clock()
        with self._lock:
            for row in self._store.replicas():
                if row.id in self._replicas:
                    continue
                record = self._store.get(row.project, row.deployment)
                process = adopt(row.pid, row.url) if record is not None and row.state in ("ready", "draining") \
                    else None
                if record is None or process is None:
                    self._forget_row(row, record)
                    continue
                replica = _Replica(row, process, self._reclaim(record, row.id))
                self._replicas[row.id] = replica
                if row.state == "draining":
                    replica.drain_until_ms = now + self._drain_ms
                self._event(record, "ReplicaAdopted", f"replica {row.id} ({row.model_version}) at {row.url} was "
                                                      "left running by the previous server; adopted")

    def _forget_row(self, row: ReplicaRecord, record: DeploymentRecord | None) -> None:
        if row.pid is not None and pid_alive(row.pid) and is_replica_process(row.pid):
            from capstan.serving.replicas import AdoptedReplica

            AdoptedReplica(row.pid, row.url or "").stop()
        if record is not None:
            lease = self._reclaim(record, row.id, held_only=True)
            if lease is not None:
                self._admission().release(lease)
        self._store.delete_replica(row.id)

    def _reclaim(self, record: DeploymentRecord, replica_id: str, *, held_only: bool = False) -> Lease | None:
        request = resource_request(record, replica_id)
        if request.empty:
            return None
        return self._admission().reclaim(request, held_only=held_only)

    # -- one pass ---------------------------------------------------------------------------------------------------
    def reconcile(self) -> None:
        """One pass over every deployment; a deployment whose pass fails does not stop the others."""
        with self._lock:
            records = {(r.project, r.name): r for r in self._store.list()}
            for replica in list(self._replicas.values()):
                if (replica.record.project, replica.record.deployment) not in records:
                    self._retire(replica)
            for key in [k for k in self._scaling if k not in records]:
                del self._scaling[key]
            desired: dict[tuple[str, str], int] = {}
            for record in records.values():
                try:
                    desired.update(self._reconcile_one(record))
                except Exception:  # one broken deployment must not stop the others
                    log.exception("reconciling deployment %s/%s failed", record.project, record.name)
            self._publish(desired)

    def _publish(self, desired: Mapping[tuple[str, str], int]) -> None:
        """Set the metrics of every (deployment, version) desired or running; forget the ones gone since the last
        pass."""
        if self._metrics is None:
            return
        by_state: dict[tuple[str, str], collections.Counter[str]] = {key: collections.Counter() for key in desired}
        for replica in self._replicas.values():
            row = replica.record
            key = (object_id(row.project, row.deployment), _client_version(row.model_version))
            by_state.setdefault(key, collections.Counter())[row.state] += 1
        for key, states in by_state.items():
            self._metrics.set_replicas(*key, states)
            self._metrics.set_desired_replicas(*key, desired.get(key, 0))
        for gone in self._published - set(by_state):
            self._metrics.forget(*gone)
        self._published = set(by_state)

    def replicas_of(self, project: str, name: str) -> list[ReplicaRecord]:
        """This controller's view of a deployment's replicas."""
        with self._lock:
            return [r.record for r in self._replicas.values()
                    if r.record.project == project and r.record.deployment == name]

    def _mine(self, record: DeploymentRecord) -> list[_Replica]:
        return [r for r in self._replicas.values()
                if r.record.project == record.project and r.record.deployment == record.name]

    def _reconcile_one(self, record: DeploymentRecord) -> dict[tuple[str, str], int]:
        """One deployment's pass; returns the desired replicas per (``PROJECT/NAME``, client version)."""
        now = self._clock()
        primary = self._scale(record, now)
        wanted = self._wanted(record, primary)
        mine = self._mine(record)
        for replica in mine:
            if replica.record.model_version not in wanted and replica.record.state != "draining":
                self._drain(replica, now)
        for version, (role, count) in wanted.items():
            active = [r for r in mine if r.record.model_version == version and r.record.state != "draining"]
            for _ in range(count - len(active)):
                self._add(record, role, version, now)
            for extra in sorted(active, key=_removal_order)[:max(0, len(active) - count)]:
                self._drain(extra, now)
        for replica in self._mine(record):
            self._advance(record, replica, now)
        self._note_cold_start(record, now)
        desired: dict[tuple[str, str], int] = {}
        for version, (_role, count) in wanted.items():
            key = (object_id(record.project, record.name), _client_version(version))
            desired[key] = desired.get(key, 0) + count
        return desired

    def _wanted(self, record: DeploymentRecord, primary: int) -> dict[str, tuple[Role, int]]:
        """Replicas per model version: the primary's count, and a share of it for the canary and the shadow."""
        spec = record.spec
        wanted: dict[str, tuple[Role, int]] = {}
        for role, uri in record.versions:
            if role == "primary":
                count = primary
            else:
                target = spec.canary if role == "canary" else spec.shadow
                count = side_replicas(primary, target.traffic if target is not None else 0.0)
            if uri not in wanted or wanted[uri][1] < count:
                wanted[uri] = (role, count)
        return wanted

    # -- scaling ----------------------------------------------------------------------------------------------------
    def _scale(self, record: DeploymentRecord, now: int) -> int:
        """The primary's replica count now: the spec's, or the autoscaler's (stored when it changes)."""
        spec = record.spec
        policy = spec.autoscaling
        state = self._scaling.setdefault((record.project, record.name), _Scaling())
        reports = fresh_reports(self._store.load(record.project, record.name, since_ms=now - LOAD_MAX_AGE_MS),
                                now, LOAD_MAX_AGE_MS)
        waiting = [r.time_ms for r in reports if r.waiting > 0]
        if waiting and state.cold_since_ms is None and not self._ready_primary(record):
            state.cold_since_ms = min(waiting)
        if policy is None:
            return spec.replicas or 0
        for report in reports:
            if report.time_ms > state.seen.get(report.worker, 0):
                state.seen[report.worker] = report.time_ms
                state.completed.append((report.time_ms, report.completed))
        while state.completed and now - state.completed[0][0] > RPS_WINDOW_MS:
            state.completed.popleft()
        demand = demand_of(reports, rate(state.completed, now, RPS_WINDOW_MS))
        if policy.reads_engine_load:
            self._poll_engines(record, state, now)
            demand = engine_demand(demand, state.engines)
        desired, state.history = decide(policy, demand, record.desired_replicas, state.history, now)
        if desired != record.desired_replicas:
            try:
                self._store.put(dataclasses.replace(record, desired_replicas=desired, updated_ms=now),
                                expected_revision=record.revision)
            except InvalidState:  # changed meanwhile (an apply): decide again on the next pass
                return record.desired_replicas
            engine = (f", engines running {demand.engine_running}, waiting {demand.engine_waiting}, "
                      f"{demand.tokens_per_s:.1f} tokens/s") if policy.reads_engine_load else ""
            self._event(record, "Autoscaled", f"{record.desired_replicas} -> {desired} replicas (in flight "
                                              f"{demand.in_flight}, waiting {demand.waiting}, {demand.rps:.1f} rps"
                                              f"{engine})",
                        data={"from": record.desired_replicas, "to": desired})
        return desired

    def _poll_engines(self, record: DeploymentRecord, state: _Scaling, now: int) -> None:
        """Sample ``/llm/stats`` of the deployment's ready replicas (every `ENGINE_POLL_MS`); forget the samples
        of replicas no longer ready."""
        if state.engines_polled_ms is not None and now - state.engines_polled_ms < ENGINE_POLL_MS:
            return
        state.engines_polled_ms = now
        ready = {r.record.id: r.record.url for r in self._mine(record)
                 if r.record.state == "ready" and r.record.url}
        for gone in [rid for rid in state.engines if rid not in ready]:
            del state.engines[gone]
        for replica_id, url in ready.items():
            assert url is not None  # filtered above
            sample = engine_sample(self._engine_stats(url), now)
            if sample is None:
                continue
            samples = state.engines.setdefault(replica_id, collections.deque())
            samples.append(sample)
            while len(samples) > 1 and now - samples[0].time_ms > ENGINE_WINDOW_MS:
                samples.popleft()

    def _ready_primary(self, record: DeploymentRecord) -> bool:
        version = record.version_of("primary")
        return any(r.record.state == "ready" and r.record.model_version == version for r in self._mine(record))

    def _note_cold_start(self, record: DeploymentRecord, now: int) -> None:
        state = self._scaling.get((record.project, record.name))
        if state is None or state.cold_since_ms is None or not self._ready_primary(record):
            return
        seconds = max(0, now - state.cold_since_ms) / 1000
        state.cold_since_ms = None
        self._event(record, "ColdStart", f"first request waited {seconds:.2f}s for a replica (scale from zero)",
                    data={"seconds": seconds})
        primary = record.version_of("primary")
        if self._metrics is not None and primary is not None:
            self._metrics.cold_start(object_id(record.project, record.name), _client_version(primary), seconds)

    # -- replica transitions ----------------------------------------------------------------------------------------
    def _add(self, record: DeploymentRecord, role: Role, version: str, now: int) -> None:
        replica_id = f"{record.name}-{uuid.uuid4().hex[:10]}"
        row = ReplicaRecord(replica_id, record.name, record.project, role, version, "pending", None, None, 0, now,
                            now, "waiting for admission")
        self._replicas[replica_id] = _Replica(row)
        self._store.put_replica(row)

    def _set(self, replica: _Replica, **changes: object) -> None:
        updated = dataclasses.replace(replica.record, **changes)  # type: ignore[arg-type]  # fields of ReplicaRecord
        if updated != replica.record:
            replica.record = dataclasses.replace(updated, updated_ms=self._clock())
            self._store.put_replica(replica.record)

    def _note_peak(self, replica: _Replica, process: ReplicaProcess) -> None:
        """Store the process's peak memory when it grew (the row's time stays that of its last state change)."""
        peak = process.sample_peak()
        if peak is not None and peak != replica.record.peak_memory:
            replica.record = dataclasses.replace(replica.record, peak_memory=peak)
            self._store.put_replica(replica.record)

    def _drain(self, replica: _Replica, now: int) -> None:
        if replica.record.state != "ready":
            self._retire(replica)
            return
        replica.drain_until_ms = now + self._drain_ms
        self._set(replica, state="draining", message=f"draining for {self._drain_ms / 1000:g}s before it stops")

    def _retire(self, replica: _Replica) -> None:
        """Stop the process, give the lease back and forget the replica."""
        if replica.process is not None:
            replica.process.stop()
            replica.process = None
        self._release(replica)
        self._replicas.pop(replica.record.id, None)
        self._store.delete_replica(replica.record.id)

    def _release(self, replica: _Replica) -> None:
        if replica.lease is not None:
            lease, replica.lease = replica.lease, None
            try:
                self._admission().release(lease)
            except Exception:  # a lease the queue lost is gone either way
                log.exception("releasing the lease of replica %s failed", replica.record.id)

    def _advance(self, record: DeploymentRecord, replica: _Replica, now: int) -> None:
        state = replica.record.state
        if state == "draining":
            if now >= replica.drain_until_ms or (replica.process is not None
                                                 and replica.process.exit_code() is not None):
                self._retire(replica)
            return
        if state in ("pending", "failed"):
            if now >= replica.not_before_ms:
                self._admit(record, replica, now)
            return
        process = replica.process
        if process is None:
            return
        self._note_peak(replica, process)
        code = process.exit_code()
        if code is not None:
            self._exited(record, replica, code, now)
        elif state == "starting" and process.ready():
            self._set(replica, state="ready", url=process.url, message="")
            replica.failures = 0
            if replica.record.restarts:
                self._event(record, "ReplicaRestarted", f"replica {replica.record.id} ({replica.record.model_version})"
                                                        f" is ready again after {replica.record.restarts} restart(s)")
        elif state == "starting" and process.url and replica.record.url is None:
            self._set(replica, url=process.url, message="loading the model")

    def _admit(self, record: DeploymentRecord, replica: _Replica, now: int) -> None:
        """Ask the admission for the replica's resources; launch it on a lease."""
        request = resource_request(record, replica.record.id)
        if replica.lease is None and not request.empty:
            verdict = self._admission().acquire_many([request])[0]
            if isinstance(verdict, Rejected):
                replica.not_before_ms = now + BACKOFF_MAX_MS
                if replica.record.state != "failed":
                    self._event(record, "AdmissionRejected", verdict.message, type=WARNING)
                self._set(replica, state="failed", message=f"Rejected: {verdict.message}")
                return
            if isinstance(verdict, Waiting):
                why = ": ".join(p for p in (verdict.reason, verdict.message) if p) or "waiting for resources"
                self._set(replica, state="pending", message=why)
                return
            replica.lease = verdict
        env: dict[str, str] = dict(replica.lease.env) if replica.lease is not None else {}
        if replica.lease is not None and replica.lease.devices:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(replica.lease.devices)
        batching = record.spec.batching
        try:
            process = self._launcher.launch(
                replica.record.model_version, record.name, project=record.project, env=env,
                max_batch_size=batching.max_batch_size if batching else None,
                max_batch_delay_ms=batching.max_delay_ms if batching else None,
                payload_sample_rate=record.spec.payload_sample_rate, drift_window=record.spec.drift_window,
                llm=record.spec.llm)
        except OSError as exc:
            self._exited(record, replica, -1, now, reason=f"could not start: {exc}")
            return
        replica.process = process
        self._set(replica, state="starting", pid=process.pid, url=None, started_ms=now, message="starting",
                  peak_memory=None)

    def _exited(self, record: DeploymentRecord, replica: _Replica, code: int, now: int, *, reason: str = "") -> None:
        """A replica ended on its own: record why, release its lease and schedule its restart."""
        loading = replica.record.state == "starting"
        tail = replica.process.output_tail() if replica.process is not None else ""
        peak = replica.process.sample_peak() if replica.process is not None else None
        peak = replica.record.peak_memory if peak is None else peak
        replica.process = None
        self._release(replica)
        replica.failures += 1
        delay = restart_delay_ms(replica.failures)
        replica.not_before_ms = now + delay
        event = "ModelLoadFailed" if loading else "ReplicaCrashed"
        what = reason or (f"exited with status {code} while loading the model" if loading
                          else f"exited with status {code}")
        error = _error_line(tail)
        used = f" (peak memory {format_quantity(peak * MILLI, 'memory')})" if peak is not None else ""
        message = f"replica {replica.record.id} ({replica.record.model_version}) {what}{used}" + (
            f": {error}" if error else "") + f"; restarting in {delay / 1000:g}s"
        self._event(record, event, message, type=WARNING, data={"replica": replica.record.id, "exit_code": code,
                                                                 "output": tail[-4000:], "peak_memory": peak})
        self._set(replica, state="failed", pid=None, url=None, restarts=replica.record.restarts + 1,
                  message=f"{event}: {what}" + (f": {error}" if error else ""), peak_memory=peak)

    def _event(self, record: DeploymentRecord, reason: str, message: str, *, type: str = "Normal",
               data: dict[str, object] | None = None) -> None:
        try:
            self._events.append(EVENT_KIND, object_id(record.project, record.name), reason, message, type=type,
                                project=record.project, data=data)
        except Exception:  # an event that cannot be written must not stop supervision
            log.exception("writing event %s of deployment %s failed", reason, record.name)


def _client_version(model_version: str) -> str:
    """The version clients see and pin (``3`` of ``models:/NAME/3``), as the routing table names it."""
    return model_version.rpartition("/")[2]


def _removal_order(replica: _Replica) -> tuple[int, int]:
    """Which replicas go first when there are too many: not yet serving before serving, newest first."""
    rank = {"pending": 0, "failed": 1, "starting": 2, "ready": 3}.get(replica.record.state, 4)
    return rank, -replica.record.started_ms


def _error_line(output: str) -> str:
    """The loader's one-line error (``error: ...``) from a replica's output, else its last line."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    return (errors[-1] if errors else lines[-1] if lines else "")[:500]
