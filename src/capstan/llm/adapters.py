"""LoRA adapters as model versions: which adapters a served base model offers, and one engine serving them all.

An adapter is a registered model version whose MLmodel's ``transformers`` flavor says ``adapter: {type: lora,
base_model: URI}``; its version also carries the tag ``capstan.adapter.base`` with that base model written as
`base_key` writes it (``models:/NAME/VERSION`` for a registry model, the absolute folder for a local one), which is
how the registry finds the adapters of a base without opening every version.

Names clients give in ``model`` (`RegistryAdapterSource`): ``ADAPTER`` (the registered model's name: its newest
version that is an adapter of the served base) or ``ADAPTER/VERSION`` (that version). Each version is downloaded
once per process into a folder of its own and verified against the sha256 the artifact store recorded
(`capstan.serving.loading.verify_folder`).

`MultiAdapterEngine` puts a base engine and the adapters' engines behind one `GenerationEngine`: a request without
an adapter goes to the base engine; one with an adapter goes to that adapter's engine, made on first use by an
injected factory (`capstan.llm.lora.merged_engine_factory`) and kept while it is among the ``capacity`` most
recently used. Past capacity the least recently used adapter engine that has no request in flight is closed
(`lru_victims`, pure). `with_adapters` wraps a `LanguageModel` so.
"""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import tempfile
import threading
import weakref
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from capstan.errors import InvalidParameterValue, InvalidState
from capstan.llm.ports import (
    AdapterRef,
    AdapterSource,
    EngineCapabilities,
    EngineStats,
    GenerationEngine,
    GenerationEvent,
    GenerationRequest,
    LanguageModel,
)
from capstan.pages import Page
from capstan.registry.records import ModelVersion
from capstan.serving.loading import ModelSource, verify_folder

__all__ = ["ADAPTER_BASE_TAG", "MultiAdapterEngine", "RecencyOrder", "RegistryAdapterSource", "VersionSearch",
           "adapter_config", "base_key", "lru_victims", "with_adapters"]

ADAPTER_BASE_TAG = "capstan.adapter.base"
"""The model-version tag naming the base model an adapter version applies to (as `base_key` writes it)."""


def base_key(uri: str, *, registered: tuple[str, int] | None = None) -> str:
    """The base model as adapters name it: ``models:/NAME/VERSION`` when ``registered`` (the resolved registry
    name and version), else the URI itself, a local folder as its absolute path."""
    if registered is not None:
        return f"models:/{registered[0]}/{registered[1]}"
    if uri.startswith(("models:/", "runs:/")):
        return uri
    return str(Path(uri.removeprefix("file://")).resolve())


