"""OIP v2 over gRPC for managed deployments: ``inference.GRPCInferenceService`` in front of the deployment router.

``capstan server --grpc-port`` starts one of these in every server worker, beside the REST routes
``/deployments/NAME/...``. A gRPC call is translated into the REST request a client would send and handed to the
same `DeploymentRouter.handle`, so traffic split, version pins, shadow mirroring, outcomes for A/B, cold starts and
retries behave exactly as over REST; the replica's REST answer is translated back:

- ``model_name`` is the deployment; its project is the ``x-capstan-project`` metadata (else, for a token scoped to
  the deployment, the token's project; else ``default``). ``model_version`` (or the ``x-capstan-version``
  metadata) pins a version or role as the REST ``x-capstan-version`` header does.
- ``ModelInfer``: typed ``contents`` become a JSON request, ``raw_input_contents`` a request in the binary tensor
  extension (binary outputs asked for), both on ``/v2/models/NAME/infer``; the answer comes back as typed contents
  or ``raw_output_contents`` accordingly. Tensors are read by the one codec of each format: `grpc_codec` for the
  gRPC request and response, `oip` for the REST answer.
- ``ModelReady`` and ``ModelMetadata`` go to the replica's ``/v2/models/NAME/ready`` and ``/v2/models/NAME``;
  ``ServerLive``, ``ServerReady`` and ``ServerMetadata`` answer for the server itself (no credential needed, as
  ``/health``).
- Every model call is first checked by the ``authorize`` callback the server passes in (serving does not know
  about users): it raises `Unauthenticated` or `PermissionDenied`, or returns the project to use.

Errors are gRPC status codes as in `capstan.serving.grpc_server` (an answer's HTTP status maps like an error's);
the request id (the client's ``x-request-id`` metadata when sane) is the router's and the replica's, and comes back
as ``x-request-id`` trailing metadata, with ``x-capstan-version`` (the version that answered) and
``x-capstan-cold-start-ms`` (when the call waited for a replica).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
from starlette.responses import Response, StreamingResponse

from capstan.errors import CapstanError, InvalidParameterValue
from capstan.serving import grpc_codec, oip
from capstan.serving.core import capstan_version
from capstan.serving.grpc_messages import inference_messages
from capstan.serving.grpc_server import REQUEST_ID_KEY, GrpcOptions, GrpcServer, service_handler, start_grpc_service
from capstan.serving.ports import VERSION_HEADER

__all__ = ["AUTHORIZATION_KEY", "PROJECT_KEY", "Authorize", "DeploymentCalls", "start_deployments_grpc"]

log = logging.getLogger(__name__)

AUTHORIZATION_KEY = "authorization"
"""Metadata with the credential, as the HTTP header: ``Bearer <token>`` (or basic auth)."""
PROJECT_KEY = "x-capstan-project"
"""Metadata naming the deployment's project."""
_COLD_START_KEY = "x-capstan-cold-start-ms"
_HEADER_LENGTH = "inference-header-content-length"

Authorize = Callable[[str | None, str | None, str], Awaitable[str]]
"""``authorize(authorization, project, deployment)``: the project in which to find ``deployment`` for a caller who
sent the ``authorization`` and ``x-capstan-project`` metadata (either may be missing); raises `Unauthenticated`
or `PermissionDenied` when the caller may not read it."""


class DeploymentCalls(Protocol):
    """What the gRPC front needs of `capstan.serving.router.DeploymentRouter`."""

    async def handle(self, project: str, deployment: str, *, method: str, path: str, query: str = "",
                     headers: Sequence[tuple[str, str]] = (), body: bytes = b"") -> Response:
        """Forward one REST request to a replica of ``deployment``; the response to give the client."""
        ...


async def start_deployments_grpc(router: Callable[[], DeploymentCalls], options: GrpcOptions, *,
                                 authorize: Authorize, max_message_bytes: int) -> GrpcServer:
    """Serve OIP v2 over gRPC for every deployment through ``router()`` (called per request, so the router may be
    built on first use), in the running event loop; `InvalidState` when the port cannot be bound."""
    return await start_grpc_service(lambda grpc: _DeploymentService(router, authorize, grpc).handler(), options,
                                    max_message_bytes=max_message_bytes)


