"""What users do to deployments: apply a spec, promote, roll back, scale, delete, and read a deployment's status.

`DeploymentManager` is shared by the HTTP API (`capstan.server.deployments_api`) and the CLI working on the local
stores. It only writes `DeploymentRecord`s (and events); the controller of the running ``capstan server``
(`capstan.serving.controller`) turns them into replicas. Model URIs are resolved once, when a revision is written:
an alias becomes the ``models:/NAME/VERSION`` it names now, so a moved alias never silently changes what is served.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from capstan.clock import Clock, system_clock
from capstan.errors import InvalidParameterValue, InvalidState, ResourceAlreadyExists, ResourceDoesNotExist
from capstan.events.ports import EventLog
from capstan.registry.ports import RegistryStore
from capstan.resources.admission import Admission
from capstan.serving.abtest import deployment_quality
from capstan.serving.controller import EVENT_KIND, object_id, resource_request
from capstan.serving.drift_monitor import VersionDrift
from capstan.serving.outcomes import OutcomeStore
from capstan.serving.ports import DeploymentRecord, DeploymentStore, ReplicaRecord, Role, routing_table
from capstan.serving.spec import DeploymentSpec, ModelUri
from capstan.tracking.ports import TrackingStore

Resolver = Callable[[ModelUri], str]
"""Turns a spec's model URI into the concrete URI a replica serves (``models:/NAME/VERSION`` or ``runs:/...``);
raises `ResourceDoesNotExist` when the model, version, alias or run is missing."""
RECENT_EVENTS = 20
LanguageModelCheck = Callable[[str], bool]
"""Whether a resolved model URI (``models:/NAME/VERSION`` or ``runs:/...``) is a language model (its MLmodel has the
``transformers`` flavor): such a model's replicas answer OpenAI's API and take the spec's ``llm`` options, and
refuse the classic models' batching, payload logging and drift."""
DriftFetcher = Callable[[str], Sequence[Mapping[str, Any]]]
"""Reads ``GET {replica_url}/drift`` (`capstan.serving.replicas.fetch_drift`); `OSError` when it does not answer."""


def registry_resolver(registry: RegistryStore, tracking: TrackingStore) -> Resolver:
    """A `Resolver` over the registry (aliases and versions) and the tracking store (runs)."""

    def resolve(uri: ModelUri) -> str:
        if uri.kind == "alias":
            assert uri.name is not None and uri.alias is not None
            version = registry.get_version_by_alias(uri.name, uri.alias)
            return f"models:/{version.name}/{version.version}"
        if uri.kind == "version":
            assert uri.name is not None and uri.version is not None
            found = registry.get_model_version(uri.name, uri.version)
            return f"models:/{found.name}/{found.version}"
        assert uri.run_id is not None
        tracking.get_run(uri.run_id)
        return uri.uri

    return resolve


def spec_uris(spec: DeploymentSpec) -> list[tuple[Role, ModelUri]]:
    """Every model URI of ``spec`` with the role it serves."""
    out: list[tuple[Role, ModelUri]] = [("primary", spec.model)]
    if spec.canary is not None:
        out.append(("canary", spec.canary.model))
    if spec.shadow is not None:
        out.append(("shadow", spec.shadow.model))
    return out


def initial_replicas(spec: DeploymentSpec, current: int | None = None) -> int:
    """The primary's replica count when a revision is written: the fixed count, or the current count clamped to the
    autoscaling bounds (a new autoscaled deployment starts at ``min_replicas``: one that may scale to zero starts at
    zero and wakes on its first request)."""
    if spec.autoscaling is None:
        return spec.replicas or 0
    bounds = spec.autoscaling
    start = bounds.min_replicas if current is None else current
    return max(bounds.min_replicas, min(bounds.max_replicas, start))


def deployment_state(record: DeploymentRecord, replicas: list[ReplicaRecord]) -> str:
    """``ready`` (the primary has a ready replica), ``scaled-to-zero``, ``failed`` (its replicas keep failing),
    ``pending`` (waiting for admission) or ``starting``."""
    primary = record.version_of("primary")
    mine = [r for r in replicas if r.model_version == primary and r.state != "draining"]
    if any(r.state == "ready" for r in mine):
        return "ready"
    if record.desired_replicas == 0 and not mine:
        return "scaled-to-zero"
    if mine and all(r.state == "failed" for r in mine):
        return "failed"
    if mine and all(r.state == "pending" for r in mine):
        return "pending"
    return "starting"


