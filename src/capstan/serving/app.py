"""The serving ASGI app: Open Inference Protocol v2, KServe v1 and MLflow scoring on one port.

``serving_app(models, max_body_bytes=..., batching=..., observer=..., metrics=..., grpc=...)`` answers for a
fixed set of `ServedModel` (keyed by the name clients use):

- OIP v2 REST: ``GET /v2/health/live``, ``/v2/health/ready``, ``GET /v2`` (server metadata),
  ``GET /v2/models/{name}[/versions/{v}]`` (metadata), ``GET .../ready``, ``POST .../infer`` (JSON tensors and the
  binary tensor data extension, through `capstan.serving.oip`).
- KServe v1: ``GET /v1/models/{name}``, ``POST /v1/models/{name}:predict`` (``instances`` -> ``predictions``).
- MLflow scoring (one model only): ``POST /invocations`` (``dataframe_split``, ``dataframe_records``,
  ``instances``, ``inputs``), ``GET /ping``, ``/health``, ``/version``.

Bodies are read whatever their Content-Type (tritonclient sends none), up to ``max_body_bytes`` (413 beyond).
A model has one input: a request's single input is taken whatever its name, in any integer or float datatype,
checked against the input's shape and cast to its datatype; the predictions are the model's first output.

Errors are JSON ``{"error": "..."}``: 400 for bad input (naming the input and shape), 404 for an unknown model,
version or route, 413, 503 for a model that is not ready or a full batching queue (with ``Retry-After``), 500 with
the request id when a model fails. Every response carries ``X-Request-Id`` (the client's, or a generated one).

The inference logic (model lookup, readiness, input checks, predict with or without batching, the observer calls)
is the transport-independent `capstan.serving.core.ServingCore`; this module is its HTTP adapter. With
``batching``, each model gets one `AdaptiveBatcher`, created in the serving event loop on first use and drained at
shutdown (lifespan); without it, ``predict`` runs in a worker thread per request. ``observer`` hears every
inference request (`capstan.serving.observe`); ``metrics`` answers ``GET /metrics``; ``grpc`` starts OIP v2 over
gRPC (`capstan.serving.grpc_server`) in the lifespan, on the same event loop, sharing the core and its batchers;
``routes`` adds routes (``GET /drift``); ``on_shutdown`` closes observers at the end of the lifespan.

The inference routes are dispatched by the app itself, in front of Starlette's router and middleware (the hot path:
no routing table walk, no middleware layers, no `Request`/`Response` objects); everything else goes through
Starlette. Both paths run the same handlers and request-id logic (`capstan.serving.rest`) and answer with the same
status, headers and body.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from capstan.errors import CapstanError, InvalidParameterValue
from capstan.serving import oip
from capstan.serving.batching import QueueFull
from capstan.serving.core import (
    BatchingOptions,
    ModelNotReady,
    RequestIds,
    ServingCore,
    capstan_version,
    output_datatype,
)
from capstan.serving.grpc_server import GrpcOptions, GrpcServer, start_grpc_server
from capstan.serving.model import ServedModel
from capstan.serving.observe import ServingObserver
from capstan.serving.rest import (
    REQUEST_ID_HEADER,
    REQUEST_ID_KEY,
    Answer,
    BodyTooLarge,
    HttpCall,
    InferenceRoute,
    assign_request_id,
    inference_route,
)

__all__ = ["BatchingOptions", "BodyTooLarge", "GrpcOptions", "Metrics", "ModelNotReady", "ServingApp", "serving_app"]

log = logging.getLogger(__name__)

Array = npt.NDArray[Any]
_MLFLOW_FORMATS = ("dataframe_split", "dataframe_records", "instances", "inputs")
_HEADER_LENGTH = b"inference-header-content-length"
_CONTENT_TYPE = b"content-type"


# --------------------------------------------------------------------------------------------------- responses


def _json(document: object, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    return _json_answer(document, status, tuple((headers or {}).items())).response()


def _json_answer(document: object, status: int = 200, headers: Sequence[tuple[str, str]] = ()) -> Answer:
    return Answer(orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY), status=status, headers=headers)


def _error(status: int, message: str, headers: Mapping[str, str] | None = None, **extra: object) -> Response:
    return _json({"error": message, **extra}, status, headers)


def _error_answer(exc: CapstanError, request_id: str) -> Answer:
    """The answer to a `CapstanError`: its status and message, ``Retry-After`` for a full queue, the request id
    for a server error."""
    headers: tuple[tuple[str, str], ...] = ()
    if isinstance(exc, QueueFull):
        headers = (("Retry-After", str(max(1, math.ceil(exc.retry_after_s)))),)
    extra: dict[str, object] = {"request_id": request_id} if exc.http_status >= 500 else {}
    return _json_answer({"error": exc.message, **extra}, exc.http_status, headers)


def _failure_answer(request_id: str) -> Answer:
    """The answer to an exception that is not a `CapstanError` (logged by the caller)."""
    return _json_answer({"error": f"internal server error (request id {request_id})", "request_id": request_id}, 500)


def request_id(request: Request) -> str:
    """The id of this request (set by the request-id middleware)."""
    return str(request.scope.get(REQUEST_ID_KEY) or "")


class _RequestIdMiddleware:
    """Gives every request an id (the client's ``X-Request-Id`` when it is sane) and every response the header;
    an exception that escapes the app before the response started becomes a 500 JSON naming the id."""

    def __init__(self, app: ASGIApp, ids: RequestIds) -> None:
        self.app = app
        self.ids = ids

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = assign_request_id(scope, self.ids)
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != REQUEST_ID_HEADER.encode()]
                headers.append((REQUEST_ID_HEADER.encode(), rid.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            log.exception("serving request %s failed", rid)
            if started:
                raise
            await _failure_answer(rid).response()(scope, receive, send_with_id)


# --------------------------------------------------------------------------------------------------- the app


class _Serving:
    """The routes: HTTP around the shared `ServingCore` (body limits, request ids, JSON), and the lifespan that
    starts the gRPC server on the same event loop and drains the core at shutdown."""

    def __init__(self, core: ServingCore, max_body_bytes: int, grpc: GrpcOptions | None,
                 on_shutdown: Sequence[Callable[[], None]] = ()) -> None:
        self.core = core
        self.max_body_bytes = max_body_bytes
        self.grpc = grpc
        self.on_shutdown = tuple(on_shutdown)

    # -------------------------------------------------------------------------------------------- helpers

    async def json_body(self, call: HttpCall) -> Any:
        content_type = (call.header(_CONTENT_TYPE) or "").split(";")[0].strip().lower()
        if content_type and content_type != "application/json" and not content_type.endswith("+json"):
            raise CapstanErrorWithStatus(415, f"the body must be JSON (application/json), got {content_type!r}")
        raw = await call.body(self.max_body_bytes)
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise InvalidParameterValue(f"the request body is not valid JSON: {exc}") from None

    # -------------------------------------------------------------------------------------------- OIP v2

    async def live(self, request: Request) -> Response:
        return _json({"live": True})

    async def server_ready(self, request: Request) -> Response:
        waiting = self.core.not_ready()
        if waiting:
            return _error(503, f"models not ready: {', '.join(waiting)}", ready=False)
        return _json({"ready": True})

    async def server_metadata(self, request: Request) -> Response:
        return _json({"name": "capstan", "version": capstan_version(), "extensions": ["binary_tensor_data"]})

    async def model_metadata(self, request: Request) -> Response:
        name, version = request.path_params["name"], request.path_params.get("version")
        model = self.core.model(name, version)
        return _json(oip.model_metadata(name, [str(model.version)], model.platform, model.inputs, model.outputs))

    async def model_ready(self, request: Request) -> Response:
        name, version = request.path_params["name"], request.path_params.get("version")
        model = self.core.model(name, version)
        if not model.ready:
            return _error(503, f"model {name!r} is not ready", name=name, ready=False)
        return _json({"name": name, "ready": True})

    async def infer(self, call: HttpCall) -> Answer:
        name, version = call.name, call.version
        with self.core.track("v2", name, version) as tracker:
            model = self.core.ready_model(name, version)
            tracker.version = str(model.version)
            raw_length = call.header(_HEADER_LENGTH)
            header_length: int | None = None
            if raw_length is not None:
                if not raw_length.strip().isdigit():
                    raise InvalidParameterValue(
                        f"Inference-Header-Content-Length must be an integer, got {raw_length!r}"
                    )
                header_length = int(raw_length)
            decoded = oip.decode_request(await call.body(self.max_body_bytes), header_length=header_length)
            spec_in = model.inputs[0]
            if len(decoded.inputs) != 1:
                sent = ", ".join(repr(t.name) for t in decoded.inputs)
                raise InvalidParameterValue(
                    f"model {name!r} takes one input ({spec_in.name!r}, shape {list(spec_in.shape)}), got {sent}"
                )
            tensor = decoded.inputs[0]
            rows = self.core.checked_rows(name, model, tensor.data, f"input {tensor.name!r} ({tensor.datatype})")
            spec_out = model.outputs[0]
            for wanted in decoded.outputs:
                if wanted.name != spec_out.name:
                    raise InvalidParameterValue(
                        f"model {name!r} has no output {wanted.name!r} (outputs: {spec_out.name!r})"
                    )
            result = await self.core.predict(name, model, rows, call.request_id)
            output = oip.InferOutput.of(spec_out.name, result, datatype=output_datatype(spec_out.datatype, result))
            response = oip.InferResponse(name, str(model.version), decoded.id, (output,))
            body, json_length = oip.encode_response(response, binary_outputs=oip.binary_outputs(decoded))
        if json_length is None:
            return Answer(body)
        return Answer(body, content_type="application/octet-stream",
                      headers=(("Inference-Header-Content-Length", str(json_length)),))

    # -------------------------------------------------------------------------------------------- KServe v1

    async def v1_model(self, request: Request) -> Response:
        name = request.path_params["name"]
        model = self.core.model(name)
        return _json({"name": name, "ready": bool(model.ready)})

    async def v1_predict(self, call: HttpCall) -> Answer:
        name = call.name
        with self.core.track("v1", name) as tracker:
            model = self.core.ready_model(name)
            tracker.version = str(model.version)
            document = await self.json_body(call)
            if not isinstance(document, dict) or "instances" not in document:
                raise InvalidParameterValue('the KServe v1 request must be a JSON object with "instances"')
            rows = self.core.checked_rows(name, model, _array(document["instances"], "instances"), '"instances"')
            result = await self.core.predict(name, model, rows, call.request_id)
            return _json_answer({"predictions": _jsonable(result)})

    # -------------------------------------------------------------------------------------------- MLflow

    async def invocations(self, call: HttpCall) -> Answer:
        only = next(iter(self.core.models)) if len(self.core.models) == 1 else ""
        with self.core.track("mlflow", only) as tracker:
            name, model = self.core.only_model()
            tracker.version = str(model.version)
            if not model.ready:
                raise ModelNotReady(f"model {name!r} is not ready")
            document = await self.json_body(call)
            field, data = _mlflow_rows(document)
            rows = self.core.checked_rows(name, model, data, f'"{field}"')
            result = await self.core.predict(name, model, rows, call.request_id)
            return _json_answer({"predictions": _jsonable(result)})

    # -------------------------------------------------------------------------------------------- dispatch

    def handler(self, protocol: str) -> Callable[[HttpCall], Awaitable[Answer]]:
        """The handler of an inference route's protocol (``v2``, ``v1``, ``mlflow``)."""
        return {"v2": self.infer, "v1": self.v1_predict, "mlflow": self.invocations}[protocol]

    def endpoint(self, protocol: str) -> Callable[[Request], Awaitable[Response]]:
        """The Starlette endpoint of an inference route: `handler` with its `Answer` as a `Response`."""
        handler = self.handler(protocol)

        async def endpoint(request: Request) -> Response:
            params = request.path_params
            call = HttpCall(request.scope, request.receive, params.get("name", ""), params.get("version"),
                            request_id(request))
            return (await handler(call)).response()

        return endpoint

    async def answer(self, route: InferenceRoute, scope: Scope, receive: Receive, send: Send, ids: RequestIds) -> None:
        """Answer an inference request without Starlette (`ServingApp`'s fast path): the request-id middleware's
        and the exception handlers' work, done here for this one route."""
        protocol, name, version = route
        scope["path_params"] = {"name": name, "version": version} if version is not None else \
            ({"name": name} if name else {})
        rid = assign_request_id(scope, ids)
        try:
            answer = await self.handler(protocol)(HttpCall(scope, receive, name, version, rid))
        except CapstanError as exc:
            answer = _error_answer(exc, rid)
        except Exception:
            log.exception("serving request %s failed", rid)
            answer = _failure_answer(rid)
        await answer.send(send, rid)

    async def ping(self, request: Request) -> Response:
        waiting = self.core.not_ready()
        if waiting:
            return _error(503, f"models not ready: {', '.join(waiting)}")
        return PlainTextResponse("\n")

    async def version(self, request: Request) -> Response:
        return PlainTextResponse(capstan_version())

    # -------------------------------------------------------------------------------------------- lifecycle

    @asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        grpc_server: GrpcServer | None = None
        try:
            if self.grpc is not None:
                grpc_server = await start_grpc_server(self.core, self.grpc, max_message_bytes=self.max_body_bytes)
                app.state.grpc_port = grpc_server.port
            yield
        finally:
            if grpc_server is not None:
                await grpc_server.stop()
            await self.core.aclose()
            for close in self.on_shutdown:
                try:  # blocking work (a last Parquet file, a drift window): off the event loop
                    await asyncio.to_thread(close)
                except Exception:
                    log.exception("serving shutdown: %r failed", close)


class CapstanErrorWithStatus(CapstanError):
    """A client error with an HTTP status of its own (415)."""

    code = "INVALID_PARAMETER_VALUE"

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.http_status = status


def _jsonable(result: Array) -> Any:
    if result.dtype.kind == "O":
        return [v.decode() if isinstance(v, bytes) else v for v in result.tolist()]
    return result.tolist()


def _array(value: object, field: str) -> Array:
    if not isinstance(value, list) or not value:
        raise InvalidParameterValue(f'"{field}" must be a non-empty list of rows')
    try:
        data = np.asarray(value)
    except (ValueError, TypeError, OverflowError):
        raise InvalidParameterValue(f'"{field}" must be a list of rows of equal length') from None
    if data.dtype.kind == "O":
        raise InvalidParameterValue(f'"{field}" must be a list of rows of equal length holding numbers')
    return data


def _mlflow_rows(document: object) -> tuple[str, Array]:
    """The rows of an MLflow scoring request, and the format's name."""
    if not isinstance(document, dict):
        raise InvalidParameterValue(f"the request must be a JSON object with one of: {', '.join(_MLFLOW_FORMATS)}")
    given = [key for key in _MLFLOW_FORMATS if key in document]
    unknown = sorted(set(document) - set(_MLFLOW_FORMATS) - {"params"})
    if len(given) != 1 or unknown:
        raise InvalidParameterValue(
            f"the request must hold exactly one of {', '.join(_MLFLOW_FORMATS)}"
            + (f" (unknown keys: {', '.join(unknown)})" if unknown else f" (got {len(given)})")
        )
    field = given[0]
    value = document[field]
    if field == "dataframe_split":
        if not isinstance(value, dict) or "data" not in value:
            raise InvalidParameterValue('"dataframe_split" must be an object with "columns" and "data"')
        columns = value.get("columns")
        data = _array(value["data"], "dataframe_split.data")
        if columns is not None and (not isinstance(columns, list) or data.ndim != 2 or len(columns) != data.shape[1]):
            raise InvalidParameterValue(
                f'"dataframe_split" has {len(columns) if isinstance(columns, list) else columns!r} columns but '
                f"data of shape {list(data.shape)}"
            )
        return field, data
    if field == "dataframe_records":
        if not isinstance(value, list) or not value or not all(isinstance(r, dict) for r in value):
            raise InvalidParameterValue('"dataframe_records" must be a non-empty list of objects')
        columns = list(value[0])
        for index, record in enumerate(value):
            if set(record) != set(columns):
                raise InvalidParameterValue(
                    f"dataframe_records[{index}] has columns {sorted(record)}, expected {sorted(columns)}"
                )
        return field, _array([[record[c] for c in columns] for record in value], field)
    if field == "inputs" and isinstance(value, dict):
        if len(value) != 1:
            raise InvalidParameterValue('"inputs" as an object must name exactly one tensor')
        (value,) = value.values()
    return field, _array(value, field)


Metrics = Callable[[], tuple[bytes, str]]
"""Renders the metrics exposition: its body and its Content-Type (``GET /metrics``)."""


def serving_app(models: Mapping[str, ServedModel], *, max_body_bytes: int, batching: BatchingOptions | None,
                observer: ServingObserver | None = None, metrics: Metrics | None = None,
                grpc: GrpcOptions | None = None, routes: Sequence[BaseRoute] = (),
                on_shutdown: Sequence[Callable[[], None]] = ()) -> ServingApp:
    """The ASGI app serving ``models`` (keyed by the name clients use) over OIP v2, KServe v1 and MLflow scoring.

    ``observer`` hears about every inference request, prediction and batch (`capstan.serving.observe`);
    ``metrics`` answers ``GET /metrics``; ``grpc`` also serves OIP v2 over gRPC from the app's lifespan, sharing
    the models and batchers (needs the ``grpc`` extra, checked here). ``routes`` are added after the serving
    routes (e.g. ``GET /drift``); ``on_shutdown`` callables run in order, each in a thread, when the lifespan
    ends, after the batchers are drained (close observers that own threads or files there).
    """
    if max_body_bytes < 1:
        raise InvalidParameterValue(f"max_body_bytes must be at least 1, got {max_body_bytes}")
    core = ServingCore(models, batching=batching, observer=observer)
    if grpc is not None:
        grpc.validate()
    state = _Serving(core, max_body_bytes, grpc, on_shutdown)
    model_routes: list[Route] = []
    for prefix in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
        model_routes += [
            Route(prefix, state.model_metadata, methods=["GET"]),
            Route(f"{prefix}/ready", state.model_ready, methods=["GET"]),
            Route(f"{prefix}/infer", state.endpoint("v2"), methods=["POST"]),
        ]
    all_routes: list[BaseRoute] = [
        Route("/v2/health/live", state.live, methods=["GET"]),
        Route("/v2/health/ready", state.server_ready, methods=["GET"]),
        Route("/v2", state.server_metadata, methods=["GET"]),
        *model_routes,
        Route("/v1/models/{name}:predict", state.endpoint("v1"), methods=["POST"]),
        Route("/v1/models/{name}", state.v1_model, methods=["GET"]),
        Route("/invocations", state.endpoint("mlflow"), methods=["POST"]),
        Route("/ping", state.ping, methods=["GET"]),
        Route("/health", state.ping, methods=["GET"]),
        Route("/version", state.version, methods=["GET"]),
    ]
    if metrics is not None:
        all_routes.append(Route("/metrics", _metrics_endpoint(metrics), methods=["GET"]))
    all_routes += routes
    handlers: dict[Any, Callable[[Request, Exception], Awaitable[Response]]] = {
        CapstanError: _capstan_error,
        HTTPException: _http_error,
    }
    app = ServingApp(state, routes=all_routes, exception_handlers=handlers, lifespan=state.lifespan)
    app.add_middleware(_RequestIdMiddleware, ids=app.request_ids)
    return app


class ServingApp(Starlette):
    """The serving app: Starlette, with the inference routes (``POST``) answered in front of its router and
    middleware by the same handlers (see the module docstring). Middleware added to it after `serving_app` turns
    the fast path off, so that it sees every request."""

    def __init__(self, serving: _Serving, **options: Any) -> None:
        super().__init__(**options)
        self.serving = serving
        self.request_ids = RequestIds()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer an inference ``POST`` directly, anything else through Starlette."""
        if scope["type"] == "http" and scope["method"] == "POST" and len(self.user_middleware) == 1:
            route = inference_route(scope["path"])
            if route is not None:
                scope["app"] = self
                await self.serving.answer(route, scope, receive, send, self.request_ids)
                return
        await super().__call__(scope, receive, send)


def _metrics_endpoint(metrics: Metrics) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        body, content_type = metrics()
        return Response(body, headers={"Content-Type": content_type})

    return endpoint


async def _capstan_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, CapstanError)
    return _error_answer(exc, request_id(request)).response()


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    message = {404: f"no route {request.method} {request.url.path}",
               405: f"method {request.method} is not allowed on {request.url.path}"}.get(exc.status_code, exc.detail)
    return _error(exc.status_code, message, exc.headers)
