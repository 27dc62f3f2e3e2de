"""Pipeline parameters: checking and converting values (CLI strings or JSON) by the parameter's annotation."""

from __future__ import annotations

import datetime as dt
import enum
import json
import types
import typing
from collections.abc import Mapping
from pathlib import Path, PurePath
from typing import Any

from capstan.pipelines.dsl import Param, Pipeline, PipelineDefinitionError

_TRUE = {"true", "1", "yes", "y", "on"}
_FALSE = {"false", "0", "no", "n", "off"}


def _type_name(ann: Any) -> str:
    if typing.get_origin(ann) is not None:
        return str(ann).replace("typing.", "")
    return getattr(ann, "__name__", None) or str(ann).replace("typing.", "")


def coerce(ann: Any, value: Any, *, field: str) -> Any:
    """Convert ``value`` (a string from the CLI, or a JSON value) to the annotation ``ann``."""
    origin = typing.get_origin(ann)
    if ann is Any or ann is object:
        return value
    if origin is typing.Annotated:
        return coerce(typing.get_args(ann)[0], value, field=field)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(ann)
        if type(None) in options and (value is None or (isinstance(value, str) and value.lower() in ("none",
                                                                                                    "null"))):
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return coerce(option, value, field=field)
            except PipelineDefinitionError as exc:
                errors.append(exc.message)
        raise PipelineDefinitionError(f"{field}: {value!r} does not match {_type_name(ann)}")
    if origin is typing.Literal:
        choices = typing.get_args(ann)
        for choice in choices:
            if value == choice or (isinstance(value, str) and str(choice) == value):
                return choice
        raise PipelineDefinitionError(f"{field}: {value!r} is not one of {', '.join(map(repr, choices))}")
    if ann is type(None):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        raise PipelineDefinitionError(f"{field}: expected None, got {value!r}")
    if ann is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise PipelineDefinitionError(f"{field}: {value!r} is not a boolean (true/false)")
    if ann is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
        raise PipelineDefinitionError(f"{field}: {value!r} is not an integer")
    if ann is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                pass
        raise PipelineDefinitionError(f"{field}: {value!r} is not a number")
    if ann is str:
        if isinstance(value, str):
            return value
        raise PipelineDefinitionError(f"{field}: {value!r} is not a string")
    if isinstance(ann, type) and issubclass(ann, PurePath):
        if isinstance(value, str | PurePath):
            return ann(value)
        raise PipelineDefinitionError(f"{field}: {value!r} is not a path")
    if ann is dt.datetime or ann is dt.date:
        if isinstance(value, ann):
            return value
        if isinstance(value, str):
            try:
                return ann.fromisoformat(value.strip())
            except ValueError:
                pass
        raise PipelineDefinitionError(f"{field}: {value!r} is not an ISO {_type_name(ann)} (e.g. 2024-05-01)")
    if isinstance(ann, type) and issubclass(ann, enum.Enum):
        if isinstance(value, ann):
            return value
        for member in ann:
            if value in (member.name, member.value) or (isinstance(value, str) and str(member.value) == value):
                return member
        raise PipelineDefinitionError(f"{field}: {value!r} is not one of {', '.join(m.name for m in ann)}")
    container = origin or ann
    if container in (list, tuple, dict, set, frozenset):
        parsed = value
        if isinstance(value, str):
            try:
                parsed = json.loads(value)
            except ValueError:
                if container is dict:
                    raise PipelineDefinitionError(f"{field}: {value!r} is not a JSON object") from None
                parsed = [part for part in value.split(",") if part] if value else []
        args = typing.get_args(ann)
        if container is dict:
            if not isinstance(parsed, dict):
                raise PipelineDefinitionError(f"{field}: {value!r} is not a JSON object")
            if len(args) == 2:
                return {coerce(args[0], k, field=field): coerce(args[1], v, field=f"{field}[{k!r}]")
                        for k, v in parsed.items()}
            return parsed
        if not isinstance(parsed, list | tuple):
            raise PipelineDefinitionError(f"{field}: {value!r} is not a list (JSON or comma-separated)")
        if args and container is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            if len(args) != len(parsed):
                raise PipelineDefinitionError(f"{field}: expected {len(args)} items, got {len(parsed)}")
            return tuple(coerce(a, v, field=f"{field}[{i}]") for i, (a, v) in enumerate(zip(args, parsed,
                                                                                             strict=True)))
        elem = args[0] if args else Any
        items = [coerce(elem, v, field=f"{field}[{i}]") for i, v in enumerate(parsed)]
        return container(items)
    if isinstance(ann, type):
        if isinstance(value, ann):
            return value
        raise PipelineDefinitionError(f"{field}: {value!r} is not a {_type_name(ann)}")
    return value


def resolve_params(pipe: Pipeline, given: Mapping[str, Any]) -> dict[str, Any]:
    """Every parameter of ``pipe`` with its value: ``given`` values converted, defaults filled in; a one-line
    error names an unknown, missing or malformed parameter and the pipeline's ``file:line``."""
    declared = {p.name: p for p in pipe.params}
    unknown = [k for k in given if k not in declared]
    if unknown:
        names = ", ".join(declared) or "no parameters"
        raise PipelineDefinitionError(
            f"{pipe.location}: pipeline {pipe.name!r} has no parameter {unknown[0]!r} (it takes: {names})")
    out: dict[str, Any] = {}
    for name, param in declared.items():
        if name in given:
            out[name] = coerce(param.annotation, given[name],
                               field=f"{pipe.location}: parameter {name!r} ({_type_name(param.annotation)})")
        elif param.required:
            raise PipelineDefinitionError(
                f"{pipe.location}: pipeline {pipe.name!r} is missing parameter {name!r} "
                f"({_type_name(param.annotation)}); pass --param {name}=...")
        else:
            out[name] = param.default
    return out


def to_jsonable(value: Any) -> Any:
    """A JSON form of a parameter value that `coerce` turns back into the same value."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return value.name
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [to_jsonable(v) for v in value]
    return str(value)


def parse_assignments(pairs: tuple[str, ...] | list[str], *, option: str = "--param") -> dict[str, str]:
    """``["rows=10", "name=x"]`` -> ``{"rows": "10", "name": "x"}`` with a one-line error for a malformed pair."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise PipelineDefinitionError(f"{option}: expected KEY=VALUE, got {pair!r}")
        out[key.strip()] = value
    return out


def describe(param: Param) -> str:
    """``rows: int = 100`` for help texts."""
    text = f"{param.name}: {_type_name(param.annotation)}"
    return text if param.required else f"{text} = {param.default!r}"


__all__ = ["Path", "coerce", "describe", "parse_assignments", "resolve_params", "to_jsonable"]
