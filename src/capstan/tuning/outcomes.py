"""How a trial's end becomes its recorded outcome, which trial is best, and the one line printed per trial. Pure.

A trial that the pruner told to stop ends PRUNED whatever it then did (returned, exited, raised). Otherwise a
function's return value decides: a number is the objective's value, a mapping holds the objective metric and any
additional ones, ``None`` means "the last value I reported". A script's value is the last ``metric=value`` line it
printed for the objective (Katib's stdout convention), else the last value it reported. A trial that failed
(raised, exited non-zero, died) or produced no finite objective value ends FAILED, with a one-line reason.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from capstan.tuning.ports import TrialRecord, TrialState
from capstan.tuning.spec import Objective, format_value

__all__ = ["Outcome", "best_trial", "judge", "metric_lines", "progress_line", "reason_line"]

_LINE = re.compile(r"^\s*([A-Za-z0-9_.\-/]+)\s*[=:]\s*([-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?"
                   r"|nan|inf|infinity))\s*$", re.I)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What is recorded for a trial that ended."""

    state: TrialState
    value: float | None = None
    metrics: Mapping[str, float] = field(default_factory=dict)
    message: str = ""


def metric_lines(text: str, names: Iterable[str]) -> dict[str, float]:
    """The last ``name=value`` (or ``name: value``) line printed for each of ``names`` in ``text``."""
    wanted = set(names)
    found: dict[str, float] = {}
    for line in text.splitlines():
        match = _LINE.match(line)
        if match and match.group(1) in wanted:
            found[match.group(1)] = float(match.group(2))
    return found


def reason_line(error: str) -> str:
    """The last non-empty line of an error text (a traceback's exception line), cut to 300 characters."""
    lines = [line.strip() for line in error.strip().splitlines() if line.strip()]
    return (lines[-1] if lines else "failed")[:300]


def _returned(result: Any, objective: Objective) -> tuple[float | None, dict[str, float], str]:
    """The objective value and metrics in a function's return value, or why there are none."""
    if result is None:
        return None, {}, ""
    if isinstance(result, Mapping):
        metrics = {str(k): float(v) for k, v in result.items() if isinstance(v, (int, float)) and
                   not isinstance(v, bool)}
        if objective.metric not in metrics:
            got = ", ".join(sorted(map(str, result))) or "nothing"
            return None, metrics, f"returned no {objective.metric!r} (got {got})"
        return metrics[objective.metric], metrics, ""
    if isinstance(result, (int, float)) and not isinstance(result, bool):
        return float(result), {objective.metric: float(result)}, ""
    return None, {}, f"returned {type(result).__name__}; expected a number or a mapping of metrics"


def judge(objective: Objective, *, pruned: bool, failed: str | None, result: Any = None,
          reported: Sequence[tuple[int, float]] = (), reported_metrics: Mapping[str, float] | None = None,
          printed: Mapping[str, float] | None = None) -> Outcome:
    """The outcome of a trial that ended. ``failed`` is why it failed (None when it ended normally); ``result`` a
    function's return value; ``reported`` its ``(step, value)`` reports; ``reported_metrics`` the last value of
    each additional metric it reported; ``printed`` the metric lines a script printed."""
    last = reported[-1][1] if reported else None
    metrics = dict(reported_metrics or {})
    if last is not None:
        metrics[objective.metric] = last
    if pruned:
        return Outcome("PRUNED", last, _finite(metrics), "stopped early by the pruner")
    if failed is not None:
        return Outcome("FAILED", None, _finite(metrics), reason_line(failed))
    value, returned, problem = _returned(result, objective)
    if problem:
        return Outcome("FAILED", None, _finite(metrics), problem)
    metrics.update(printed or {})
    metrics.update(returned)
    if value is None:
        value = metrics.get(objective.metric)
    if value is None:
        return Outcome("FAILED", None, _finite(metrics), f"reported no value of {objective.metric!r} (return it, "
                                                          "call capstan.report, or print "
                                                          f"{objective.metric}=VALUE)")
    if not math.isfinite(value):
        return Outcome("FAILED", None, _finite(metrics), f"{objective.metric} is {value}")
    metrics[objective.metric] = value
    return Outcome("COMPLETE", value, _finite(metrics))


def _finite(metrics: Mapping[str, float]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if math.isfinite(v)}


def best_trial(trials: Iterable[TrialRecord], goal: str) -> TrialRecord | None:
    """The COMPLETE trial with the best value (the lowest number among equals), or None."""
    done = [t for t in trials if t.state == "COMPLETE" and t.value is not None]
    if not done:
        return None
    sign = -1.0 if goal == "maximize" else 1.0
    return min(done, key=lambda t: (sign * (t.value or 0.0), t.number))


def _params(params: Mapping[str, Any], width: int = 60) -> str:
    text = " ".join(f"{k}={format_value(round(v, 4) if isinstance(v, float) else v)}" for k, v in params.items())
    return text if len(text) <= width else text[:width - 1] + "…"


def progress_line(trial: TrialRecord, best: TrialRecord | None, objective: Objective) -> str:
    """One line for a trial that ended: number, state, value, parameters, duration and the best so far."""
    value = f"{objective.metric}={trial.value:.4g}" if trial.value is not None else trial.message[:40]
    seconds = f"{(trial.duration_ms or 0) / 1000:.1f}s"
    best_text = f"best #{best.number} {best.value:.4g}" if best is not None and best.value is not None else "best -"
    return f"trial {trial.number:>3}  {trial.state:<8}  {value:<24}  {_params(trial.params)}  {seconds}  {best_text}"