class _Answered(CapstanError):
    """A replica's (or the router's) answer that is not a success, with its HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.http_status = status


@dataclass(frozen=True)
class _Reply:
    """The REST answer of a forwarded call."""

    status: int
    body: bytes
    headers: Mapping[str, str]

    def trailing(self, rid: str) -> tuple[tuple[str, str], ...]:
        """The trailing metadata of a successful call."""
        extra = tuple((key, self.headers[key]) for key in (VERSION_HEADER, _COLD_START_KEY) if key in self.headers)
        return ((REQUEST_ID_KEY, rid), *extra)

    def json(self) -> dict[str, Any]:
        """The body as a JSON object (a replica that answers otherwise is a server error)."""
        try:
            document = orjson.loads(self.body)
        except orjson.JSONDecodeError:
            document = None
        if not isinstance(document, dict):
            raise CapstanError(f"the replica answered {self.status} with a body that is not a JSON object")
        return document

    def failure(self) -> _Answered:
        """The error that stands for this answer: its status, and the message of its JSON body."""
        try:
            document = orjson.loads(self.body)
        except orjson.JSONDecodeError:
            document = None
        message = (document.get("error") or document.get("message")) if isinstance(document, dict) else None
        text = str(message) if message else self.body[:200].decode("utf-8", "replace") or f"HTTP {self.status}"
        return _Answered(self.status, text)


class _DeploymentService:
    """The RPC methods; each takes (request, context, request id) and returns the response."""

    def __init__(self, router: Callable[[], DeploymentCalls], authorize: Authorize, grpc: Any) -> None:
        self.router = router
        self.authorize = authorize
        self.grpc = grpc
        self.messages = inference_messages()

    def handler(self) -> Any:
        """The generic RPC handler of ``inference.GRPCInferenceService``."""
        return service_handler(self.grpc, self.messages, {
            "ServerLive": ("ServerLiveRequest", self.server_live),
            "ServerReady": ("ServerReadyRequest", self.server_ready),
            "ServerMetadata": ("ServerMetadataRequest", self.server_metadata),
            "ModelReady": ("ModelReadyRequest", self.model_ready),
            "ModelMetadata": ("ModelMetadataRequest", self.model_metadata),
            "ModelInfer": ("ModelInferRequest", self.model_infer),
        })

    async def server_live(self, request: Any, context: Any, rid: str) -> Any:
        return self.messages["ServerLiveResponse"](live=True)

    async def server_ready(self, request: Any, context: Any, rid: str) -> Any:
        return self.messages["ServerReadyResponse"](ready=True)

    async def server_metadata(self, request: Any, context: Any, rid: str) -> Any:
        return self.messages["ServerMetadataResponse"](name="capstan", version=capstan_version(), extensions=[])

    async def model_ready(self, request: Any, context: Any, rid: str) -> Any:
        target = await self._target(context, request.name, request.version)
        reply = await target.send(self.router(), rid, "GET", f"/v2/models/{target.deployment}/ready")
        if reply.status not in (200, 503):
            raise reply.failure()
        context.set_trailing_metadata(reply.trailing(rid))
        return self.messages["ModelReadyResponse"](ready=reply.status == 200)

    async def model_metadata(self, request: Any, context: Any, rid: str) -> Any:
        target = await self._target(context, request.name, request.version)
        reply = await target.send(self.router(), rid, "GET", f"/v2/models/{target.deployment}")
        if reply.status != 200:
            raise reply.failure()
        document = reply.json()
        tensor = self.messages["ModelMetadataResponse.TensorMetadata"]
        try:
            response = self.messages["ModelMetadataResponse"](
                name=target.deployment, versions=document["versions"], platform=document["platform"],
                inputs=[tensor(name=t["name"], datatype=t["datatype"], shape=t["shape"]) for t in document["inputs"]],
                outputs=[tensor(name=t["name"], datatype=t["datatype"], shape=t["shape"])
                         for t in document["outputs"]])
        except (KeyError, TypeError, ValueError) as exc:
            raise CapstanError(f"the replica's model metadata is malformed: {exc!r}") from None
        context.set_trailing_metadata(reply.trailing(rid))
        return response

    async def model_infer(self, request: Any, context: Any, rid: str) -> Any:
        target = await self._target(context, request.model_name, request.model_version)
        inputs, raw = grpc_codec.decode_inputs(request)
        body, headers = rest_infer_request(request, inputs, raw)
        reply = await target.send(self.router(), rid, "POST", f"/v2/models/{target.deployment}/infer", headers, body)
        if reply.status != 200:
            raise reply.failure()
        length = reply.headers.get(_HEADER_LENGTH)
        try:
            answer = oip.decode_response(reply.body, header_length=int(length) if length else None)
        except (InvalidParameterValue, ValueError) as exc:
            raise CapstanError(f"the replica's answer is not an OIP v2 response: {exc}") from None
        if len(answer.outputs) != 1:
            raise CapstanError(f"the replica answered {len(answer.outputs)} outputs; one was expected")
        output = answer.outputs[0]
        response = grpc_codec.encode_response(
            self.messages, model=target.deployment,
            version=reply.headers.get(VERSION_HEADER) or answer.model_version or "", request_id=request.id,
            output=output.name, datatype=output.datatype, result=output.data, raw=raw)
        context.set_trailing_metadata(reply.trailing(rid))
        return response

    async def _target(self, context: Any, name: str, version: str) -> _Target:
        """Where a model call goes, once the caller is authorized for it."""
        if not name:
            raise InvalidParameterValue("the model name (the deployment's name) is required")
        metadata = {key: value for key, value in context.invocation_metadata() or () if isinstance(value, str)}
        project = await self.authorize(metadata.get(AUTHORIZATION_KEY), metadata.get(PROJECT_KEY), name)
        pin = (version or metadata.get(VERSION_HEADER, "")).strip()
        return _Target(project, name, pin)


@dataclass(frozen=True)
class _Target:
    """An authorized call's deployment, its project and the version pin (empty for none)."""

    project: str
    deployment: str
    pin: str

    async def send(self, router: DeploymentCalls, rid: str, method: str, path: str,
                   headers: Sequence[tuple[str, str]] = (), body: bytes = b"") -> _Reply:
        """Hand the REST request to the router and read its whole answer."""
        sent = [(REQUEST_ID_KEY, rid), *headers, *([(VERSION_HEADER, self.pin)] if self.pin else [])]
        response = await router.handle(self.project, self.deployment, method=method, path=path, headers=sent,
                                       body=body)
        return _Reply(response.status_code, await _body_of(response), dict(response.headers))


