"""Naming why a workload is where it is, from what was recorded about it. Pure: no I/O, no clock.

`classify` reads `Facts` (the workload's phase, reason code and message, exit code, the tail of its log, its peak
memory against its limit, the queue's reason, its preemptions) and names the cause as a `Diagnosis`: a `Cause` code,
a one-line summary, the evidence lines it rests on and a hint. The rules, first match wins for a failed workload:

1. ``CUDAOutOfMemory``: a ``CUDA out of memory`` / ``torch.OutOfMemoryError`` line in the log or the message;
2. ``OOMKilled``: the reason ``OOMKilled``, exit code 137, a SIGKILL while the kernel's OOM counter rose, or a
   ``MemoryError`` line; with the peak memory against the limit when both were recorded;
3. ``Timeout``: the reason ``Timeout`` (or ``TimedOut``/``DeadlineExceeded``);
4. ``Unschedulable``: the reason ``Unschedulable`` (the queue can never admit it), with the queue's reason;
5. ``Preempted``: the reason ``Preempted``;
6. ``ImportError``: ``No module named 'x'`` or ``cannot import name 'y'``, naming the module;
7. ``Cancelled``, then ``UpstreamFailed`` (a pipeline step skipped because a step it needs failed);
8. ``NonZeroExit``: a non-zero exit code, with the last error line (a Python traceback's exception line, else the
   last ``error:`` line, else the last line of the log);
9. ``Error``: any other failure, with its reason code and message.

A pending workload is ``Preempted`` (waiting to be admitted again), ``Unschedulable`` (the queue's reason:
``WaitingForQuota``, ``NoFittingFlavor``...) or ``Pending``; a running one ``Running``; a finished one ``Succeeded``
(earlier failed attempts are its evidence), or ``Pruned`` (a trial the pruner stopped early).
"""

from __future__ import annotations

import re
import signal
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, Literal

from capstan.resources.quantity import format_bytes
from capstan.tuning.outcomes import reason_line

__all__ = ["Cause", "Diagnosis", "Facts", "Phase", "classify", "cuda_oom_line", "error_line", "format_bytes",
           "format_duration", "missing_module"]

Phase = Literal["pending", "running", "succeeded", "failed", "cancelled"]
"""Where a workload is, whatever its kind calls it (``Failed``, ``failed``, ``FAILED``...)."""

OOM_EXIT_CODE = 137
"""128 + SIGKILL: what a shell, a container runtime and Kubernetes report for a process the OOM killer ended."""
TIMEOUT_REASONS = frozenset({"Timeout", "TimedOut", "DeadlineExceeded"})
MAX_EVIDENCE_CHARS = 300

_TRACEBACK = "Traceback (most recent call last):"
_EXCEPTION_LINE = re.compile(r"^(?:[A-Za-z_][\w.]*\.)?[A-Z]\w*(?:Error|Exception|Exit|Interrupt|Warning)\b(?::.*)?$")
_NO_MODULE = re.compile(r"No module named ['\"]?([\w.\-]+)['\"]?")
_CANNOT_IMPORT = re.compile(r"cannot import name ['\"]?([\w.]+)['\"]? from ['\"]?([\w.\-]+)['\"]?")
_CUDA_OOM = re.compile(r"CUDA out of memory|torch\.(?:cuda\.)?OutOfMemoryError|CUDA error: out of memory"
                       r"|CUBLAS_STATUS_ALLOC_FAILED|cudaErrorMemoryAllocation", re.I)
_TIMEOUT_OF = re.compile(r"timeout of (\d+(?:\.\d+)?)s\b")
_MEMORY_ERROR = re.compile(r"^(?:\w+\.)*MemoryError\b|std::bad_alloc|Cannot allocate memory")


