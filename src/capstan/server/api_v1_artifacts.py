"""``/api/v1`` artifact routes: upload, download and list the files of runs, logged models and model versions.

Paths are relative to the owner's artifact root and normalised (``..`` and absolute paths are rejected).
Uploads (``PUT`` with the raw bytes as the body) stream into `ArtifactStore.writer`; downloads stream from
`ArtifactStore.iter_bytes`. Neither holds a file whole in memory. Model-version files are read-only.
"""

from __future__ import annotations

import mimetypes
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response, StreamingResponse

from capstan.artifacts.paths import join, normalize_path
from capstan.auth.policy import Permission
from capstan.errors import ArtifactTooLarge, InvalidParameterValue
from capstan.sdk.backends import ArtifactOwner
from capstan.sdk.backends_local import resolve_artifact_root
from capstan.server.api_v1_common import (
    authorize_logged_model,
    authorize_registered_model,
    authorize_run,
    render,
    services,
)
from capstan.server.api_v1_schemas import ArtifactList, VersionPath
from capstan.server.model_sources import authorize_source, authorize_store_path

router = APIRouter(tags=["artifacts"])

WRITE_CHUNK = 1024 * 1024
_Digests = Annotated[bool, Query(description="Add each file's recorded sha256 as `digest`.")]
_BINARY_BODY: dict[str, Any] = {"requestBody": {
    "required": True,
    "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}}
_BINARY_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {"content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
          "description": "the file's bytes"}}


def _authorize(request: Request, owner: ArtifactOwner, write: bool) -> None:
    permission: Permission = "write" if write else "read"
    if owner.kind == "run":
        authorize_run(request, owner.id, permission)
    elif owner.kind == "logged_model":
        authorize_logged_model(request, owner.id, permission)
    else:
        authorize_registered_model(request, owner.split_version()[0], permission)


def _root(request: Request, owner: ArtifactOwner, *, write: bool = False) -> str:
    """The owner's store prefix, after checking the caller's rights on the owner *and* on the experiment whose
    folder that prefix is in (a model version's files may belong to another project, and an older experiment's
    location may point elsewhere)."""
    _authorize(request, owner, write)
    if owner.kind == "model_version":
        name, version = owner.split_version()
        authorize_source(request, services(request).registry.get_download_uri(name, version))
    root = resolve_artifact_root(services(request), owner, for_write=write)
    authorize_store_path(request, root, "write" if write else "read")
    return root


def _list(request: Request, owner: ArtifactOwner, path: str, recursive: bool, digests: bool) -> Response:
    root = _root(request, owner)
    sub = normalize_path(path, allow_empty=True)
    start = len(root) + 1
    files: list[dict[str, Any]] = []
    for item in services(request).artifacts.list(join(root, sub), recursive=recursive):
        row: dict[str, Any] = {"path": item.path[start:], "is_dir": item.is_dir, "size": item.size}
        if digests:  # asked for (the model loader verifies downloads against them), so other listings stay as they were
            row["digest"] = item.digest
        files.append(row)
    return render({"files": files})


SAFE_DOWNLOAD_HEADERS = {"Content-Security-Policy": "sandbox", "X-Content-Type-Options": "nosniff"}
"""Sent with every artifact's bytes: an uploaded HTML or SVG file opened in a browser runs in a sandbox (no script,
no same-origin access to this server), and the browser never guesses a more dangerous type than the one sent."""


async def _download(request: Request, owner: ArtifactOwner, path: str) -> Response:
    def locate() -> tuple[str, int]:
        target = join(_root(request, owner), normalize_path(path))
        return target, services(request).artifacts.stat(target).size

    target, size = await run_in_threadpool(locate)
    media_type = mimetypes.guess_type(target)[0] or "application/octet-stream"
    return StreamingResponse(services(request).artifacts.iter_bytes(target), media_type=media_type,
                             headers={"Content-Length": str(size), **SAFE_DOWNLOAD_HEADERS})


async def _upload(request: Request, owner: ArtifactOwner, path: str) -> Response:
    store = services(request).artifacts
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > store.max_bytes:
        raise ArtifactTooLarge(f"artifact exceeds the size limit of {store.max_bytes} bytes "
                               "(CAPSTAN_ARTIFACT_MAX_BYTES)")

    def prepare() -> str:
        if path.endswith("/") or path.endswith("/."):
            raise InvalidParameterValue(f"path: {path!r} names a folder; upload each file to its own path")
        rel = normalize_path(path)
        return join(_root(request, owner, write=True), rel)

    target = await run_in_threadpool(prepare)
    writer = await run_in_threadpool(store.writer)
    pending = bytearray()
    try:
        async for chunk in request.stream():
            pending += chunk
            if len(pending) >= WRITE_CHUNK:
                data, pending = bytes(pending), bytearray()
                await run_in_threadpool(writer.write, data)
        if pending:
            await run_in_threadpool(writer.write, bytes(pending))
        await run_in_threadpool(writer.commit, target)
    except ArtifactTooLarge:
        raise  # the writer already dropped the partial upload
    except BaseException:
        await run_in_threadpool(writer.abort)
        raise
    return Response(status_code=204)


# -- runs -----------------------------------------------------------------------------------------------
@router.get("/runs/{run_id}/artifacts", response_model=ArtifactList, summary="List a run's artifacts")
def list_run_artifacts(request: Request, run_id: str, path: str = "",
                       recursive: Annotated[bool, Query()] = False, digests: _Digests = False) -> Response:
    """Entries directly below ``path`` (every file below it when ``recursive``); paths are relative to the
    run's artifact root."""
    return _list(request, ArtifactOwner.run(run_id), path, recursive, digests)


@router.get("/runs/{run_id}/artifacts/{path:path}", responses=_BINARY_RESPONSE, response_class=Response,
            summary="Download a run artifact")
async def download_run_artifact(request: Request, run_id: str, path: str) -> Response:
    return await _download(request, ArtifactOwner.run(run_id), path)


@router.put("/runs/{run_id}/artifacts/{path:path}", status_code=204, response_class=Response,
            openapi_extra=_BINARY_BODY, summary="Upload a run artifact (raw bytes body)")
async def upload_run_artifact(request: Request, run_id: str, path: str) -> Response:
    return await _upload(request, ArtifactOwner.run(run_id), path)


# -- logged models --------------------------------------------------------------------------------------
@router.get("/logged-models/{model_id}/artifacts", response_model=ArtifactList,
            summary="List a logged model's files")
def list_logged_model_artifacts(request: Request, model_id: str, path: str = "",
                                recursive: Annotated[bool, Query()] = False, digests: _Digests = False) -> Response:
    return _list(request, ArtifactOwner.logged_model(model_id), path, recursive, digests)


@router.get("/logged-models/{model_id}/artifacts/{path:path}", responses=_BINARY_RESPONSE, response_class=Response,
            summary="Download a logged model file")
async def download_logged_model_artifact(request: Request, model_id: str, path: str) -> Response:
    return await _download(request, ArtifactOwner.logged_model(model_id), path)


@router.put("/logged-models/{model_id}/artifacts/{path:path}", status_code=204, response_class=Response,
            openapi_extra=_BINARY_BODY, summary="Upload a logged model file (raw bytes body)")
async def upload_logged_model_artifact(request: Request, model_id: str, path: str) -> Response:
    return await _upload(request, ArtifactOwner.logged_model(model_id), path)


# -- model versions (read-only) -------------------------------------------------------------------------
@router.get("/registered-models/{name}/versions/{version}/artifacts", response_model=ArtifactList,
            summary="List a model version's files")
def list_model_version_artifacts(request: Request, name: str, version: VersionPath, path: str = "",
                                 recursive: Annotated[bool, Query()] = False, digests: _Digests = False) -> Response:
    if version < 1:
        raise InvalidParameterValue("version: must be a positive integer")
    return _list(request, ArtifactOwner.model_version(name, version), path, recursive, digests)


@router.get("/registered-models/{name}/versions/{version}/artifacts/{path:path}", responses=_BINARY_RESPONSE,
            response_class=Response, summary="Download a model version file")
async def download_model_version_artifact(request: Request, name: str, version: VersionPath, path: str) -> Response:
    return await _download(request, ArtifactOwner.model_version(name, version), path)
