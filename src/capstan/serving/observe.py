"""The serving observer port: what the serving core reports as it answers, for metrics, payload logs and drift.

The serving core (`capstan.serving.core`) calls a `ServingObserver` at fixed points; it never imports Prometheus,
Parquet or the drift monitor. Adapters (`capstan.serving.metrics`, `capstan.serving.payload_log`,
`capstan.serving.drift_monitor`) implement it and are combined with `Observers`. Calls are made on the serving event
loop (or the batcher's), so an observer must be quick and must not block: anything slow is queued and done elsewhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy.typing as npt

__all__ = ["NULL_OBSERVER", "NullObserver", "Observers", "ServingObserver"]

Array = npt.NDArray[Any]


class ServingObserver(Protocol):
    """Receives what the serving core sees. ``protocol`` is ``v2``, ``v2-grpc``, ``v1`` or ``mlflow``."""

    def request_done(self, model: str, version: str, protocol: str, status: int, seconds: float) -> None:
        """A request for ``model``/``version`` was answered with ``status`` after ``seconds``."""
        ...

    def predicted(self, model: str, version: str, request_id: str, inputs: Array, outputs: Array) -> None:
        """A request's rows (as the model received them) and its predictions (one per row)."""
        ...

    def batch_done(self, model: str, version: str, rows: int, seconds: float) -> None:
        """The model predicted one batch of ``rows`` rows in ``seconds`` (every call of ``predict``)."""
        ...

    def queue_depth(self, model: str, version: str, rows: int) -> None:
        """Rows waiting in the model's batching queue now."""
        ...


class NullObserver:
    """An observer that ignores everything (the default)."""

    def request_done(self, model: str, version: str, protocol: str, status: int, seconds: float) -> None:
        """Ignored."""

    def predicted(self, model: str, version: str, request_id: str, inputs: Array, outputs: Array) -> None:
        """Ignored."""

    def batch_done(self, model: str, version: str, rows: int, seconds: float) -> None:
        """Ignored."""

    def queue_depth(self, model: str, version: str, rows: int) -> None:
        """Ignored."""


NULL_OBSERVER = NullObserver()


class Observers:
    """Several observers as one, called in order."""

    def __init__(self, observers: Sequence[ServingObserver]) -> None:
        self.observers = tuple(observers)

    def request_done(self, model: str, version: str, protocol: str, status: int, seconds: float) -> None:
        """Passed to each observer."""
        for observer in self.observers:
            observer.request_done(model, version, protocol, status, seconds)

    def predicted(self, model: str, version: str, request_id: str, inputs: Array, outputs: Array) -> None:
        """Passed to each observer."""
        for observer in self.observers:
            observer.predicted(model, version, request_id, inputs, outputs)

    def batch_done(self, model: str, version: str, rows: int, seconds: float) -> None:
        """Passed to each observer."""
        for observer in self.observers:
            observer.batch_done(model, version, rows, seconds)

    def queue_depth(self, model: str, version: str, rows: int) -> None:
        """Passed to each observer."""
        for observer in self.observers:
            observer.queue_depth(model, version, rows)
