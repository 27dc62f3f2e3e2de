"""The serving ASGI app: Open Inference Protocol v2, KServe v1 and MLflow scoring on one port.

``serving_app(models, max_body_bytes=..., batching=...)`` answers for a fixed set of `ServedModel` (keyed by the
name clients use):

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

With ``batching``, each model gets one `AdaptiveBatcher`, created in the serving event loop on first use and
drained at shutdown (lifespan); without it, ``predict`` runs in a worker thread per request.
"""

from __future__ import annotations

import logging
import math
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from capstan.errors import CapstanError, InvalidParameterValue, ResourceDoesNotExist
from capstan.serving import oip
from capstan.serving.batching import AdaptiveBatcher, QueueFull
from capstan.serving.model import ServedModel

__all__ = ["BatchingOptions", "BodyTooLarge", "ModelNotReady", "serving_app"]

log = logging.getLogger(__name__)

Array = npt.NDArray[Any]
REQUEST_ID_HEADER = "x-request-id"
_REQUEST_ID_KEY = "capstan.request_id"
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
_NUMERIC_KINDS = frozenset("iuf")
_MLFLOW_FORMATS = ("dataframe_split", "dataframe_records", "instances", "inputs")


@dataclass(frozen=True)
class BatchingOptions:
    """Options of the per-model `AdaptiveBatcher`: rows per batch, how long a batch waits, rows allowed queued."""

    max_batch_size: int = 32
    max_delay_ms: float = 5.0
    max_queue: int = 1024


class BodyTooLarge(CapstanError):
    """A request body over the app's ``max_body_bytes``."""

    code = "INVALID_PARAMETER_VALUE"
    http_status = 413


class ModelNotReady(CapstanError):
    """The model exists but is not ready to answer."""

    code = "TEMPORARILY_UNAVAILABLE"
    http_status = 503


class ModelFailed(CapstanError):
    """The model raised in ``predict``; the client gets the request id, the log gets the traceback."""


# --------------------------------------------------------------------------------------------------- responses


def _json(document: object, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    return Response(orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY), status_code=status,
                    headers=headers, media_type="application/json")


def _error(status: int, message: str, headers: Mapping[str, str] | None = None, **extra: object) -> Response:
    return _json({"error": message, **extra}, status, headers)


def request_id(request: Request) -> str:
    """The id of this request (set by the request-id middleware)."""
    return str(request.scope.get(_REQUEST_ID_KEY) or "")


