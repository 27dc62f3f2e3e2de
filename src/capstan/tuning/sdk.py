"""``capstan.Study``: define a hyperparameter study in Python and run it; `run_study` runs any `StudySpec` with the
adapters of `capstan.services` (the CLI and the quickstart use it too).

    import capstan
    from capstan import tune

    def train(params):
        for epoch in range(20):
            accuracy = ...
            capstan.report(accuracy, step=epoch)
            if capstan.should_prune():
                return
        return accuracy

    result = capstan.Study("mlp", objective="accuracy", parameters={"lr": tune.Float(1e-4, 1e-1, log=True)},
                           trial=train, max_trials=20, parallel_trials=2, early_stopping="median").run()
    print(result.best_trial.params)
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from capstan.errors import InvalidParameterValue
from capstan.settings import Settings
from capstan.training.spec import TrainingJobSpec
from capstan.tuning.ports import StudyResult
from capstan.tuning.spec import StudySpec, parse_study_spec
from capstan.tuning.tune import Categorical, Float, Int, Script

__all__ = ["Study", "function_ref", "load_study_file", "run_study"]

_UNSAFE = re.compile(r"[^A-Za-z0-9_.]")


def function_ref(fn: Callable[..., Any]) -> str:
    """``module:qualname`` of a function: what the study spec records (a lambda or a local function is named as
    well as it can be; its workers are forked rather than importing it)."""
    module = getattr(fn, "__module__", None) or "__main__"
    qualname = str(getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or "objective")
    parts = [_UNSAFE.sub("_", part) or "_" for part in qualname.split(".")]
    parts = [p if p[0].isalpha() or p[0] == "_" else f"_{p}" for p in parts]
    return f"{module}:{'.'.join(parts)}"


def _trial_mapping(trial: Any) -> tuple[dict[str, Any], Callable[..., Any] | None]:
    if isinstance(trial, Script):
        return trial.to_dict(), None
    if isinstance(trial, TrainingJobSpec):
        return {"job": trial.to_dict()}, None
    spec = getattr(trial, "spec", None)
    if isinstance(spec, TrainingJobSpec):  # capstan.TrainingJob
        return {"job": spec.to_dict()}, None
    if isinstance(trial, Mapping):
        return dict(trial), None
    if isinstance(trial, str):
        return ({"function": trial}, None) if ":" in trial and not trial.endswith(".py") else ({"script": trial}, None)
    if callable(trial):
        return {"function": function_ref(trial)}, trial
    raise InvalidParameterValue(f"study.trial: expected a function, capstan.tune.Script, a capstan.TrainingJob or "
                                f"'module:function', got {trial!r}")


def _parameter(value: Any) -> Any:
    if isinstance(value, (Float, Int, Categorical)):
        return value.to_dict()
    return value


class Study:
    """A hyperparameter study (see the module docstring). Arguments are the YAML fields (`docs/tuning.md`):

    - ``objective``: the metric to optimise, ``goal`` ``maximize`` or ``minimize``, ``metrics`` recorded beside it;
    - ``parameters``: name → ``tune.Float`` / ``tune.Int`` / ``tune.Categorical`` (or the YAML mapping);
    - ``trial``: a function called with the parameters (a dict) that returns the objective's value (or a mapping
      of metrics, or None after reporting with `capstan.report`); a ``tune.Script``; or a ``capstan.TrainingJob``;
    - ``algorithm``: ``random``, ``grid``, ``tpe`` (default) or ``cmaes`` (or a mapping with its settings);
    - ``early_stopping``: ``median``, ``asha``, ``hyperband`` (or a mapping with their settings);
    - ``max_trials``, ``parallel_trials``, ``max_failed_trials``, ``seed``; ``resources`` each trial asks the
      queue for (default one CPU), ``queue``, ``priority``; ``experiment`` of its runs (default: its name).

    Bad input raises `InvalidParameterValue` naming the field, here, before anything runs.
    """

    def __init__(self, name: str, *, objective: str, parameters: Mapping[str, Any], trial: Any,
                 goal: str = "maximize", metrics: Sequence[str] = (), algorithm: str | Mapping[str, Any] = "tpe",
                 early_stopping: str | Mapping[str, Any] | None = None, max_trials: int = 10,
                 parallel_trials: int = 1, max_failed_trials: int | None = None, seed: int | None = None,
                 resources: Mapping[str, Any] | None = None, queue: str | None = None, priority: str | None = None,
                 experiment: str | None = None, working_dir: str | Path | None = None) -> None:
        trial_data, self.function = _trial_mapping(trial)
        data: dict[str, Any] = {
            "name": name,
            "objective": {"metric": objective, "goal": goal, "additional_metrics": list(metrics)},
            "parameters": {k: _parameter(v) for k, v in parameters.items()} if isinstance(parameters, Mapping)
            else parameters,
            "trial": trial_data, "algorithm": algorithm, "early_stopping": early_stopping,
            "max_trials": max_trials, "parallel_trials": parallel_trials, "max_failed_trials": max_failed_trials,
            "seed": seed, "resources": resources, "queue": queue, "priority": priority, "experiment": experiment,
            "working_dir": str(Path(working_dir).resolve()) if working_dir is not None else str(Path.cwd()),
        }
        self.spec: StudySpec = parse_study_spec(data)

    @classmethod
    def from_yaml(cls, path: str | Path) -> StudySpec:
        """The spec of a study file (as ``capstan tune -f`` reads it)."""
        return load_study_file(path)

    def run(self, *, settings: Settings | None = None, progress: bool | Callable[[str], None] = True) -> StudyResult:
        """Run the study to its end (or resume it: a study of the same name resumes where it stopped) and return
        its trials and best trial. ``progress`` prints one line per finished trial (or hands it to a callable)."""
        out: Callable[[str], None] | None
        if progress is True:
            out = print
        elif progress is False:
            out = None
        else:
            out = progress
        return run_study(self.spec, settings=settings, function=self.function, out=out)

    def __repr__(self) -> str:
        spec = self.spec
        return (f"Study(name={spec.name!r}, objective={spec.objective.goal} {spec.objective.metric}, "
                f"parameters={[p.name for p in spec.parameters]}, algorithm={spec.algorithm.name!r})")


def load_study_file(path: str | Path) -> StudySpec:
    """Read a study YAML file; its relative paths (scripts, modules, ``working_dir``) are relative to its folder."""
    import yaml

    file = Path(path).expanduser()
    try:
        data = yaml.safe_load(file.read_text())
    except FileNotFoundError:
        raise InvalidParameterValue(f"-f: {path} does not exist") from None
    except yaml.YAMLError as exc:
        raise InvalidParameterValue(f"-f: {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, Mapping):
        raise InvalidParameterValue(f"study: {path} holds no mapping of study fields")
    data = dict(data["study"]) if set(data) == {"study"} and isinstance(data["study"], Mapping) else dict(data)
    folder = file.resolve().parent
    working = data.get("working_dir")
    data["working_dir"] = str((folder / working).resolve()) if isinstance(working, str) and working else str(folder)
    return parse_study_spec(data)


def run_study(spec: StudySpec, *, settings: Settings | None = None, function: Callable[..., Any] | None = None,
              out: Callable[[str], None] | None = None) -> StudyResult:
    """Run ``spec`` with this process's stores (the SDK's settings unless given): the study store and the queue of
    `capstan.services`, runs through the SDK's backend (local, or ``CAPSTAN_URL``'s server)."""
    from capstan.sdk import fluent
    from capstan.services import Services
    from capstan.tuning.controller import StudyController

    active = settings or fluent.get_settings()
    services = Services.open(active)
    tracking = _backend(active, services)
    try:
        controller = StudyController(spec, store=services.studies, admission=services.admission.get,
                                     tracking=tracking, settings=active, function=function,
                                     jobs=services.job_runner, out=out)
        return controller.run()
    finally:
        tracking.close()
        services.close()


def _backend(settings: Settings, services: Any) -> Any:
    if settings.url:
        from capstan.sdk.backends_http import HttpBackend

        return HttpBackend(settings)
    from capstan.sdk.backends_local import LocalBackend

    return LocalBackend(settings, services=services)
