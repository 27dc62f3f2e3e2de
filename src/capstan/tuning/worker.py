"""A long-lived worker process that runs function trials one after another.

A study keeps ``parallel_trials`` of these (`capstan.tuning.launch.WorkerPool`), so a trial costs a message, not a
Python start: the worker imports the objective's module once, then for each ``("run", ...)`` message attaches the
trial's tracking run (so ``capstan.log_metric`` and ``capstan.log_model`` in the function go to it), sends the
trial's stdout and stderr to its log file, calls the function with the parameters, and answers ``("done", ...)``.
It ignores Ctrl-C (the controller stops trials) and exits when its controller goes away.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from capstan.tuning import trial as trial_side

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

    from capstan.settings import Settings

__all__ = ["resolve", "worker_main"]


def resolve(ref: str) -> Callable[..., Any]:
    """The function ``module:qualname`` names (imported)."""
    module_name, _, qualname = ref.partition(":")
    target: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        target = getattr(target, part)
    if not callable(target):
        raise TypeError(f"{ref} is not callable")
    return target  # type: ignore[no-any-return]  # checked callable above


def _watch_parent(parent: int) -> None:
    """Exit when the controller has died (this process was re-parented), even in the middle of a trial."""
    while True:
        time.sleep(1.0)
        if os.getppid() != parent:
            os._exit(3)


def _plain(result: Any) -> Any:
    """What a function returned, as data that pickles anywhere (numbers as floats)."""
    if isinstance(result, Mapping):
        return {str(k): float(v) for k, v in result.items() if _is_number(v)}
    if _is_number(result):
        return float(result)
    return result if result is None else repr(result)[:200]


def _is_number(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return not isinstance(value, (str, bytes))


class _Redirect:
    """Points this process's stdout and stderr (the file descriptors, so child processes follow) at a file."""

    def __init__(self) -> None:
        self._saved = (os.dup(1), os.dup(2))

    @contextlib.contextmanager
    def to(self, path: str | None) -> Any:
        if path is None:
            yield
            return
        with open(path, "ab") as log:
            self._flush()
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
            try:
                yield
            finally:
                self._flush()
                os.dup2(self._saved[0], 1)
                os.dup2(self._saved[1], 2)

    @staticmethod
    def _flush() -> None:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()


def _run_one(fn: Callable[..., Any], connection: Connection, number: int, params: Mapping[str, Any],
             run_id: str | None) -> tuple[str, Any, str]:
    from capstan.sdk import fluent

    trial_side.set_current(trial_side.TrialContext(number, connection))
    run = None
    try:
        if run_id is not None:
            run = fluent.start_run(run_id=run_id)
        result = fn(dict(params))
        return "ok", _plain(result), ""
    except SystemExit as exc:  # sys.exit() in a trial ends the trial, not the worker
        if exc.code in (None, 0):
            return "ok", None, ""
        return "error", None, f"the trial called sys.exit({exc.code!r})"
    except Exception:  # noqa: BLE001  # any failure of the user's function fails the trial, with its traceback
        return "error", None, traceback.format_exc()
    finally:
        trial_side.set_current(None)
        if run is not None:
            with contextlib.suppress(Exception):
                fluent.end_run()


def worker_main(connection: Connection, settings: Settings, target: Callable[..., Any] | str,
                working_dir: str | None, parent: int) -> None:
    """The worker's loop (the target of its process)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True, name="capstan-parent-watch").start()
    if working_dir:
        os.chdir(working_dir)
        if working_dir not in sys.path:
            sys.path.insert(0, working_dir)
    from capstan.sdk import fluent

    fluent.configure(settings)
    with contextlib.suppress(Exception):  # open the stores now, not in the first trial (an error shows there)
        getattr(fluent.process_backend(), "services", None)
    redirect = _Redirect()
    fn: Callable[..., Any] | None = target if callable(target) else None
    while True:
        try:
            message = connection.recv()
        except (EOFError, OSError):
            return
        if message[0] != "run":
            return
        _, number, params, run_id, log_path = message
        started = time.time_ns() // 1_000_000
        with redirect.to(log_path):
            if fn is None:
                try:
                    fn = resolve(str(target))
                except Exception:  # noqa: BLE001  # an import error fails this trial with its traceback
                    outcome: tuple[str, Any, str] = ("error", None, traceback.format_exc())
                else:
                    outcome = _run_one(fn, connection, number, params, run_id)
            else:
                outcome = _run_one(fn, connection, number, params, run_id)
        ended = time.time_ns() // 1_000_000
        try:
            connection.send(("done", number, outcome[0], outcome[1], outcome[2], started, ended))
        except (OSError, ValueError):
            return