class _RequestIdMiddleware:
    """Gives every request an id (the client's ``X-Request-Id`` when it is sane) and every response the header;
    an exception that escapes the app before the response started becomes a 500 JSON naming the id."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        sent = ""
        for key, value in scope.get("headers", []):
            if key == REQUEST_ID_HEADER.encode():
                sent = value.decode("latin-1")
        rid = sent if _VALID_REQUEST_ID.match(sent) else uuid.uuid4().hex
        scope[_REQUEST_ID_KEY] = rid
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
            response = _error(500, f"internal server error (request id {rid})", request_id=rid)
            await response(scope, receive, send_with_id)


# --------------------------------------------------------------------------------------------------- the app


class _Serving:
    """The routes' shared state: the models, the body limit and the batchers."""

    def __init__(self, models: Mapping[str, ServedModel], max_body_bytes: int,
                 batching: BatchingOptions | None) -> None:
        self.models = dict(models)
        self.max_body_bytes = max_body_bytes
        self.batching = batching
        self.batchers: dict[str, AdaptiveBatcher] = {}

    # -------------------------------------------------------------------------------------------- helpers

    def model(self, name: str, version: str | None = None) -> ServedModel:
        model = self.models.get(name)
        if model is None:
            raise ResourceDoesNotExist(f"model {name!r} is not served here (models: {', '.join(sorted(self.models))})")
        if version is not None and version != str(model.version):
            raise ResourceDoesNotExist(f"model {name!r} has no version {version!r} (served: {model.version!r})")
        return model

    def ready_model(self, name: str, version: str | None = None) -> ServedModel:
        model = self.model(name, version)
        if not model.ready:
            raise ModelNotReady(f"model {name!r} is not ready")
        return model

    async def body(self, request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            raise BodyTooLarge(f"the request body ({declared} bytes) is over the limit of {self.max_body_bytes} bytes")
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.max_body_bytes:
                raise BodyTooLarge(f"the request body is over the limit of {self.max_body_bytes} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    async def json_body(self, request: Request) -> Any:
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type and content_type != "application/json" and not content_type.endswith("+json"):
            raise CapstanErrorWithStatus(415, f"the body must be JSON (application/json), got {content_type!r}")
        raw = await self.body(request)
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise InvalidParameterValue(f"the request body is not valid JSON: {exc}") from None

    def checked_rows(self, name: str, model: ServedModel, data: Array, what: str) -> Array:
        """``data`` checked against the model's input (numeric, its rank, its fixed dimensions), in its dtype."""
        spec = model.inputs[0]
        if data.dtype.kind not in _NUMERIC_KINDS:
            raise InvalidParameterValue(
                f"{what} of model {name!r} must hold integers or floats (FP32, FP64, INT*, UINT*), got {data.dtype}"
            )
        expected = list(spec.shape)
        if data.ndim != len(expected) or any(e >= 0 and e != d for e, d in zip(expected, data.shape, strict=False)):
            raise InvalidParameterValue(
                f"{what} of model {name!r} has shape {list(data.shape)}, expected {expected} (-1: any size)"
            )
        target = oip.DATATYPES[spec.datatype]
        if target.kind in _NUMERIC_KINDS and data.dtype != target:
            return data.astype(target)
        return data

    async def predict(self, name: str, model: ServedModel, rows: Array, rid: str) -> Array:
        try:
            if self.batching is None:
                result = await run_in_threadpool(model.predict, rows)
            else:
                result = await self.batcher(name, model).submit(rows)
        except CapstanError:
            raise
        except Exception as exc:
            log.exception("model %r failed to predict (request id %s)", name, rid)
            raise ModelFailed(f"model {name!r} failed to predict (request id {rid})") from exc
        return np.asarray(result)

    def batcher(self, name: str, model: ServedModel) -> AdaptiveBatcher:
        batcher = self.batchers.get(name)
        if batcher is None:
            assert self.batching is not None
            batcher = AdaptiveBatcher(model.predict, max_batch_size=self.batching.max_batch_size,
                                      max_delay_ms=self.batching.max_delay_ms, max_queue=self.batching.max_queue)
            self.batchers[name] = batcher
        return batcher

    # -------------------------------------------------------------------------------------------- OIP v2

    async def live(self, request: Request) -> Response:
        return _json({"live": True})

    async def server_ready(self, request: Request) -> Response:
        waiting = sorted(name for name, model in self.models.items() if not model.ready)
        if waiting:
            return _error(503, f"models not ready: {', '.join(waiting)}", ready=False)
        return _json({"ready": True})

    async def server_metadata(self, request: Request) -> Response:
        return _json({"name": "capstan", "version": _capstan_version(), "extensions": ["binary_tensor_data"]})

    async def model_metadata(self, request: Request) -> Response:
        name, version = request.path_params["name"], request.path_params.get("version")
        model = self.model(name, version)
        return _json(oip.model_metadata(name, [str(model.version)], model.platform, model.inputs, model.outputs))

    async def model_ready(self, request: Request) -> Response:
        name, version = request.path_params["name"], request.path_params.get("version")
        model = self.model(name, version)
        if not model.ready:
            return _error(503, f"model {name!r} is not ready", name=name, ready=False)
        return _json({"name": name, "ready": True})

    async def infer(self, request: Request) -> Response:
        name, version = request.path_params["name"], request.path_params.get("version")
        model = self.ready_model(name, version)
        raw_length = request.headers.get("inference-header-content-length")
        header_length: int | None = None
        if raw_length is not None:
            if not raw_length.strip().isdigit():
                raise InvalidParameterValue(f"Inference-Header-Content-Length must be an integer, got {raw_length!r}")
            header_length = int(raw_length)
        decoded = oip.decode_request(await self.body(request), header_length=header_length)
        spec_in = model.inputs[0]
        if len(decoded.inputs) != 1:
            sent = ", ".join(repr(t.name) for t in decoded.inputs)
            raise InvalidParameterValue(
                f"model {name!r} takes one input ({spec_in.name!r}, shape {list(spec_in.shape)}), got {sent}"
            )
        tensor = decoded.inputs[0]
        rows = self.checked_rows(name, model, tensor.data, f"input {tensor.name!r} ({tensor.datatype})")
        spec_out = model.outputs[0]
        for wanted in decoded.outputs:
            if wanted.name != spec_out.name:
                raise InvalidParameterValue(
                    f"model {name!r} has no output {wanted.name!r} (outputs: {spec_out.name!r})"
                )
        result = await self.predict(name, model, rows, request_id(request))
        output = oip.InferOutput.of(spec_out.name, result, datatype=_output_datatype(spec_out.datatype, result))
        response = oip.InferResponse(name, str(model.version), decoded.id, (output,))
        body, json_length = oip.encode_response(response, binary_outputs=oip.binary_outputs(decoded))
        if json_length is None:
            return Response(body, media_type="application/json")
        return Response(body, media_type="application/octet-stream",
                        headers={"Inference-Header-Content-Length": str(json_length)})

    # -------------------------------------------------------------------------------------------- KServe v1

    async def v1_model(self, request: Request) -> Response:
        name = request.path_params["name"]
        model = self.model(name)
        return _json({"name": name, "ready": bool(model.ready)})

    async def v1_predict(self, request: Request) -> Response:
        name = request.path_params["name"]
        model = self.ready_model(name)
        document = await self.json_body(request)
        if not isinstance(document, dict) or "instances" not in document:
            raise InvalidParameterValue('the KServe v1 request must be a JSON object with "instances"')
        rows = self.checked_rows(name, model, _array(document["instances"], "instances"), '"instances"')
        result = await self.predict(name, model, rows, request_id(request))
        return _json({"predictions": _jsonable(result)})

    # -------------------------------------------------------------------------------------------- MLflow

    def only_model(self) -> tuple[str, ServedModel]:
        if len(self.models) != 1:
            raise ResourceDoesNotExist(
                f"POST /invocations serves a single model, this server has {len(self.models)} "
                "(use /v2/models/{name}/infer or /v1/models/{name}:predict)"
            )
        ((name, model),) = self.models.items()
        return name, model

    async def invocations(self, request: Request) -> Response:
        name, model = self.only_model()
        if not model.ready:
            raise ModelNotReady(f"model {name!r} is not ready")
        document = await self.json_body(request)
        field, data = _mlflow_rows(document)
        rows = self.checked_rows(name, model, data, f'"{field}"')
        result = await self.predict(name, model, rows, request_id(request))
        return _json({"predictions": _jsonable(result)})

    async def ping(self, request: Request) -> Response:
        waiting = sorted(name for name, model in self.models.items() if not model.ready)
        if waiting:
            return _error(503, f"models not ready: {', '.join(waiting)}")
        return PlainTextResponse("\n")

    async def version(self, request: Request) -> Response:
        return PlainTextResponse(_capstan_version())

    # -------------------------------------------------------------------------------------------- lifecycle

    @asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            for batcher in self.batchers.values():
                await batcher.close(drain=True)
            self.batchers.clear()


class CapstanErrorWithStatus(CapstanError):
    """A client error with an HTTP status of its own (415)."""

    code = "INVALID_PARAMETER_VALUE"

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.http_status = status


def _capstan_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("capstan")
    except PackageNotFoundError:  # running from a source tree that is not installed
        return "unknown"


def _output_datatype(declared: str, result: Array) -> str:
    """The declared output datatype when the predictions fit it (numbers for a numeric one), else theirs."""
    numeric = result.dtype.kind in "biuf"
    if (declared == "BYTES") != numeric:
        return declared
    return oip.datatype_of(result.dtype)


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


def serving_app(models: Mapping[str, ServedModel], *, max_body_bytes: int,
                batching: BatchingOptions | None) -> Starlette:
    """The ASGI app serving ``models`` (keyed by the name clients use) over OIP v2, KServe v1 and MLflow scoring."""
    if max_body_bytes < 1:
        raise InvalidParameterValue(f"max_body_bytes must be at least 1, got {max_body_bytes}")
    for name, model in models.items():
        if len(model.inputs) != 1 or len(model.outputs) < 1:
            raise InvalidParameterValue(
                f"model {name!r} must have exactly one input and at least one output, has {len(model.inputs)} "
                f"and {len(model.outputs)}"
            )
    if batching is not None:
        AdaptiveBatcher(lambda x: x, max_batch_size=batching.max_batch_size,  # validates the options now
                        max_delay_ms=batching.max_delay_ms, max_queue=batching.max_queue)
    state = _Serving(models, max_body_bytes, batching)
    model_routes: list[Route] = []
    for prefix in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
        model_routes += [
            Route(prefix, state.model_metadata, methods=["GET"]),
            Route(f"{prefix}/ready", state.model_ready, methods=["GET"]),
            Route(f"{prefix}/infer", state.infer, methods=["POST"]),
        ]
    routes = [
        Route("/v2/health/live", state.live, methods=["GET"]),
        Route("/v2/health/ready", state.server_ready, methods=["GET"]),
        Route("/v2", state.server_metadata, methods=["GET"]),
        *model_routes,
        Route("/v1/models/{name}:predict", state.v1_predict, methods=["POST"]),
        Route("/v1/models/{name}", state.v1_model, methods=["GET"]),
        Route("/invocations", state.invocations, methods=["POST"]),
        Route("/ping", state.ping, methods=["GET"]),
        Route("/health", state.ping, methods=["GET"]),
        Route("/version", state.version, methods=["GET"]),
    ]
    handlers: dict[Any, Callable[[Request, Exception], Awaitable[Response]]] = {
        CapstanError: _capstan_error,
        HTTPException: _http_error,
    }
    app = Starlette(routes=routes, exception_handlers=handlers, lifespan=state.lifespan)
    app.add_middleware(_RequestIdMiddleware)
    return app


async def _capstan_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, CapstanError)
    headers: dict[str, str] = {}
    if isinstance(exc, QueueFull):
        headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after_s)))
    extra: dict[str, object] = {}
    if exc.http_status >= 500:
        extra["request_id"] = request_id(request)
    return _error(exc.http_status, exc.message, headers, **extra)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    message = {404: f"no route {request.method} {request.url.path}",
               405: f"method {request.method} is not allowed on {request.url.path}"}.get(exc.status_code, exc.detail)
    return _error(exc.status_code, message, exc.headers)