def adapter_config(mlmodel: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The ``adapter`` entry of an MLmodel's ``transformers`` flavor (``{type: lora, base_model: ...}``), or None
    when the model is not an adapter."""
    flavor = (mlmodel.get("flavors") or {}).get("transformers")
    adapter = flavor.get("adapter") if isinstance(flavor, Mapping) else None
    return adapter if isinstance(adapter, Mapping) else None


# -- the eviction policy (pure) -------------------------------------------------------------------------------------
def lru_victims(order: Sequence[str], busy: Collection[str], capacity: int) -> tuple[str, ...]:
    """Which keys to evict so that at most ``capacity`` remain: the least recently used first (``order`` runs from
    least to most recently used), never one in ``busy`` (a request in flight). When too many are busy, fewer are
    evicted and the set stays above capacity until they finish."""
    excess = len(order) - max(capacity, 0)
    victims: list[str] = []
    for key in order:
        if excess <= 0:
            break
        if key not in busy:
            victims.append(key)
            excess -= 1
    return tuple(victims)


class RecencyOrder:
    """Keys from least to most recently used (no clock: order of `touch` calls)."""

    def __init__(self) -> None:
        self._keys: OrderedDict[str, None] = OrderedDict()

    def touch(self, key: str) -> None:
        """Mark ``key`` as used now (adding it if new)."""
        self._keys[key] = None
        self._keys.move_to_end(key)

    def remove(self, key: str) -> None:
        """Forget ``key`` (no error if unknown)."""
        self._keys.pop(key, None)

    def keys(self) -> tuple[str, ...]:
        """Least recently used first."""
        return tuple(self._keys)


# -- the engine -----------------------------------------------------------------------------------------------------
@dataclass(slots=True)
class _Slot:
    """One adapter's engine: loading (``task``) or loaded, and how many requests use it now."""

    ref: AdapterRef
    task: asyncio.Future[GenerationEngine]
    in_use: int = 0


@dataclass(slots=True)
class _Retired:
    """Token totals of closed adapter engines, kept so the summed counters never go down."""

    prompt: int = 0
    generation: int = 0


class MultiAdapterEngine:
    """A base engine and up to ``capacity`` adapter engines behind one `GenerationEngine` (module docstring).

    ``make_engine`` builds an adapter's engine from its `AdapterRef` (blocking: it runs in a worker thread; the
    engine is then started on the serving loop). Adapter engines are keyed by ``AdapterRef.path`` (one folder per
    adapter version), so ``ADAPTER`` and ``ADAPTER/VERSION`` naming the same version share an engine. Not
    thread-safe: one event loop calls it."""

    def __init__(self, base: GenerationEngine, make_engine: Callable[[AdapterRef], GenerationEngine], *,
                 capacity: int = 4) -> None:
        if capacity < 1:
            raise InvalidParameterValue(f"adapter capacity: must be at least 1, got {capacity}")
        self._base = base
        self._make = make_engine
        self.capacity = capacity
        self._slots: dict[str, _Slot] = {}
        self._order = RecencyOrder()
        self._retired = _Retired()
        self._loading_waiters = 0

    @property
    def capabilities(self) -> EngineCapabilities:
        """The base engine's, less what a loaded adapter engine lacks; ``adapters`` is True."""
        caps = self._base.capabilities
        for engine in self._loaded():
            other = engine.capabilities
            caps = EngineCapabilities(penalties=caps.penalties and other.penalties,
                                      json_schema=caps.json_schema and other.json_schema, adapters=True,
                                      seed=caps.seed and other.seed, n=caps.n and other.n)
        return dataclasses.replace(caps, adapters=True)

    @property
    def context_length(self) -> int:
        """The base model's (an adapter does not change it)."""
        return self._base.context_length

    def loaded(self) -> tuple[str, ...]:
        """The adapter folders with an engine (loaded or loading), least recently used first."""
        return self._order.keys()

    def _loaded(self) -> list[GenerationEngine]:
        return [s.task.result() for s in self._slots.values()
                if s.task.done() and not s.task.cancelled() and s.task.exception() is None]

    def stats(self) -> EngineStats:
        """The sum over the base and the adapter engines (closed ones' token totals included); requests waiting
        for their adapter to load count as waiting."""
        parts = [self._base.stats(), *(e.stats() for e in self._loaded())]
        return EngineStats(running=sum(p.running for p in parts),
                           waiting=sum(p.waiting for p in parts) + self._loading_waiters,
                           prompt_tokens_total=sum(p.prompt_tokens_total for p in parts) + self._retired.prompt,
                           generation_tokens_total=(sum(p.generation_tokens_total for p in parts)
                                                    + self._retired.generation))

    async def start(self) -> None:
        """Start the base engine (adapter engines start when made)."""
        await self._base.start()

    async def close(self) -> None:
        """Close every adapter engine, then the base engine."""
        for key in list(self._slots):
            await self._evict(key)
        await self._base.close()

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
        """Stream the request through the base engine, or its adapter's engine (made on first use)."""
        if request.adapter is None:
            async for event in _forward(self._base, request):
                yield event
            return
        slot = self._slots.get(request.adapter.path)
        if slot is None:
            slot = _Slot(request.adapter, asyncio.ensure_future(self._load(request.adapter)))
            self._slots[request.adapter.path] = slot
        slot.in_use += 1
        self._order.touch(request.adapter.path)
        try:
            engine = await self._engine_of(slot)
            if engine is None:
                for index in range(request.params.n):
                    yield GenerationEvent(index, (), "", len(request.prompt_ids), 0, finish_reason="error",
                                          error=_load_error(slot))
                return
            async for event in _forward(engine, dataclasses.replace(request, adapter=None)):
                yield event
        finally:
            slot.in_use -= 1
            await self._trim()

    async def _engine_of(self, slot: _Slot) -> GenerationEngine | None:
        """The slot's engine once loaded; None (and the slot dropped, so a later request tries again) if loading
        failed."""
        if not slot.task.done():
            self._loading_waiters += 1
            try:
                await asyncio.wait([slot.task])
            finally:
                self._loading_waiters -= 1
        if slot.task.cancelled() or slot.task.exception() is not None:
            if self._slots.get(slot.ref.path) is slot:
                del self._slots[slot.ref.path]
                self._order.remove(slot.ref.path)
            return None
        return slot.task.result()

    async def _load(self, ref: AdapterRef) -> GenerationEngine:
        engine = await asyncio.to_thread(self._make, ref)
        await engine.start()
        return engine

    async def _trim(self) -> None:
        busy = {key for key, slot in self._slots.items() if slot.in_use > 0 or not slot.task.done()}
        for key in lru_victims(self._order.keys(), busy, self.capacity):
            await self._evict(key)

    async def _evict(self, key: str) -> None:
        slot = self._slots.pop(key, None)
        self._order.remove(key)
        if slot is None:
            return
        if not slot.task.done():
            slot.task.cancel()
            return
        if slot.task.cancelled() or slot.task.exception() is not None:
            return
        engine = slot.task.result()
        last = engine.stats()
        self._retired.prompt += last.prompt_tokens_total
        self._retired.generation += last.generation_tokens_total
        await engine.close()


def _load_error(slot: _Slot) -> str:
    if slot.task.cancelled():
        return f"adapter {slot.ref.name!r} was unloaded before it finished loading"
    exc = slot.task.exception()
    return f"adapter {slot.ref.name!r} could not be loaded: {exc}"


async def _forward(engine: GenerationEngine, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
    """The engine's events; closing this iterator closes the engine's (so a client disconnect cancels there)."""
    inner = engine.generate(request)
    try:
        async for event in inner:
            yield event
    finally:
        aclose = getattr(inner, "aclose", None)
        if aclose is not None:
            await aclose()


# -- the registry as the adapters' source --------------------------------------------------------------------------
class VersionSearch(Protocol):
    """The registry search `RegistryAdapterSource` needs (the SDK's `TrackingBackend` has it)."""

    def search_model_versions(self, *, filter_string: str = "", max_results: int = 10000,
                              order_by: Sequence[str] = (),
                              page_token: str | None = None) -> Page[ModelVersion]: ...


@dataclass(slots=True)
class _Fetched:
    refs: dict[str, AdapterRef] = field(default_factory=dict)
    """``NAME/VERSION`` -> its downloaded folder."""


class RegistryAdapterSource:
    """The adapters of base model ``base`` (a `base_key`) from the registry (see the module docstring).

    ``registry`` finds the versions tagged as adapters of the base; ``models`` downloads one with its recorded
    digests (`capstan.sdk.model_source.BackendModelSource`). Thread-safe: routes may call it from worker threads."""

    def __init__(self, base: str, registry: VersionSearch, models: ModelSource) -> None:
        self.base = base
        self._registry = registry
        self._models = models
        self._lock = threading.Lock()
        self._fetched = _Fetched()
        self._root = Path(tempfile.mkdtemp(prefix="capstan-adapters-"))
        weakref.finalize(self, shutil.rmtree, self._root, True)

    def versions(self) -> dict[str, tuple[int, ...]]:
        """Each adapter's registered name and its versions that apply to the base, newest first."""
        escaped = self.base.replace("\\", "\\\\").replace("'", "\\'")
        found: dict[str, list[int]] = {}
        token: str | None = None
        while True:
            page = self._registry.search_model_versions(
                filter_string=f"tags.`{ADAPTER_BASE_TAG}` = '{escaped}'", page_token=token)
            for version in page.items:
                found.setdefault(version.name, []).append(version.version)
            token = page.next_page_token
            if not token:
                break
        return {name: tuple(sorted(numbers, reverse=True)) for name, numbers in sorted(found.items())}

    def names(self) -> tuple[str, ...]:
        """``ADAPTER`` and ``ADAPTER/VERSION`` for every adapter version of the base."""
        out: list[str] = []
        for name, numbers in self.versions().items():
            out.append(name)
            out.extend(f"{name}/{number}" for number in numbers)
        return tuple(out)

    def fetch(self, name: str) -> AdapterRef | None:
        """The adapter ``name`` (``ADAPTER`` or ``ADAPTER/VERSION``) downloaded and verified (once per version), or
        None when no adapter of the base has that name."""
        resolved = self._resolve(name)
        if resolved is None:
            return None
        key = f"{resolved[0]}/{resolved[1]}"
        with self._lock:
            ref = self._fetched.refs.get(key)
            if ref is None:
                ref = self._download(*resolved)
                self._fetched.refs[key] = ref
        return AdapterRef(name, ref.path)

    def _resolve(self, name: str) -> tuple[str, int] | None:
        adapter, slash, number = name.rpartition("/")
        if not slash or not number.isdigit():
            adapter, number = name, ""
        numbers = self.versions().get(adapter)
        if not numbers:
            return None
        if not number:
            return adapter, numbers[0]
        return (adapter, int(number)) if int(number) in numbers else None

    def _download(self, name: str, version: int) -> AdapterRef:
        from capstan.models.format import read_mlmodel

        dest = Path(tempfile.mkdtemp(prefix="v-", dir=self._root))
        fetched = self._models.fetch(f"models:/{name}/{version}", dest)
        verify_folder(fetched.folder, fetched.digests)
        config = adapter_config(read_mlmodel(fetched.folder))
        if config is None:
            raise InvalidState(f"model version {name}/{version} is tagged as an adapter of {self.base} but its "
                               "MLmodel has no transformers adapter entry")
        if str(config.get("base_model", "")) != self.base:
            raise InvalidState(f"model version {name}/{version} is an adapter of {config.get('base_model')!r}, "
                               f"not of {self.base!r}")
        return AdapterRef(f"{name}/{version}", str(fetched.folder))


def with_adapters(model: LanguageModel, source: AdapterSource, make_engine: Callable[[AdapterRef], GenerationEngine],
                  capacity: int = 4) -> LanguageModel:
    """``model`` serving its adapters too: its engine wrapped in a `MultiAdapterEngine`, ``source`` as its
    adapters. An embedding-only model (no engine) is refused."""
    if model.engine is None:
        raise InvalidParameterValue(f"model {model.name!r} has no generation engine: adapters apply to a "
                                    "generative model")
    engine = MultiAdapterEngine(model.engine, make_engine, capacity=capacity)
    return dataclasses.replace(model, engine=engine, adapters=source)
