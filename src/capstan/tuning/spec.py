"""The study spec: one immutable, typed record of a hyperparameter study, read from YAML, the SDK or the API.

Pure: no I/O, no clock. `parse_study_spec` checks a mapping and raises `InvalidParameterValue` naming the first
bad field (``study.parameters.lr.min: ...``). Whether a trial's script or function exists is checked by the
controller before the study starts (`capstan.tuning.preflight`), not here.

A study reads like Katib's Experiment: an objective (a metric and a goal, plus metrics to record), a search space of
``int``, ``float`` (optionally on a log scale), ``categorical`` and conditional parameters, an algorithm (Optuna's
samplers), early stopping (Optuna's pruners), limits (``max_trials``, ``parallel_trials``, ``max_failed_trials``), a
seed, and a trial template: a Python function, a script whose arguments carry ``${params.NAME}`` placeholders, or a
training job.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from capstan.errors import InvalidParameterValue
from capstan.resources.quantity import parse_quantity
from capstan.training.spec import TrainingJobSpec, parse_job_spec

__all__ = [
    "ALGORITHMS", "EARLY_STOPPING", "AlgorithmSpec", "Choice", "EarlyStopping", "FunctionTrial", "JobTrial",
    "Objective", "Parameter", "ScriptTrial", "StudySpec", "TrialResources", "TrialTemplate", "grid_space",
    "parse_study_spec", "placeholders_in", "substitute", "substitute_env",
]

ROOT = "study"
Goal = Literal["maximize", "minimize"]
AlgorithmName = Literal["random", "grid", "tpe", "cmaes"]
EarlyStoppingKind = Literal["none", "median", "asha", "hyperband"]
ParamType = Literal["int", "float", "categorical"]
Choice = str | int | float | bool
"""A categorical value."""

ALGORITHMS: tuple[str, ...] = ("random", "grid", "tpe", "cmaes")
EARLY_STOPPING: tuple[str, ...] = ("none", "median", "asha", "hyperband")
PARAM_TYPES: tuple[str, ...] = ("int", "float", "categorical")
MAX_GRID = 100_000
"""The most points a grid may have (the product of every parameter's values)."""

_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_PARAM_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,127}$")
_METRIC = re.compile(r"^[A-Za-z0-9_.\-/ ]{1,250}$")
_FUNCTION = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*"
                       r"(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
PLACEHOLDER = re.compile(r"\$\{params\.([^}]*)\}")
_FIELDS = frozenset({"name", "objective", "parameters", "algorithm", "early_stopping", "max_trials",
                     "parallel_trials", "max_failed_trials", "seed", "trial", "resources", "queue", "priority",
                     "experiment", "working_dir"})
_PARAM_FIELDS = frozenset({"type", "min", "max", "step", "log", "values", "when"})
_EARLY_FIELDS: dict[str, frozenset[str]] = {
    "none": frozenset({"kind"}),
    "median": frozenset({"kind", "startup_trials", "warmup_steps", "interval_steps"}),
    "asha": frozenset({"kind", "min_resource", "reduction_factor", "min_early_stopping_rate"}),
    "hyperband": frozenset({"kind", "min_resource", "max_resource", "reduction_factor"}),
}
_ALGORITHM_FIELDS: dict[str, frozenset[str]] = {
    "random": frozenset({"name"}),
    "grid": frozenset({"name"}),
    "tpe": frozenset({"name", "startup_trials", "multivariate"}),
    "cmaes": frozenset({"name", "startup_trials", "sigma0"}),
}


