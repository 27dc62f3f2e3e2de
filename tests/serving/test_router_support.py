"""Shared pieces of the router tests (no tests here): an in-memory `DeploymentStore`, constant models served by real
replicas on loopback ports, and the router's routes in a FastAPI app behind a real uvicorn."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from fastapi import FastAPI

from capstan.auth.policy import Principal
from capstan.server.deployments_serving import deployments_router
from capstan.server.security import PRINCIPAL_KEY
from capstan.serving.app import serving_app
from capstan.serving.model import SklearnServedModel
from capstan.serving.ports import DeploymentRecord, LoadReport, ReplicaRecord, ReplicaState, Role
from capstan.serving.router import DeploymentRouter
from capstan.serving.spec import parse_spec
from helpers.asgi_server import serve_app

PROJECT = "default"
NAME = "fraud"


class FakeStore:
    """`DeploymentStore` in memory (thread-safe enough for the tests: one lock around every call)."""

    def __init__(self) -> None:
        self.records: dict[tuple[str, str], DeploymentRecord] = {}
        self.replica_rows: dict[str, ReplicaRecord] = {}
        self.reports: list[LoadReport] = []
        self.lock = threading.Lock()

    def put(self, record: DeploymentRecord, *, expected_revision: int | None = None) -> DeploymentRecord:
        with self.lock:
            self.records[(record.project, record.name)] = record
            return record

    def get(self, project: str, name: str) -> DeploymentRecord | None:
        with self.lock:
            return self.records.get((project, name))

    def list(self, project: str | None = None) -> tuple[DeploymentRecord, ...]:
        with self.lock:
            return tuple(r for r in self.records.values() if project in (None, r.project))

    def delete(self, project: str, name: str) -> bool:
        with self.lock:
            return self.records.pop((project, name), None) is not None

    def put_replica(self, replica: ReplicaRecord) -> None:
        with self.lock:
            self.replica_rows[replica.id] = replica

    def delete_replica(self, replica_id: str) -> None:
        with self.lock:
            self.replica_rows.pop(replica_id, None)

    def replicas(self, project: str | None = None, deployment: str | None = None) -> tuple[ReplicaRecord, ...]:
        with self.lock:
            return tuple(r for r in self.replica_rows.values()
                         if project in (None, r.project) and deployment in (None, r.deployment))

    def report_load(self, report: LoadReport) -> None:
        with self.lock:
            self.reports.append(report)

    def load(self, project: str, deployment: str, *, since_ms: int) -> tuple[LoadReport, ...]:
        with self.lock:
            return tuple(r for r in self.reports if (r.project, r.deployment) == (project, deployment)
                         and r.time_ms >= since_ms)


class Constant:
    """An "estimator" that predicts ``value`` for every row."""

    def __init__(self, value: float) -> None:
        self.value = value

    def predict(self, x: npt.NDArray[Any]) -> npt.NDArray[Any]:
        return np.full(len(x), self.value)


def deployment(*, canary: int | None = None, shadow: int | None = None, canary_traffic: float = 20,
               shadow_traffic: float = 100, primary: int = 6, revision: int = 1) -> DeploymentRecord:
    """A deployment record: primary ``models:/fraud/<primary>``, optionally a canary and a shadow version."""
    doc: dict[str, Any] = {"name": NAME, "model": f"models:/fraud/{primary}"}
    versions: list[tuple[Role, str]] = [("primary", f"models:/fraud/{primary}")]
    if canary is not None:
        doc["canary"] = {"model": f"models:/fraud/{canary}", "traffic": canary_traffic}
        versions.append(("canary", f"models:/fraud/{canary}"))
    if shadow is not None:
        doc["shadow"] = {"model": f"models:/fraud/{shadow}", "traffic": shadow_traffic}
        versions.append(("shadow", f"models:/fraud/{shadow}"))
    return DeploymentRecord(NAME, PROJECT, parse_spec(doc), revision, tuple(versions), 1, 1_000, 1_000)


@dataclass
class Replica:
    """A replica serving one version, with a readiness switch (a not-ready model answers 503, as draining)."""

    id: str
    version: int
    url: str
    model: SklearnServedModel
    stack: ExitStack = field(default_factory=ExitStack)

    def record(self, state: ReplicaState = "ready") -> ReplicaRecord:
        return ReplicaRecord(self.id, NAME, PROJECT, "primary", f"models:/fraud/{self.version}", state, self.url,
                             None, 0, 1_000, 1_000)

    def stop(self) -> None:
        self.stack.close()


@contextmanager
def replica(replica_id: str, version: int, value: float) -> Iterator[Replica]:
    """A real serving app on a loopback port answering for model ``fraud`` with constant predictions."""
    model = SklearnServedModel(NAME, str(version), Constant(value), 2)
    stack = ExitStack()
    url = stack.enter_context(serve_app(serving_app({NAME: model}, max_body_bytes=1 << 20, batching=None)))
    served = Replica(replica_id, version, url, model, stack)
    try:
        yield served
    finally:
        stack.close()


class _AsAdmin:
    """Stands in for the server's security middleware: every request is an admin's."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            scope.setdefault("state", {})[PRINCIPAL_KEY] = Principal("tester", is_admin=True)
        await self.app(scope, receive, send)


@contextmanager
def router_server(router: DeploymentRouter) -> Iterator[str]:
    """The ``/deployments`` routes over ``router`` in a FastAPI app on a loopback port; yields its URL."""
    app = FastAPI()
    app.include_router(deployments_router(lambda: router))
    app.add_middleware(_AsAdmin)
    with serve_app(app) as url:
        yield url


ROW = {"inputs": [{"name": "input-0", "shape": [1, 2], "datatype": "FP64", "data": [1.0, 2.0]}]}
INFER = f"/deployments/{NAME}/v2/models/{NAME}/infer"
