"""OIP v2 over gRPC: ``inference.GRPCInferenceService`` on a ``grpc.aio`` server that shares the `ServingCore`.

`start_grpc_server` is awaited in the REST app's lifespan, so the gRPC server runs on the serving event loop and
uses the same models and the same per-model batchers as the REST routes. It answers ServerLive, ServerReady,
ServerMetadata, ModelReady, ModelMetadata and ModelInfer (typed tensor contents and ``raw_input_contents`` /
``raw_output_contents``, see `capstan.serving.grpc_codec`).

Errors become gRPC status codes, never a crash: bad input ``INVALID_ARGUMENT`` (naming the input and the expected
shape), an unknown model or version ``NOT_FOUND``, a model that is not ready or a full batching queue
``UNAVAILABLE``, a failing model ``INTERNAL`` with the request id. The request id is the client's ``x-request-id``
metadata when it is sane, else a generated one, and comes back as ``x-request-id`` trailing metadata.

The listening socket is opened with SO_REUSEPORT (grpc's default on Linux, set explicitly here), so several worker
processes can each start a server on the same port and the kernel spreads connections over them. grpcio is the
``grpc`` extra and is imported only when a server is started (or its options validated).
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from capstan.errors import CapstanError, InvalidParameterValue, InvalidState
from capstan.serving import grpc_codec, oip
from capstan.serving.core import ServingCore, capstan_version, output_datatype, request_id_of
from capstan.serving.grpc_messages import SERVICE, inference_messages

__all__ = ["GRPC_EXTRA", "GrpcOptions", "GrpcServer", "Handler", "guard_rpc", "require_grpc", "service_handler",
           "start_grpc_server", "start_grpc_service", "status_code_name"]

log = logging.getLogger(__name__)

GRPC_EXTRA = "grpc"
"""The optional-dependency extra that installs grpcio and protobuf (``pip install 'capstan[grpc]'``)."""

REQUEST_ID_KEY = "x-request-id"

# HTTP status of a CapstanError (or of a replica's answer) -> the name of its gRPC status code
_STATUS_CODES = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
                 409: "FAILED_PRECONDITION", 413: "INVALID_ARGUMENT", 415: "INVALID_ARGUMENT", 502: "UNAVAILABLE",
                 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}


def status_code_name(http_status: int) -> str:
    """The name of the gRPC status code (``"NOT_FOUND"``) that stands for an HTTP status (``INTERNAL`` for any
    other)."""
    return _STATUS_CODES.get(http_status, "INTERNAL")


def require_grpc() -> None:
    """Fail with one line naming the extra when grpcio or protobuf is missing."""
    for module in ("grpc", "google.protobuf"):
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            raise InvalidState(f"serving over gRPC needs grpcio and protobuf ({module} is not installed): "
                               f"pip install 'capstan[{GRPC_EXTRA}]'")


@dataclass(frozen=True)
class GrpcOptions:
    """Where the gRPC server listens, and its TLS: a certificate and key (PEM files), plus a client CA for mutual
    TLS (clients must then present a certificate it signed). ``grace_s``: how long calls in flight may finish at
    shutdown."""

    port: int
    host: str = "127.0.0.1"
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    grace_s: float = 5.0

    def validate(self) -> None:
        """Raise (naming the option) for a bad port or TLS setting, or when the ``grpc`` extra is missing."""
        if not 0 <= self.port <= 65535:
            raise InvalidParameterValue(f"the gRPC port must be in 0..65535, got {self.port}")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise InvalidParameterValue("gRPC TLS needs both a certificate and a key")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise InvalidParameterValue("a gRPC client CA (mutual TLS) needs a server certificate and key too")
        for what, path in (("certificate", self.tls_cert), ("key", self.tls_key), ("client CA", self.tls_client_ca)):
            if path is not None and not Path(path).is_file():
                raise InvalidParameterValue(f"the gRPC TLS {what} {str(path)!r} is not a readable file")
        if self.grace_s < 0:
            raise InvalidParameterValue(f"grace_s must be >= 0, got {self.grace_s}")
        require_grpc()

    @property
    def address(self) -> str:
        """``host:port`` as grpc takes it (an IPv6 host in brackets)."""
        host = f"[{self.host}]" if ":" in self.host and not self.host.startswith("[") else self.host
        return f"{host}:{self.port}"


class GrpcServer:
    """A started gRPC server: the port it listens on, and `stop`."""

    def __init__(self, server: Any, port: int, grace_s: float) -> None:
        self._server = server
        self.port = port
        self._grace_s = grace_s

    async def stop(self) -> None:
        """Stop accepting calls and wait (up to ``grace_s``) for those in flight."""
        await self._server.stop(self._grace_s)


async def start_grpc_server(core: ServingCore, options: GrpcOptions, *, max_message_bytes: int) -> GrpcServer:
    """Start OIP v2 over gRPC for ``core`` in the running event loop; `InvalidState` when the port cannot be bound."""
    return await start_grpc_service(lambda grpc: _InferenceService(core, grpc).handler(), options,
                                    max_message_bytes=max_message_bytes)


async def start_grpc_service(make_handler: Callable[[Any], Any], options: GrpcOptions, *,
                             max_message_bytes: int) -> GrpcServer:
    """Start a ``grpc.aio`` server with the generic RPC handler ``make_handler(grpc)`` returns, listening as
    ``options`` say (SO_REUSEPORT, TLS), in the running event loop; `InvalidState` when the port cannot be bound."""
    options.validate()
    import grpc  # type: ignore[import-untyped]  # grpcio ships no type information

    server = grpc.aio.server(options=[
        ("grpc.so_reuseport", 1),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", -1),
    ])
    server.add_generic_rpc_handlers((make_handler(grpc),))
    try:
        if options.tls_cert is not None and options.tls_key is not None:
            client_ca = options.tls_client_ca.read_bytes() if options.tls_client_ca is not None else None
            credentials = grpc.ssl_server_credentials(
                [(options.tls_key.read_bytes(), options.tls_cert.read_bytes())],
                root_certificates=client_ca, require_client_auth=client_ca is not None,
            )
            port = server.add_secure_port(options.address, credentials)
        else:
            port = server.add_insecure_port(options.address)
    except (RuntimeError, OSError) as exc:
        raise InvalidState(f"cannot listen for gRPC on {options.address}: {exc}") from None
    if not port:
        raise InvalidState(f"cannot listen for gRPC on {options.address} (in use, or not an address of this host)")
    await server.start()
    log.info("OIP v2 gRPC listening on %s", options.address)
    return GrpcServer(server, int(port), options.grace_s)


Handler = Callable[[Any, Any, str], Awaitable[Any]]
"""An RPC method's behaviour: (request, context, request id) -> response."""


