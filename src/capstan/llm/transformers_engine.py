"""The transformers backend: continuous batching through transformers' own `ContinuousBatchingManager`.

The manager owns the batch: a paged KV cache, a scheduler that adds waiting requests and drops finished or cancelled
ones between forward passes (token granularity), and per-request temperature, top-k and top-p. This module only
bridges it to asyncio and to the `GenerationEngine` port: each sequence (``n`` per request) is one manager request whose
results arrive on the serving event loop through ``register_result_handler`` (``call_soon_threadsafe``, no polling);
text is detokenized incrementally (`capstan.llm.detok`) and cut at stop strings (`capstan.llm.stops`).

Sampling (decision 0610): one manager samples every row (``do_sample``); a greedy request asks for top-k 1, so its
tokens are the argmax (a batch of greedy rows only skips the warpers and takes the argmax directly). ``min_tokens`` and
``seed`` are per-request processors of our own (`capstan.llm.cb_processors`).
Penalties and guided decoding are not supported (`capabilities`); the route answers 400.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from capstan.errors import InvalidParameterValue, InvalidState
from capstan.llm.cb_processors import GREEDY_TOP_K, MIN_TOKENS_KW, SEED_KW, install_processors
from capstan.llm.detok import IncrementalDetokenizer
from capstan.llm.hf_tokenizer import require_transformers
from capstan.llm.ports import (
    EngineCapabilities,
    EngineStats,
    FinishReason,
    GenerationEvent,
    GenerationRequest,
    Tokenizer,
)
from capstan.llm.stops import StopMatcher

__all__ = ["DEFAULT_MAX_BATCH_SIZE", "TransformersEngine", "context_length_of"]

DEFAULT_MAX_BATCH_SIZE = 32
_PAGE_SIZE_CPU = 32
_SEED_STRIDE = 7919  # sequence i of a seeded request samples with seed * stride + i
_FINISHED = 3  # transformers' RequestStatus.FINISHED; FAILED (4) and above are failures


def context_length_of(model: Any) -> int:
    """The model's context window from its config (``max_position_embeddings``, ``n_positions``...)."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    raise InvalidState("the model's config names no context window (max_position_embeddings or n_positions)")


@dataclass
class _Sequence:
    """One of a request's ``n`` sequences as the event loop sees it."""

    index: int
    manager_id: str
    detok: IncrementalDetokenizer
    stops: StopMatcher
    seen: int = 0
    done: bool = False


@dataclass
class _Totals:
    running: int = 0
    waiting: int = 0
    prompt_tokens: int = 0
    generation_tokens: int = 0
    live: dict[str, asyncio.Queue[Any]] = field(default_factory=dict)


