"""Checks a study passes before anything starts: the trial's script, module or function exists, and the queue could
ever admit a trial. Each failure is one `InvalidParameterValue` naming the field.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from capstan.errors import InvalidParameterValue
from capstan.resources.admission import Admission, ResourceRequest
from capstan.tuning.spec import FunctionTrial, JobTrial, ScriptTrial, StudySpec

__all__ = ["check_study", "script_path", "trial_request", "working_dir_of"]


def working_dir_of(spec: StudySpec) -> Path:
    """Where the study's trials start and its relative paths are found."""
    return Path(spec.working_dir or ".").expanduser().resolve()


def script_path(spec: StudySpec, script: str) -> Path:
    """A script path of the spec, resolved against its working directory."""
    path = Path(script).expanduser()
    return path if path.is_absolute() else working_dir_of(spec) / path


def _find_module(name: str, field: str, where: Path) -> None:
    if str(where) not in sys.path:
        sys.path.insert(0, str(where))
    try:
        found = importlib.util.find_spec(name)
    except (ImportError, ValueError) as exc:
        raise InvalidParameterValue(f"{field}: module {name!r} cannot be found ({exc})") from None
    if found is None:
        raise InvalidParameterValue(f"{field}: module {name!r} does not exist (looked in {where} and on sys.path)")


def _check_module(name: str, field: str, where: Path) -> Any:
    _find_module(name, field, where)
    try:
        return importlib.import_module(name)
    except Exception as exc:  # noqa: BLE001  # the user's module failed to import: one line with its error
        raise InvalidParameterValue(f"{field}: importing module {name!r} failed: {type(exc).__name__}: {exc}") \
            from None


def _check_function(ref: str, where: Path) -> None:
    module_name, _, qualname = ref.partition(":")
    target = _check_module(module_name, "study.trial.function", where)
    for part in qualname.split("."):
        if not hasattr(target, part):
            raise InvalidParameterValue(f"study.trial.function: module {module_name!r} has no {qualname!r}")
        target = getattr(target, part)
    if not callable(target):
        raise InvalidParameterValue(f"study.trial.function: {ref} is not a function")


def _check_script(spec: StudySpec, script: str, field: str) -> None:
    path = script_path(spec, script)
    if not path.is_file():
        raise InvalidParameterValue(f"{field}: {script} does not exist" +
                                    ("" if Path(script).is_absolute() else f" (in {working_dir_of(spec)})"))


def trial_request(spec: StudySpec, project: str, number: int) -> ResourceRequest:
    """What trial ``number`` asks the admission for (nothing for a training-job trial: its job asks for its gang)."""
    labels: list[tuple[str, str]] = []
    if spec.queue:
        labels.append(("queue", spec.queue))
    if spec.priority:
        labels.append(("priority_class", spec.priority))
    key = f"study/{spec.name}/trial-{number}"
    if isinstance(spec.trial, JobTrial):
        return ResourceRequest(key, 0.0, 0, 0.0, None, project, tuple(labels))
    res = spec.resources
    return ResourceRequest(key, res.cpu, res.memory, res.gpus, res.gpu_flavor, project, tuple(labels))


def check_study(spec: StudySpec, *, project: str, admission: Callable[[], Admission],
                function: Callable[..., Any] | None = None) -> None:
    """Everything that can be known to fail before the study starts (see the module docstring)."""
    where = working_dir_of(spec)
    if spec.working_dir and not where.is_dir():
        raise InvalidParameterValue(f"study.working_dir: {spec.working_dir} is not a folder")
    trial = spec.trial
    if isinstance(trial, FunctionTrial) and function is None:
        _check_function(trial.function, where)
    elif isinstance(trial, ScriptTrial):
        _check_script(spec, trial.script, "study.trial.script")
    elif isinstance(trial, JobTrial):
        if trial.job.entry_kind == "script":
            _check_script(spec, trial.job.entry, "study.trial.job.entry")
        else:
            _find_module(trial.job.entry, "study.trial.job.entry", where)
    request = trial_request(spec, project, 0)
    if not request.empty:
        why = admission().check(request)
        if why is not None:
            raise InvalidParameterValue(f"study.resources: the queue can never admit a trial: {why}")
