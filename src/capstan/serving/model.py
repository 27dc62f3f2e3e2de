"""What the serving app serves: the `ServedModel` protocol, and `SklearnServedModel` for an in-memory estimator.

A served model has one input tensor and answers one output tensor: ``predict`` takes the rows of the input
(axis 0 = rows, already checked against ``inputs[0]`` and cast to its datatype by the app) and returns one
prediction per row. ``predict`` is blocking; the app runs it off the event loop (or through an `AdaptiveBatcher`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from capstan.errors import InvalidParameterValue
from capstan.serving.oip import TensorMetadata, datatype_of

__all__ = ["ServedModel", "SklearnServedModel"]


class ServedModel(Protocol):
    """A model the serving app can answer for: metadata, readiness and a blocking batch ``predict``."""

    @property
    def name(self) -> str: ...

    @property
    def version(self) -> str: ...

    @property
    def platform(self) -> str: ...

    @property
    def inputs(self) -> Sequence[TensorMetadata]: ...

    @property
    def outputs(self) -> Sequence[TensorMetadata]: ...

    @property
    def ready(self) -> bool: ...

    def predict(self, x: npt.NDArray[Any]) -> npt.NDArray[Any]:
        """One prediction per row of ``x`` (axis 0)."""
        ...


class SklearnServedModel:
    """A fitted scikit-learn estimator as a `ServedModel`: input ``input-0`` (FP64, ``[-1, n_features]``), output
    ``output-0`` (``[-1]``, the datatype of ``estimator.classes_`` for a classifier, FP64 otherwise)."""

    platform = "sklearn"

    def __init__(self, name: str, version: str, estimator: Any, n_features: int, *, ready: bool = True) -> None:
        if n_features < 1:
            raise InvalidParameterValue(f"n_features must be at least 1, got {n_features}")
        if not callable(getattr(estimator, "predict", None)):
            raise InvalidParameterValue(f"model {name!r}: the estimator has no predict method")
        self.name = name
        self.version = str(version)
        self.estimator = estimator
        self.n_features = n_features
        self.ready = ready
        classes = getattr(estimator, "classes_", None)
        out_type = datatype_of(np.asarray(classes).dtype) if classes is not None else "FP64"
        self.inputs: tuple[TensorMetadata, ...] = (TensorMetadata("input-0", "FP64", (-1, n_features)),)
        self.outputs: tuple[TensorMetadata, ...] = (TensorMetadata("output-0", out_type, (-1,)),)

    def predict(self, x: npt.NDArray[Any]) -> npt.NDArray[Any]:
        """``estimator.predict`` on ``x`` as a 2-D float array of ``n_features`` columns."""
        rows = np.asarray(x, dtype=np.float64)
        if rows.ndim != 2 or rows.shape[1] != self.n_features:
            raise InvalidParameterValue(
                f"model {self.name!r} expects rows of {self.n_features} features, got shape {list(rows.shape)}"
            )
        return np.asarray(self.estimator.predict(rows))
