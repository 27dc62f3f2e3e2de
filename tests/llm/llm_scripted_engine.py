"""A small deterministic language model for the OpenAI app's tests: a character tokenizer, a scripted engine with
a bounded batch and a waiting queue (continuous batching in miniature), an embedder and an adapter source.

The engine's k-th token (k from 0) of a sequence is ``ord('a') + (k + offset) % 26`` where ``offset`` is the prompt's
first id plus the sequence index (plus 1 under an adapter); its text is that letter. Token k == ``EOS_AT`` is the end
of sequence (``stop``) unless ``min_tokens`` asks for more. A step gives every running sequence one token; steps run
while ``gate`` is set (tests close it to hold requests in the batch or the queue). Every request it saw, and every
one cancelled, is recorded.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from capstan.errors import InvalidParameterValue
from capstan.llm.ports import (
    AdapterRef,
    Embedding,
    EngineCapabilities,
    EngineStats,
    GenerationEvent,
    GenerationRequest,
    LanguageModel,
)

EOS = 3
EOS_AT = 6
CONTEXT = 64


class CharTokenizer:
    """One token per character (its code point); the chat template is ``<role>content`` per message, then
    ``<assistant>``."""

    def encode(self, text: str) -> list[int]:
        return [ord(c) for c in text]

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(chr(i) for i in ids if i != EOS)

    def chat_prompt(self, messages: Sequence[Mapping[str, Any]]) -> list[int]:
        if any(m["role"] == "developer" for m in messages):
            raise InvalidParameterValue("messages: this template has no developer role")
        text = "".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>"
        return self.encode(text)

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        return (EOS,)

    @property
    def has_chat_template(self) -> bool:
        return True


@dataclass
class _Sequence:
    request: GenerationRequest
    index: int
    queue: asyncio.Queue[GenerationEvent]
    produced: int = 0
    first: bool = True


@dataclass
class ScriptedEngine:
    """The scripted `GenerationEngine` (see the module docstring)."""

    slots: int = 4
    capabilities: EngineCapabilities = field(default_factory=lambda: EngineCapabilities(adapters=True))
    context_length: int = CONTEXT
    step_s: float = 0.002
    start_gate: threading.Event | None = None
    gate: threading.Event = field(default_factory=threading.Event)
    seen: list[GenerationRequest] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    started: bool = False
    closed: bool = False

    def __post_init__(self) -> None:
        self.gate.set()
        self._waiting: list[_Sequence] = []
        self._running: list[_Sequence] = []
        self._prompt_total = 0
        self._generated_total = 0
        self._loop_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        while self.start_gate is not None and not self.start_gate.is_set():
            await asyncio.sleep(0.01)
        if self._loop_task is None:
            self._loop_task = asyncio.create_task(self._loop())
        self.started = True

    async def close(self) -> None:
        self.closed = True
        if self._loop_task is not None:
            self._loop_task.cancel()

    def stats(self) -> EngineStats:
        running = len({id(s.request) for s in self._running})
        waiting = len({id(s.request) for s in self._waiting} - {id(s.request) for s in self._running})
        return EngineStats(running, waiting, self._prompt_total, self._generated_total)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
        self.seen.append(request)
        queue: asyncio.Queue[GenerationEvent] = asyncio.Queue()
        sequences = [_Sequence(request, i, queue) for i in range(request.params.n)]
        self._waiting.extend(sequences)
        open_count = len(sequences)
        try:
            while open_count:
                event = await queue.get()
                if event.finish_reason is not None:
                    open_count -= 1
                yield event
        finally:
            if open_count:
                self.cancelled.append(request.request_id)
            self._running = [s for s in self._running if s.request is not request]
            self._waiting = [s for s in self._waiting if s.request is not request]

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.step_s)
            if not self.gate.is_set():
                continue
            while self._waiting and len({id(s.request) for s in self._running}) < self.slots:
                head = self._waiting[0].request
                self._running += [s for s in self._waiting if s.request is head]
                self._waiting = [s for s in self._waiting if s.request is not head]
            for sequence in list(self._running):
                self._step(sequence)

    def _step(self, sequence: _Sequence) -> None:
        request = sequence.request
        params = request.params
        k = sequence.produced
        offset = request.prompt_ids[0] + sequence.index + (1 if request.adapter is not None else 0)
        token = EOS if k == EOS_AT and k >= params.min_tokens else ord("a") + (k + offset) % 26
        reason: str | None = None
        if token == EOS:
            reason = "stop"
        else:
            sequence.produced += 1
            self._generated_total += 1
            if sequence.produced >= params.max_tokens:
                reason = "length"
        text = "" if token == EOS else chr(token)
        if sequence.first and sequence.index == 0:
            self._prompt_total += len(request.prompt_ids)
        event = GenerationEvent(sequence.index, () if token == EOS else (token,), text, len(request.prompt_ids),
                                sequence.produced, reason,  # type: ignore[arg-type]  # a FinishReason literal
                                queued_s=0.0 if sequence.first and sequence.index == 0 else None)
        sequence.first = False
        sequence.queue.put_nowait(event)
        if reason is not None:
            self._running.remove(sequence)


class VectorEmbedder:
    """Embeds a text as its letter counts over a-z (related texts share letters)."""

    dimensions = 26
    context_length = 32

    def embed(self, texts: Sequence[str]) -> Embedding:
        for text in texts:
            if len(text) > self.context_length:
                raise InvalidParameterValue(f"input: a text of {len(text)} tokens is over {self.context_length}")
        vectors = tuple(tuple(float(t.lower().count(chr(ord("a") + i))) for i in range(26)) for t in texts)
        return Embedding(vectors, sum(len(t) for t in texts))


class Adapters:
    """Two adapters, ``tuned-a`` and ``tuned-b``, at made-up folders."""

    def names(self) -> tuple[str, ...]:
        return ("tuned-a", "tuned-b")

    def fetch(self, name: str) -> AdapterRef | None:
        return AdapterRef(name, f"/adapters/{name}") if name in self.names() else None


def scripted_model(engine: ScriptedEngine | None = None, *, embedder: bool = False,
                   adapters: bool = True) -> LanguageModel:
    """The scripted model named ``tiny`` (an embedding-only one when ``embedder`` and no engine)."""
    return LanguageModel("tiny", "1", CharTokenizer(), engine=engine,
                         embedder=VectorEmbedder() if embedder else None, adapters=Adapters() if adapters else None,
                         created=1_700_000_000)


def expected_tokens(prompt_ids: Sequence[int], count: int, *, index: int = 0, adapter: bool = False) -> str:
    """The text of the first ``count`` tokens the engine gives for ``prompt_ids``."""
    offset = prompt_ids[0] + index + (1 if adapter else 0)
    return "".join(chr(ord("a") + (k + offset) % 26) for k in range(count))