class TransformersEngine:
    """A `GenerationEngine` over a transformers causal LM, with continuous batching.

    ``context_length`` bounds prompt plus completion; ``max_batch_size`` bounds the sequences in one forward pass
    (more wait for a slot). ``clock`` is the monotonic clock ``arrival_s`` was read from (queue-time metric)."""

    def __init__(self, model: Any, tokenizer: Tokenizer, *, context_length: int,
                 max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
                 clock: Callable[[], float] = time.monotonic) -> None:
        require_transformers()
        if context_length < 1:
            raise InvalidParameterValue("context_length must be at least 1")
        if max_batch_size < 1:
            raise InvalidParameterValue("max_batch_size must be at least 1")
        self._model = model
        self._tokenizer = tokenizer
        self._context_length = context_length
        self._max_batch_size = max_batch_size
        self._clock = clock
        self._eos = _eos_ids(model, tokenizer)
        self._vocab = int(model.config.get_text_config().vocab_size)
        self._manager: Any = None
        self._totals = _Totals()
        self._ids = itertools.count()

    @classmethod
    def from_pretrained(cls, folder: str | Path, tokenizer: Tokenizer, *, device: str = "auto",
                        max_batch_size: int = DEFAULT_MAX_BATCH_SIZE, dtype: str = "auto",
                        clock: Callable[[], float] = time.monotonic) -> TransformersEngine:
        """Load the causal LM saved in ``folder`` offline (``local_files_only``) onto ``device`` (``auto``: CUDA when
        present, else CPU) and wrap it. A missing or unreadable file is `InvalidParameterValue` naming the folder."""
        require_transformers()
        import torch
        from transformers import AutoModelForCausalLM

        path = Path(folder)
        if not path.is_dir():
            raise InvalidParameterValue(f"model folder {str(path)!r} does not exist")
        target = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        try:
            model = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True, dtype=dtype)
        except (OSError, ValueError) as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise InvalidParameterValue(f"cannot load a causal language model from {str(path)!r}: {first}") from None
        loaded: Any = model  # transformers' stubs type `.to` for a device object only
        model = loaded.to(target).eval()
        return cls(model, tokenizer, context_length=context_length_of(model), max_batch_size=max_batch_size,
                   clock=clock)

    @property
    def capabilities(self) -> EngineCapabilities:
        """Seeds and ``n`` yes; penalties, guided decoding and adapters (see `capstan.llm.adapters`) no."""
        return EngineCapabilities(penalties=False, json_schema=False, adapters=False, seed=True, n=True)

    @property
    def context_length(self) -> int:
        """Prompt plus completion tokens the model accepts."""
        return self._context_length

    @property
    def model(self) -> Any:
        """The wrapped transformers model."""
        return self._model

    def stats(self) -> EngineStats:
        """Sequences generating, sequences waiting for their first token, and token totals."""
        t = self._totals
        return EngineStats(running=t.running, waiting=t.waiting, prompt_tokens_total=t.prompt_tokens,
                           generation_tokens_total=t.generation_tokens)

    async def start(self) -> None:
        """Build the manager and start its generation thread (idempotent)."""
        self._ensure_started()

    async def close(self) -> None:
        """Stop the generation thread, fail the requests still streaming, and drop the manager."""
        manager, self._manager = self._manager, None
        for q in list(self._totals.live.values()):
            q.put_nowait(_Closed())
        if manager is not None:
            await asyncio.to_thread(manager.stop, block=True, hard_stop=True)

    def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
        """Check the request against the context window (`InvalidParameterValue` naming the field, raised here),
        then stream its events. Closing the iterator early cancels every sequence still generating."""
        params = request.params
        if not request.prompt_ids:
            raise InvalidParameterValue("prompt: it is empty")
        if not all(0 <= i < self._vocab for i in request.prompt_ids):
            raise InvalidParameterValue(f"prompt: token ids must be from 0 to {self._vocab - 1} (the vocabulary)")
        if params.max_tokens < 1:
            raise InvalidParameterValue("max_tokens must be at least 1")
        if params.n < 1:
            raise InvalidParameterValue("n must be at least 1")
        if len(request.prompt_ids) + params.max_tokens > self._context_length:
            raise InvalidParameterValue(
                f"max_tokens: the prompt ({len(request.prompt_ids)} tokens) plus max_tokens ({params.max_tokens}) "
                f"exceeds the context window of {self._context_length} tokens")
        if params.json_schema is not None:
            raise InvalidParameterValue("response_format: guided decoding is not supported by the transformers backend")
        if params.presence_penalty or params.frequency_penalty:
            name = "presence_penalty" if params.presence_penalty else "frequency_penalty"
            raise InvalidParameterValue(f"{name}: penalties are not supported by the transformers backend")
        if request.adapter is not None:
            raise InvalidParameterValue("model: this engine serves no adapters")
        return self._stream(request)

    # ------------------------------------------------------------------------------------------------------------

    def _ensure_started(self) -> Any:
        if self._manager is None:
            self._manager = self._build_manager()
        if not self._manager.is_running():
            self._manager.start()
        return self._manager

    def _build_manager(self) -> Any:
        from transformers import GenerationConfig
        from transformers.generation.configuration_utils import ContinuousBatchingConfig

        # The defaults below only make transformers create its per-request temperature/top-k/top-p processors; every
        # request passes its own values (`_sampling_kwargs`).
        generation = GenerationConfig(  # type: ignore[no-untyped-call]  # transformers leaves __init__ untyped
            do_sample=True, temperature=0.5, top_k=self._vocab, top_p=0.5,
                                      max_new_tokens=self._context_length, eos_token_id=list(self._eos) or None,
                                      pad_token_id=_pad_id(self._model, self._eos))
        on_cpu = self._model.device.type == "cpu"
        pages = -(-self._context_length // _PAGE_SIZE_CPU)
        config = ContinuousBatchingConfig(
            per_request_processors=True,
            max_requests_per_batch=self._max_batch_size,
            # min_tokens and seed count each sequence's tokens when its next batch is prepared: that count is only
            # exact without double buffering.
            use_async_batching=False,
            page_size=_PAGE_SIZE_CPU if on_cpu else 256,
            num_blocks=pages * self._max_batch_size + 1 if on_cpu else None,
            max_batch_tokens=max(self._context_length, 256) if on_cpu else None,
        )
        manager = self._model.init_continuous_batching(generation_config=generation,
                                                       continuous_batching_config=config)
        install_processors(manager.logit_processor, self._eos)
        return manager

    def _sampling_kwargs(self, request: GenerationRequest, index: int) -> dict[str, Any]:
        """The manager's per-request values for sequence ``index``; seeded sequences of one request differ."""
        p = request.params
        greedy = p.temperature == 0
        kwargs: dict[str, Any] = {
            "temperature": 1.0 if greedy else float(p.temperature),
            "top_k": GREEDY_TOP_K if greedy else self._vocab,
            "top_p": 1.0 if greedy else float(p.top_p),
            MIN_TOKENS_KW: int(p.min_tokens),
        }
        if p.seed is not None and not greedy:
            kwargs[SEED_KW] = int(p.seed) * _SEED_STRIDE + index
        return kwargs

    async def _stream(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
        manager = self._ensure_started()
        params = request.params
        key = f"{request.request_id}#{next(self._ids)}"
        inbox: asyncio.Queue[Any] = asyncio.Queue()
        seqs = {f"{key}/{i}": _Sequence(i, f"{key}/{i}", IncrementalDetokenizer(self._tokenizer.decode),
                                        StopMatcher(params.stop)) for i in range(params.n)}
        totals = self._totals
        totals.live[key] = inbox
        submitted = self._clock()
        for seq in seqs.values():
            manager.register_result_handler(seq.manager_id, inbox.put_nowait)
            manager.add_request(list(request.prompt_ids), request_id=seq.manager_id, max_new_tokens=params.max_tokens,
                                streaming=True, eos_token_id=list(self._eos) or -1,
                                **self._sampling_kwargs(request, seq.index))
        totals.waiting += params.n
        totals.prompt_tokens += len(request.prompt_ids)
        first = True
        try:
            while not all(s.done for s in seqs.values()):
                output = await inbox.get()
                if isinstance(output, _Closed):
                    for seq in (s for s in seqs.values() if not s.done):
                        self._finish(seq, manager, cancel=False)
                        yield self._event(request, seq, (), "", "error", error="the engine was closed")
                    return
                seq = seqs[output.request_id]
                if seq.done:
                    continue
                event = self._advance(request, seq, output, manager)
                if event is None:
                    continue
                if first:
                    queued = max(0.0, submitted - request.arrival_s) if request.arrival_s else 0.0
                    started, created = output.lifespan[0], output.created_time
                    event = _with_queued(event, queued + max(0.0, started - created) if started > 0 else queued)
                    first = False
                yield event
        finally:
            for seq in seqs.values():
                if not seq.done:
                    self._finish(seq, manager, cancel=True)
            totals.live.pop(key, None)

    def _advance(self, request: GenerationRequest, seq: _Sequence, output: Any,
                 manager: Any) -> GenerationEvent | None:
        """Turn a manager result (all tokens so far) into the sequence's next event, or None when it adds nothing."""
        new = tuple(int(t) for t in output.generated_tokens[seq.seen:])
        if seq.seen == 0 and (new or output.status >= _FINISHED):
            self._totals.waiting -= 1
            self._totals.running += 1
        seq.seen += len(new)
        self._totals.generation_tokens += len(new)
        if output.status > _FINISHED:
            self._finish(seq, manager, cancel=False)
            return self._event(request, seq, new, "", "error", error=output.error or "generation failed")
        text = seq.stops.feed(seq.detok.add(new))
        if seq.stops.stopped:
            self._finish(seq, manager, cancel=output.status < _FINISHED)
            return self._event(request, seq, new, text, "stop")
        if output.status == _FINISHED:
            text += seq.stops.feed(seq.detok.flush()) + seq.stops.flush()
            self._finish(seq, manager, cancel=False)
            reason: FinishReason = "stop" if seq.stops.stopped or (new and new[-1] in self._eos) else "length"
            return self._event(request, seq, new, text, reason)
        if not new and not text:
            return None
        return self._event(request, seq, new, text, None)

    def _finish(self, seq: _Sequence, manager: Any, *, cancel: bool) -> None:
        if seq.seen == 0:
            self._totals.waiting -= 1
        else:
            self._totals.running -= 1
        seq.done = True
        if cancel:
            manager.cancel_request(seq.manager_id)
            _forget_handler(manager, seq.manager_id)

    def _event(self, request: GenerationRequest, seq: _Sequence, new: tuple[int, ...], text: str,
               reason: FinishReason | None, *, error: str | None = None) -> GenerationEvent:
        return GenerationEvent(index=seq.index, token_ids=new, text=text, prompt_tokens=len(request.prompt_ids),
                               completion_tokens=seq.seen, finish_reason=reason, error=error)


class _Closed:
    """Put on a request's inbox when the engine closes under it."""


def _with_queued(event: GenerationEvent, queued_s: float) -> GenerationEvent:
    return GenerationEvent(index=event.index, token_ids=event.token_ids, text=event.text,
                           prompt_tokens=event.prompt_tokens, completion_tokens=event.completion_tokens,
                           finish_reason=event.finish_reason, error=event.error, queued_s=queued_s)


def _eos_ids(model: Any, tokenizer: Tokenizer) -> tuple[int, ...]:
    ids = set(tokenizer.eos_token_ids)
    for source in (getattr(model, "generation_config", None), model.config):
        value = getattr(source, "eos_token_id", None)
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    return tuple(sorted(i for i in ids if i >= 0))


def _pad_id(model: Any, eos: Sequence[int]) -> int | None:
    pad = getattr(getattr(model, "generation_config", None), "pad_token_id", None)
    if isinstance(pad, int):
        return pad
    return eos[0] if eos else None


def _forget_handler(manager: Any, manager_id: str) -> None:
    """transformers drops a result handler when its request finishes, not when it is cancelled: drop it here."""
    router = manager.output_router
    with router._lock:
        router.result_handlers.pop(manager_id, None)
