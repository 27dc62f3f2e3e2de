"""The deployment router: one per ``capstan server`` worker, between clients and a deployment's replica processes.

For each request to ``/deployments/NAME/...`` the router:

1. reads the deployment's `RoutingTable` (built with `routing_table` from the `DeploymentStore`, cached for
   ``table_ttl_s``, 1 s by default: the control plane keeps a draining replica alive longer than that, so a cached
   table never names a replica that has already gone without another ready one to fall back on);
2. picks the version: the client's pin (``x-capstan-version: 3`` or ``: canary``; an unknown one is a 404 naming the
   versions), else a weighted draw (`traffic.choose_version`);
3. picks the replica of that version with the fewest requests in flight from this worker (ties in turn);
4. forwards the request with one shared keep-alive ``httpx.AsyncClient`` (no redirects), keeping the headers that
   matter (content type, ``Inference-Header-Content-Length``, ``X-Request-Id`` (generated when missing, and sent
   back), trace context). A refused or broken connection, or a 503 (a draining replica, a full queue) is retried on
   another ready replica of the version, then (unless pinned) of the other live version; inference is idempotent.
   After a round of failures the table is re-read. Only when nothing answers does the client get a 503 JSON with
   ``Retry-After``;
5. with no ready replica at all (scale from zero, a cold start), reports the demand at once
   (`DeploymentStore.report_load` with ``waiting``) and waits, polling the store, up to ``cold_start_timeout_s``;
   the wait comes back as ``x-capstan-cold-start-ms`` and in the request's outcome;
6. answers with ``x-capstan-version`` (the version that answered) and records an `Outcome` (buffered, written in
   batches through the `OutcomeStore` port, trimmed to the newest ``outcome_retention`` per deployment);
7. for a share of requests (`traffic.shadow_sampled`) sends the same body to a shadow replica in the background,
   after the live answer is in hand, and records whether the shadow's predictions disagree.

A background task writes a `LoadReport` per deployment every ``report_interval_s`` (requests in flight, completed
since the last report, waiting), from which the autoscaler decides. The router starts its client and tasks on the
first request, in the serving event loop; `DeploymentRouter.aclose` flushes and stops them.

Answers up to ``record_body_bytes`` are read whole (their predictions are recorded); larger ones are streamed
through to the client unread.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import random
import re
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
from starlette.responses import Response, StreamingResponse

from capstan.clock import Clock, monotonic_of, system_clock
from capstan.errors import InvalidParameterValue, ResourceDoesNotExist
from capstan.serving.answers import disagree, predictions_json, predictions_of
from capstan.serving.outcomes import Outcome, OutcomeStore, Truth
from capstan.serving.ports import VERSION_HEADER, DeploymentStore, LoadReport, RoutingTable, VersionRoute, routing_table
from capstan.serving.traffic import UnknownVersion, choose_version, shadow_sampled

__all__ = ["COLD_START_HEADER", "DeploymentRouter", "RouterOptions"]

log = logging.getLogger(__name__)

COLD_START_HEADER = "x-capstan-cold-start-ms"
"""Response header: how long the request waited for a replica to become ready (only when it waited)."""
REQUEST_ID_HEADER = "x-request-id"
_FORWARDED_REQUEST_HEADERS = ("content-type", "content-encoding", "accept", "inference-header-content-length",
                              "traceparent", "tracestate")
_RETURNED_RESPONSE_HEADERS = ("content-type", "content-encoding", "inference-header-content-length", "retry-after")
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
_RETRYABLE = (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError, httpx.ReadError,
              httpx.WriteError, httpx.PoolTimeout)
_TRIM_EVERY_FLUSHES = 30


@dataclass(frozen=True, slots=True)
class RouterOptions:
    """How the router behaves; the defaults suit one machine.

    Attributes:
        table_ttl_s: how long a routing table is reused before the store is read again.
        cold_start_timeout_s: how long a request waits for a ready replica before a 503.
        cold_start_poll_s: how often a waiting request re-reads the store.
        max_attempts: replicas tried per request (each refused connection or 503 is one attempt).
        max_rounds: times the table is re-read after every candidate failed.
        max_body_bytes: largest request body (413 beyond).
        record_body_bytes: answers up to this size are read whole and their predictions recorded.
        connect_timeout_s, read_timeout_s: the forwarding client's timeouts (a read timeout is not retried).
        max_connections: the forwarding client's connection pool size.
        report_interval_s: how often load reports are written.
        flush_interval_s: how often buffered outcomes are written.
        max_buffered_outcomes: outcomes held between flushes (the oldest are dropped beyond, and counted).
        outcome_retention: outcomes kept per deployment (older ones are trimmed).
        max_shadow_in_flight: shadow copies in flight per worker (further samples are skipped, and counted).
    """

    table_ttl_s: float = 1.0
    cold_start_timeout_s: float = 60.0
    cold_start_poll_s: float = 0.1
    max_attempts: int = 6
    max_rounds: int = 3
    max_body_bytes: int = 64 * 1024 * 1024
    record_body_bytes: int = 4 * 1024 * 1024
    connect_timeout_s: float = 2.0
    read_timeout_s: float = 300.0
    max_connections: int = 512
    report_interval_s: float = 1.0
    flush_interval_s: float = 1.0
    max_buffered_outcomes: int = 50_000
    outcome_retention: int = 100_000
    max_shadow_in_flight: int = 64


@dataclass
class _Cached:
    table: RoutingTable | None
    loaded_at: float
    expires_at: float


@dataclass
class _Load:
    in_flight: int = 0
    completed: int = 0
    waiting: int = 0
    cold_starts: int = 0
    dirty: bool = False


@dataclass
class _Call:
    """One client request as the router forwards it."""

    project: str
    deployment: str
    method: str
    path: str
    query: str
    headers: list[tuple[str, str]]
    body: bytes
    request_id: str
    started: float
    time_ms: int
    pinned: str | None


@dataclass
class _Answer:
    """The replica's answer (or the router's own refusal) and where it came from."""

    response: httpx.Response | None
    route: VersionRoute | None
    cold_start_ms: float | None = None
    refusal: Response | None = None
    tried: list[str] = field(default_factory=list)
    table: RoutingTable | None = None


class DeploymentRouter:
    """Routes requests to deployments' replicas (see the module docs). One per server worker process."""

    def __init__(self, store: DeploymentStore, outcomes: OutcomeStore | None = None, *,
                 clock: Clock = system_clock, options: RouterOptions | None = None,
                 draw: Callable[[], float] | None = None, worker: str | None = None) -> None:
        self.store = store
        self.outcomes = outcomes
        self.options = options or RouterOptions()
        self._clock = clock
        self._monotonic = monotonic_of(clock)
        self._draw = draw or random.random
        self.worker = worker or f"{os.uname().nodename}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self._tables: dict[tuple[str, str], _Cached] = {}
        self._table_locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._loads: dict[tuple[str, str], _Load] = {}
        self._in_flight: dict[str, int] = {}
        self._turn = itertools.count()
        self._buffer: deque[Outcome] = deque()
        self._flush_lock: asyncio.Lock | None = None
        self._flushes = 0
        self._shadows: set[asyncio.Task[None]] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._client: httpx.AsyncClient | None = None
        self.dropped_outcomes = 0
        self.skipped_shadows = 0

    # ------------------------------------------------------------------------------------------ lifecycle

    def _start(self) -> httpx.AsyncClient:
        if self._client is None:
            o = self.options
            self._client = httpx.AsyncClient(
                follow_redirects=False, trust_env=False,
                timeout=httpx.Timeout(o.read_timeout_s, connect=o.connect_timeout_s, pool=o.connect_timeout_s),
                limits=httpx.Limits(max_connections=o.max_connections, max_keepalive_connections=o.max_connections))
            self._flush_lock = asyncio.Lock()
            self._tasks = [asyncio.create_task(self._every(o.report_interval_s, self.report_load)),
                           asyncio.create_task(self._every(o.flush_interval_s, self.flush))]
        return self._client

    async def aclose(self) -> None:
        """Stop the background tasks, wait for shadow copies, write the last outcomes and load reports, close the
        client. The router starts again on its next request."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._shadows:
            await asyncio.gather(*self._shadows, return_exceptions=True)
        if self._client is not None:
            await self.flush()
            await self.report_load()
            await self._client.aclose()
            self._client = None

    async def _every(self, interval_s: float, job: Callable[[], Any]) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await job()
            except Exception:  # a store hiccup must not end the loop; the next round retries
                log.exception("deployment router: %s failed", getattr(job, "__name__", "background job"))

    # ------------------------------------------------------------------------------------------ routing tables

    async def table(self, project: str, deployment: str, *, fresh: bool = False) -> RoutingTable | None:
        """The deployment's routing table (None when there is no such deployment), from the cache unless it is
        older than ``table_ttl_s`` or ``fresh`` asks for one read after this call began."""
        key = (project, deployment)
        asked_at = self._monotonic()
        cached = self._tables.get(key)
        if cached is not None and cached.expires_at > asked_at and not fresh:
            return cached.table
        lock = self._table_locks.setdefault(key, asyncio.Lock())
        async with lock:
            cached = self._tables.get(key)
            if cached is not None and (cached.loaded_at >= asked_at or (not fresh and cached.expires_at > asked_at)):
                return cached.table  # another request refreshed it while this one waited
            table = await asyncio.to_thread(self._read_table, project, deployment)
            now = self._monotonic()
            self._tables[key] = _Cached(table, now, now + self.options.table_ttl_s)
            return table

    def _read_table(self, project: str, deployment: str) -> RoutingTable | None:
        record = self.store.get(project, deployment)
        if record is None:
            return None
        return routing_table(record, self.store.replicas(project=project, deployment=deployment))

    # ------------------------------------------------------------------------------------------ requests

    async def handle(self, project: str, deployment: str, *, method: str, path: str, query: str = "",
                     headers: Sequence[tuple[str, str]] = (), body: bytes = b"") -> Response:
        """Forward one request (``path`` below ``/deployments/NAME``, e.g. ``/v2/models/NAME/infer``) and return
        the response to give the client. `ResourceDoesNotExist` for an unknown deployment."""
        self._start()
        lowered = [(k.lower(), v) for k, v in headers]
        given = _header(lowered, REQUEST_ID_HEADER)
        rid = given if given and _VALID_REQUEST_ID.match(given) else uuid.uuid4().hex
        call = _Call(project, deployment, method, path if path.startswith("/") else "/" + path, query,
                     lowered, body, rid, self._monotonic(), self._clock(),
                     (_header(lowered, VERSION_HEADER) or "").strip() or None)
        table = await self.table(project, deployment)
        if table is None:
            raise ResourceDoesNotExist(f"deployment {deployment!r} does not exist in project {project!r}")
        try:
            route = self._choose(table, call.pinned)
        except UnknownVersion as exc:
            return _error(404, exc.message, rid, versions=exc.known)
        load = self._loads.setdefault((project, deployment), _Load())
        load.in_flight += 1
        try:
            answer = await self._forward(call, table, route, load)
            return await self._respond(call, answer)
        finally:
            load.in_flight -= 1
            load.completed += 1
            load.dirty = True

    def _choose(self, table: RoutingTable, pinned: str | None) -> VersionRoute:
        routes: dict[str, VersionRoute] = {r.role: r for r in table.routes}
        if pinned is not None:
            everything = [*table.routes, *([table.shadow] if table.shadow else [])]
            by_name = {r.role: r for r in everything} | {r.version: r for r in everything}
            if pinned in by_name:
                return by_name[pinned]
            raise UnknownVersion(pinned, sorted({r.version for r in everything} | set(by_name) - {"shadow"}))
        weights: dict[str, float] = {role: r.weight for role, r in routes.items()}
        if not any(w > 0 for w in weights.values()):
            return table.routes[0]
        return routes[choose_version(weights, self._draw(), pinned=None)]

    def _candidates(self, table: RoutingTable, route: VersionRoute, pinned: bool) -> list[tuple[VersionRoute, str]]:
        """The replicas to try, best first: the chosen version's (fewest in flight, ties in turn), then (unless
        the client pinned a version) the other live version's."""
        order = [route] if pinned else [route, *(r for r in table.routes if r.role != route.role)]
        current = {r.role: r for r in (*table.routes, *([table.shadow] if table.shadow else []))}
        chosen: list[tuple[VersionRoute, str]] = []
        for wanted in order:
            fresh = current.get(wanted.role) if not pinned else next(
                (r for r in current.values() if r.model_version == wanted.model_version), None)
            if fresh is None or not fresh.urls:
                continue
            turn = next(self._turn)
            ranked = sorted(range(len(fresh.urls)),
                            key=lambda i: (self._in_flight.get(fresh.urls[i], 0), (i - turn) % len(fresh.urls)))
            chosen.extend((fresh, fresh.urls[i]) for i in ranked)
        return chosen

    async def _forward(self, call: _Call, table: RoutingTable, route: VersionRoute, load: _Load) -> _Answer:
        pinned = call.pinned is not None
        answer = _Answer(None, None)
        cold_started: float | None = None
        attempts = 0
        for round_number in range(self.options.max_rounds + 1):
            candidates = [c for c in self._candidates(table, route, pinned) if c[1] not in answer.tried]
            if not candidates and not answer.tried:
                cold_started = self._monotonic()
                table = await self._wait_for_replica(call, route, pinned, load)
                candidates = self._candidates(table, route, pinned)
                if not candidates:
                    return self._refuse(call, answer, "no replica became ready within "
                                        f"{self.options.cold_start_timeout_s:g} s (cold start)")
            for candidate_route, url in candidates:
                if attempts >= self.options.max_attempts:
                    break
                attempts += 1
                try:
                    response = await self._try(call, url)
                except httpx.TimeoutException:
                    answer.refusal = _error(504, f"replica of deployment {call.deployment!r} did not answer within "
                                                 f"{self.options.read_timeout_s:g} s", call.request_id)
                    return answer
                answer.tried.append(url)
                if response is None:
                    continue
                if response.status_code == 503 and attempts < self.options.max_attempts:
                    await response.aclose()
                    continue
                answer.response, answer.route, answer.table = response, candidate_route, table
                if cold_started is not None:
                    answer.cold_start_ms = (self._monotonic() - cold_started) * 1000
                return answer
            if attempts >= self.options.max_attempts or round_number == self.options.max_rounds:
                break
            await asyncio.sleep(self.options.cold_start_poll_s)
            table = await self.table(call.project, call.deployment, fresh=True) or table
        return self._refuse(call, answer, f"no replica of deployment {call.deployment!r} could answer "
                                          f"({attempts} attempts)")

    def _refuse(self, call: _Call, answer: _Answer, message: str) -> _Answer:
        answer.refusal = _error(503, message, call.request_id, headers={"retry-after": "1"})
        return answer

    async def _try(self, call: _Call, url: str) -> httpx.Response | None:
        """Send the call to one replica; None when the connection failed (the caller tries another)."""
        client = self._start()
        headers = [(k, v) for k, v in call.headers if k in _FORWARDED_REQUEST_HEADERS]
        headers.append((REQUEST_ID_HEADER, call.request_id))
        request = client.build_request(call.method, url + call.path + (f"?{call.query}" if call.query else ""),
                                       headers=headers, content=call.body)
        self._in_flight[url] = self._in_flight.get(url, 0) + 1
        try:
            return await client.send(request, stream=True)
        except _RETRYABLE as exc:
            log.info("replica %s of %s failed (%s); trying another", url, call.deployment, type(exc).__name__)
            self._tables.pop((call.project, call.deployment), None)
            return None
        finally:
            self._in_flight[url] -= 1

    async def _wait_for_replica(self, call: _Call, route: VersionRoute, pinned: bool, load: _Load) -> RoutingTable:
        """Report the demand and poll the store until a replica the call may use is ready, or time runs out."""
        load.waiting += 1
        load.cold_starts += 1
        load.dirty = True
        if load.waiting == 1:
            self._spawn(self._report_one(call.project, call.deployment))
        deadline = self._monotonic() + self.options.cold_start_timeout_s
        try:
            while True:
                table = await self.table(call.project, call.deployment, fresh=True)
                if table is None:
                    raise ResourceDoesNotExist(f"deployment {call.deployment!r} was deleted")
                if self._candidates(table, route, pinned) or self._monotonic() >= deadline:
                    return table
                await asyncio.sleep(self.options.cold_start_poll_s)
        finally:
            load.waiting -= 1

    # ------------------------------------------------------------------------------------------ responses

    async def _respond(self, call: _Call, answer: _Answer) -> Response:
        if answer.response is None or answer.route is None:
            assert answer.refusal is not None  # _forward returns either an answer or a refusal
            self._record(call, None, answer.refusal.status_code, None, answer.cold_start_ms)
            return answer.refusal
        upstream, route = answer.response, answer.route
        headers = {k: v for k, v in upstream.headers.items() if k.lower() in _RETURNED_RESPONSE_HEADERS}
        headers[REQUEST_ID_HEADER] = call.request_id
        headers[VERSION_HEADER] = route.version
        if answer.cold_start_ms is not None:
            headers[COLD_START_HEADER] = f"{answer.cold_start_ms:.0f}"
        declared = upstream.headers.get("content-length")
        if declared is None or not declared.isdigit() or int(declared) > self.options.record_body_bytes:
            return StreamingResponse(self._relay(call, upstream, route, answer.cold_start_ms),
                                     status_code=upstream.status_code, headers=headers)
        try:
            body = await upstream.aread()
        except httpx.TransportError as exc:
            self._record(call, route, 502, None, answer.cold_start_ms)
            return _error(502, f"replica answered incompletely: {type(exc).__name__}", call.request_id)
        finally:
            await upstream.aclose()
        predictions = None
        if upstream.status_code == 200:
            predictions = predictions_json(predictions_of(body, header_length=_int_header(upstream.headers)))
        self._record(call, route, upstream.status_code, predictions, answer.cold_start_ms)
        self._maybe_shadow(call, answer.table, predictions if upstream.status_code == 200 else None)
        return Response(body, status_code=upstream.status_code, headers=headers)

    async def _relay(self, call: _Call, upstream: httpx.Response, route: VersionRoute,
                     cold_start_ms: float | None) -> AsyncIterator[bytes]:
        status = upstream.status_code
        try:
            async for chunk in upstream.aiter_raw():
                yield chunk
        except httpx.TransportError:
            status = 502
            raise
        finally:
            await upstream.aclose()
            self._record(call, route, status, None, cold_start_ms)

    def _record(self, call: _Call, route: VersionRoute | None, status: int, predictions: str | None,
                cold_start_ms: float | None, *, shadow: VersionRoute | None = None, disagrees: bool | None = None,
                latency_ms: float | None = None) -> None:
        if self.outcomes is None:
            return
        answered = shadow or route
        if len(self._buffer) >= self.options.max_buffered_outcomes:
            self._buffer.popleft()
            self.dropped_outcomes += 1
        self._buffer.append(Outcome(
            request_id=call.request_id, project=call.project, deployment=call.deployment,
            version=answered.version if answered else "", role=answered.role if answered else "",
            status=status, latency_ms=latency_ms if latency_ms is not None else self._since(call.started),
            time_ms=call.time_ms, predictions=predictions, disagrees=disagrees, cold_start_ms=cold_start_ms))

    def _since(self, started: float) -> float:
        return (self._monotonic() - started) * 1000

    # ------------------------------------------------------------------------------------------ shadow

    def _maybe_shadow(self, call: _Call, table: RoutingTable | None, live_predictions: str | None) -> None:
        shadow = table.shadow if table is not None else None
        if shadow is None or call.pinned is not None or not shadow.urls:
            return
        if not shadow_sampled(call.request_id, shadow.weight):
            return
        if len(self._shadows) >= self.options.max_shadow_in_flight:
            self.skipped_shadows += 1
            return
        self._spawn(self._mirror(call, shadow, live_predictions), shadow=True)

    async def _mirror(self, call: _Call, shadow: VersionRoute, live_predictions: str | None) -> None:
        """Send the call to a shadow replica; record its answer and whether it disagrees with the live one."""
        started = self._monotonic()
        ranked = sorted(shadow.urls, key=lambda u: self._in_flight.get(u, 0))
        for url in ranked[:2]:
            response = await self._try(call, url)
            if response is None:
                continue
            try:
                body = await response.aread()
            except httpx.TransportError:
                continue
            finally:
                await response.aclose()
            predictions = None
            if response.status_code == 200:
                predictions = predictions_json(predictions_of(body, header_length=_int_header(response.headers)))
            self._record(call, None, response.status_code, predictions, None, shadow=shadow,
                         disagrees=disagree(live_predictions, predictions), latency_ms=self._since(started))
            return
        self._record(call, None, 0, None, None, shadow=shadow, latency_ms=self._since(started))

    def _spawn(self, job: Any, *, shadow: bool = False) -> None:
        task: asyncio.Task[None] = asyncio.create_task(job)
        if shadow:
            self._shadows.add(task)
            task.add_done_callback(self._shadows.discard)
        else:
            self._tasks.append(task)
            task.add_done_callback(lambda t: self._tasks.remove(t) if t in self._tasks else None)

    # ------------------------------------------------------------------------------------------ reports

    async def report_load(self) -> None:
        """Write a `LoadReport` for every deployment with something to say (activity since the last report, or
        requests in flight or waiting)."""
        for (project, deployment), load in list(self._loads.items()):
            if load.dirty or load.in_flight or load.waiting:
                await self._report_one(project, deployment)

    async def _report_one(self, project: str, deployment: str) -> None:
        load = self._loads.setdefault((project, deployment), _Load())
        report = LoadReport(self.worker, deployment, project, load.in_flight, load.completed, load.waiting,
                            self._clock())
        load.completed = 0
        load.dirty = False
        try:
            # Shielded: the figures were taken from the counters above, so a report cancelled by `aclose` must
            # still be written, or those completions would be lost.
            await asyncio.shield(asyncio.to_thread(self.store.report_load, report))
        except Exception:  # the report is advisory; the next one carries the figures again
            log.exception("deployment router: cannot report the load of %s", deployment)
            load.completed += report.completed
            load.dirty = True

    def load_snapshot(self) -> dict[tuple[str, str], dict[str, int]]:
        """This worker's figures per ``(project, deployment)``: in flight, waiting, cold starts so far."""
        return {key: {"in_flight": v.in_flight, "waiting": v.waiting, "cold_starts": v.cold_starts}
                for key, v in self._loads.items()}

    # ------------------------------------------------------------------------------------------ outcomes

    async def flush(self) -> None:
        """Write the buffered outcomes in one batch; every few flushes, trim each deployment to the retention.

        Returns only after every outcome buffered before the call is in the store, including a batch that another
        flush took and is still writing (feedback and the quality report read the store right after)."""
        if self.outcomes is None:
            return
        lock = self._flush_lock or asyncio.Lock()
        async with lock:  # taken even with an empty buffer: it waits for a batch still being written
            batch = list(self._buffer)
            self._buffer.clear()
            if not batch:
                return
            try:
                await asyncio.to_thread(self.outcomes.add, batch)
            except Exception:  # outcomes are statistics: a failed batch is logged and dropped, never retried forever
                log.exception("deployment router: cannot write %d outcomes", len(batch))
                self.dropped_outcomes += len(batch)
                return
            self._flushes += 1
            if self._flushes % _TRIM_EVERY_FLUSHES == 1:
                for project, deployment in {(o.project, o.deployment) for o in batch}:
                    await asyncio.to_thread(self.outcomes.trim, project, deployment,
                                            keep=self.options.outcome_retention)

    async def feedback(self, project: str, deployment: str, body: bytes) -> Response:
        """Record ground truth (``{"request_id": ..., "truth": ...}`` or a list of them) for earlier requests.

        200 ``{"recorded": n, "unknown": [...]}``; 404 when no request id is known (outcomes of other workers
        reach the store within ``flush_interval_s``); `InvalidParameterValue` naming the field for a malformed
        body; `ResourceDoesNotExist` for an unknown deployment."""
        truths = parse_feedback(body)
        if self.outcomes is None:
            return _error(503, "this server records no request outcomes", None)
        if await self.table(project, deployment) is None:
            raise ResourceDoesNotExist(f"deployment {deployment!r} does not exist in project {project!r}")
        await self.flush()
        store = self.outcomes
        unknown = await asyncio.to_thread(lambda: store.record_truth(project, deployment, truths,
                                                                      time_ms=self._clock()))
        recorded = len({t.request_id for t in truths}) - len(unknown)
        if not recorded:
            return _error(404, f"no request with id {', '.join(map(repr, unknown[:5]))} in deployment "
                               f"{deployment!r}", None, unknown=unknown)
        return _json({"recorded": recorded, "unknown": unknown})