@dataclass(frozen=True, slots=True)
class Parameter:
    """One dimension of the search space.

    ``int`` and ``float`` take ``min``..``max`` (both included), an optional ``step`` and ``log`` (a log-scale
    range, above 0); ``categorical`` takes ``values``. ``when`` makes the parameter conditional: it is sampled only
    when every named categorical parameter has one of the listed values (``{"optimizer": ("sgd",)}``).
    """

    name: str
    type: ParamType
    min: float | None = None
    max: float | None = None
    step: float | None = None
    log: bool = False
    values: tuple[Choice, ...] = ()
    when: tuple[tuple[str, tuple[Choice, ...]], ...] = ()

    def active(self, params: Mapping[str, Any]) -> bool:
        """Whether the parameter is sampled, given the values of the parameters sampled before it."""
        return all(name in params and params[name] in values for name, values in self.when)

    def to_dict(self) -> dict[str, Any]:
        """The parameter as plain data (what `parse_study_spec` reads back)."""
        out: dict[str, Any] = {"type": self.type}
        if self.type == "categorical":
            out["values"] = list(self.values)
        else:
            out.update({"min": self.min, "max": self.max})
            if self.step is not None:
                out["step"] = self.step
            if self.log:
                out["log"] = True
        if self.when:
            out["when"] = {name: list(values) for name, values in self.when}
        return out


@dataclass(frozen=True, slots=True)
class Objective:
    """What a trial is judged by: ``metric`` and its ``goal``; ``additional_metrics`` are recorded beside it."""

    metric: str
    goal: Goal = "maximize"
    additional_metrics: tuple[str, ...] = ()

    @property
    def metrics(self) -> tuple[str, ...]:
        """The objective metric, then the additional ones."""
        return (self.metric, *self.additional_metrics)


@dataclass(frozen=True, slots=True)
class AlgorithmSpec:
    """The sampler: ``random``, ``grid``, ``tpe`` or ``cmaes`` (Optuna's). ``startup_trials`` are sampled at
    random before TPE or CMA-ES takes over (Optuna's defaults when unset); ``multivariate`` (TPE) models the
    parameters jointly; ``sigma0`` (CMA-ES) is the initial step size."""

    name: AlgorithmName = "tpe"
    startup_trials: int | None = None
    multivariate: bool = False
    sigma0: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """As plain data."""
        out: dict[str, Any] = {"name": self.name}
        if self.startup_trials is not None:
            out["startup_trials"] = self.startup_trials
        if self.multivariate:
            out["multivariate"] = True
        if self.sigma0 is not None:
            out["sigma0"] = self.sigma0
        return out


@dataclass(frozen=True, slots=True)
class EarlyStopping:
    """The pruner. ``median``: stop a trial whose value at a step is worse than the median of the finished trials'
    at that step (after ``startup_trials`` finished trials and ``warmup_steps`` steps, checked every
    ``interval_steps``). ``asha``: asynchronous successive halving from ``min_resource`` steps, keeping
    1/``reduction_factor`` per rung. ``hyperband``: several ASHA brackets between ``min_resource`` and
    ``max_resource``. Unset values take Optuna's defaults (``auto`` resources)."""

    kind: EarlyStoppingKind = "none"
    startup_trials: int | None = None
    warmup_steps: int | None = None
    interval_steps: int | None = None
    min_resource: int | None = None
    max_resource: int | None = None
    reduction_factor: int | None = None
    min_early_stopping_rate: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """As plain data (only the settings that are set)."""
        out: dict[str, Any] = {"kind": self.kind}
        for name in sorted(_EARLY_FIELDS[self.kind] - {"kind"}):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return out


@dataclass(frozen=True, slots=True)
class FunctionTrial:
    """A Python function ``module:qualname`` called with the trial's parameters (a dict) in a worker process."""

    function: str

    def to_dict(self) -> dict[str, Any]:
        """As plain data."""
        return {"function": self.function}


@dataclass(frozen=True, slots=True)
class ScriptTrial:
    """A script run once per trial: ``script`` (a ``.py`` file runs with this Python, anything else must be
    executable) with ``args`` and ``env`` values in which ``${params.NAME}`` is replaced by the trial's value."""

    script: str
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """As plain data."""
        return {"script": self.script, "args": list(self.args), "env": dict(self.env)}


@dataclass(frozen=True, slots=True)
class JobTrial:
    """A training job per trial (`capstan.training`): the job's ``args`` and ``env`` values may carry
    ``${params.NAME}`` placeholders; its workers and resources are the job's own (the queue admits each trial's
    gang)."""

    job: TrainingJobSpec

    def to_dict(self) -> dict[str, Any]:
        """As plain data."""
        return {"job": self.job.to_dict()}