class Cause(StrEnum):
    """The cause a diagnosis names. The values are the codes the CLI, the API and the UI show."""

    OOM_KILLED = "OOMKilled"
    CUDA_OUT_OF_MEMORY = "CUDAOutOfMemory"
    IMPORT_ERROR = "ImportError"
    NON_ZERO_EXIT = "NonZeroExit"
    ERROR = "Error"
    UNSCHEDULABLE = "Unschedulable"
    TIMEOUT = "Timeout"
    PREEMPTED = "Preempted"
    CANCELLED = "Cancelled"
    UPSTREAM_FAILED = "UpstreamFailed"
    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    PRUNED = "Pruned"


@dataclass(frozen=True, slots=True)
class Facts:
    """What was recorded about one workload, as the classifier reads it.

    ``reason``/``message``: the workload's own reason code and message (for a failure, its failed attempt's);
    ``exit_code``: the failing process's status (negative: killed by that signal); ``oom_killed``: the kernel's OOM
    counter rose while it ran; ``log_tail``: the last lines of its output; ``peak_memory``/``memory_limit`` in
    bytes; ``queue_reason``/``queue_message``/``queue_hint``: the queue's explanation while it waits;
    ``preemptions``, ``preempted_by`` and ``lost_ms`` (how long the stopped attempt had run); ``timeout_s``: its
    limit; ``earlier``: how earlier attempts ended, one line each."""

    kind: str
    phase: Phase
    reason: str = ""
    message: str = ""
    exit_code: int | None = None
    oom_killed: bool = False
    log_tail: tuple[str, ...] = ()
    peak_memory: int | None = None
    memory_limit: int | None = None
    queue_reason: str = ""
    queue_message: str = ""
    queue_hint: str = ""
    preemptions: int = 0
    preempted_by: str = ""
    lost_ms: int | None = None
    timeout_s: float | None = None
    earlier: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Diagnosis:
    """The named cause: ``cause`` (a `Cause` code), a one-line ``summary``, the ``evidence`` lines it rests on (each
    from a record: a reason, an exit code, a log line, a peak against a limit) and a ``hint`` (what to do)."""

    cause: Cause
    summary: str
    evidence: tuple[str, ...] = ()
    hint: str = ""
    data: tuple[tuple[str, Any], ...] = field(default=())
    """Numbers behind the summary for the UI (``peak_memory``, ``memory_limit``, ``exit_code``, ``module``...)."""

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"cause": self.cause.value, "summary": self.summary, "evidence": list(self.evidence),
                "hint": self.hint, "data": dict(self.data)}


# -- reading log lines ---------------------------------------------------------------------------------------------
def error_line(lines: Sequence[str]) -> str:
    """The line that says what went wrong: the exception line of the last Python traceback (``ValueError: bad``),
    else the last line that looks like an exception, else the last ``error: ...`` line (Capstan's one-line
    errors), else the last non-empty line; empty for no output."""
    start = None
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].strip().startswith(_TRACEBACK):
            start = i
            break
    if start is not None:
        for line in lines[start + 1:]:
            if line.strip() and not line[:1].isspace():
                return line.strip()[:MAX_EVIDENCE_CHARS]
    stripped = [line.strip() for line in lines if line.strip()]
    for line in reversed(stripped):
        if _EXCEPTION_LINE.match(line):
            return line[:MAX_EVIDENCE_CHARS]
    for line in reversed(stripped):
        if line.startswith("error:"):
            return line[:MAX_EVIDENCE_CHARS]
    return reason_line("\n".join(stripped)) if stripped else ""


def missing_module(texts: Iterable[str]) -> tuple[str, str] | None:
    """``(module, line)`` for the last import failure in ``texts``: ``No module named 'x'`` names ``x``;
    ``cannot import name 'y' from 'x'`` names ``x``. None when there is none."""
    found = None
    for text in texts:
        for line in text.splitlines():
            match = _NO_MODULE.search(line)
            if match:
                found = (match.group(1), line.strip())
                continue
            match = _CANNOT_IMPORT.search(line)
            if match:
                found = (match.group(2), line.strip())
    return found


def cuda_oom_line(texts: Iterable[str]) -> str | None:
    """The last line saying a CUDA allocation failed (``torch.OutOfMemoryError: CUDA out of memory...``)."""
    found = None
    for text in texts:
        for line in text.splitlines():
            if _CUDA_OOM.search(line):
                found = line.strip()
    return found