def service_handler(grpc: Any, messages: dict[str, Any], methods: dict[str, tuple[str, Handler]]) -> Any:
    """The generic RPC handler of ``inference.GRPCInferenceService`` with ``methods`` (RPC name -> the name of its
    request message and its behaviour), each guarded by `guard_rpc`."""
    handlers = {
        method: grpc.unary_unary_rpc_method_handler(
            guard_rpc(grpc, behaviour),
            request_deserializer=messages[request].FromString,
            response_serializer=lambda message: message.SerializeToString(),
        )
        for method, (request, behaviour) in methods.items()
    }
    return grpc.method_handlers_generic_handler(SERVICE, handlers)


def guard_rpc(grpc: Any, behaviour: Handler) -> Callable[[Any, Any], Awaitable[Any]]:
    """``behaviour`` with the request id, and its errors turned into gRPC status codes (`status_code_name`).

    The id (the client's ``x-request-id`` metadata when sane, else a new one) is set as trailing metadata before
    the behaviour runs; a behaviour may set trailing metadata of its own (it must then include the id)."""
    status_codes = grpc.StatusCode

    async def call(request: Any, context: Any) -> Any:
        sent = dict(context.invocation_metadata() or ()).get(REQUEST_ID_KEY, "")
        rid = request_id_of(sent if isinstance(sent, str) else "")
        trailing = ((REQUEST_ID_KEY, rid),)
        context.set_trailing_metadata(trailing)
        try:
            return await behaviour(request, context, rid)
        except CapstanError as exc:
            code = getattr(status_codes, status_code_name(exc.http_status))
            message = exc.message if exc.http_status < 500 or "request id" in exc.message \
                else f"{exc.message} (request id {rid})"
        except Exception:  # anything else is answered INTERNAL with the request id
            log.exception("gRPC request %s failed", rid)
            code, message = status_codes.INTERNAL, f"internal server error (request id {rid})"
        await context.abort(code, message, trailing_metadata=trailing)

    return call


class _InferenceService:
    """The RPC methods over the core; each takes (request, context, request id) and returns the response."""

    def __init__(self, core: ServingCore, grpc: Any) -> None:
        self.core = core
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
        return self.messages["ServerReadyResponse"](ready=not self.core.not_ready())

    async def server_metadata(self, request: Any, context: Any, rid: str) -> Any:
        return self.messages["ServerMetadataResponse"](name="capstan", version=capstan_version(), extensions=[])

    async def model_ready(self, request: Any, context: Any, rid: str) -> Any:
        model = self.core.model(request.name, request.version or None)
        return self.messages["ModelReadyResponse"](ready=bool(model.ready))

    async def model_metadata(self, request: Any, context: Any, rid: str) -> Any:
        name = request.name
        model = self.core.model(name, request.version or None)
        document = oip.model_metadata(name, [str(model.version)], model.platform, model.inputs, model.outputs)
        tensor = self.messages["ModelMetadataResponse.TensorMetadata"]
        return self.messages["ModelMetadataResponse"](
            name=name, versions=document["versions"], platform=document["platform"],
            inputs=[tensor(**t) for t in document["inputs"]], outputs=[tensor(**t) for t in document["outputs"]],
        )

    async def model_infer(self, request: Any, context: Any, rid: str) -> Any:
        name, version = request.model_name, request.model_version or None
        with self.core.track("v2-grpc", name, version) as tracker:
            model = self.core.ready_model(name, version)
            tracker.version = str(model.version)
            inputs, raw = grpc_codec.decode_inputs(request)
            spec_in, spec_out = model.inputs[0], model.outputs[0]
            if len(inputs) != 1:
                sent = ", ".join(repr(t.name) for t in inputs)
                raise InvalidParameterValue(
                    f"model {name!r} takes one input ({spec_in.name!r}, shape {list(spec_in.shape)}), got {sent}"
                )
            tensor = inputs[0]
            rows = self.core.checked_rows(name, model, tensor.data, f"input {tensor.name!r} ({tensor.datatype})")
            for wanted in request.outputs:
                if wanted.name != spec_out.name:
                    raise InvalidParameterValue(
                        f"model {name!r} has no output {wanted.name!r} (outputs: {spec_out.name!r})"
                    )
            result = await self.core.predict(name, model, rows, rid)
            return grpc_codec.encode_response(
                self.messages, model=name, version=str(model.version), request_id=request.id, output=spec_out.name,
                datatype=output_datatype(spec_out.datatype, result), result=result, raw=raw,
            )
