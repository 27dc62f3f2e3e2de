"""`HttpBackend`: the SDK talking to a Capstan server's ``/api/v1`` over HTTP (``httpx``, imported lazily).

Requests carry ``Authorization: Bearer <CAPSTAN_TOKEN>`` when a token is set and ``X-Capstan-Project``. Error bodies
``{"error_code", "message"}`` become the matching `CapstanError` subclass through `capstan.errors.error_from_body`.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from capstan.errors import CapstanError, InvalidParameterValue, RemoteError, StoreUnavailable, error_from_body
from capstan.pages import Page
from capstan.registry.records import ModelVersion, RegisteredModel
from capstan.sdk import backends_wire as wire
from capstan.sdk.backends import ArtifactInfo, ArtifactOwner
from capstan.settings import Settings
from capstan.tracking.records import Experiment, LoggedModel, Metric, Param, Run, RunInfo, RunTag

if TYPE_CHECKING:
    import httpx

CHUNK = 1024 * 1024


def _q(segment: str) -> str:
    return quote(segment, safe="")


def _owner_base(owner: ArtifactOwner) -> str:
    if owner.kind == "run":
        return f"/runs/{_q(owner.id)}/artifacts"
    if owner.kind == "logged_model":
        return f"/logged-models/{_q(owner.id)}/artifacts"
    name, version = owner.split_version()
    return f"/registered-models/{_q(name)}/versions/{version}/artifacts"


def _tags_json(tags: Sequence[RunTag]) -> list[dict[str, str]]:
    return [{"key": t.key, "value": t.value} for t in tags]


class HttpBackend:
    """`TrackingBackend` over a Capstan server's REST API (``settings.url`` + ``/api/v1``)."""

    def __init__(self, settings: Settings, *, timeout_s: float = 60.0) -> None:
        if not settings.url:
            raise InvalidParameterValue("CAPSTAN_URL: a server URL is required for the HTTP backend")
        self._settings = settings
        self._base = settings.url.rstrip("/") + "/api/v1"
        self._timeout_s = timeout_s
        self._client: httpx.Client | None = None
        self._lock = threading.Lock()

    @property
    def project(self) -> str:
        return self._settings.project

    @property
    def client(self) -> httpx.Client:
        """The shared connection pool (created on first use)."""
        if self._client is None:
            with self._lock:
                if self._client is None:
                    import httpx

                    headers = {"X-Capstan-Project": self._settings.project, "User-Agent": "capstan-sdk"}
                    if self._settings.token:
                        headers["Authorization"] = f"Bearer {self._settings.token}"
                    # Nagle off: a request's headers and body go out as separate writes, and with Nagle on the
                    # body waits for the server's delayed ACK (~40 ms per call).
                    transport = httpx.HTTPTransport(
                        socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)])
                    self._client = httpx.Client(base_url=self._base, headers=headers, transport=transport,
                                                timeout=httpx.Timeout(self._timeout_s, connect=10.0))
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    # -- plumbing -------------------------------------------------------------------------------------
    def _send(self, method: str, path: str, *, json: Any = None, params: Mapping[str, Any] | None = None,
              content: Any = None, headers: Mapping[str, str] | None = None) -> httpx.Response:
        import httpx

        try:
            response = self.client.request(method, path, json=json, params=params, content=content,
                                           headers=headers)
        except httpx.TransportError as exc:
            raise StoreUnavailable(f"cannot reach the Capstan server at {self._settings.url}: {exc}") from None
        if response.status_code >= 400:
            raise self._error(response)
        return response

    def _call(self, method: str, path: str, *, json: Any = None,
              params: Mapping[str, Any] | None = None) -> Any:
        response = self._send(method, path, json=json, params=params)
        if response.status_code == 204 or not response.content:
            return None
        return response.json()

    @staticmethod
    def _error(response: httpx.Response) -> CapstanError:
        try:
            body = response.json()
            code, message = str(body["error_code"]), str(body["message"])
        except Exception:  # noqa: BLE001  # any non-JSON or unexpected body becomes a generic remote error
            text = response.text.strip().splitlines()[0][:200] if response.text.strip() else ""
            return RemoteError(f"server answered HTTP {response.status_code} {text}".strip(),
                               http_status=response.status_code)
        return error_from_body(code, message, response.status_code)

    # -- experiments ----------------------------------------------------------------------------------
    def create_experiment(self, name: str, *, artifact_location: str | None = None,
                          tags: Mapping[str, str] | None = None) -> str:
        body = {"name": name, "artifact_location": artifact_location, "tags": dict(tags or {})}
        return str(self._call("POST", "/experiments", json=body)["experiment_id"])

    def get_experiment(self, experiment_id: str) -> Experiment:
        return wire.experiment_from_json(self._call("GET", f"/experiments/{_q(experiment_id)}"))

    def get_experiment_by_name(self, name: str) -> Experiment | None:
        data = self._call("GET", "/experiments", params={"name": name, "view_type": "ALL"})
        items = data["experiments"]
        return wire.experiment_from_json(items[0]) if items else None

    def search_experiments(self, *, view_type: str = "ACTIVE_ONLY", filter_string: str = "",
                           order_by: Sequence[str] = (), max_results: int = 1000,
                           page_token: str | None = None) -> Page[Experiment]:
        params: dict[str, Any] = {"view_type": view_type, "filter": filter_string, "order_by": list(order_by),
                                  "max_results": max_results}
        if page_token:
            params["page_token"] = page_token
        data = self._call("GET", "/experiments", params=params)
        return Page(tuple(wire.experiment_from_json(e) for e in data["experiments"]), data.get("next_page_token"))

    def rename_experiment(self, experiment_id: str, new_name: str) -> None:
        self._call("PATCH", f"/experiments/{_q(experiment_id)}", json={"name": new_name})

    def delete_experiment(self, experiment_id: str) -> None:
        self._call("DELETE", f"/experiments/{_q(experiment_id)}")

    def restore_experiment(self, experiment_id: str) -> None:
        self._call("POST", f"/experiments/{_q(experiment_id)}/restore")

    def set_experiment_tag(self, experiment_id: str, key: str, value: str) -> None:
        self._call("PUT", f"/experiments/{_q(experiment_id)}/tags/{_q(key)}", json={"value": value})

    def delete_experiment_tag(self, experiment_id: str, key: str) -> None:
        self._call("DELETE", f"/experiments/{_q(experiment_id)}/tags/{_q(key)}")

    # -- runs -----------------------------------------------------------------------------------------
    def create_run(self, experiment_id: str, *, run_name: str | None = None, tags: Sequence[RunTag] = (),
                   start_time: int | None = None, user_id: str = "", source: str = "",
                   git_commit: str = "") -> RunInfo:
        body = {"experiment_id": experiment_id, "run_name": run_name, "tags": _tags_json(tags),
                "start_time": start_time, "user_id": user_id, "source": source, "git_commit": git_commit}
        return wire.run_info_from_json(self._call("POST", "/runs", json=body)["info"])

    def get_run(self, run_id: str) -> Run:
        return wire.run_from_json(self._call("GET", f"/runs/{_q(run_id)}"))

    def update_run(self, run_id: str, *, status: str | None = None, end_time: int | None = None,
                   run_name: str | None = None) -> RunInfo:
        body = {"status": status, "end_time": end_time, "run_name": run_name}
        return wire.run_info_from_json(self._call("PATCH", f"/runs/{_q(run_id)}", json=body)["info"])

    def delete_run(self, run_id: str) -> None:
        self._call("DELETE", f"/runs/{_q(run_id)}")

    def restore_run(self, run_id: str) -> None:
        self._call("POST", f"/runs/{_q(run_id)}/restore")

    def search_runs(self, experiment_ids: Sequence[str], *, filter_string: str = "",
                    view_type: str = "ACTIVE_ONLY", max_results: int = 1000, order_by: Sequence[str] = (),
                    page_token: str | None = None) -> Page[Run]:
        body = {"experiment_ids": list(experiment_ids), "filter": filter_string, "view_type": view_type,
                "max_results": max_results, "order_by": list(order_by), "page_token": page_token}
        data = self._call("POST", "/runs/search", json=body)
        return Page(tuple(wire.run_from_json(r) for r in data["runs"]), data.get("next_page_token"))

    def log_batch(self, run_id: str, *, metrics: Sequence[Metric] = (), params: Sequence[Param] = (),
                  tags: Sequence[RunTag] = ()) -> None:
        body = {"metrics": [wire.metric_to_json(m) for m in metrics],
                "params": [{"key": p.key, "value": p.value} for p in params], "tags": _tags_json(tags)}
        self._call("POST", f"/runs/{_q(run_id)}/batch", json=body)

    def log_metrics_for_runs(self, batches: Mapping[str, Sequence[Metric]]) -> None:
        body = {"runs": {run_id: [wire.metric_to_json(m) for m in metrics] for run_id, metrics in batches.items()}}
        self._call("POST", "/metrics/batch", json=body)

    def delete_tag(self, run_id: str, key: str) -> None:
        self._call("DELETE", f"/runs/{_q(run_id)}/tags/{_q(key)}")

    def get_metric_history(self, run_id: str, key: str, *, max_results: int | None = None,
                           page_token: str | None = None) -> Page[Metric]:
        params: dict[str, Any] = {}
        if max_results is not None:
            params["max_results"] = max_results
        if page_token:
            params["page_token"] = page_token
        data = self._call("GET", f"/runs/{_q(run_id)}/metrics/{_q(key)}", params=params)
        return Page(tuple(wire.metric_from_json(m) for m in data["metrics"]), data.get("next_page_token"))

    def log_outputs(self, run_id: str, model_ids_and_steps: Sequence[tuple[str, int]]) -> None:
        body = {"models": [{"model_id": model_id, "step": step} for model_id, step in model_ids_and_steps]}
        self._call("POST", f"/runs/{_q(run_id)}/outputs", json=body)

    # -- logged models --------------------------------------------------------------------------------
    def create_logged_model(self, experiment_id: str, *, name: str | None = None,
                            source_run_id: str | None = None, model_type: str = "",
                            params: Mapping[str, str] | None = None,
                            tags: Mapping[str, str] | None = None) -> LoggedModel:
        body = {"experiment_id": experiment_id, "name": name, "source_run_id": source_run_id,
                "model_type": model_type, "params": dict(params or {}), "tags": dict(tags or {})}
        return wire.logged_model_from_json(self._call("POST", "/logged-models", json=body))

    def get_logged_model(self, model_id: str) -> LoggedModel:
        return wire.logged_model_from_json(self._call("GET", f"/logged-models/{_q(model_id)}"))

    def finalize_logged_model(self, model_id: str, status: str) -> LoggedModel:
        data = self._call("PATCH", f"/logged-models/{_q(model_id)}", json={"status": status})
        return wire.logged_model_from_json(data)

    def search_logged_models(self, experiment_ids: Sequence[str], *, filter_string: str = "",
                             max_results: int = 100, page_token: str | None = None) -> Page[LoggedModel]:
        body = {"experiment_ids": list(experiment_ids), "filter": filter_string, "max_results": max_results,
                "page_token": page_token}
        data = self._call("POST", "/logged-models/search", json=body)
        return Page(tuple(wire.logged_model_from_json(m) for m in data["models"]), data.get("next_page_token"))

    # -- artifacts ------------------------------------------------------------------------------------
    def upload_artifact(self, owner: ArtifactOwner, path: str, local_file: str | os.PathLike[str]) -> None:
        from capstan.artifacts.paths import normalize_path

        rel = normalize_path(path)
        size = os.path.getsize(local_file)

        def chunks() -> Iterator[bytes]:
            with open(local_file, "rb") as fh:
                while chunk := fh.read(CHUNK):
                    yield chunk

        self._send("PUT", f"{_owner_base(owner)}/{quote(rel, safe='/')}", content=chunks(),
                   headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)})

    def list_artifacts(self, owner: ArtifactOwner, path: str = "", *,
                       recursive: bool = False) -> list[ArtifactInfo]:
        data = self._call("GET", _owner_base(owner), params={"path": path, "recursive": recursive, "digests": True})
        return [wire.artifact_info_from_json(f) for f in data["files"]]

    def download_artifacts(self, owner: ArtifactOwner, path: str, dest_dir: str | os.PathLike[str]) -> Path:
        from capstan.artifacts.paths import normalize_path

        rel = normalize_path(path, allow_empty=True)
        dest = Path(dest_dir)
        files = [f for f in self.list_artifacts(owner, rel, recursive=True) if not f.is_dir]
        if not files:
            if not rel:
                return dest
            target = dest / rel.rsplit("/", 1)[-1]
            self._download_file(owner, rel, target)
            return target
        start = len(rel) + 1 if rel else 0
        for item in files:
            self._download_file(owner, item.path, dest / item.path[start:])
        return dest

    def _download_file(self, owner: ArtifactOwner, rel: str, target: Path) -> None:
        import httpx

        target.parent.mkdir(parents=True, exist_ok=True)
        url = f"{_owner_base(owner)}/{quote(rel, safe='/')}"
        try:
            with self.client.stream("GET", url) as response:
                if response.status_code >= 400:
                    response.read()
                    raise self._error(response)
                with open(target, "wb") as fh:
                    for chunk in response.iter_bytes(CHUNK):
                        fh.write(chunk)
        except httpx.TransportError as exc:
            raise StoreUnavailable(f"cannot reach the Capstan server at {self._settings.url}: {exc}") from None

    # -- registry -------------------------------------------------------------------------------------
    def create_registered_model(self, name: str, *, description: str = "",
                                tags: Mapping[str, str] | None = None) -> RegisteredModel:
        body = {"name": name, "description": description, "tags": dict(tags or {})}
        return wire.registered_model_from_json(self._call("POST", "/registered-models", json=body))

    def get_registered_model(self, name: str) -> RegisteredModel:
        return wire.registered_model_from_json(self._call("GET", f"/registered-models/{_q(name)}"))

    def search_registered_models(self, *, filter_string: str = "", max_results: int = 100,
                                 order_by: Sequence[str] = (),
                                 page_token: str | None = None) -> Page[RegisteredModel]:
        params: dict[str, Any] = {"filter": filter_string, "max_results": max_results, "order_by": list(order_by)}
        if page_token:
            params["page_token"] = page_token
        data = self._call("GET", "/registered-models", params=params)
        return Page(tuple(wire.registered_model_from_json(m) for m in data["registered_models"]),
                    data.get("next_page_token"))

    def rename_registered_model(self, name: str, new_name: str) -> RegisteredModel:
        data = self._call("PATCH", f"/registered-models/{_q(name)}", json={"name": new_name})
        return wire.registered_model_from_json(data)

    def update_registered_model(self, name: str, *, description: str) -> RegisteredModel:
        data = self._call("PATCH", f"/registered-models/{_q(name)}", json={"description": description})
        return wire.registered_model_from_json(data)

    def delete_registered_model(self, name: str) -> None:
        self._call("DELETE", f"/registered-models/{_q(name)}")

    def set_registered_model_tag(self, name: str, key: str, value: str) -> None:
        self._call("PUT", f"/registered-models/{_q(name)}/tags/{_q(key)}", json={"value": value})

    def delete_registered_model_tag(self, name: str, key: str) -> None:
        self._call("DELETE", f"/registered-models/{_q(name)}/tags/{_q(key)}")

    def create_model_version(self, name: str, *, source: str, run_id: str | None = None,
                             model_id: str | None = None, tags: Mapping[str, str] | None = None,
                             description: str = "") -> ModelVersion:
        body = {"source": source, "run_id": run_id, "model_id": model_id, "tags": dict(tags or {}),
                "description": description}
        return wire.model_version_from_json(
            self._call("POST", f"/registered-models/{_q(name)}/versions", json=body))

    def get_model_version(self, name: str, version: int) -> ModelVersion:
        return wire.model_version_from_json(
            self._call("GET", f"/registered-models/{_q(name)}/versions/{int(version)}"))

    def search_model_versions(self, *, filter_string: str = "", max_results: int = 10000,
                              order_by: Sequence[str] = (),
                              page_token: str | None = None) -> Page[ModelVersion]:
        params: dict[str, Any] = {"filter": filter_string, "max_results": max_results, "order_by": list(order_by)}
        if page_token:
            params["page_token"] = page_token
        data = self._call("GET", "/model-versions", params=params)
        return Page(tuple(wire.model_version_from_json(v) for v in data["model_versions"]),
                    data.get("next_page_token"))

    def update_model_version(self, name: str, version: int, *, description: str) -> ModelVersion:
        data = self._call("PATCH", f"/registered-models/{_q(name)}/versions/{int(version)}",
                          json={"description": description})
        return wire.model_version_from_json(data)

    def delete_model_version(self, name: str, version: int) -> None:
        self._call("DELETE", f"/registered-models/{_q(name)}/versions/{int(version)}")

    def set_model_version_tag(self, name: str, version: int, key: str, value: str) -> None:
        self._call("PUT", f"/registered-models/{_q(name)}/versions/{int(version)}/tags/{_q(key)}",
                   json={"value": value})

    def delete_model_version_tag(self, name: str, version: int, key: str) -> None:
        self._call("DELETE", f"/registered-models/{_q(name)}/versions/{int(version)}/tags/{_q(key)}")

    def set_alias(self, name: str, alias: str, version: int) -> None:
        self._call("PUT", f"/registered-models/{_q(name)}/aliases/{_q(alias)}", json={"version": int(version)})

    def delete_alias(self, name: str, alias: str) -> None:
        self._call("DELETE", f"/registered-models/{_q(name)}/aliases/{_q(alias)}")

    def get_version_by_alias(self, name: str, alias: str) -> ModelVersion:
        return wire.model_version_from_json(
            self._call("GET", f"/registered-models/{_q(name)}/aliases/{_q(alias)}"))