def _memory_error_line(texts: Iterable[str]) -> str | None:
    found = None
    for text in texts:
        for line in text.splitlines():
            if _MEMORY_ERROR.search(line.strip()):
                found = line.strip()
    return found


# -- formatting ----------------------------------------------------------------------------------------------------
def format_duration(ms: int) -> str:
    """``850 ms``, ``12.3s``, ``4m05s``, ``2h03m``: a duration."""
    if ms < 1000:
        return f"{ms} ms"
    if ms < 60_000:
        return f"{ms / 1000:.1f}s"
    if ms < 3_600_000:
        return f"{ms // 60_000}m{ms // 1000 % 60:02d}s"
    return f"{ms // 3_600_000}h{ms // 60_000 % 60:02d}m"


def _exit_words(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    if code > 128 and code - 128 in {s.value for s in signal.Signals}:
        return f"exited with code {code} ({signal.Signals(code - 128).name})"
    return f"exited with code {code}"


def _cut(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_EVIDENCE_CHARS else text[:MAX_EVIDENCE_CHARS - 3] + "..."


# -- the rules -----------------------------------------------------------------------------------------------------
def classify(facts: Facts) -> Diagnosis:
    """The cause of the workload's state (see the module docstring for the rules)."""
    if facts.phase == "failed":
        return _failed(facts)
    if facts.phase == "cancelled":
        return _with_earlier(Diagnosis(Cause.CANCELLED, _cut(f"cancelled: {facts.message or facts.reason}"),
                                       _reason_evidence(facts), "nothing to fix; run it again when wanted"), facts)
    if facts.phase == "pending":
        return _pending(facts)
    if facts.phase == "running" and facts.reason == "Preempted":  # admitted, but being stopped for another
        return _with_earlier(_preemption(facts), facts)
    if facts.phase == "running":
        summary = "running" + (f" ({facts.message})" if facts.message else "")
        return _with_earlier(Diagnosis(Cause.RUNNING, _cut(summary), _peak_evidence(facts)), facts)
    if facts.reason == "Pruned":
        return Diagnosis(Cause.PRUNED, "stopped early by the pruner: its intermediate values were worse than the "
                                       "other trials' (a normal outcome, not a failure)", _reason_evidence(facts))
    summary = "succeeded" + (f" after {len(facts.earlier)} failed attempt(s)" if facts.earlier else "")
    return _with_earlier(Diagnosis(Cause.SUCCEEDED, summary, _peak_evidence(facts)), facts)


def _failed(facts: Facts) -> Diagnosis:
    texts = (*facts.log_tail, facts.message)
    for rule in (_cuda_oom, _oom, _timeout, _unschedulable, _preempted, _import_error, _cancelled_or_upstream,
                 _non_zero_exit):
        found = rule(facts, texts)
        if found is not None:
            return _with_earlier(found, facts)
    what = ": ".join(p for p in (facts.reason, facts.message) if p) or "failed"
    last = error_line(facts.log_tail)
    evidence = _reason_evidence(facts) + ((f"last error line: {last}",) if last else ())
    return _with_earlier(Diagnosis(Cause.ERROR, _cut(f"failed: {what}"), evidence,
                                   "read the log tail and the events above for what went wrong"), facts)


def _cuda_oom(facts: Facts, texts: Sequence[str]) -> Diagnosis | None:
    line = cuda_oom_line(texts)
    if line is None:
        return None
    return Diagnosis(Cause.CUDA_OUT_OF_MEMORY, "ran out of GPU memory (CUDA out of memory)",
                     (f"log: {_cut(line)}", *_reason_evidence(facts)),
                     "lower the batch size, use mixed precision or gradient checkpointing, free cached tensors, or "
                     "ask for a GPU with more memory (gpu_flavor)", (("line", _cut(line)),))


def _oom(facts: Facts, texts: Sequence[str]) -> Diagnosis | None:
    code = facts.exit_code
    killed = code == OOM_EXIT_CODE or (code == -signal.SIGKILL and facts.oom_killed)
    memory_line = _memory_error_line(texts)
    if facts.reason != "OOMKilled" and not killed and memory_line is None:
        return None
    evidence = list(_reason_evidence(facts))
    if code is not None and code != 0:
        evidence.append(f"exit code {code}" + (" with the kernel's OOM-kill counter raised" if facts.oom_killed
                                               else ""))
    if memory_line:
        evidence.append(f"log: {_cut(memory_line)}")
    summary = "ran out of memory"
    data: list[tuple[str, Any]] = []
    peak, limit = facts.peak_memory, facts.memory_limit
    if peak is not None and limit:
        summary += f": peak {format_bytes(peak)} of its {format_bytes(limit)} limit ({100 * peak / limit:.0f}%)"
    elif limit:
        summary += f" (limit {format_bytes(limit)})"
    elif peak is not None:
        summary += f" (peak {format_bytes(peak)})"
    if peak is not None:
        data.append(("peak_memory", peak))
    if limit:
        data.append(("memory_limit", limit))
    evidence.extend(_peak_evidence(facts))
    want = f" (e.g. {format_bytes(_round_up(max(peak or 0, limit or 0) * 2))})" if (peak or limit) else ""
    return Diagnosis(Cause.OOM_KILLED, summary, tuple(evidence),
                     f"raise the memory request{want}, or process the data in smaller pieces", tuple(data))


def _round_up(size: int) -> int:
    step = 2**20 if size < 2**30 else 2**28
    return -(-size // step) * step


def _timeout(facts: Facts, texts: Sequence[str]) -> Diagnosis | None:
    del texts
    if facts.reason not in TIMEOUT_REASONS:
        return None
    seconds = facts.timeout_s
    stated = _TIMEOUT_OF.search(facts.message)
    if seconds is None and stated:
        seconds = float(stated.group(1))
    limit = f" of {seconds:g}s" if seconds else ""
    last = error_line(facts.log_tail)
    evidence = _reason_evidence(facts) + ((f"last output line: {last}",) if last else ())
    return Diagnosis(Cause.TIMEOUT, f"ran past its time limit{limit} and was stopped", evidence,
                     "raise the timeout, or find what is slow in the log (a hung download, a lock, a slow loop)",
                     (("timeout_s", seconds),) if seconds else ())


def _unschedulable(facts: Facts, texts: Sequence[str]) -> Diagnosis | None:
    del texts
    if facts.reason != "Unschedulable":
        return None
    return Diagnosis(Cause.UNSCHEDULABLE, _cut(f"the queue can never admit it: {facts.message}"),
                     _reason_evidence(facts) + _queue_evidence(facts),
                     facts.queue_hint or "ask for less than the largest ClusterQueue offers, or give the queue more "
                                         "quota (`capstan queue apply`)")


def _preempted(facts: Facts, texts: Sequence[str]) -> Diagnosis | None:
    del texts
    if facts.reason != "Preempted":
        return None
    return _preemption(facts)


def _preemption(facts: Facts) -> Diagnosis:
    by = f" by {facts.preempted_by}" if facts.preempted_by else ""
    summary = f"preempted{by}: the queue took its quota back for higher-priority work"
    if facts.phase == "pending":
        summary += "; it waits to be admitted again"
    elif facts.phase == "running":
        summary += "; it is being stopped"
    evidence = list(_reason_evidence(facts))
    if facts.preemptions:
        evidence.append(f"preemptions: {facts.preemptions}")
    if facts.lost_ms is not None:
        evidence.append(f"the stopped attempt had run for {format_duration(facts.lost_ms)}; work since its last "
                        "checkpoint is done again")
    evidence.extend(_queue_evidence(facts))
    data = tuple(item for item in (("preemptions", facts.preemptions), ("lost_ms", facts.lost_ms))
                 if item[1] is not None)
    return Diagnosis(Cause.PREEMPTED, summary, tuple(evidence),
                     "nothing is broken: checkpoint often (capstan.checkpoint) so little work is lost, or run it at a "
                     "higher priority class", data)


def _import_error(facts: Facts, texts: Sequence[str]) -> Diagnosis | None:
    found = missing_module(texts)
    if found is None:
        return None
    module, line = found
    top = module.split(".")[0]
    return Diagnosis(Cause.IMPORT_ERROR, f"could not import module {module!r}",
                     (f"log: {_cut(line)}", *_reason_evidence(facts), *_exit_evidence(facts)),
                     f"install {top!r} where the workload runs (pip install {top}), or fix the import and the "
                     "working directory it is found from", (("module", module),))


def _cancelled_or_upstream(facts: Facts, texts: Sequence[str]) -> Diagnosis | None:
    del texts
    if facts.reason == "Cancelled":
        return Diagnosis(Cause.CANCELLED, _cut(f"cancelled: {facts.message or 'by request'}"),
                         _reason_evidence(facts), "nothing to fix; run it again when wanted")
    if facts.reason == "UpstreamFailed":
        return Diagnosis(Cause.UPSTREAM_FAILED, _cut(f"skipped: {facts.message}"), _reason_evidence(facts),
                         "describe the failed step it needs: its cause is this step's")
    return None


def _non_zero_exit(facts: Facts, texts: Sequence[str]) -> Diagnosis | None:
    del texts
    code = facts.exit_code
    if code is None or code == 0:
        return None
    last = error_line(facts.log_tail) or error_line(facts.message.splitlines())
    summary = _exit_words(code) + (f": {last}" if last else "")
    evidence = (*_reason_evidence(facts), f"exit code {code}", *((f"last error line: {last}",) if last else ()))
    return Diagnosis(Cause.NON_ZERO_EXIT, _cut(summary), evidence,
                     "fix the error in the last lines of the log (shown below), then run it again",
                     (("exit_code", code), ("line", last)))


def _pending(facts: Facts) -> Diagnosis:
    if facts.reason == "Preempted" or facts.queue_reason == "Preempted":
        return _with_earlier(_preemption(facts), facts)
    if facts.queue_reason and facts.queue_reason != "Admitted":
        message = facts.queue_message or facts.message
        return _with_earlier(Diagnosis(
            Cause.UNSCHEDULABLE, _cut(f"waiting for the queue: {facts.queue_reason}: {message}"),
            _queue_evidence(facts) + _reason_evidence(facts),
            facts.queue_hint or "wait for running work to finish, lower the request, or give the queue more quota "
                                "(`capstan queue status` shows what is used)",
            (("queue_reason", facts.queue_reason),)), facts)
    summary = "pending" + (f": {facts.message}" if facts.message else "")
    return _with_earlier(Diagnosis(Cause.PENDING, _cut(summary), _reason_evidence(facts)), facts)


# -- evidence ------------------------------------------------------------------------------------------------------
def _reason_evidence(facts: Facts) -> tuple[str, ...]:
    if not facts.reason and not facts.message:
        return ()
    return (_cut("reason: " + ": ".join(p for p in (facts.reason, facts.message) if p)),)


def _exit_evidence(facts: Facts) -> tuple[str, ...]:
    return (f"exit code {facts.exit_code}",) if facts.exit_code not in (None, 0) else ()


def _queue_evidence(facts: Facts) -> tuple[str, ...]:
    if not facts.queue_reason:
        return ()
    return (_cut(f"queue: {facts.queue_reason}" + (f": {facts.queue_message}" if facts.queue_message else "")),)


def _peak_evidence(facts: Facts) -> tuple[str, ...]:
    peak, limit = facts.peak_memory, facts.memory_limit
    if peak is None:
        return ()
    if limit:
        return (f"peak memory {format_bytes(peak)} of a {format_bytes(limit)} limit ({100 * peak / limit:.0f}%)",)
    return (f"peak memory {format_bytes(peak)} (no limit)",)


def _with_earlier(diagnosis: Diagnosis, facts: Facts) -> Diagnosis:
    if not facts.earlier:
        return diagnosis
    return replace(diagnosis, evidence=(*diagnosis.evidence, *(_cut(f"earlier: {e}") for e in facts.earlier)))