class DeploymentManager:
    """Applies users' changes to deployments (checked, resolved, revisioned) and reads their status."""

    def __init__(self, store: DeploymentStore, *, resolve: Resolver, admission: Callable[[], Admission],
                 events: EventLog, outcomes: OutcomeStore, clock: Clock = system_clock,
                 language_model: LanguageModelCheck | None = None) -> None:
        self._store = store
        self._language_model = language_model
        self._outcomes = outcomes
        self._resolve = resolve
        self._admission = admission
        self._events = events
        self._clock = clock

    def get(self, project: str, name: str) -> DeploymentRecord:
        """The deployment, or `ResourceDoesNotExist`."""
        record = self._store.get(project, name)
        if record is None:
            raise ResourceDoesNotExist(f"deployment {name!r} does not exist in project {project!r}")
        return record

    def list(self, project: str) -> tuple[DeploymentRecord, ...]:
        """The project's deployments by name."""
        return self._store.list(project)

    def apply(self, spec: DeploymentSpec, project: str, *, create_only: bool = False) -> tuple[DeploymentRecord, bool]:
        """Create the deployment or write a new revision of it; returns it and whether it was created.

        The spec's resources are checked against what the admission could ever give (`InvalidParameterValue` naming
        ``spec.resources`` otherwise) and its model URIs resolved (`ResourceDoesNotExist` for a missing one). Payload
        logging needs the ``parquet`` extra here, where the replicas run (refused now rather than by every replica).
        With a `LanguageModelCheck`, options a replica would refuse for its kind of model are refused here, naming
        the field: ``llm`` for a classic model; batching, payload logging and drift for a language model."""
        _check_payload_logging(spec)
        self._check_fits(spec, project)
        versions = self._versions(spec)
        self._check_kind(spec, versions)
        now = self._clock()
        old = self._store.get(project, spec.name)
        if old is None:
            record = DeploymentRecord(spec.name, project, spec, 1, versions, initial_replicas(spec), now, now)
            self._store.put(record, expected_revision=0)
            self._event(record, "Created", f"revision 1: {_describe(record)}")
            return record, True
        if create_only:
            raise ResourceAlreadyExists(f"deployment {spec.name!r} already exists in project {project!r}; use "
                                        "apply to change it")
        if old.spec == spec and old.versions == versions:
            return old, False
        current = old.desired_replicas if old.spec.autoscaling is not None else None
        record = dataclasses.replace(old, spec=spec, versions=versions, revision=old.revision + 1,
                                     desired_replicas=initial_replicas(spec, current), updated_ms=now,
                                     previous=old.spec, previous_versions=old.versions)
        self._store.put(record, expected_revision=old.revision)
        self._event(record, "Applied", f"revision {record.revision}: {_describe(record)}")
        return record, False

    def promote(self, project: str, name: str) -> DeploymentRecord:
        """The canary becomes the primary (its replicas take the primary's traffic at once); the canary is cleared."""
        old = self.get(project, name)
        canary = old.spec.canary
        canary_version = old.version_of("canary")
        if canary is None or canary_version is None:
            raise InvalidState(f"deployment {name!r} has no canary to promote")
        spec = dataclasses.replace(old.spec, model=canary.model, canary=None)
        versions = tuple((role, uri) for role, uri in old.versions if role not in ("primary", "canary"))
        record = self._write(old, spec, (("primary", canary_version), *versions))
        self._event(record, "Promoted", f"revision {record.revision}: {canary_version} is now the primary "
                                        f"(was {old.version_of('primary')})")
        return record

    def rollback(self, project: str, name: str) -> DeploymentRecord:
        """Drop the canary if there is one, else return to the previous revision's primary (its spec and versions,
        without the canary it may have had: after a promote, rolling back serves the old primary alone)."""
        old = self.get(project, name)
        if old.spec.canary is not None:
            spec = dataclasses.replace(old.spec, canary=None)
            record = self._write(old, spec, tuple(v for v in old.versions if v[0] != "canary"))
            self._event(record, "RolledBack", f"revision {record.revision}: canary {old.version_of('canary')} "
                                              "dropped")
            return record
        if old.previous is None:
            raise InvalidState(f"deployment {name!r} has no canary and no previous revision to roll back to")
        versions = old.previous_versions or self._versions(old.previous)
        spec = dataclasses.replace(old.previous, canary=None)
        record = self._write(old, spec, tuple(v for v in versions if v[0] != "canary"))
        self._event(record, "RolledBack", f"revision {record.revision}: back to {_describe(record)}")
        return record

    def scale(self, project: str, name: str, replicas: int) -> DeploymentRecord:
        """Run exactly ``replicas`` (at least 1) primary replicas; an autoscaled deployment becomes fixed (a rollback
        returns to its autoscaling)."""
        if replicas < 1:
            raise InvalidParameterValue(f"replicas: must be at least 1, got {replicas} (to stop serving, delete the "
                                        "deployment; to scale to zero on idle, apply autoscaling with "
                                        "min_replicas: 0)")
        old = self.get(project, name)
        spec = dataclasses.replace(old.spec, replicas=replicas, autoscaling=None)
        if spec == old.spec:
            return old
        record = self._write(old, spec, old.versions)
        self._event(record, "Scaled", f"revision {record.revision}: {replicas} replica(s)")
        return record

    def delete(self, project: str, name: str) -> None:
        """Remove the deployment; the controller stops its replicas."""
        record = self.get(project, name)
        self._store.delete(project, name)
        self._outcomes.delete_deployment(project, name)  # a new deployment of that name starts its A/B afresh
        self._event(record, "Deleted", f"deployment {name!r} deleted")

    def status(self, project: str, name: str) -> dict[str, Any]:
        """The deployment, its state, traffic, replicas, last cold start, recent events and per-version quality
        (`capstan.serving.abtest`), as JSON."""
        record = self.get(project, name)
        replicas = list(self._store.replicas(project, name))
        table = routing_table(record, replicas)
        events = self._events.list(EVENT_KIND, object_id(project, name), limit=100_000)
        cold = [e for e in events if e.reason == "ColdStart"]
        traffic = [{"role": r.role, "model_version": r.model_version, "version": r.version, "weight": r.weight,
                    "ready_replicas": len(r.urls)} for r in (*table.routes, *(() if table.shadow is None
                                                                              else (table.shadow,)))]
        roles = {uri: role for role, uri in record.versions}
        return {
            "deployment": record_json(record),
            "state": deployment_state(record, replicas),
            "traffic": traffic,
            "replicas": [{**dataclasses.asdict(r), "serving_as": roles.get(r.model_version)} for r in replicas],
            "last_cold_start_s": cold[-1].data.get("seconds") if cold else None,
            "events": [{"time": e.time, "type": e.type, "reason": e.reason, "message": e.message}
                       for e in events[-RECENT_EVENTS:]],
            "quality": dataclasses.asdict(deployment_quality(self._outcomes, project, name)),
        }

    def drift(self, project: str, name: str, fetch: DriftFetcher | None = None) -> dict[str, Any]:
        """The live drift of the deployment's versions, gathered from its ready replicas (`merge_drift`), and each
        replica asked, with whether it answered, as JSON."""
        from capstan.serving.replicas import fetch_drift

        self.get(project, name)
        fetch = fetch or fetch_drift
        reports: list[VersionDrift] = []
        asked: list[dict[str, Any]] = []
        for replica in self._store.replicas(project, name):
            if replica.state != "ready" or not replica.url:
                continue
            entry: dict[str, Any] = {"id": replica.id, "url": replica.url, "model_version": replica.model_version,
                                     "available": True, "error": None}
            try:
                reports += [VersionDrift.from_dict(r) for r in fetch(replica.url)]
            except (OSError, InvalidParameterValue) as exc:
                entry.update(available=False, error=str(exc) or type(exc).__name__)
            asked.append(entry)
        return {"deployment": name, "project": project, "replicas": asked,
                "versions": [r.to_dict() for r in merge_drift(reports)]}

    def _write(self, old: DeploymentRecord, spec: DeploymentSpec,
               versions: tuple[tuple[Role, str], ...]) -> DeploymentRecord:
        current = old.desired_replicas if old.spec.autoscaling is not None else None
        record = dataclasses.replace(old, spec=spec, versions=versions, revision=old.revision + 1,
                                     desired_replicas=initial_replicas(spec, current), updated_ms=self._clock(),
                                     previous=old.spec, previous_versions=old.versions)
        return self._store.put(record, expected_revision=old.revision)

    def _versions(self, spec: DeploymentSpec) -> tuple[tuple[Role, str], ...]:
        resolved: list[tuple[Role, str]] = []
        for role, uri in spec_uris(spec):
            try:
                resolved.append((role, self._resolve(uri)))
            except ResourceDoesNotExist as exc:
                path = "spec.model" if role == "primary" else f"spec.{role}.model"
                raise ResourceDoesNotExist(f"{path}: {uri.uri}: {exc.message}") from None
        return tuple(resolved)

    def _check_kind(self, spec: DeploymentSpec, versions: tuple[tuple[Role, str], ...]) -> None:
        if self._language_model is None or (spec.llm is None and not spec.classic_options()):
            return
        for role, uri in versions:
            language = self._language_model(uri)
            where = "" if role == "primary" else f" (the {role})"
            if language and spec.classic_options():
                raise InvalidParameterValue(f"{spec.classic_options()[0]}; {uri}{where} is a language model")
            if not language and spec.llm is not None:
                raise InvalidParameterValue(f"spec.llm: applies to language models (the transformers flavor); "
                                            f"{uri}{where} is not one")

    def _check_fits(self, spec: DeploymentSpec, project: str) -> None:
        probe = DeploymentRecord(spec.name, project, spec, 0, (), 0, 0, 0)
        request = resource_request(probe, "check")
        if request.empty:
            return
        why = self._admission().check(request)
        if why is not None:
            raise InvalidParameterValue(f"spec.resources: each replica {why}")

    def _event(self, record: DeploymentRecord, reason: str, message: str) -> None:
        self._events.append(EVENT_KIND, object_id(record.project, record.name), reason, message,
                            project=record.project, data={"revision": record.revision})


