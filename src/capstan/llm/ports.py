"""The joints of language-model serving: typed generation requests and events, and the ports backends implement.

An OpenAI route (`capstan.llm.openai_app`) parses a request body into a `GenerationRequest` (its prompt already
tokenized, its sampling parameters checked), hands it to a `GenerationEngine` and streams the `GenerationEvent` values
the engine yields back to the client as chunks (or gathers them into one answer). An engine never sees JSON and a
route never sees torch: the two meet only in these records.

A `LanguageModel` bundles what one served name answers with: its tokenizer, its engine (None for an embedding-only
model), its embedder (None for a generative model) and the LoRA adapters it may serve (`AdapterSource`). Backends:
`capstan.llm.transformers_engine` (continuous batching through transformers' own manager) and
`capstan.llm.vllm_engine` (``--backend vllm``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

__all__ = [
    "AdapterRef",
    "AdapterSource",
    "Embedder",
    "Embedding",
    "EngineCapabilities",
    "EngineStats",
    "FinishReason",
    "GenerationEngine",
    "GenerationEvent",
    "GenerationRequest",
    "LanguageModel",
    "SamplingParams",
    "Tokenizer",
]

FinishReason = Literal["stop", "length", "cancelled", "error"]
"""Why a sequence ended: an end-of-sequence token or a stop string (``stop``), ``max_tokens`` or the context window
(``length``), the client went away (``cancelled``), the engine failed (``error``)."""


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """How to sample one request, already checked against the model (see `capstan.llm.requests`).

    ``temperature == 0`` means greedy. ``min_tokens`` suppresses end-of-sequence before that many tokens (exact token
    counts in tests). ``stop`` strings end a sequence and are not part of its text. ``json_schema`` asks for guided
    decoding; an engine whose `EngineCapabilities.json_schema` is False never receives one (the route answers 400)."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    n: int = 1
    min_tokens: int = 0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    json_schema: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class AdapterRef:
    """A LoRA adapter to apply: the name clients give in ``model`` and the local folder holding its weights."""

    name: str
    path: str


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """One prompt to continue: its token ids, how to sample, and the adapter (None: the base model)."""

    request_id: str
    prompt_ids: tuple[int, ...]
    params: SamplingParams
    adapter: AdapterRef | None = None
    arrival_s: float = 0.0
    """The monotonic time the route received it (for the queue-time and time-to-first-token metrics)."""


@dataclass(frozen=True, slots=True)
class GenerationEvent:
    """What an engine yields for one sequence (``index`` < ``n``) of a request: the tokens added since the last event
    and their text, and, on the last event of that sequence, its finish reason. Counts are totals so far."""

    index: int
    token_ids: tuple[int, ...]
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: FinishReason | None = None
    error: str | None = None
    queued_s: float | None = None
    """On a request's first event only: seconds it waited before the engine first scheduled it (the queue-time
    metric); None elsewhere."""


@dataclass(frozen=True, slots=True)
class EngineStats:
    """An engine's load now: sequences being generated, requests waiting for a slot, tokens so far."""

    running: int
    waiting: int
    prompt_tokens_total: int = 0
    generation_tokens_total: int = 0


@dataclass(frozen=True, slots=True)
class EngineCapabilities:
    """What an engine supports beyond plain sampling; the route refuses the rest with a 400 naming the parameter."""

    penalties: bool = False
    json_schema: bool = False
    adapters: bool = False
    seed: bool = True
    n: bool = True


class GenerationEngine(Protocol):
    """A backend that continues prompts, many at once (continuous batching: requests join and leave the running batch
    at token granularity)."""

    @property
    def capabilities(self) -> EngineCapabilities: ...

    @property
    def context_length(self) -> int:
        """The model's context window in tokens (prompt plus completion)."""
        ...

    def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
        """Stream the request's events, ending after every sequence has finished. Closing the iterator early
        (``aclose``, e.g. on a client disconnect) cancels the request: it stops generating and leaves the batch."""
        ...

    def stats(self) -> EngineStats:
        """The load now (read by ``/metrics`` and the autoscaler)."""
        ...

    async def start(self) -> None:
        """Start the engine's loop (idempotent); called from the serving event loop's lifespan."""
        ...

    async def close(self) -> None:
        """Stop generating, fail what is left, release the model."""
        ...


class Tokenizer(Protocol):
    """Text to token ids and back, and the model's chat template."""

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def chat_prompt(self, messages: Sequence[Mapping[str, Any]]) -> list[int]:
        """The prompt's token ids after applying the model's chat template (with the generation prompt)."""
        ...

    @property
    def eos_token_ids(self) -> tuple[int, ...]: ...

    @property
    def has_chat_template(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class Embedding:
    """Embeddings of some inputs, in order, and the tokens they used."""

    vectors: tuple[tuple[float, ...], ...]
    prompt_tokens: int


class Embedder(Protocol):
    """A sentence-embedding model."""

    @property
    def dimensions(self) -> int: ...

    @property
    def context_length(self) -> int: ...

    def embed(self, texts: Sequence[str]) -> Embedding:
        """Blocking: the route runs it in a worker thread."""
        ...


class AdapterSource(Protocol):
    """Where a base model's LoRA adapters come from: the registry versions that name the base model."""

    def names(self) -> tuple[str, ...]:
        """The adapter names clients may give in ``model`` (listed by ``GET /v1/models``)."""
        ...

    def fetch(self, name: str) -> AdapterRef | None:
        """The adapter's local folder (downloaded and verified once), or None when there is no such adapter."""
        ...


@dataclass(frozen=True, slots=True)
class LanguageModel:
    """What one served model name answers with. ``created`` is the Unix time ``GET /v1/models`` reports; ``cache``
    says where the weights came from and how long loading took (reported at start)."""

    name: str
    version: str
    tokenizer: Tokenizer | None
    engine: GenerationEngine | None = None
    embedder: Embedder | None = None
    adapters: AdapterSource | None = None
    created: int = 0
    load_seconds: float = 0.0
    details: Mapping[str, str] = field(default_factory=dict)
