"""The transport-independent serving core that the REST app and the gRPC server share.

`ServingCore` holds the served models, checks a request's rows against a model's input, predicts them (through the
model's one `AdaptiveBatcher` when batching is on, whichever protocol the request came in on; in a worker thread per
request otherwise) and reports to a `ServingObserver`:

- `ServingCore.track` wraps one inference request and reports ``request_done`` with its protocol, the HTTP status
  it was answered with (the HTTP equivalent for gRPC: 200, 400, 404, 413, 503, 500) and how long it took;
- `ServingCore.predict` reports ``predicted`` (the rows and predictions of each successful request) and, without
  batching, ``batch_done`` per request; the batchers report ``batch_done`` per batch and ``queue_depth``.

An observer that raises is logged and otherwise ignored: metrics never fail a prediction. Create and use the core
inside the serving event loop (the batchers are created there on first use); `ServingCore.aclose` drains them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import secrets
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import numpy as np
import numpy.typing as npt

from capstan.errors import CapstanError, InvalidParameterValue, ResourceDoesNotExist
from capstan.serving import oip
from capstan.serving.batching import AdaptiveBatcher, inline_for_small_batches
from capstan.serving.model import ServedModel
from capstan.serving.observe import NULL_OBSERVER, ServingObserver

__all__ = ["BatchingOptions", "ModelFailed", "ModelNotReady", "RequestIds", "RequestTracker", "ServingCore",
           "capstan_version", "output_datatype", "request_id_of"]

log = logging.getLogger(__name__)

Array = npt.NDArray[Any]
_NUMERIC_KINDS = frozenset("iuf")
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


@dataclass(frozen=True)
class BatchingOptions:
    """Options of the per-model `AdaptiveBatcher`: rows per batch, how long a batch waits, rows allowed queued."""

    max_batch_size: int = 32
    max_delay_ms: float = 5.0
    max_queue: int = 1024

    def validate(self) -> None:
        """Raise `InvalidParameterValue` naming the bad option (the batcher's own checks)."""
        AdaptiveBatcher(lambda x: x, max_batch_size=self.max_batch_size, max_delay_ms=self.max_delay_ms,
                        max_queue=self.max_queue)


class ModelNotReady(CapstanError):
    """The model exists but is not ready to answer."""

    code = "TEMPORARILY_UNAVAILABLE"
    http_status = 503


class ModelFailed(CapstanError):
    """The model raised in ``predict``; the client gets the request id, the log gets the traceback."""


class _GuardedObserver:
    """Passes calls to an observer, logging (not raising) what it raises."""

    def __init__(self, observer: ServingObserver) -> None:
        self.observer = observer

    def call(self, hook: str, *args: Any) -> None:
        try:
            getattr(self.observer, hook)(*args)
        except Exception:  # a broken observer must not fail the request it observes
            log.exception("serving observer %s.%s failed", type(self.observer).__name__, hook)


class RequestTracker:
    """Times one inference request and reports ``request_done`` when it ends (see `ServingCore.track`).

    Set `version` once the model is known; `status` is 200 unless the block raises (the error's HTTP status, 500
    for anything that is not a `CapstanError`) or the transport sets it.
    """

    def __init__(self, core: ServingCore, protocol: str, model: str, version: str | None) -> None:
        self.core = core
        self.protocol = protocol
        self.model = model
        self.version = version or ""
        self.status = 200
        self.started = 0.0

    def __enter__(self) -> RequestTracker:
        self.started = self.core.clock()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if error is not None:
            self.status = error.http_status if isinstance(error, CapstanError) else 500
            if isinstance(error, asyncio.CancelledError):
                self.status = 499  # the client went away (nginx's convention)
        seconds = max(0.0, self.core.clock() - self.started)
        self.core.observer.call("request_done", self.model, self.version, self.protocol, self.status, seconds)


class ServingCore:
    """The served models, their readiness and batchers, and `predict` (see the module docstring)."""

    def __init__(self, models: Mapping[str, ServedModel], *, batching: BatchingOptions | None,
                 observer: ServingObserver | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        for name, model in models.items():
            if len(model.inputs) != 1 or len(model.outputs) < 1:
                raise InvalidParameterValue(
                    f"model {name!r} must have exactly one input and at least one output, has {len(model.inputs)} "
                    f"and {len(model.outputs)}"
                )
        if batching is not None:
            batching.validate()
        self.models = dict(models)
        self.batching = batching
        self.observer = _GuardedObserver(observer if observer is not None else NULL_OBSERVER)
        self.clock = clock
        self.batchers: dict[str, AdaptiveBatcher] = {}

    # -------------------------------------------------------------------------------------------- lookup

    def model(self, name: str, version: str | None = None) -> ServedModel:
        """The model served as ``name`` (at ``version`` when given); `ResourceDoesNotExist` otherwise."""
        model = self.models.get(name)
        if model is None:
            raise ResourceDoesNotExist(f"model {name!r} is not served here (models: {', '.join(sorted(self.models))})")
        if version is not None and version != str(model.version):
            raise ResourceDoesNotExist(f"model {name!r} has no version {version!r} (served: {model.version!r})")
        return model

    def ready_model(self, name: str, version: str | None = None) -> ServedModel:
        """`model`, or `ModelNotReady` when it is not ready."""
        model = self.model(name, version)
        if not model.ready:
            raise ModelNotReady(f"model {name!r} is not ready")
        return model

    def not_ready(self) -> list[str]:
        """The names of the models that are not ready, sorted (empty: the server is ready)."""
        return sorted(name for name, model in self.models.items() if not model.ready)

    def only_model(self) -> tuple[str, ServedModel]:
        """The single model of a one-model server (MLflow scoring); `ResourceDoesNotExist` otherwise."""
        if len(self.models) != 1:
            raise ResourceDoesNotExist(
                f"POST /invocations serves a single model, this server has {len(self.models)} "
                "(use /v2/models/{name}/infer or /v1/models/{name}:predict)"
            )
        ((name, model),) = self.models.items()
        return name, model

    # -------------------------------------------------------------------------------------------- inference

    def track(self, protocol: str, model: str, version: str | None = None) -> RequestTracker:
        """A context manager around one inference request that reports ``request_done`` when it ends."""
        return RequestTracker(self, protocol, model, version)

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

    async def predict(self, name: str, model: ServedModel, rows: Array, request_id: str) -> Array:
        """The model's predictions for ``rows`` (one per row); `ModelFailed` naming ``request_id`` if it raises."""
        try:
            if self.batching is None:
                result = await self._predict_alone(name, model, rows)
            else:
                result = await self.batcher(name, model).submit(rows)
        except CapstanError:
            raise
        except Exception as exc:
            log.exception("model %r failed to predict (request id %s)", name, request_id)
            raise ModelFailed(f"model {name!r} failed to predict (request id {request_id})") from exc
        predictions = np.asarray(result)
        self.observer.call("predicted", name, str(model.version), request_id, rows, predictions)
        return predictions

    async def _predict_alone(self, name: str, model: ServedModel, rows: Array) -> Array:
        started = self.clock()
        try:
            return await asyncio.get_running_loop().run_in_executor(None, model.predict, rows)
        finally:
            seconds = max(0.0, self.clock() - started)
            self.observer.call("batch_done", name, str(model.version), int(rows.shape[0]), seconds)

    def batcher(self, name: str, model: ServedModel) -> AdaptiveBatcher:
        """The model's batcher, created on first use (in the running event loop)."""
        batcher = self.batchers.get(name)
        if batcher is None:
            assert self.batching is not None
            version = str(model.version)
            observer = self.observer

            def batch_done(rows: int, seconds: float) -> None:
                observer.call("batch_done", name, version, rows, seconds)

            def queue_depth(rows: int) -> None:
                observer.call("queue_depth", name, version, rows)

            batcher = AdaptiveBatcher(model.predict, max_batch_size=self.batching.max_batch_size,
                                      max_delay_ms=self.batching.max_delay_ms, max_queue=self.batching.max_queue,
                                      clock=self.clock, on_batch_done=batch_done, on_queue_depth=queue_depth,
                                      run_in=inline_for_small_batches() if getattr(model, "cheap_predict", False)
                                      else None)
            self.batchers[name] = batcher
        return batcher

    async def aclose(self) -> None:
        """Drain and close the batchers (queued requests are still answered)."""
        for batcher in list(self.batchers.values()):
            await batcher.close(drain=True)
        self.batchers.clear()


def output_datatype(declared: str, result: Array) -> str:
    """The declared output datatype when the predictions fit it (numbers for a numeric one), else theirs."""
    numeric = result.dtype.kind in "biuf"
    if (declared == "BYTES") != numeric:
        return declared
    return oip.datatype_of(result.dtype)


def request_id_of(sent: str, new: Callable[[], str] | None = None) -> str:
    """The id of a request: the client's when it is sane (1-128 of ``A-Za-z0-9._:-``), else ``new()`` (default: a
    random UUID's 32 hex digits)."""
    if sent and _VALID_REQUEST_ID.match(sent):
        return sent
    return new() if new is not None else uuid.uuid4().hex


class RequestIds:
    """Ids for requests that bring none: 32 hex digits, 16 random ones drawn per process and a 16-digit counter.

    Unique across worker processes and restarts as random UUIDs are (64 random bits per process, drawn again in a
    process forked after this object was made), for a fraction of `uuid.uuid4`'s cost.
    """

    __slots__ = ("_count", "_pid", "_prefix")

    def __init__(self) -> None:
        self._pid = -1
        self._prefix = ""
        self._count = 0

    def new(self) -> str:
        """A new id."""
        if self._pid != os.getpid():
            self._pid = os.getpid()
            self._prefix = secrets.token_hex(8)
            self._count = 0
        self._count += 1
        return f"{self._prefix}{self._count:016x}"

    def of(self, sent: str) -> str:
        """`request_id_of` with `new`."""
        if sent and _VALID_REQUEST_ID.match(sent):
            return sent
        return self.new()


def capstan_version() -> str:
    """The installed Capstan version ("unknown" in a source tree that is not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("capstan")
    except PackageNotFoundError:  # running from a source tree that is not installed
        return "unknown"