def merge_drift(reports: Iterable[VersionDrift]) -> list[VersionDrift]:
    """One report per model version from its replicas' reports: rows and windows summed, and the latest window's
    statistics (the replica that evaluated one last), by model and version."""
    merged: dict[tuple[str, str], VersionDrift] = {}
    for report in reports:
        key = (report.model, report.version)
        seen = merged.get(key)
        if seen is None:
            merged[key] = report
            continue
        latest = report if (report.updated_ms or -1) > (seen.updated_ms or -1) else seen
        merged[key] = dataclasses.replace(latest, rows_seen=seen.rows_seen + report.rows_seen,
                                          windows=seen.windows + report.windows)
    return [merged[key] for key in sorted(merged)]


def record_json(record: DeploymentRecord) -> dict[str, Any]:
    """A deployment record as JSON (the spec in its normalised document form)."""
    return {"name": record.name, "project": record.project, "revision": record.revision,
            "spec": record.spec.to_dict(), "versions": {role: uri for role, uri in record.versions},
            "desired_replicas": record.desired_replicas, "created_ms": record.created_ms,
            "updated_ms": record.updated_ms,
            "previous": None if record.previous is None else record.previous.to_dict()}


def _describe(record: DeploymentRecord) -> str:
    parts = [f"{role} {uri}" for role, uri in record.versions]
    spec = record.spec
    if spec.autoscaling is not None:
        parts.append(f"{spec.autoscaling.min_replicas}-{spec.autoscaling.max_replicas} replicas")
    else:
        parts.append(f"{spec.replicas} replica(s)")
    return ", ".join(parts)


def _check_payload_logging(spec: DeploymentSpec) -> None:
    """`InvalidParameterValue` naming the field when the spec logs payloads and pyarrow is missing."""
    if spec.payload_sample_rate <= 0:
        return
    from capstan.serving.payload_log import require_pyarrow

    try:
        require_pyarrow()
    except InvalidState as exc:
        raise InvalidParameterValue(f"spec.payload_logging.sample_rate: {exc.message}") from None