def parse_feedback(body: bytes) -> list[Truth]:
    """The truths of a feedback body; `InvalidParameterValue` naming the field that is wrong."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidParameterValue(f"the feedback body is not valid JSON: {exc}") from None
    items = document if isinstance(document, list) else [document]
    if not items:
        raise InvalidParameterValue("the feedback list is empty")
    truths: list[Truth] = []
    for index, item in enumerate(items):
        where = f"[{index}]." if isinstance(document, list) else ""
        if not isinstance(item, dict):
            raise InvalidParameterValue(f"{where or 'body'}: must be an object with request_id and truth")
        rid = item.get("request_id")
        if not isinstance(rid, str) or not rid:
            raise InvalidParameterValue(f"{where}request_id: must be a non-empty string")
        if len(rid) > 128:
            raise InvalidParameterValue(f"{where}request_id: must be at most 128 characters")
        if item.get("truth") is None:
            raise InvalidParameterValue(f"{where}truth: required (the true label or value; a list for several rows)")
        truths.append(Truth(rid, orjson.dumps(item["truth"]).decode()))
    return truths


def _header(headers: Sequence[tuple[str, str]], name: str) -> str | None:
    return next((v for k, v in headers if k == name), None)


def _int_header(headers: Mapping[str, str]) -> int | None:
    raw = headers.get("inference-header-content-length")
    return int(raw) if raw is not None and raw.strip().isdigit() else None


def _json(document: object, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    return Response(orjson.dumps(document), status_code=status, headers=headers, media_type="application/json")


def _error(status: int, message: str, request_id: str | None, *, headers: Mapping[str, str] | None = None,
           **extra: object) -> Response:
    all_headers = dict(headers or {})
    if request_id:
        all_headers[REQUEST_ID_HEADER] = request_id
    return _json({"error": message, **extra}, status, all_headers)