TrialTemplate = FunctionTrial | ScriptTrial | JobTrial


@dataclass(frozen=True, slots=True)
class TrialResources:
    """What each function or script trial asks the queue for (a training job trial asks for its job's)."""

    cpu: float = 1.0
    memory: int = 0
    gpus: float = 0.0
    gpu_flavor: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """As plain data (memory in bytes)."""
        return {"cpu": self.cpu, "memory": self.memory, "gpus": self.gpus, "gpu_flavor": self.gpu_flavor}


@dataclass(frozen=True, slots=True)
class StudySpec:
    """A checked study. ``parameters`` are in sampling order (a conditional parameter after the ones it depends
    on). ``max_failed_trials`` None means no limit besides ``max_trials``. ``experiment`` is the tracking
    experiment of the study's parent run and its trials' child runs (default: the study's name). ``working_dir``
    is where scripts and function modules are found and trials start (default: the current directory)."""

    name: str
    objective: Objective
    parameters: tuple[Parameter, ...]
    trial: TrialTemplate
    algorithm: AlgorithmSpec = field(default_factory=AlgorithmSpec)
    early_stopping: EarlyStopping = field(default_factory=EarlyStopping)
    max_trials: int = 10
    parallel_trials: int = 1
    max_failed_trials: int | None = None
    seed: int | None = None
    resources: TrialResources = field(default_factory=TrialResources)
    queue: str | None = None
    priority: str | None = None
    experiment: str | None = None
    working_dir: str | None = None

    @property
    def experiment_name(self) -> str:
        """The tracking experiment of the study's runs."""
        return self.experiment or self.name

    def parameter(self, name: str) -> Parameter:
        """The parameter called ``name`` (KeyError when there is none)."""
        for parameter in self.parameters:
            if parameter.name == name:
                return parameter
        raise KeyError(name)

    def trial_limit(self) -> int:
        """How many trials the study runs at most: ``max_trials``, or the grid's size when that is smaller."""
        if self.algorithm.name == "grid":
            size = math.prod(len(values) for values in grid_space(self.parameters).values())
            return min(self.max_trials, size)
        return self.max_trials

    def to_dict(self) -> dict[str, Any]:
        """The spec as plain JSON-able data (what `parse_study_spec` reads back)."""
        return {
            "name": self.name,
            "objective": {"metric": self.objective.metric, "goal": self.objective.goal,
                          "additional_metrics": list(self.objective.additional_metrics)},
            "parameters": {p.name: p.to_dict() for p in self.parameters},
            "algorithm": self.algorithm.to_dict(),
            "early_stopping": self.early_stopping.to_dict(),
            "max_trials": self.max_trials,
            "parallel_trials": self.parallel_trials,
            "max_failed_trials": self.max_failed_trials,
            "seed": self.seed,
            "trial": self.trial.to_dict(),
            "resources": self.resources.to_dict(),
            "queue": self.queue,
            "priority": self.priority,
            "experiment": self.experiment,
            "working_dir": self.working_dir,
        }


# -- placeholders ---------------------------------------------------------------------------------------------------
def placeholders_in(text: str) -> list[str]:
    """The parameter names ``${params.NAME}`` placeholders in ``text`` refer to."""
    return PLACEHOLDER.findall(text)


def format_value(value: Any) -> str:
    """How a parameter value is written into an argument: ``repr`` for floats (every digit), ``str`` otherwise."""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def substitute(args: Sequence[str], params: Mapping[str, Any]) -> tuple[str, ...]:
    """``args`` with every ``${params.NAME}`` replaced by the trial's value. An argument that refers to a parameter
    the trial did not sample (an inactive conditional parameter) is left out, so ``--momentum=${params.momentum}``
    disappears when ``momentum`` is not active."""
    out: list[str] = []
    for arg in args:
        names = placeholders_in(arg)
        if any(name not in params for name in names):
            continue
        out.append(PLACEHOLDER.sub(lambda m: format_value(params[m.group(1)]), arg))
    return tuple(out)


