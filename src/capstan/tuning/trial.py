"""The trial's side of a study: `report` and `should_prune`, and the messages a trial exchanges with its controller.

A trial talks to the controller of its study over one `multiprocessing.connection.Connection`: a function trial
through the pipe of the worker process that runs it, a script or training-job trial through a connection it opens
to the controller's listener, at the address and with the key the controller put in its environment
(``CAPSTAN_TRIAL_ADDRESS``, ``CAPSTAN_TRIAL_KEY``, ``CAPSTAN_TRIAL_NUMBER``; `capstan.settings.Settings` reads
them). The address is a local socket's path, or ``tcp://HOST:PORT`` for a controller in another pod, whose key
the trial's pod gets from the same Secret as the controller (decision 0745). Outside a trial `report` does
nothing and `should_prune` is False, so a training function runs unchanged on its own.

Messages (tuples, first item the kind):

- trial → controller ``("hello", number)`` (a script's first message), ``("report", number, value, step, metrics)``
  answered ``("prune", bool)``: the pruner's verdict after this report;
- controller → worker ``("run", number, params, run_id, log_path)``, ``("stop",)``;
- worker → controller ``("done", number, outcome, result, error, started_ms, ended_ms)`` where ``outcome`` is
  ``"ok"`` (``result`` is what the function returned) or ``"error"`` (``error`` is the traceback's text).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from capstan.errors import InvalidParameterValue

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

__all__ = ["TrialContext", "current", "report", "should_prune"]


@dataclass(slots=True)
class TrialContext:
    """The trial this process runs: its number, the connection to its controller, how many values it reported and
    the pruner's last verdict."""

    number: int
    connection: Connection
    reports: int = 0
    prune: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)


_CURRENT: list[TrialContext | None] = [None]
_CONNECTED: list[bool] = [False]


def set_current(context: TrialContext | None) -> None:
    """Make ``context`` the trial of this process (the worker does this around each function call)."""
    _CURRENT[0] = context


def current() -> TrialContext | None:
    """The trial this process runs, or None; a script trial connects to its controller on first use."""
    context = _CURRENT[0]
    if context is not None or _CONNECTED[0]:
        return context
    _CONNECTED[0] = True
    from capstan.settings import Settings

    settings = Settings.from_env()
    if not settings.trial_address or settings.trial_key is None or settings.trial_number is None:
        return None
    if settings.rank not in (None, 0):
        return None  # in a training-job trial only rank 0 reports
    from multiprocessing import AuthenticationError
    from multiprocessing.connection import Client

    try:
        connection = Client(address_of(settings.trial_address), authkey=bytes.fromhex(settings.trial_key.strip()))
        connection.send(("hello", settings.trial_number))
    except (OSError, ValueError, AuthenticationError):
        return None  # the controller is gone (the trial runs on, unreported) or the variables are not its

    context = TrialContext(settings.trial_number, connection)
    _CURRENT[0] = context
    return context


def address_of(text: str) -> str | tuple[str, int]:
    """The `multiprocessing.connection.Client` address of ``CAPSTAN_TRIAL_ADDRESS``: ``(host, port)`` for
    ``tcp://HOST:PORT`` (a controller on another machine or pod), else the local socket's path as it is."""
    if not text.startswith("tcp://"):
        return text
    host, _, port = text[len("tcp://"):].rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"CAPSTAN_TRIAL_ADDRESS: {text!r} is not tcp://HOST:PORT")
    return host, int(port)


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        try:
            return float(value)  # numpy scalars and the like
        except (TypeError, ValueError):
            raise InvalidParameterValue(f"{what}: {value!r} is not a number") from None
    return float(value)


def report(value: float, step: int | None = None, *, metrics: Mapping[str, float] | None = None) -> None:
    """Report the objective's intermediate ``value`` at ``step`` (default: 0, 1, 2, ... per call), with any
    ``metrics`` to record beside it. The trial's run gets each as a metric point, and the study's pruner decides
    whether the trial should stop: ask `should_prune` next. Outside a study's trial it does nothing."""
    context = current()
    if context is None:
        return
    number = _number(value, "report: value")
    extra = {str(k): _number(v, f"report: metrics[{k!r}]") for k, v in (metrics or {}).items()}
    if step is not None and (isinstance(step, bool) or not isinstance(step, int) or step < 0):
        raise InvalidParameterValue(f"report: step {step!r} is not a whole number of at least 0")
    with context.lock:
        at = context.reports if step is None else step
        context.reports += 1
        try:
            context.connection.send(("report", context.number, number, at, extra))
            reply = context.connection.recv()
        except (OSError, EOFError):
            return  # the controller went away: it will re-run this trial when it resumes
        context.prune = context.prune or bool(reply[1])


def should_prune() -> bool:
    """Whether the study's early stopping wants this trial to stop now (after its last `report`). A trial that
    stops when told ends as PRUNED, not failed, whatever it returns. Outside a study's trial it is False."""
    context = current()
    return bool(context is not None and context.prune)
