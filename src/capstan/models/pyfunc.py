"""`PyFuncModel`: a flavor-independent wrapper with ``predict``, as returned by ``load_model(..., as_pyfunc=True)``."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any


class PyFuncModel:
    """A loaded model with a uniform ``predict(data)`` and its ``MLmodel`` metadata.

    ``native`` is the underlying model object (for example the scikit-learn estimator).
    """

    def __init__(self, native: Any, metadata: Mapping[str, Any], *, path: Path | None = None,
                 predict_fn: str = "predict") -> None:
        self.native = native
        self.metadata = dict(metadata)
        self.path = path
        self._predict_fn = predict_fn

    @property
    def flavors(self) -> tuple[str, ...]:
        """Flavor names recorded in ``MLmodel``."""
        return tuple((self.metadata.get("flavors") or {}).keys())

    @property
    def model_id(self) -> str | None:
        """The MLflow 3 logged-model id, when the model was logged as one."""
        value = self.metadata.get("model_id")
        return str(value) if value else None

    @property
    def run_id(self) -> str | None:
        """The run that logged the model, when known."""
        value = self.metadata.get("run_id")
        return str(value) if value else None

    @property
    def signature(self) -> Mapping[str, Any] | None:
        """The ``signature`` entry of ``MLmodel`` (schemas as JSON strings), or ``None``."""
        value = self.metadata.get("signature")
        return value if isinstance(value, Mapping) else None

    def predict(self, data: Any) -> Any:
        """Run the model's prediction function on ``data``."""
        return getattr(self.native, self._predict_fn)(data)

    def load_input_example(self) -> Any:
        """The input example saved with the model, or ``None``."""
        info = self.metadata.get("saved_input_example_info")
        if not info or self.path is None:
            return None
        from capstan.models.signature import load_example

        return load_example(self.path, info)

    def __repr__(self) -> str:
        return f"PyFuncModel(flavors={list(self.flavors)}, native={type(self.native).__name__})"
