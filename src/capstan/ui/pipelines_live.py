"""Server-sent event streams of the pipelines pages: a run's node states while it runs, an attempt's log while it
is written.

**Run stream** (``text/event-stream``): ``retry`` first, then a ``state`` event with every node (and the step the
page asked about, ``?step=``), then a ``state`` event with only what changed each time something changes, and an
``end`` event once the run has finished, after which the stream closes. Step rows are read every
`poll_interval` seconds (longer for big runs); a comment line every `KEEPALIVE_S` keeps proxies from closing a
quiet stream, and a stream closes after `MAX_STREAM_S` (the browser reconnects and gets a fresh snapshot).

**Log stream**: ``reset`` (the text starts from the beginning, also after a reconnect), ``log`` events whose data
is a JSON string of new text, then ``end`` with the attempt's state once it finished
(`capstan.pipelines.logs.follow_log`, the reader of ``capstan logs --follow``).
"""

from __future__ import annotations

import asyncio
import codecs
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.responses import StreamingResponse

from capstan.ui.pipelines_view import FINISHED, NodeSummary, find_run, summarize

if TYPE_CHECKING:
    from capstan.pipelines.runner import PipelineRunner
    from capstan.pipelines.storage import AttemptRecord, RunRecord, StepRecord

KEEPALIVE_S = 15.0
MAX_STREAM_S = 600.0
RETRY_MS = 2000


class EventStream(StreamingResponse):
    """A ``text/event-stream`` response (documented as such in the OpenAPI document)."""

    media_type = "text/event-stream"

    def __init__(self, content: Any, status_code: int = 200, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(content, status_code=status_code, headers={
            "cache-control": "no-store", "x-accel-buffering": "no", **(headers or {})})


def sse(event: str, data: Any) -> bytes:
    """One server-sent event with JSON data."""
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def poll_interval(steps: int) -> float:
    """Seconds between two reads of a run's step rows: half a second, a little more per thousand rows."""
    return min(5.0, 0.5 + steps / 2000)


def _run_json(run: RunRecord) -> dict[str, Any]:
    return {"id": run.id, "status": run.status, "message": run.message, "started_at": run.started_at,
            "finished_at": run.finished_at}


def _step_json(step: StepRecord | None) -> dict[str, Any] | None:
    if step is None:
        return None
    return {"id": step.step_id, "state": step.state, "attempt": step.attempt, "reason": step.reason}


async def run_events(runner: PipelineRunner, run_id: str, step_id: str = "") -> AsyncIterator[bytes]:
    """The run stream (see the module docstring); ``run_id`` must be a full id the caller may read."""
    store = runner.store
    sent: dict[str, NodeSummary] = {}
    sent_run: dict[str, Any] | None = None
    sent_step: dict[str, Any] | None = None
    loop = asyncio.get_running_loop()
    started = last_write = loop.time()
    yield f"retry: {RETRY_MS}\n\n".encode()
    while True:
        run = await run_in_threadpool(find_run, store, run_id)
        steps = await run_in_threadpool(store.steps, run.id, run.project)
        nodes = summarize(run.graph.get("nodes", []), steps)
        changed = [n.to_json() for n in nodes if sent.get(n.id) != n]
        run_now = _run_json(run)
        step_now = _step_json(next((s for s in steps if s.step_id == step_id), None)) if step_id else None
        if changed or run_now != sent_run or step_now != sent_step:
            payload: dict[str, Any] = {"run": run_now, "nodes": changed}
            if step_id:
                payload["step"] = step_now
            yield sse("state", payload)
            sent.update((n.id, n) for n in nodes)
            sent_run, sent_step, last_write = run_now, step_now, loop.time()
        if run.status in FINISHED:
            yield sse("end", run_now)
            return
        if loop.time() - started > MAX_STREAM_S:
            return
        if loop.time() - last_write > KEEPALIVE_S:
            yield b": keep-alive\n\n"
            last_write = loop.time()
        await asyncio.sleep(poll_interval(len(steps)))


def log_events(runner: PipelineRunner, attempt: AttemptRecord) -> Iterator[bytes]:
    """The log stream of one attempt (see the module docstring); a blocking iterator, which the response runs in
    a worker thread."""
    from capstan.pipelines.logs import follow_log, pick_attempt

    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    yield f"retry: {RETRY_MS}\n\n".encode()
    yield sse("reset", {"attempt": attempt.attempt})  # the text starts again from its beginning (a reconnect too)
    for chunk in follow_log(runner, attempt):
        text = decoder.decode(chunk)
        if text:
            yield sse("log", text)
    tail = decoder.decode(b"", final=True)
    if tail:
        yield sse("log", tail)
    done = pick_attempt(runner, attempt.run_id, attempt.step_id, attempt.attempt)
    yield sse("end", {"attempt": done.attempt, "state": done.state, "exit_code": done.exit_code,
                      "reason": done.reason})