def rest_infer_request(request: Any, inputs: Sequence[oip.InferInput],
                       raw: bool) -> tuple[bytes, list[tuple[str, str]]]:
    """The OIP v2 REST request (body and headers) that asks what the gRPC ``request`` asks: JSON for typed contents;
    for raw contents the binary tensor extension, whose answer is binary too."""
    tensors: list[dict[str, Any]] = []
    for index, tensor in enumerate(inputs):
        entry: dict[str, Any] = {"name": tensor.name, "shape": list(tensor.shape), "datatype": tensor.datatype}
        if raw:
            entry["parameters"] = {"binary_data_size": len(request.raw_input_contents[index])}
        else:
            entry["data"] = tensor.data.reshape(-1)
        tensors.append(entry)
    document: dict[str, Any] = {"inputs": tensors}
    if request.id:
        document["id"] = request.id
    if request.outputs:
        document["outputs"] = [{"name": wanted.name, "parameters": {"binary_data": raw}} for wanted in request.outputs]
    elif raw:
        document["parameters"] = {"binary_data_output": True}
    header = orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY)
    if not raw:
        return header, [("content-type", "application/json")]
    return header + b"".join(request.raw_input_contents), [("content-type", "application/octet-stream"),
                                                          (_HEADER_LENGTH, str(len(header)))]


async def _body_of(response: Response) -> bytes:
    """The whole body of a router response (a large answer comes as a stream)."""
    if not isinstance(response, StreamingResponse):
        return bytes(response.body)
    chunks = [chunk if isinstance(chunk, bytes) else bytes(chunk, "utf-8") if isinstance(chunk, str) else bytes(chunk)
              async for chunk in response.body_iterator]
    return b"".join(chunks)
