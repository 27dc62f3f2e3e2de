"""Typed helpers that define a study's search space in Python (``capstan.tune``)::

    import capstan
    from capstan import tune

    study = capstan.Study(
        "digits-mlp", objective="accuracy",
        parameters={
            "lr": tune.Float(1e-4, 1e-1, log=True),
            "layers": tune.Int(1, 3),
            "solver": tune.Categorical(["adam", "sgd"]),
            "momentum": tune.Float(0.5, 0.99, when={"solver": ["sgd"]}),
        },
        trial=train)

Each helper is a small record whose `to_dict` is the YAML form of the parameter; the study spec checks them
(`capstan.tuning.spec.parse_study_spec`), so the SDK and YAML refuse the same mistakes with the same messages.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from capstan.tuning.spec import Choice

__all__ = ["Categorical", "Float", "Int", "Param", "Script"]

When = Mapping[str, Sequence[Choice] | Choice] | None


def _when(when: When) -> dict[str, Any]:
    if not when:
        return {}
    return {"when": {name: list(v) if isinstance(v, (list, tuple)) else [v] for name, v in when.items()}}


@dataclass(frozen=True, slots=True)
class Float:
    """A real-valued parameter in ``low``..``high`` (both included), on a log scale with ``log``, in multiples of
    ``step`` when given; ``when`` makes it conditional on categorical parameters' values."""

    low: float
    high: float
    log: bool = False
    step: float | None = None
    when: When = None

    def to_dict(self) -> dict[str, Any]:
        """The YAML form."""
        out: dict[str, Any] = {"type": "float", "min": self.low, "max": self.high}
        if self.log:
            out["log"] = True
        if self.step is not None:
            out["step"] = self.step
        return out | _when(self.when)


@dataclass(frozen=True, slots=True)
class Int:
    """A whole-number parameter in ``low``..``high`` (both included), by ``step``, on a log scale with ``log``."""

    low: int
    high: int
    step: int = 1
    log: bool = False
    when: When = None

    def to_dict(self) -> dict[str, Any]:
        """The YAML form."""
        out: dict[str, Any] = {"type": "int", "min": self.low, "max": self.high}
        if self.step != 1:
            out["step"] = self.step
        if self.log:
            out["log"] = True
        return out | _when(self.when)


@dataclass(frozen=True, slots=True)
class Categorical:
    """A parameter taking one of ``values`` (strings, numbers or booleans)."""

    values: Sequence[Choice]
    when: When = None

    def to_dict(self) -> dict[str, Any]:
        """The YAML form."""
        return {"type": "categorical", "values": list(self.values)} | _when(self.when)


@dataclass(frozen=True, slots=True)
class Script:
    """A script trial: ``path`` (a ``.py`` file runs with this Python) with ``args`` and ``env`` values in which
    ``${params.NAME}`` is replaced by the trial's value of parameter ``NAME``."""

    path: str
    args: Sequence[str] = ()
    env: Mapping[str, str] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The YAML form of the trial template."""
        return {"script": self.path, "args": list(self.args), "env": dict(self.env or {})}


Param = Float | Int | Categorical
"""Any search-space helper."""