def substitute_env(env: Sequence[tuple[str, str]], params: Mapping[str, Any]) -> dict[str, str]:
    """``env`` with placeholders replaced (see `substitute`); a variable that refers to a parameter the trial did
    not sample is left out."""
    out: dict[str, str] = {}
    for key, value in env:
        replaced = substitute([value], params)
        if replaced:
            out[key] = replaced[0]
    return out


def grid_space(parameters: Sequence[Parameter]) -> dict[str, list[Choice]]:
    """Every value each parameter takes on a grid (ints: ``min..max`` by ``step``; floats need a ``step``)."""
    space: dict[str, list[Choice]] = {}
    for p in parameters:
        if p.type == "categorical":
            space[p.name] = list(p.values)
            continue
        assert p.min is not None and p.max is not None
        step = p.step if p.step is not None else 1
        count = math.floor((p.max - p.min) / step + 1e-9) + 1
        if p.type == "int":
            space[p.name] = [int(p.min + i * step) for i in range(count)]
        else:
            space[p.name] = [round(p.min + i * step, 12) for i in range(count)]
    return space


# -- parsing --------------------------------------------------------------------------------------------------------
def _fail(path: str, message: str) -> InvalidParameterValue:
    return InvalidParameterValue(f"{path}: {message}")


def _mapping(value: object, path: str, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise _fail(path, f"expected a mapping of {what}, got {value!r}")
    return value


def _known(data: Mapping[str, Any], allowed: frozenset[str], path: str) -> None:
    unknown = sorted(str(k) for k in data if k not in allowed)
    if unknown:
        raise _fail(f"{path}.{unknown[0]}", f"unknown field (fields: {', '.join(sorted(allowed))})")


def _int(value: object, path: str, *, minimum: int, maximum: int = 10**9) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(path, f"expected a whole number, got {value!r}")
    if not minimum <= value <= maximum:
        raise _fail(path, f"must be between {minimum} and {maximum}, got {value}")
    return value


def _optional_int(value: object, path: str, *, minimum: int) -> int | None:
    return None if value is None else _int(value, path, minimum=minimum)


def _number(value: object, path: str) -> float:
    """A finite number; strings such as ``1e-4`` (YAML 1.1 reads them as text) are accepted."""
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise _fail(path, f"expected a number, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _fail(path, f"expected a number, got {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise _fail(path, f"expected a finite number, got {value!r}")
    return number


def _text(value: object, path: str) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise _fail(path, f"expected a string, got {value!r}")
    return value


def _strings(value: object, path: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise _fail(path, "expected a list of strings")
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise _fail(f"{path}[{i}]", f"expected a string, got {item!r}")
    return tuple(value)


def _objective(value: object) -> Objective:
    path = f"{ROOT}.objective"
    if value is None:
        raise _fail(path, "is required: the metric to optimise and its goal, e.g. {metric: accuracy, goal: maximize}")
    data = _mapping(value, path, "objective fields")
    _known(data, frozenset({"metric", "goal", "additional_metrics"}), path)
    metric = _text(data.get("metric"), f"{path}.metric")
    if metric is None or not _METRIC.match(metric):
        raise _fail(f"{path}.metric", f"{metric!r} is not a metric name (letters, digits, _ . - / and spaces)")
    goal = data.get("goal", "maximize")
    if goal not in ("maximize", "minimize"):
        raise _fail(f"{path}.goal", f"must be 'maximize' or 'minimize', got {goal!r}")
    extra = _strings(data.get("additional_metrics"), f"{path}.additional_metrics")
    for i, name in enumerate(extra):
        if not _METRIC.match(name) or name == metric:
            raise _fail(f"{path}.additional_metrics[{i}]", f"{name!r} is not a metric name, or repeats the objective")
    return Objective(metric, "maximize" if goal == "maximize" else "minimize", extra)


def _choice(value: object, path: str) -> Choice:
    if isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return value
    raise _fail(path, f"expected a string, number or boolean, got {value!r}")


def _range(data: Mapping[str, Any], path: str, kind: ParamType) -> tuple[float, float, float | None, bool]:
    for bound in ("min", "max"):
        if data.get(bound) is None:
            raise _fail(f"{path}.{bound}", f"is required for a {kind} parameter")
    low, high = _number(data["min"], f"{path}.min"), _number(data["max"], f"{path}.max")
    if kind == "int":
        for bound, number in (("min", low), ("max", high)):
            if number != int(number):
                raise _fail(f"{path}.{bound}", f"expected a whole number for an int parameter, got {number:g}")
    if low > high:
        raise _fail(f"{path}.min", f"{low:g} is greater than max {high:g}: the range is inverted")
    if low == high:
        raise _fail(f"{path}.max", f"equals min ({low:g}): the range is empty")
    log = data.get("log", False)
    if not isinstance(log, bool):
        raise _fail(f"{path}.log", f"expected true or false, got {log!r}")
    if log and low <= 0:
        raise _fail(f"{path}.min", f"a log-scale range must be above 0, got {low:g}")
    step: float | None = None
    if data.get("step") is not None:
        step = _number(data["step"], f"{path}.step")
        if step <= 0 or (kind == "int" and step != int(step)):
            raise _fail(f"{path}.step", f"must be a positive {'whole ' if kind == 'int' else ''}number, got {step:g}")
        if step > high - low:
            raise _fail(f"{path}.step", f"{step:g} is larger than the range {low:g}..{high:g}")
        if log and (kind == "float" or step != 1):
            raise _fail(f"{path}.step", "a log-scale range takes no step (Optuna samples it continuously)")
    return low, high, step, log


def _parameter(name: object, value: object) -> Parameter:
    if not isinstance(name, str) or not _PARAM_NAME.match(name):
        raise _fail(f"{ROOT}.parameters", f"{name!r} is not a parameter name (a letter or _, then letters, digits, "
                                          "_ . -)")
    path = f"{ROOT}.parameters.{name}"
    data = _mapping(value, path, "parameter fields (type, min, max, step, log, values, when)")
    _known(data, _PARAM_FIELDS, path)
    kind = data.get("type")
    if kind is None:
        kind = "categorical" if "values" in data else None
    if kind not in PARAM_TYPES:
        raise _fail(f"{path}.type", f"unknown parameter type {kind!r} (types: {', '.join(PARAM_TYPES)})")
    when = _when(data.get("when"), f"{path}.when")
    if kind == "categorical":
        for other in ("min", "max", "step", "log"):
            if other in data:
                raise _fail(f"{path}.{other}", "a categorical parameter takes values, not a range")
        raw = data.get("values")
        if isinstance(raw, (str, bytes)) or not isinstance(raw, (list, tuple)):
            raise _fail(f"{path}.values", "expected a list of values")
        if not raw:
            raise _fail(f"{path}.values", "is empty: a categorical parameter needs at least one value")
        values = tuple(_choice(v, f"{path}.values[{i}]") for i, v in enumerate(raw))
        if len(set(values)) != len(values):
            raise _fail(f"{path}.values", "lists a value twice")
        return Parameter(name, "categorical", values=values, when=when)
    if "values" in data:
        raise _fail(f"{path}.values", f"an {kind} parameter takes min and max, not values")
    low, high, step, log = _range(data, path, "int" if kind == "int" else "float")
    if kind == "int":
        return Parameter(name, "int", int(low), int(high), int(step) if step is not None else None, log, when=when)
    return Parameter(name, "float", low, high, step, log, when=when)


def _when(value: object, path: str) -> tuple[tuple[str, tuple[Choice, ...]], ...]:
    if value is None:
        return ()
    data = _mapping(value, path, "parameter names to the values that make this parameter active")
    if not data:
        raise _fail(path, "is empty: name the categorical parameter(s) and values that make this parameter active")
    out: list[tuple[str, tuple[Choice, ...]]] = []
    for name, raw in data.items():
        values = raw if isinstance(raw, (list, tuple)) else [raw]
        if not values:
            raise _fail(f"{path}.{name}", "lists no values")
        out.append((str(name), tuple(_choice(v, f"{path}.{name}") for v in values)))
    return tuple(out)


def _order(params: dict[str, Parameter]) -> tuple[Parameter, ...]:
    """The parameters in sampling order: declaration order, each conditional one after those it depends on."""
    for p in params.values():
        for name, values in p.when:
            path = f"{ROOT}.parameters.{p.name}.when.{name}"
            parent = params.get(name)
            if parent is None:
                raise _fail(path, f"{name!r} is not a parameter of the study")
            if parent.type != "categorical":
                raise _fail(path, f"{name!r} is a {parent.type} parameter; a condition names a categorical one")
            missing = [v for v in values if v not in parent.values]
            if missing:
                raise _fail(path, f"{missing[0]!r} is not one of {name}'s values {list(parent.values)}")
    ordered: list[Parameter] = []
    placed: set[str] = set()
    visiting: list[str] = []

    def place(p: Parameter) -> None:
        if p.name in placed:
            return
        if p.name in visiting:
            raise _fail(f"{ROOT}.parameters.{p.name}.when", "conditions form a cycle: " + " -> ".join(
                [*visiting[visiting.index(p.name):], p.name]))
        visiting.append(p.name)
        for name, _values in p.when:
            place(params[name])
        visiting.pop()
        placed.add(p.name)
        ordered.append(p)

    for p in params.values():
        place(p)
    return tuple(ordered)


def _parameters(value: object) -> tuple[Parameter, ...]:
    path = f"{ROOT}.parameters"
    if value is None or (isinstance(value, (Mapping, list, tuple)) and not value):
        raise _fail(path, "the search space is empty: define at least one parameter")
    if isinstance(value, (list, tuple)):  # [{name: lr, type: float, ...}, ...], as Katib lists them
        items: list[tuple[object, object]] = []
        for i, item in enumerate(value):
            entry = dict(_mapping(item, f"{path}[{i}]", "parameter fields"))
            items.append((entry.pop("name", None), entry))
    else:
        items = list(_mapping(value, path, "parameter names to their definitions").items())
    params: dict[str, Parameter] = {}
    for name, spec in items:
        parameter = _parameter(name, spec)
        if parameter.name in params:
            raise _fail(f"{path}.{parameter.name}", "is defined twice")
        params[parameter.name] = parameter
    return _order(params)


def _algorithm(value: object) -> AlgorithmSpec:
    path = f"{ROOT}.algorithm"
    if value is None:
        return AlgorithmSpec()
    data: Mapping[str, Any] = {"name": value} if isinstance(value, str) else _mapping(value, path, "algorithm fields")
    name = data.get("name")
    if name not in ALGORITHMS:
        field_path = path if isinstance(value, str) else f"{path}.name"
        raise _fail(field_path, f"unknown algorithm {name!r} (algorithms: {', '.join(ALGORITHMS)})")
    _known(data, _ALGORITHM_FIELDS[name], path)
    multivariate = data.get("multivariate", False)
    if not isinstance(multivariate, bool):
        raise _fail(f"{path}.multivariate", f"expected true or false, got {multivariate!r}")
    sigma0 = None
    if data.get("sigma0") is not None:
        sigma0 = _number(data["sigma0"], f"{path}.sigma0")
        if sigma0 <= 0:
            raise _fail(f"{path}.sigma0", f"must be above 0, got {sigma0:g}")
    return AlgorithmSpec(name, _optional_int(data.get("startup_trials"), f"{path}.startup_trials", minimum=0),
                         multivariate, sigma0)


def _early_stopping(value: object) -> EarlyStopping:
    path = f"{ROOT}.early_stopping"
    if value is None or value is False:
        return EarlyStopping()
    data: Mapping[str, Any] = {"kind": value} if isinstance(value, str) else _mapping(value, path, "fields")
    kind = data.get("kind")
    if kind not in EARLY_STOPPING:
        field_path = path if isinstance(value, str) else f"{path}.kind"
        raise _fail(field_path, f"unknown early stopping {kind!r} (kinds: {', '.join(EARLY_STOPPING)})")
    _known(data, _EARLY_FIELDS[kind], path)
    settings = {name: _optional_int(data.get(name), f"{path}.{name}", minimum=minimum) for name, minimum in (
        ("startup_trials", 0), ("warmup_steps", 0), ("interval_steps", 1), ("min_resource", 1), ("max_resource", 1),
        ("reduction_factor", 2), ("min_early_stopping_rate", 0))}
    low, high = settings["min_resource"], settings["max_resource"]
    if low is not None and high is not None and low >= high:
        raise _fail(f"{path}.min_resource", f"{low} must be below max_resource {high}")
    return EarlyStopping(kind, **settings)


def _resources(value: object) -> TrialResources:
    path = f"{ROOT}.resources"
    if value is None:
        return TrialResources()
    data = _mapping(value, path, "resource fields (cpu, memory, gpus, gpu_flavor)")
    _known(data, frozenset({"cpu", "memory", "gpus", "gpu_flavor"}), path)
    cpu = parse_quantity(data.get("cpu", 1), path=f"{path}.cpu") / 1000
    memory_raw = data.get("memory")
    memory = 0 if memory_raw in (None, "", 0) else parse_quantity(memory_raw, path=f"{path}.memory") // 1000
    gpus = _number(data.get("gpus", 0), f"{path}.gpus")
    if gpus < 0 or (gpus > 1 and gpus != int(gpus)):
        raise _fail(f"{path}.gpus", f"expected a whole number of GPUs or a fraction below 1, got {gpus:g}")
    return TrialResources(cpu, memory, gpus, _text(data.get("gpu_flavor"), f"{path}.gpu_flavor"))


def _env(value: object, path: str) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    data = _mapping(value, path, "variable names to values")
    out = []
    for key, item in data.items():
        if not isinstance(key, str) or not _ENV_NAME.match(key):
            raise _fail(path, f"{key!r} is not an environment variable name")
        if key.startswith("CAPSTAN_TRIAL"):
            raise _fail(f"{path}.{key}", "is set by Capstan for every trial and cannot be overridden")
        if isinstance(item, bool) or not isinstance(item, (str, int, float)):
            raise _fail(f"{path}.{key}", f"expected a string, got {item!r}")
        out.append((key, str(item)))
    return tuple(sorted(out))


def _trial(value: object, study_name: str) -> TrialTemplate:
    path = f"{ROOT}.trial"
    if value is None:
        raise _fail(path, "is required: a function (module:function), a script with args, or a training job")
    data = _mapping(value, path, "trial fields")
    kinds = [k for k in ("function", "script", "job") if k in data]
    if len(kinds) != 1:
        raise _fail(path, "name exactly one of function (module:function), script or job"
                    + (f"; got {', '.join(kinds)}" if kinds else ""))
    if kinds[0] == "function":
        _known(data, frozenset({"function"}), path)
        ref = _text(data["function"], f"{path}.function")
        if ref is None or not _FUNCTION.match(ref):
            raise _fail(f"{path}.function", f"{ref!r} is not module:function (e.g. mypackage.train:objective)")
        return FunctionTrial(ref)
    if kinds[0] == "script":
        _known(data, frozenset({"script", "args", "env"}), path)
        script = _text(data["script"], f"{path}.script")
        if script is None:
            raise _fail(f"{path}.script", "is empty: name the script to run for each trial")
        return ScriptTrial(script, _strings(data.get("args"), f"{path}.args"), _env(data.get("env"), f"{path}.env"))
    _known(data, frozenset({"job"}), path)
    job = dict(_mapping(data["job"], f"{path}.job", "training job fields"))
    job.setdefault("name", study_name)
    try:
        return JobTrial(parse_job_spec(job))
    except InvalidParameterValue as exc:  # the job parser names its fields job.*: name them inside the study
        message = exc.message
        raise InvalidParameterValue(f"{path}.{message}" if message.startswith("job") else message) from None


def _check_placeholders(trial: TrialTemplate, params: tuple[Parameter, ...]) -> None:
    names = {p.name for p in params}
    if isinstance(trial, ScriptTrial):
        args, env, path = trial.args, trial.env, f"{ROOT}.trial"
    elif isinstance(trial, JobTrial):
        args, env, path = trial.job.args, trial.job.env, f"{ROOT}.trial.job"
    else:
        return
    fields = [(f"{path}.args[{i}]", arg) for i, arg in enumerate(args)]
    fields += [(f"{path}.env.{key}", item) for key, item in env]
    for where, text in fields:
        for name in placeholders_in(text):
            if name not in names:
                raise _fail(where, f"${{params.{name}}} is not a parameter of the study (parameters: "
                                   f"{', '.join(sorted(names))})")


def _check_algorithm(algorithm: AlgorithmSpec, params: tuple[Parameter, ...]) -> None:
    if algorithm.name != "grid":
        return
    for p in params:
        path = f"{ROOT}.parameters.{p.name}"
        if p.when:
            raise _fail(f"{path}.when", "the grid algorithm takes no conditional parameters (every point sets every "
                                        "parameter); use random or tpe")
        if p.type == "float" and p.step is None:
            raise _fail(f"{path}.step", "the grid algorithm needs a step for a float parameter (or make it "
                                        "categorical)")
        if p.log and p.type == "int":
            raise _fail(f"{path}.log", "the grid algorithm walks a range by its step; drop log or list the values "
                                       "as categorical")
    size = math.prod(len(v) for v in grid_space(params).values())
    if size > MAX_GRID:
        raise _fail(f"{ROOT}.parameters", f"the grid has {size} points, more than {MAX_GRID}; use larger steps or "
                                          "another algorithm")


def parse_study_spec(data: Mapping[str, Any]) -> StudySpec:
    """A checked `StudySpec` from plain data (a YAML document, the SDK's arguments, an API body);
    `InvalidParameterValue` names the first bad field."""
    if not isinstance(data, Mapping):
        raise _fail(ROOT, "expected a mapping of study fields")
    if set(data) == {"study"} and isinstance(data["study"], Mapping):  # a document with one top-level `study:`
        data = data["study"]
    _known(data, _FIELDS, ROOT)
    name = _text(data.get("name"), f"{ROOT}.name")
    if name is None or not _NAME.match(name):
        raise _fail(f"{ROOT}.name", f"{name!r} must be 1-63 lowercase letters, digits or '-', starting and ending "
                                    "with a letter or digit")
    objective = _objective(data.get("objective"))
    parameters = _parameters(data.get("parameters"))
    algorithm = _algorithm(data.get("algorithm"))
    _check_algorithm(algorithm, parameters)
    trial = _trial(data.get("trial"), name)
    _check_placeholders(trial, parameters)
    max_trials = _int(data.get("max_trials", 10), f"{ROOT}.max_trials", minimum=1, maximum=100_000)
    parallel = _int(data.get("parallel_trials", 1), f"{ROOT}.parallel_trials", minimum=1, maximum=1024)
    failed_raw = data.get("max_failed_trials")
    seed_raw = data.get("seed")
    return StudySpec(
        name=name, objective=objective, parameters=parameters, trial=trial, algorithm=algorithm,
        early_stopping=_early_stopping(data.get("early_stopping")),
        max_trials=max_trials, parallel_trials=parallel,
        max_failed_trials=None if failed_raw is None else _int(failed_raw, f"{ROOT}.max_failed_trials", minimum=0),
        seed=None if seed_raw is None else _int(seed_raw, f"{ROOT}.seed", minimum=0, maximum=2**32 - 1),
        resources=_resources(data.get("resources")),
        queue=_text(data.get("queue"), f"{ROOT}.queue"),
        priority=_text(data.get("priority"), f"{ROOT}.priority"),
        experiment=_text(data.get("experiment"), f"{ROOT}.experiment"),
        working_dir=_text(data.get("working_dir"), f"{ROOT}.working_dir"),
    )
