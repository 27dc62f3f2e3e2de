"""The CEL rules of a CRD schema (``x-kubernetes-validations``), evaluated the way the API server does on create.

Schema defaults are applied first (the API server defaults before it validates). Each rule runs with ``self``
bound to the value at its schema node; rules that name ``oldSelf`` are transition rules, which the API server
skips on create, and so does this. A rule that uses a function the CEL library (cel-python) lacks, such as
Kubernetes' ``quantity()`` or ``isURL()`` extensions, is reported as not evaluated rather than passed or failed.
"""

from __future__ import annotations

import copy
import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from capstan.errors import InvalidState

if TYPE_CHECKING:
    import celpy

K8S_EXTRA = "k8s"
"""The optional-dependency extra that installs kubernetes-validate and cel-python (``pip install 'capstan[k8s]'``)."""

PathSegment = str | int
_OLD_SELF = re.compile(r"\boldSelf\b")
_FIELD_PATH_TOKEN = re.compile(r"\.([A-Za-z_$][\w$-]*)|\[(\d+)\]|\['([^']*)'\]")


@dataclass(frozen=True)
class RuleOutcome:
    """A rule that failed (``evaluated`` True) or could not be evaluated (False), at the path of its value."""

    path: tuple[PathSegment, ...]
    rule: str
    message: str
    evaluated: bool


def apply_defaults(value: Any, schema: Mapping[str, Any]) -> Any:
    """A copy of ``value`` with the schema's ``default`` values filled in where a field is absent."""
    if isinstance(value, dict):
        out = dict(value)
        props: Mapping[str, Any] = schema.get("properties") or {}
        for name, sub in props.items():
            if name not in out and "default" in sub:
                out[name] = copy.deepcopy(sub["default"])
        for name, item in out.items():
            sub = props.get(name)
            if sub is None and isinstance(schema.get("additionalProperties"), Mapping):
                sub = schema["additionalProperties"]
            if sub is not None:
                out[name] = apply_defaults(item, sub)
        return out
    if isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        return [apply_defaults(item, schema["items"]) for item in value]
    return value


def check_rules(value: Any, schema: Mapping[str, Any],
                path: tuple[PathSegment, ...] = ()) -> list[RuleOutcome]:
    """Every rule under ``schema`` that fails or can't be evaluated for ``value`` (already defaulted)."""
    outcomes: list[RuleOutcome] = []
    if value is None:
        return outcomes
    for rule in schema.get("x-kubernetes-validations") or []:
        outcome = _check_rule(value, rule, path)
        if outcome is not None:
            outcomes.append(outcome)
    if isinstance(value, dict):
        props: Mapping[str, Any] = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        for name, item in value.items():
            sub = props.get(name, extra if isinstance(extra, Mapping) else None)
            if sub is not None:
                outcomes.extend(check_rules(item, sub, (*path, name)))
    elif isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        for index, item in enumerate(value):
            outcomes.extend(check_rules(item, schema["items"], (*path, index)))
    return outcomes


def _check_rule(value: Any, rule: Mapping[str, Any], path: tuple[PathSegment, ...]) -> RuleOutcome | None:
    text = str(rule.get("rule", ""))
    where = (*path, *_field_path(str(rule.get("fieldPath", ""))))
    if _OLD_SELF.search(text):
        if rule.get("optionalOldSelf"):
            return RuleOutcome(where, text, "transition rule with optionalOldSelf: not evaluated on create", False)
        return None  # a transition rule: the API server runs it only on update
    result, problem = _evaluate(text, value)
    if problem is not None:
        if "undeclared reference" in problem:
            return RuleOutcome(where, text, f"not evaluated, the CEL library lacks a function it uses: {problem}",
                               False)
        return RuleOutcome(where, text, f"rule could not be evaluated ({problem}): {text}", True)
    if result is True:
        return None
    return RuleOutcome(where, text, _failure_message(rule, value, text), True)


def _failure_message(rule: Mapping[str, Any], value: Any, text: str) -> str:
    expression = rule.get("messageExpression")
    if expression:
        result, problem = _evaluate(str(expression), value)
        if problem is None and isinstance(result, str) and result:
            return result
    return str(rule.get("message") or f"failed rule: {text}")


def _evaluate(text: str, value: Any) -> tuple[Any, str | None]:
    """(the result as a plain Python value, None) or (None, why it could not be evaluated)."""
    celpy = _celpy()
    try:
        program = _program(text)
        result = program.evaluate({"self": celpy.json_to_cel(value)})
    except (celpy.CELEvalError, celpy.CELParseError) as exc:
        return None, _one_line(exc)
    if isinstance(result, celpy.CELEvalError):
        return None, _one_line(result)
    if isinstance(result, celpy.celtypes.BoolType):
        return bool(result), None
    if isinstance(result, celpy.celtypes.StringType):
        return str(result), None
    return result, None


@functools.lru_cache(maxsize=1024)
def _program(text: str) -> celpy.Runner:
    env = _celpy().Environment()
    runner: celpy.Runner = env.program(env.compile(text))
    return runner


def _celpy() -> Any:
    try:
        import celpy
    except ImportError:
        raise InvalidState(f"CEL rules need cel-python, which is not installed: pip install 'capstan[{K8S_EXTRA}]'"
                           ) from None
    return celpy


def _field_path(text: str) -> tuple[PathSegment, ...]:
    segments: list[PathSegment] = []
    for name, index, key in _FIELD_PATH_TOKEN.findall(text):
        segments.append(name or key if not index else int(index))
    return tuple(segments)


def _one_line(exc: Exception) -> str:
    # celpy's messages carry the whole activation; the first clause says what went wrong.
    first = str(exc.args[0]) if exc.args else str(exc)
    return " ".join(first.split(" (in activation")[0].split())[:200]
