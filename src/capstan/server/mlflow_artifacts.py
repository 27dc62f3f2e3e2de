"""MLflow's proxied artifact endpoints (``/api/2.0/mlflow-artifacts/artifacts/...``) and ``artifacts/list``.

A proxied artifact URI ``mlflow-artifacts:/<path>`` maps 1:1 to the artifact-store path ``<path>``; its first
segment is always the experiment id (run files live under ``<experiment>/<run>/artifacts/``, logged-model files
under ``<experiment>/models/<model>/artifacts/``), so every request is authorised against that experiment's
project. Uploads and downloads stream in chunks and are never held whole in memory.
"""

from __future__ import annotations

import mimetypes
import re
from collections.abc import Iterator, Mapping
from typing import IO, TYPE_CHECKING, Any

from fastapi import Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response, StreamingResponse

from capstan.artifacts.paths import experiment_segment, join, normalize_path
from capstan.errors import ArtifactTooLarge, InvalidParameterValue
from capstan.server.api_v1_artifacts import SAFE_DOWNLOAD_HEADERS
from capstan.server.mlflow_common import (
    Call,
    Fields,
    NotImplementedByServer,
    json_response,
    proxied_path,
)
from capstan.server.mlflow_routing import Route

if TYPE_CHECKING:
    from capstan.auth.policy import Permission

UPLOAD_CHUNK = 1024 * 1024
DOWNLOAD_CHUNK = 1024 * 1024
# The exact message MLflow's client looks for to fall back from multipart to a single streamed PUT.
MULTIPART_UNSUPPORTED = "Multipart upload is not supported for the current artifact repository"


def _artifact_path(raw: str, *, allow_empty: bool = False) -> str:
    return normalize_path(raw, field_name="path", allow_empty=allow_empty)


def authorize_path(call: Call, path: str, permission: Permission) -> str:
    """Check ``permission`` on the project of the experiment that owns ``path``; returns the project.

    The first segment must be the experiment id as the server writes it (``10``, never ``010``), so the
    experiment that is authorised is the one whose folder is read or written."""
    return call.authorize_experiment(experiment_segment(path), permission)


_OWNER_ROOT = re.compile(r"^\d+/(?:[0-9a-f]{32}|models/m-[0-9a-f]{32})/artifacts$")


def _upload_path(raw: str) -> str:
    """The store path of an upload: a file below an owner's folder, never a folder itself."""
    if raw.endswith("/") or raw.endswith("/."):
        raise InvalidParameterValue(
            f"Invalid value for parameter 'path': {raw!r} names a folder; upload each file to its own path")
    path = _artifact_path(raw)
    if _OWNER_ROOT.match(path):
        raise InvalidParameterValue(
            f"Invalid value for parameter 'path': {raw!r} is the artifact folder of a run or logged model; "
            "upload files below it")
    return path


def list_files(call: Call, root: str, sub: str, *, basenames: bool = False) -> list[dict[str, Any]]:
    """FileInfo messages for the entries directly below ``root/sub``.

    Paths are relative to ``root`` (``sub/name``), or bare names when ``basenames`` (what the proxied
    ``mlflow-artifacts`` listing returns). A file path lists as empty, as in MLflow.
    """
    sub = _artifact_path(sub, allow_empty=True)
    prefix = join(root, sub)
    files = []
    for item in call.artifacts.list(prefix):
        name = item.path.rsplit("/", 1)[-1]
        entry: dict[str, Any] = {"path": name if basenames or not sub else f"{sub}/{name}",
                                 "is_dir": item.is_dir}
        if not item.is_dir and item.size is not None:
            entry["file_size"] = item.size
        files.append(entry)
    return files


# -- JSON endpoints -----------------------------------------------------------------------------------------
def list_artifacts(call: Call) -> Mapping[str, Any]:
    """GET mlflow-artifacts/artifacts?path=...: the entries directly below a proxied path (bare names)."""
    path = _artifact_path(call.fields.string("path"), allow_empty=True)
    authorize_path(call, path, "read")
    return {"files": list_files(call, path, "", basenames=True)}


