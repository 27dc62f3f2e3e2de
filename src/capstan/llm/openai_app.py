"""The OpenAI-compatible serving app of one language model: chat, completions, embeddings and models over HTTP.

``llm_serving_app(model, max_waiting=..., max_body_bytes=...)`` answers:

- ``POST /v1/chat/completions`` (the model's chat template), ``POST /v1/completions`` (a prompt as text, a list of
  texts, token ids or a list of token-id lists), ``POST /v1/embeddings``, ``GET /v1/models[/{model}]``; streaming
  over server-sent events (``data: {chunk}`` per output, a usage chunk with ``stream_options.include_usage``, then
  ``data: [DONE]``). The ``model`` field selects the base model or one of its LoRA adapters.
- ``GET /metrics`` (`capstan.llm.metrics`: vLLM's names and Capstan's), ``GET /llm/stats`` (JSON load and token
  totals, polled by the deployment autoscaler).
- ``GET /v2/health/live``, ``/v2/health/ready``, ``/health``, ``/ping``, ``/version``: the health routes of the
  serving app (`capstan.serving.app`); the deployment controller probes ``/v2/health/ready``.

Bodies are checked by `capstan.llm.requests`; every error is in OpenAI's shape with ``param`` naming the field. The
queue is bounded: when ``max_waiting`` requests already wait (the engine's waiting ones plus those this app admitted
and has not yet handed to it) a request gets 429 with ``Retry-After``; while the engine is not started, 503 with
``Retry-After``. A client that disconnects, streaming or not, cancels its generation: the engine's iterator is
closed, which takes the request out of the batch.

The lifespan starts the engine in the background (so ``/v2/health/live`` answers while a large model warms up, and
``ready`` flips when it has started) and closes it at shutdown.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

from capstan.errors import CapstanError
from capstan.llm.metrics import LlmMetrics
from capstan.llm.ports import (
    AdapterRef,
    GenerationEngine,
    GenerationEvent,
    GenerationRequest,
    LanguageModel,
)
from capstan.llm.requests import (
    ChatBody,
    CompletionBody,
    OpenAIError,
    Prompt,
    bounded_params,
    model_not_found,
    parse_chat,
    parse_completion,
    parse_embedding,
)
from capstan.serving.core import RequestIds, capstan_version
from capstan.serving.rest import REQUEST_ID_HEADER, REQUEST_ID_KEY, HttpCall, assign_request_id

__all__ = ["LlmServing", "llm_serving_app"]

log = logging.getLogger(__name__)

T = TypeVar("T")
_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_NAMED_FIELD = re.compile(r"([a-z_]+): ")


def _json(document: object, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    return Response(orjson.dumps(document), status_code=status, headers=dict(headers or {}),
                    media_type="application/json")


def _error_response(exc: OpenAIError, request_id: str) -> Response:
    headers = {REQUEST_ID_HEADER: request_id} if request_id else {}
    if exc.retry_after_s is not None:
        headers["Retry-After"] = str(max(1, round(exc.retry_after_s)))
    return _json(exc.body(), exc.http_status, headers)


def _as_openai(exc: CapstanError, param: str | None = None) -> OpenAIError:
    """A domain error in OpenAI's shape: a 4xx keeps its status, and its ``param`` is the field its message starts
    with (``"max_tokens: ..."``, as the engines and tokenizers write them), else ``param``."""
    if isinstance(exc, OpenAIError):
        return exc
    if exc.http_status >= 500:
        return OpenAIError(exc.message, status=exc.http_status, error_type="server_error")
    named = _NAMED_FIELD.match(exc.message)
    return OpenAIError(exc.message, param=named.group(1) if named else param, status=exc.http_status)


async def _aclose(iterator: AsyncIterator[Any]) -> None:
    close: Callable[[], Awaitable[None]] | None = getattr(iterator, "aclose", None)
    if close is not None:
        await close()


async def _until_disconnect(receive: Receive, work: Awaitable[T]) -> tuple[bool, T | None]:
    """Run ``work`` while watching the connection: (True, result), or (False, None) when the client went away
    first (``work`` is cancelled, which closes the engine's iterators inside it)."""
    task = asyncio.ensure_future(work)

    async def watch() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(watch())
    try:
        await asyncio.wait((task, watcher), return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task
    if task.cancelled():
        return False, None
    return True, task.result()


class _EventStream(StreamingResponse):
    """A server-sent event stream that stops (cancelling its source, and so the generation) when the client
    disconnects, whatever ASGI spec version the server speaks."""

    def __init__(self, events: AsyncIterator[bytes], request_id: str) -> None:
        super().__init__(events, 200, {**_SSE_HEADERS, REQUEST_ID_HEADER: request_id}, "text/event-stream")
        self.events = events  # the body iterator, typed as the async generator it is (closed on the way out)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def stream() -> None:
            try:
                await send({"type": "http.response.start", "status": self.status_code,
                            "headers": self.raw_headers})
                async for chunk in self.events:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            finally:
                await _aclose(self.events)
            await send({"type": "http.response.body", "body": b"", "more_body": False})

        await _until_disconnect(receive, stream())


# --------------------------------------------------------------------------------------------------- tracking


@dataclass(slots=True)
class _Track:
    """What one generation request has produced so far: text and counts per sequence, for the answer, the usage
    and the metrics."""

    arrival_s: float
    prompt_tokens: int = 0
    started: bool = False
    first_token_s: float | None = None
    last_s: dict[int, float] = field(default_factory=dict)
    texts: dict[int, list[str]] = field(default_factory=dict)
    completion: dict[int, int] = field(default_factory=dict)
    reasons: dict[int, str] = field(default_factory=dict)

    @property
    def completion_tokens(self) -> int:
        return sum(self.completion.values())


@dataclass(frozen=True, slots=True)
class _Generation:
    """The requests of one API call (one per prompt), the name the client asked for and the API's shape."""

    call_id: str
    model_name: str
    requests: tuple[GenerationRequest, ...]
    chat: bool
    created: int
    prompt_texts: tuple[str, ...] = ()
    """What ``echo`` puts before each completion (empty without echo)."""


class _Admission:
    """A request admitted to the queue and not yet handed to the engine (counted in ``waiting`` until released)."""

    def __init__(self, serving: LlmServing) -> None:
        self.serving = serving
        self.held = True
        serving.pending += 1

    def release(self) -> None:
        if self.held:
            self.held = False
            self.serving.pending -= 1


# --------------------------------------------------------------------------------------------------- the routes


class LlmServing:
    """The state and routes of the OpenAI app: the model, the queue bound, the metrics and the engine's
    readiness."""

    def __init__(self, model: LanguageModel, *, max_waiting: int, max_body_bytes: int, metrics: LlmMetrics,
                 retry_after_s: float, clock: Callable[[], float], wall_clock: Callable[[], float]) -> None:
        self.model = model
        self.max_waiting = max_waiting
        self.max_body_bytes = max_body_bytes
        self.metrics = metrics
        self.retry_after_s = retry_after_s
        self.clock = clock
        self.wall_clock = wall_clock
        self.ids = RequestIds()
        self.pending = 0
        self.rejected = 0
        self.ready = model.engine is None
        self.start_error: str | None = None
        metrics.watch(model.name, self.load)

    # ------------------------------------------------------------------------------------------ queue

    def load(self) -> tuple[int, int]:
        """(requests running, requests waiting): the engine's, plus those admitted and not yet handed to it."""
        engine = self.model.engine
        if engine is None:
            return 0, self.pending
        stats = engine.stats()
        return stats.running, stats.waiting + self.pending

    def admit(self) -> _Admission:
        """Admit a generation request, or refuse it: 503 while the engine is not started, 429 when ``max_waiting``
        requests already wait."""
        if not self.ready:
            why = f": {self.start_error}" if self.start_error else " yet"
            raise OpenAIError(f"the model {self.model.name!r} is not ready{why}", status=503,
                              error_type="server_error", openai_code="model_not_ready",
                              retry_after_s=self.retry_after_s)
        waiting = self.load()[1]
        if waiting >= self.max_waiting:
            self.rejected += 1
            raise OpenAIError(f"the server is busy: {waiting} requests are waiting (at most {self.max_waiting}); "
                              f"retry later", status=429, error_type="rate_limit_error",
                              openai_code="queue_full", retry_after_s=self.retry_after_s)
        return _Admission(self)

    # ------------------------------------------------------------------------------------------ helpers

    async def body(self, request: Request) -> Any:
        raw = await HttpCall(request.scope, request.receive, "", None, _rid(request)).body(self.max_body_bytes)
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise OpenAIError(f"the request body is not valid JSON: {exc}") from None

    def engine(self, asked: str | None) -> GenerationEngine:
        engine = self.model.engine
        if engine is None:
            raise OpenAIError(f"the model {asked or self.model.name!r} is an embedding model; it does not "
                              f"generate text (use /v1/embeddings)", param="model")
        return engine

    def check_model(self, asked: str | None) -> str | None:
        """The adapter ``asked`` may name (None: the base model); 404 when the model serves no adapters."""
        if asked is None or asked == self.model.name:
            return None
        if self.model.adapters is None:
            raise model_not_found(asked)
        return asked

    async def fetch_adapter(self, name: str | None) -> AdapterRef | None:
        """The adapter's folder, fetched in a worker thread (the registry is I/O); 404 when there is no such
        adapter, 400 when the backend cannot apply adapters."""
        if name is None or self.model.adapters is None:
            return None
        ref = await asyncio.to_thread(self.model.adapters.fetch, name)
        if ref is None:
            raise model_not_found(name)
        if not self.engine(name).capabilities.adapters:
            raise OpenAIError(f"this model's backend cannot apply LoRA adapters ({name!r})", param="model")
        return ref

    def tokenizer(self) -> Any:
        if self.model.tokenizer is None:
            raise OpenAIError(f"the model {self.model.name!r} has no tokenizer", param="model")
        return self.model.tokenizer

    # ------------------------------------------------------------------------------------------ generation

    async def chat(self, request: Request) -> Response:
        arrival = self.clock()
        engine = self.engine(None)
        body = parse_chat(await self.body(request), engine.capabilities)
        adapter_name = self.check_model(body.model)
        admission = self.admit()
        try:
            adapter = await self.fetch_adapter(adapter_name)
            try:
                ids = tuple(self.tokenizer().chat_prompt(body.messages))
            except CapstanError as exc:
                raise _as_openai(exc, "messages") from None
            params = bounded_params(body.sampling, len(ids), engine.context_length, "messages")
            rid = _rid(request)
            generation = _Generation(f"chatcmpl-{rid}", body.model or self.model.name,
                                     (GenerationRequest(self.ids.new(), ids, params, adapter, arrival),), True,
                                     int(self.wall_clock()))
            return await self.respond(request, generation, body, admission)
        finally:
            admission.release()

    async def completions(self, request: Request) -> Response:
        arrival = self.clock()
        engine = self.engine(None)
        body = parse_completion(await self.body(request), engine.capabilities)
        adapter_name = self.check_model(body.model)
        admission = self.admit()
        try:
            adapter = await self.fetch_adapter(adapter_name)
            rid = _rid(request)
            tokenizer = self.tokenizer()
            prompts = [self.prompt_ids(tokenizer, p) for p in body.prompts]
            requests = tuple(
                GenerationRequest(self.ids.new(), ids,
                                  bounded_params(body.sampling, len(ids), engine.context_length, "prompt"),
                                  adapter, arrival)
                for ids in prompts)
            echo = tuple(p if isinstance(p, str) else tokenizer.decode(p) for p in body.prompts) if body.echo \
                else ()
            generation = _Generation(f"cmpl-{rid}", body.model or self.model.name, requests, False,
                                     int(self.wall_clock()), echo)
            return await self.respond(request, generation, body, admission)
        finally:
            admission.release()

    @staticmethod
    def prompt_ids(tokenizer: Any, prompt: Prompt) -> tuple[int, ...]:
        return tuple(tokenizer.encode(prompt)) if isinstance(prompt, str) else prompt

    async def respond(self, request: Request, generation: _Generation, body: ChatBody | CompletionBody,
                      admission: _Admission) -> Response:
        """Stream the generation as server-sent events, or gather it into one answer (cancelled when the client
        disconnects)."""
        tracks = [_Track(r.arrival_s) for r in generation.requests]
        engine = self.engine(None)
        try:  # an engine checks a request when it is given (before its first event)
            sources = [engine.generate(r) for r in generation.requests]
        except CapstanError as exc:
            raise _as_openai(exc) from None
        events = self.events(sources, tracks, admission)
        if body.stream:
            return _EventStream(self.sse(generation, tracks, events, body.include_usage), _rid(request))
        try:
            finished, _ = await _until_disconnect(request.receive, self.drain(events))
        finally:
            await _aclose(events)
        if not finished:
            return Response(status_code=499)
        return _json(self.answer(generation, tracks), headers={REQUEST_ID_HEADER: _rid(request)})

    async def drain(self, events: AsyncIterator[tuple[int, GenerationEvent]]) -> None:
        async for _ in events:
            pass

    async def events(self, sources: Sequence[AsyncIterator[GenerationEvent]], tracks: list[_Track],
                     admission: _Admission) -> AsyncIterator[tuple[int, GenerationEvent]]:
        """The engine's events of every request of the call, merged, each recorded in its track and the metrics;
        an engine error raises `OpenAIError` (500)."""
        admission.release()
        merged = _merge(sources) if len(sources) > 1 else _single(sources[0])
        try:
            async for index, event in merged:
                self.record(tracks[index], event)
                yield index, event
        finally:
            await _aclose(merged)
            for track in tracks:
                if track.started:
                    reason = track.reasons.get(0)
                    self.metrics.finished(self.model.name, reason, self.clock() - track.arrival_s,
                                          track.prompt_tokens, track.completion_tokens)

    def record(self, track: _Track, event: GenerationEvent) -> None:
        now = self.clock()
        name = self.model.name
        if not track.started:
            track.started = True
            track.prompt_tokens = event.prompt_tokens
            self.metrics.prompt_tokens(name, event.prompt_tokens)
        if event.queued_s is not None:
            self.metrics.queued(name, event.queued_s)
        if event.token_ids:
            self.metrics.generated(name, len(event.token_ids))
            if track.first_token_s is None:
                track.first_token_s = now
                self.metrics.first_token(name, now - track.arrival_s)
            last = track.last_s.get(event.index)
            if last is not None:
                self.metrics.inter_token(name, now - last)
            track.last_s[event.index] = now
        track.texts.setdefault(event.index, []).append(event.text)
        track.completion[event.index] = event.completion_tokens
        if event.finish_reason is not None:
            track.reasons[event.index] = event.finish_reason
            if event.finish_reason == "error":
                raise OpenAIError(f"generation failed: {event.error or 'the engine failed'}", status=500,
                                  error_type="server_error")

    # ------------------------------------------------------------------------------------------ answers

    def answer(self, generation: _Generation, tracks: list[_Track]) -> dict[str, Any]:
        n = generation.requests[0].params.n
        choices: list[dict[str, Any]] = []
        for r, track in enumerate(tracks):
            for index in range(n):
                text = "".join(track.texts.get(index, []))
                reason = track.reasons.get(index)
                if generation.chat:
                    choices.append({"index": index, "message": {"role": "assistant", "content": text},
                                    "logprobs": None, "finish_reason": reason})
                else:
                    prefix = generation.prompt_texts[r] if generation.prompt_texts else ""
                    choices.append({"index": r * n + index, "text": prefix + text, "logprobs": None,
                                    "finish_reason": reason})
        return {"id": generation.call_id, "object": "chat.completion" if generation.chat else "text_completion",
                "created": generation.created, "model": generation.model_name, "choices": choices,
                "usage": _usage(tracks)}

    async def sse(self, generation: _Generation, tracks: list[_Track],
                  events: AsyncIterator[tuple[int, GenerationEvent]], include_usage: bool) -> AsyncIterator[bytes]:
        """The server-sent events of a streamed generation: per output a chunk (chat: the role first), a final
        usage chunk when asked, ``[DONE]``; an engine error is sent as an ``error`` event."""
        n = generation.requests[0].params.n
        head = {"id": generation.call_id, "created": generation.created, "model": generation.model_name,
                "object": "chat.completion.chunk" if generation.chat else "text_completion"}
        extra: dict[str, Any] = {"usage": None} if include_usage else {}

        def chunk(choice: dict[str, Any]) -> bytes:
            return b"data: " + orjson.dumps({**head, "choices": [choice], **extra}) + b"\n\n"

        try:
            if generation.chat:
                for index in range(n):
                    yield chunk({"index": index, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                                 "finish_reason": None})
            async for r, event in events:
                index = r * n + event.index
                if event.token_ids or event.text:
                    if generation.chat:
                        yield chunk({"index": index, "delta": {"content": event.text}, "logprobs": None,
                                     "finish_reason": None})
                    else:
                        yield chunk({"index": index, "text": event.text, "logprobs": None, "finish_reason": None})
                if event.finish_reason is not None:
                    done: dict[str, Any] = {"delta": {}} if generation.chat else {"text": ""}
                    yield chunk({"index": index, **done, "logprobs": None, "finish_reason": event.finish_reason})
        except CapstanError as exc:  # after the 200 went out: an error event, as OpenAI's streams send them
            yield b"data: " + orjson.dumps(_as_openai(exc).body()) + b"\n\n"
        except Exception:
            log.exception("LLM stream %s failed", generation.call_id)
            failed = OpenAIError(f"generation failed ({generation.call_id})", status=500, error_type="server_error")
            yield b"data: " + orjson.dumps(failed.body()) + b"\n\n"
        finally:
            await _aclose(events)
        if include_usage:
            yield b"data: " + orjson.dumps({**head, "choices": [], "usage": _usage(tracks)}) + b"\n\n"
        yield b"data: [DONE]\n\n"

    # ------------------------------------------------------------------------------------------ embeddings, models

    async def embeddings(self, request: Request) -> Response:
        body = parse_embedding(await self.body(request))
        if body.model is not None and body.model != self.model.name:
            raise model_not_found(body.model)  # adapters too: embeddings come from the base model
        embedder = self.model.embedder
        if embedder is None:
            raise OpenAIError(f"the model {self.model.name!r} generates text; it has no embeddings",
                              param="model")
        if body.dimensions is not None and body.dimensions != embedder.dimensions:
            raise OpenAIError(f"dimensions must be {embedder.dimensions} for this model (no shortening)",
                              param="dimensions")
        try:
            result = await asyncio.to_thread(embedder.embed, body.inputs)
        except CapstanError as exc:
            raise _as_openai(exc, "input") from None
        data = [{"object": "embedding", "index": i, "embedding": _encoded(vector, body.encoding_format)}
                for i, vector in enumerate(result.vectors)]
        return _json({"object": "list", "data": data, "model": body.model or self.model.name,
                      "usage": {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens}},
                     headers={REQUEST_ID_HEADER: _rid(request)})

    def model_cards(self) -> list[dict[str, Any]]:
        base = {"id": self.model.name, "object": "model", "created": self.model.created, "owned_by": "capstan",
                "root": self.model.name, "parent": None}
        if self.model.engine is not None:
            base["max_model_len"] = self.model.engine.context_length
        adapters = self.model.adapters.names() if self.model.adapters is not None else ()
        return [base] + [{"id": name, "object": "model", "created": self.model.created, "owned_by": "capstan",
                          "root": self.model.name, "parent": self.model.name} for name in adapters]

    async def models(self, request: Request) -> Response:
        cards = await asyncio.to_thread(self.model_cards)
        return _json({"object": "list", "data": cards})

    async def model_card(self, request: Request) -> Response:
        name = request.path_params["model"]
        for card in await asyncio.to_thread(self.model_cards):
            if card["id"] == name:
                return _json(card)
        raise model_not_found(name)

    # ------------------------------------------------------------------------------------------ operations

    def stats_document(self) -> dict[str, Any]:
        """``GET /llm/stats``: the load now and the totals so far (rates are the reader's deltas)."""
        running, waiting = self.load()
        totals = self.metrics.totals(self.model.name)
        return {"model": self.model.name, "version": self.model.version, "ready": self.ready, "running": running,
                "waiting": waiting, "max_waiting": self.max_waiting,
                "prompt_tokens_total": totals.prompt_tokens, "generation_tokens_total": totals.generation_tokens,
                "requests_total": totals.requests, "rejected_total": self.rejected}

    async def stats(self, request: Request) -> Response:
        return _json(self.stats_document())

    async def live(self, request: Request) -> Response:
        return _json({"live": True})

    async def server_ready(self, request: Request) -> Response:
        if not self.ready:
            return _json({"ready": False, "error": self.start_error}, 503)
        return _json({"ready": True})

    async def ping(self, request: Request) -> Response:
        if not self.ready:
            return _json({"error": f"model {self.model.name!r} is not ready"}, 503,
                         {"Retry-After": str(max(1, round(self.retry_after_s)))})
        return PlainTextResponse("\n")

    async def version(self, request: Request) -> Response:
        return PlainTextResponse(capstan_version())

    async def metrics_exposition(self, request: Request) -> Response:
        body, content_type = self.metrics.exposition()
        return Response(body, headers={"Content-Type": content_type})

    # ------------------------------------------------------------------------------------------ lifecycle

    async def start_engine(self) -> None:
        engine = self.model.engine
        if engine is None:
            return
        try:
            await engine.start()
        except Exception as exc:
            log.exception("starting the engine of %r failed", self.model.name)
            self.start_error = f"the engine failed to start: {exc}"
            return
        self.ready = True

    @asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        starting = asyncio.create_task(self.start_engine())
        try:
            yield
        finally:
            self.ready = False
            starting.cancel()
            with suppress(asyncio.CancelledError):
                await starting
            if self.model.engine is not None:
                await self.model.engine.close()


def _rid(request: Request) -> str:
    return str(request.scope.get(REQUEST_ID_KEY) or "")


def _usage(tracks: Sequence[_Track]) -> dict[str, int]:
    prompt = sum(t.prompt_tokens for t in tracks)
    completion = sum(t.completion_tokens for t in tracks)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _encoded(vector: Sequence[float], encoding: str) -> list[float] | str:
    if encoding == "base64":
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
    return list(vector)


async def _single(source: AsyncIterator[GenerationEvent]) -> AsyncIterator[tuple[int, GenerationEvent]]:
    """One request's events, as `_merge` gives several."""
    try:
        async for event in source:
            yield 0, event
    finally:
        await _aclose(source)


async def _merge(sources: Sequence[AsyncIterator[GenerationEvent]]) -> AsyncIterator[tuple[int, GenerationEvent]]:
    """The events of several requests as they come, each with its request's index; closing this closes them
    all (the engine cancels the unfinished ones)."""
    queue: asyncio.Queue[tuple[int, GenerationEvent | BaseException | None]] = asyncio.Queue()

    async def pump(index: int, source: AsyncIterator[GenerationEvent]) -> None:
        try:
            async for event in source:
                queue.put_nowait((index, event))
        except Exception as exc:  # noqa: BLE001  # handed to the consumer, which raises it in the request's task
            queue.put_nowait((index, exc))
        finally:
            await _aclose(source)
            queue.put_nowait((index, None))

    tasks = [asyncio.ensure_future(pump(i, s)) for i, s in enumerate(sources)]
    try:
        open_sources = len(tasks)
        while open_sources:
            index, item = await queue.get()
            if item is None:
                open_sources -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield index, item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


# --------------------------------------------------------------------------------------------------- the app


class _RequestIds:
    """Gives every HTTP request its id (the client's ``X-Request-Id`` when sane) before routing."""

    def __init__(self, app: Any, ids: RequestIds) -> None:
        self.app = app
        self.ids = ids

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            assign_request_id(scope, self.ids)
        await self.app(scope, receive, send)


def llm_serving_app(model: LanguageModel, *, max_waiting: int, max_body_bytes: int,
                    metrics: LlmMetrics | None = None, retry_after_s: float = 1.0, routes: Sequence[BaseRoute] = (),
                    clock: Callable[[], float] = time.monotonic,
                    wall_clock: Callable[[], float] = time.time) -> Starlette:
    """The ASGI app serving ``model`` over OpenAI's API (see the module docstring).

    ``max_waiting`` bounds the queue (429 beyond); ``max_body_bytes`` bounds request bodies (413 beyond);
    ``metrics`` is the registry ``/metrics`` exposes (a new one when None); ``retry_after_s`` is the
    ``Retry-After`` of 429 and 503 answers; ``routes`` are added after the app's own. ``clock`` (monotonic)
    times requests, ``wall_clock`` gives answers their ``created`` time. The app's `LlmServing` is
    ``app.state.llm``."""
    if max_waiting < 0:
        raise OpenAIError(f"max_waiting must be at least 0, got {max_waiting}")
    if max_body_bytes < 1:
        raise OpenAIError(f"max_body_bytes must be at least 1, got {max_body_bytes}")
    serving = LlmServing(model, max_waiting=max_waiting, max_body_bytes=max_body_bytes,
                         metrics=metrics or LlmMetrics(), retry_after_s=retry_after_s, clock=clock,
                         wall_clock=wall_clock)
    all_routes: list[BaseRoute] = [
        Route("/v1/chat/completions", serving.chat, methods=["POST"]),
        Route("/v1/completions", serving.completions, methods=["POST"]),
        Route("/v1/embeddings", serving.embeddings, methods=["POST"]),
        Route("/v1/models", serving.models, methods=["GET"]),
        Route("/v1/models/{model:path}", serving.model_card, methods=["GET"]),
        Route("/metrics", serving.metrics_exposition, methods=["GET"]),
        Route("/llm/stats", serving.stats, methods=["GET"]),
        Route("/v2/health/live", serving.live, methods=["GET"]),
        Route("/v2/health/ready", serving.server_ready, methods=["GET"]),
        Route("/health", serving.ping, methods=["GET"]),
        Route("/ping", serving.ping, methods=["GET"]),
        Route("/version", serving.version, methods=["GET"]),
        *routes,
    ]
    handlers: dict[Any, Callable[[Request, Exception], Awaitable[Response]]] = {
        CapstanError: _capstan_error, HTTPException: _http_error, ClientDisconnect: _client_gone,
        Exception: _internal_error,
    }
    app = Starlette(routes=all_routes, exception_handlers=handlers, lifespan=serving.lifespan)
    app.state.llm = serving
    app.add_middleware(_RequestIds, ids=serving.ids)
    return app


async def _capstan_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, CapstanError)
    return _error_response(_as_openai(exc), _rid(request))


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    message = {404: f"no route {request.method} {request.url.path}",
               405: f"method {request.method} is not allowed on {request.url.path}"}.get(exc.status_code, exc.detail)
    return _json(OpenAIError(message, status=exc.status_code).body(), exc.status_code, exc.headers)


async def _client_gone(request: Request, exc: Exception) -> Response:
    return Response(status_code=499)


async def _internal_error(request: Request, exc: Exception) -> Response:
    rid = _rid(request)
    log.error("LLM request %s failed", rid, exc_info=exc)
    return _error_response(OpenAIError(f"internal server error (request id {rid})", status=500,
                                       error_type="server_error"), rid)
