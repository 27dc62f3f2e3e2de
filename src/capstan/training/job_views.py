"""What the CLI and ``/api/v1/jobs`` show of a training job: its JSON form, and the ``capstan why JOB`` explanation.

Pure: records in, plain data and text out (no I/O, no clock). Both the API and the CLI render from the JSON form, so
``capstan jobs show`` and ``capstan why`` print the same whether they read the local store or a server.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from capstan.resources.quantity import format_bytes
from capstan.training.ports import JobAttempt, JobRecord

__all__ = ["attempt_json", "attempt_summary", "explain_job", "format_memory", "format_ms", "job_json", "peak_text",
           "worker_peak"]


def job_json(record: JobRecord) -> dict[str, Any]:
    """The job as JSON: every record field, the spec as ``TrainingJobSpec.to_dict()``."""
    return {"id": record.id, "name": record.spec.name, "project": record.project, "user": record.user,
            "state": record.state, "reason": record.reason, "message": record.message, "run_id": record.run_id,
            "workload": record.workload, "attempt": record.attempt, "restarts": record.restarts,
            "preemptions": record.preemptions, "created_ms": record.created_ms, "started_ms": record.started_ms,
            "ended_ms": record.ended_ms, "cancel_requested": record.cancel_requested, "owner": record.owner,
            "spec": record.spec.to_dict()}


def attempt_json(attempt: JobAttempt) -> dict[str, Any]:
    """One attempt as JSON, with ``summary``: its outcome in words; ``peak_memory`` (bytes, the largest rank's
    peak resident memory), ``peak_rank`` and ``rank_peak_memory`` (each rank's) once it has ended."""
    data = {"number": attempt.number, "started_ms": attempt.started_ms, "ended_ms": attempt.ended_ms,
            "master_port": attempt.master_port, "log_dir": attempt.log_dir, "reason": attempt.reason,
            "rank": attempt.rank, "exit_code": attempt.exit_code, "message": attempt.message,
            "peak_memory": attempt.peak_memory, "peak_rank": attempt.peak_rank,
            "rank_peak_memory": list(attempt.rank_peak_memory)}
    data["summary"] = attempt_summary(data)
    return data


def format_memory(size: int) -> str:
    """``212Mi``: a measured byte count (`capstan.resources.quantity.format_bytes`)."""
    return format_bytes(size)


def worker_peak(rank_peaks: Sequence[int | None], nproc_per_worker: int) -> tuple[int, int] | None:
    """``(worker, bytes)``: the worker (pod) whose processes' peaks add up to the most, and that sum (an upper
    bound of the pod's peak: its processes need not peak at once); None when no peak was recorded."""
    nproc = max(1, nproc_per_worker)
    sums: dict[int, int] = {}
    for rank, peak in enumerate(rank_peaks):
        if peak is not None:
            sums[rank // nproc] = sums.get(rank // nproc, 0) + int(peak)
    if not sums:
        return None
    worker = max(sums, key=lambda w: (sums[w], -w))
    return worker, sums[worker]


def peak_text(attempt: Mapping[str, Any], spec: Mapping[str, Any] | None = None) -> str:
    """An attempt's peak memory in words: ``212Mi (rank 1)``; against the spec's per-worker ``memory`` when it has
    one, ``212Mi of 256Mi (83%, rank 1)`` (with several processes per worker, the largest worker's sum of its
    processes' peaks); ``-`` when none was recorded."""
    peak, rank = attempt.get("peak_memory"), attempt.get("peak_rank")
    if peak is None:
        return "-"
    limit = int((spec or {}).get("memory") or 0)
    nproc = int((spec or {}).get("nproc_per_worker") or 1)
    used, where = int(peak), f"rank {rank}"
    if nproc > 1:
        found = worker_peak(attempt.get("rank_peak_memory") or (), nproc)
        if found is not None:
            used, where = found[1], f"worker {found[0]}, sum of its {nproc} processes"
    if not limit:
        return f"{format_memory(used)} ({where})"
    return f"{format_memory(used)} of {format_memory(limit)} ({100 * used / limit:.0f}%, {where})"


def format_ms(ms: int | None) -> str:
    """An epoch-millisecond time as ``YYYY-MM-DD HH:MM:SS`` UTC (``-`` for none)."""
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")


def attempt_summary(attempt: Mapping[str, Any]) -> str:
    """How an attempt ended, in words: ``WorkerFailed: rank 1 exited with code 3``, ``running``..."""
    reason = attempt.get("reason")
    rank, code, message = attempt.get("rank"), attempt.get("exit_code"), attempt.get("message") or ""
    if reason is None:
        return "running" if attempt.get("ended_ms") is None else "ended"
    detail = message
    if not detail and reason == "WorkerFailed" and rank is not None:
        detail = f"rank {rank} exited with code {code}"
    elif not detail and reason == "OOMKilled" and rank is not None:
        detail = f"rank {rank} ran out of memory (exit code {code})"
    return f"{reason}: {detail}" if detail else str(reason)


def _duration(job: Mapping[str, Any]) -> str:
    start, end = job.get("started_ms"), job.get("ended_ms")
    if start is None or end is None:
        return ""
    seconds = max(0, int(end) - int(start)) // 1000
    return f" after {seconds // 3600}h{seconds // 60 % 60:02d}m{seconds % 60:02d}s" if seconds >= 3600 else \
        f" after {seconds // 60}m{seconds % 60:02d}s"


def _restarts_line(job: Mapping[str, Any]) -> str:
    spec = job.get("spec") or {}
    restarts, allowed = int(job.get("restarts") or 0), int(spec.get("max_restarts") or 0)
    line = f"{restarts} of {allowed} allowed"
    preemptions = int(job.get("preemptions") or 0)
    if preemptions:
        line += f"; {preemptions} preemption{'s' if preemptions != 1 else ''} (not counted)"
    return line


def _next_step(job: Mapping[str, Any], queue: Mapping[str, Any] | None) -> str | None:
    state = job.get("state")
    if state == "Pending" and job.get("cancel_requested"):
        return "a cancel was requested; the runner stops it before it starts"
    if state == "Pending" and not job.get("workload"):
        return "no runner has submitted it to the queue yet (`capstan server` runs submitted jobs)"
    if state == "Pending" and queue is None:
        return f"its workload {job.get('workload')} is not in the queue any more"
    if state in ("Running", "Restarting") and job.get("cancel_requested"):
        return "a cancel was requested; the runner is stopping the workers"
    return None


def explain_job(job: Mapping[str, Any], attempts: Sequence[Mapping[str, Any]], *,
                queue: Mapping[str, Any] | None = None, queue_text: str | None = None,
                kueue: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``capstan why JOB``: the job's state and reason, its restarts, each attempt with how it ended and, while it is
    pending, the queue's explanation of its workload (``queue`` as JSON, ``queue_text`` as the queue renders it) or,
    in Kueue mode, what Kueue last said about its Job's Workload (``kueue``, a `capstan.k8s.kueue_status.KueueStatus`
    in its JSON form: why Kueue keeps it pending, or who preempted it). Returns the JSON form with ``text``, the
    one-screen rendering."""
    spec = job.get("spec") or {}
    workers, nproc = int(spec.get("workers") or 1), int(spec.get("nproc_per_worker") or 1)
    note = _next_step(job, queue)
    lines = [f"Job:       {job['id']} (project {job.get('project')})",
             f"State:     {job['state']}{_duration(job)}"]
    if job.get("reason"):
        lines.append(f"Reason:    {job['reason']}")
    if job.get("message"):
        lines.append(f"Detail:    {job['message']}")
    lines.append(f"Gang:      {workers} worker{'s' if workers != 1 else ''} x {nproc} process"
                 f"{'es' if nproc != 1 else ''} (world size {workers * nproc})")
    lines.append(f"Restarts:  {_restarts_line(job)}")
    for i, attempt in enumerate(attempts):
        label = "Attempts:  " if i == 0 else "           "
        peak = peak_text(attempt, spec)
        lines.append(f"{label}#{attempt['number']} {format_ms(attempt.get('started_ms'))}  "
                     f"{attempt.get('summary') or attempt_summary(attempt)}"
                     + (f"  (peak memory {peak})" if peak != "-" else ""))
    if job.get("run_id"):
        lines.append(f"Run:       {job['run_id']}")
    if note:
        lines.append(f"Note:      {note}")
    if queue_text:
        lines.append("Queue:")
        lines.extend(f"  {line}" for line in queue_text.splitlines())
    if kueue is not None:
        lines.append(f"Kueue:     {kueue.get('summary') or kueue.get('message')}")
        if kueue.get("hint"):
            lines.append(f"Hint:      {kueue['hint']}")
    return {"job": job["id"], "project": job.get("project"), "state": job["state"], "reason": job.get("reason", ""),
            "message": job.get("message", ""), "restarts": int(job.get("restarts") or 0),
            "max_restarts": int(spec.get("max_restarts") or 0), "preemptions": int(job.get("preemptions") or 0),
            "cancel_requested": bool(job.get("cancel_requested")), "run_id": job.get("run_id"),
            "workload": job.get("workload"), "attempts": [dict(a) for a in attempts], "queue": queue,
            "kueue": dict(kueue) if kueue is not None else None,
            "note": note, "text": "\n".join(lines)}
