"""The SDK's side of the workload queue: a running workload tells the queue it saved a checkpoint.

`capstan.checkpoint.save` calls `record_checkpoint` after each save when its process runs inside a queue workload
(``CAPSTAN_WORKLOAD_ID``, set from the queue's lease for pipeline steps, training-job workers and study trials).
The queue then knows how much work a preemption of that workload would lose (``capstan why``) and prefers victims
that lose least (docs/queue.md, "Checkpoint-aware preemption").

Against a server (``CAPSTAN_URL``) it calls ``POST /api/v1/queue/workloads/{id}/checkpoint`` with the process's
token (write permission in the workload's project); without one it records the save in the local store's queue,
holding the queue lock every writer of the queue holds (`Services.queue_lock`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from capstan.errors import InvalidParameterValue, StoreUnavailable, error_from_body

if TYPE_CHECKING:
    from capstan.queue.records import WorkloadRecord
    from capstan.sdk.backends import TrackingBackend
    from capstan.sdk.backends_http import HttpBackend
    from capstan.services import Services

__all__ = ["record_checkpoint", "record_checkpoint_in_store"]


def _check(workload_id: str, step: int | None) -> None:
    if not isinstance(workload_id, str) or not workload_id:
        raise InvalidParameterValue(f"workload_id: {workload_id!r} must be a non-empty workload id")
    if step is not None and (isinstance(step, bool) or not isinstance(step, int) or step < 0):
        raise InvalidParameterValue(f"step: {step!r} must be a whole number >= 0")


def record_checkpoint_in_store(services: Services, workload_id: str, *, step: int | None = None) -> WorkloadRecord:
    """Record, in the queue of ``services``' store, that admitted workload ``workload_id`` saved a checkpoint now
    (of training step ``step``); the queue lock is held as by every other writer of the queue.

    `ResourceDoesNotExist` for an unknown workload, `InvalidState` for one that is not running (pending,
    being evicted, ended)."""
    from capstan.queue.manager import QueueManager

    _check(workload_id, step)
    store = services.queue.get()
    with services.queue_lock.hold(getattr(store, "transaction", None)):
        mgr = QueueManager(store, clock=services.clock, events=services.events)
        return mgr.record_checkpoint(workload_id, step=step)


def _over_http(backend: HttpBackend, workload_id: str, step: int | None) -> dict[str, Any]:
    import httpx

    path = f"/queue/workloads/{quote(workload_id, safe='/')}/checkpoint"
    try:
        response = backend.client.post(path, json={} if step is None else {"step": step})
    except httpx.TransportError as exc:
        raise StoreUnavailable(f"cannot reach the Capstan server: {exc}") from None
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.status_code >= 400:
        if isinstance(body, dict) and "error_code" in body:
            raise error_from_body(str(body["error_code"]), str(body.get("message", "")), response.status_code)
        raise error_from_body("INTERNAL_ERROR", f"server answered HTTP {response.status_code}",
                              response.status_code)
    if not isinstance(body, dict) or not isinstance(body.get("workload"), dict):
        raise error_from_body("INTERNAL_ERROR", "the server's answer has no workload", response.status_code)
    workload: dict[str, Any] = body["workload"]
    return workload


def record_checkpoint(workload_id: str | None = None, *, step: int | None = None,
                      backend: TrackingBackend | None = None) -> dict[str, Any]:
    """Tell the queue that workload ``workload_id`` (default: this process's, ``CAPSTAN_WORKLOAD_ID``) saved a
    checkpoint now, of training step ``step`` when given. Returns the workload record as JSON (``id``, ``state``,
    ``checkpointed_at`` in epoch ms, ``checkpoint_step``...).

    ``backend`` defaults to the SDK's process backend: the server of ``CAPSTAN_URL``, else the local stores.
    `InvalidParameterValue` without a workload id, `ResourceDoesNotExist` for an unknown workload, `InvalidState`
    for one that is not running, `PermissionDenied` without write permission in its project.
    """
    from capstan.queue.records import record_to_json
    from capstan.sdk import fluent
    from capstan.sdk.backends_http import HttpBackend
    from capstan.sdk.backends_local import LocalBackend
    from capstan.settings import Settings

    if workload_id is None:
        workload_id = Settings.from_env().workload_id  # read afresh: a pipeline worker runs many steps' attempts
        if workload_id is None:
            raise InvalidParameterValue("workload_id: none given and CAPSTAN_WORKLOAD_ID is not set (this process "
                                        "does not run inside a queue workload)")
    _check(workload_id, step)
    backend = backend if backend is not None else fluent.process_backend()
    if isinstance(backend, HttpBackend):
        return _over_http(backend, workload_id, step)
    if isinstance(backend, LocalBackend):
        record = record_checkpoint_in_store(backend.services, workload_id, step=step)
        return {"id": record.id, **record_to_json(record)}
    raise InvalidParameterValue(f"backend: {type(backend).__name__} cannot reach a workload queue")