def delete_artifact(call: Call) -> Mapping[str, Any]:
    """DELETE mlflow-artifacts/artifacts/{path}: forget a file or a whole folder."""
    path = _artifact_path(call.path.get("artifact_path", ""))
    authorize_path(call, path, "write")
    call.artifacts.delete_prefix(path)
    return {}


def multipart_create(call: Call) -> Mapping[str, Any]:
    """POST mlflow-artifacts/mpu/create/{path}: declined, so the client streams one PUT instead."""
    raise NotImplementedByServer(MULTIPART_UNSUPPORTED)


def list_run_artifacts(call: Call) -> Mapping[str, Any]:
    """GET /api/2.0/mlflow/artifacts/list?run_id=...&path=...: a run's files (paths relative to its root)."""
    fields = call.fields
    run_id = fields.string("run_id", "run_uuid", required=True)
    run = call.tracking.get_run(run_id)
    call.authorize_experiment(run.info.experiment_id, "read")
    root = proxied_path(run.info.artifact_uri)
    if root is None:
        raise InvalidParameterValue(f"run '{run_id}' keeps its artifacts outside this server "
                                    f"({run.info.artifact_uri}); list them with the storage client")
    authorize_path(call, root, "read")  # the folder's own experiment, should an older location point elsewhere
    return {"root_uri": run.info.artifact_uri, "files": list_files(call, root, fields.string("path"))}


# -- streaming endpoints ------------------------------------------------------------------------------------
async def download_artifact(request: Request, params: Mapping[str, str]) -> Response:
    """GET mlflow-artifacts/artifacts/{path}: stream a file."""
    path = _artifact_path(params.get("artifact_path", ""))
    call = Call(request, Fields({}), params)

    def open_checked() -> IO[bytes]:
        authorize_path(call, path, "read")
        return call.artifacts.open(path)

    # Opened before the response starts, so a missing file is a 404 and a concurrent overwrite cannot mix two
    # versions into one download.
    handle = await run_in_threadpool(open_checked)

    def chunks() -> Iterator[bytes]:
        try:
            while chunk := handle.read(DOWNLOAD_CHUNK):
                yield chunk
        finally:
            handle.close()

    media_type = mimetypes.guess_type(path)[0] or "application/octet-stream"
    filename = path.rsplit("/", 1)[-1].replace('"', "")
    return StreamingResponse(chunks(), media_type=media_type,
                             headers={"Content-Disposition": f'attachment; filename="{filename}"',
                                      **SAFE_DOWNLOAD_HEADERS})


async def upload_artifact(request: Request, params: Mapping[str, str]) -> Response:
    """PUT mlflow-artifacts/artifacts/{path}: stream the body into the artifact store (413 past the limit)."""
    path = _upload_path(params.get("artifact_path", ""))
    call = Call(request, Fields({}), params)
    await run_in_threadpool(authorize_path, call, path, "write")
    store = call.artifacts
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > store.max_bytes:
        raise ArtifactTooLarge(f"artifact exceeds the size limit of {store.max_bytes} bytes "
                               "(CAPSTAN_ARTIFACT_MAX_BYTES)")
    writer = await run_in_threadpool(store.writer)
    try:
        buffer = bytearray()
        async for chunk in request.stream():
            buffer += chunk
            if len(buffer) >= UPLOAD_CHUNK:
                await run_in_threadpool(writer.write, bytes(buffer))
                buffer.clear()
        if buffer:
            await run_in_threadpool(writer.write, bytes(buffer))
        await run_in_threadpool(writer.commit, path)
    except BaseException:
        await run_in_threadpool(writer.abort)
        raise
    return json_response({})


ARTIFACT_ROUTES = (
    Route("GET", "/artifacts", list_artifacts),
    Route("GET", "/artifacts/{artifact_path:path}", raw=download_artifact),
    Route("PUT", "/artifacts/{artifact_path:path}", raw=upload_artifact),
    Route("DELETE", "/artifacts/{artifact_path:path}", delete_artifact),
    Route("POST", "/mpu/create/{artifact_path:path}", multipart_create),
)
"""Served below ``/api/2.0/mlflow-artifacts`` (and ``/ajax-api/...``)."""

ROUTES = (Route("GET", "/artifacts/list", list_run_artifacts),)
"""Served below ``/api/2.0/mlflow``."""
