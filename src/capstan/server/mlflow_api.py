"""MLflow-compatible REST API: what the unmodified ``mlflow`` client needs from a tracking server.

``routers`` is mounted by `capstan.server.app.create_app`. The endpoints are split by area:

- `capstan.server.mlflow_tracking`   experiments, runs, metrics (``/api/2.0/mlflow/...``)
- `capstan.server.mlflow_registry`   registered models, versions, aliases, tags
- `capstan.server.mlflow_models`     MLflow 3 logged models and ``/api/3.0/mlflow/server-info``
- `capstan.server.mlflow_artifacts`  proxied artifacts (``/api/2.0/mlflow-artifacts/...``)

Everything is served under ``/api/...`` and ``/ajax-api/...`` (the prefix MLflow's web UI uses). Errors are
MLflow's ``{"error_code", "message"}`` bodies, produced by the app's `CapstanError` handler (an unknown path
answers 404 ``ENDPOINT_NOT_FOUND``, which is how MLflow's client detects an optional API a server lacks).
See docs/mlflow.md.
"""

from __future__ import annotations

from fastapi import APIRouter

from capstan.server import mlflow_artifacts, mlflow_models, mlflow_registry, mlflow_tracking
from capstan.server.mlflow_routing import Dispatcher, build_router

API_PREFIXES = ("/api/2.0/mlflow", "/ajax-api/2.0/mlflow")
V3_PREFIXES = ("/api/3.0/mlflow", "/ajax-api/3.0/mlflow")
ARTIFACT_PREFIXES = ("/api/2.0/mlflow-artifacts", "/ajax-api/2.0/mlflow-artifacts")


def _build_routers() -> list[APIRouter]:
    api_routes = mlflow_tracking.ROUTES + mlflow_registry.ROUTES + mlflow_models.ROUTES + mlflow_artifacts.ROUTES
    dispatchers = [Dispatcher(prefix, api_routes) for prefix in API_PREFIXES]
    dispatchers += [Dispatcher(prefix, mlflow_models.V3_ROUTES) for prefix in V3_PREFIXES]
    dispatchers += [Dispatcher(prefix, mlflow_artifacts.ARTIFACT_ROUTES) for prefix in ARTIFACT_PREFIXES]
    return [build_router(dispatchers)]


routers: list[APIRouter] = _build_routers()
"""Mount these to serve the MLflow REST API."""
