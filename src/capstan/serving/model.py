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
    """A fitted scikit-learn estimator as a `ServedModel`: input ``input-0`` (FP64, ``[-1, n_features]`` unless
    ``input`` says otherwise, e.g. from the model's signature), output ``output-0`` (``[-1]``, the datatype of
    ``estimator.classes_`` for a classifier, FP64 otherwise). An estimator fitted on a DataFrame
    (``feature_names_in_``) is given one with those column names, so it predicts without a feature-name warning."""

    platform = "sklearn"

    def __init__(self, name: str, version: str, estimator: Any, n_features: int, *, ready: bool = True,
                 input: TensorMetadata | None = None) -> None:
        if n_features < 1:
            raise InvalidParameterValue(f"n_features must be at least 1, got {n_features}")
        if not callable(getattr(estimator, "predict", None)):
            raise InvalidParameterValue(f"model {name!r}: the estimator has no predict method")
        self.name = name
        self.version = str(version)
        self.estimator = estimator
        self.n_features = n_features
        self.ready = ready
        names = getattr(estimator, "feature_names_in_", None)
        self.columns: list[str] | None = [str(c) for c in names] if names is not None else None
        classes = getattr(estimator, "classes_", None)
        out_type = datatype_of(np.asarray(classes).dtype) if classes is not None else "FP64"
        spec = input or TensorMetadata("input-0", "FP64", (-1, n_features))
        self.inputs: tuple[TensorMetadata, ...] = (spec,)
        self.outputs: tuple[TensorMetadata, ...] = (TensorMetadata("output-0", out_type, (-1,)),)

    def predict(self, x: npt.NDArray[Any]) -> npt.NDArray[Any]:
        """``estimator.predict`` on ``x`` as a 2-D array of ``n_features`` columns (a DataFrame when the estimator
        was fitted on one)."""
        rows = np.asarray(x)
        if rows.dtype.kind not in "fiub":
            rows = rows.astype(np.float64)
        if rows.ndim != 2 or rows.shape[1] != self.n_features:
            raise InvalidParameterValue(
                f"model {self.name!r} expects rows of {self.n_features} features, got shape {list(rows.shape)}"
            )
        if self.columns is not None and len(self.columns) == self.n_features:
            import pandas as pd

            return np.asarray(self.estimator.predict(pd.DataFrame(rows, columns=self.columns, copy=False)))
        return np.asarray(self.estimator.predict(rows))
