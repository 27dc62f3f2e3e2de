"""Token metrics of language-model serving, under vLLM's names (prefix ``vllm:``) and Capstan's (``capstan_llm_``).

Every family is exported twice with the same samples, so a Grafana dashboard or KEDA rule written for vLLM reads a
Capstan replica unchanged, and Capstan's own dashboards keep the ``capstan_`` namespace. Labels: ``model_name`` (the
served base model's name, as vLLM's; an adapter's requests count under its base), and ``finished_reason`` on
``request_success_total``. Names without the prefix:

- ``time_to_first_token_seconds`` (histogram): arrival to the first generated token.
- ``inter_token_latency_seconds`` (histogram): time between two consecutive outputs of a sequence; also exported
  as ``time_per_output_token_seconds`` (vLLM 0.x's name for the same observation).
- ``e2e_request_latency_seconds`` (histogram): arrival to the last token.
- ``request_queue_time_seconds`` (histogram): waiting before the engine first scheduled the request.
- ``request_prompt_tokens`` / ``request_generation_tokens`` (histograms of tokens per finished request).
- ``num_requests_running`` / ``num_requests_waiting`` (gauges): read when scraped, from the load sources the app
  registers with `LlmMetrics.watch` (the engine's stats, plus requests admitted but not yet handed to it).
- ``prompt_tokens_total`` / ``generation_tokens_total`` (counters): counted as tokens are produced, so a rate is
  current while long generations run.
- ``request_success_total{finished_reason}`` (counter): finished requests, by ``stop``, ``length``, ``abort``
  (the client went away) or ``error``.

Nothing here reads a clock: the route measures and reports seconds. One registry per app, as the serving metrics.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

__all__ = ["CONTENT_TYPE", "PREFIXES", "LlmMetrics", "Load", "TokenTotals", "finished_reason_label"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PREFIXES = ("vllm:", "capstan_llm_")
"""Each family under vLLM's prefix and under Capstan's."""

TTFT_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0)
ITL_BUCKETS = (0.005, 0.01, 0.015, 0.025, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0)
REQUEST_BUCKETS = (0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0)
TOKEN_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000)

_MODEL = ("model_name",)

Load = Callable[[], tuple[int, int]]
"""A model's load now: (requests running, requests waiting)."""


def finished_reason_label(reason: str | None) -> str:
    """The ``finished_reason`` label of an engine's finish reason (vLLM's spelling: a cancel is ``abort``)."""
    return {"stop": "stop", "length": "length", "cancelled": "abort", None: "abort"}.get(reason, "error")


@dataclass(frozen=True, slots=True)
class TokenTotals:
    """Tokens and requests one model has served since the app started (``GET /llm/stats``)."""

    prompt_tokens: int = 0
    generation_tokens: int = 0
    requests: int = 0


class _Twin:
    """One family under both prefixes; observations go to both, with the label children cached."""

    def __init__(self, kind: Any, name: str, doc: str, labels: tuple[str, ...], registry: Any,
                 **options: Any) -> None:
        self.families = [kind(prefix + name, doc, labels, registry=registry, **options) for prefix in PREFIXES]
        self.children: dict[tuple[str, ...], list[Any]] = {}

    def of(self, *labels: str) -> list[Any]:
        children = self.children.get(labels)
        if children is None:
            children = self.children[labels] = [f.labels(*labels) for f in self.families]
        return children

    def observe(self, value: float, *labels: str) -> None:
        for child in self.of(*labels):
            child.observe(value)

    def inc(self, value: float, *labels: str) -> None:
        for child in self.of(*labels):
            child.inc(value)


class _LoadCollector:
    """``num_requests_running`` and ``num_requests_waiting``, read from the watched load sources when scraped."""

    def __init__(self) -> None:
        self.sources: dict[str, Load] = {}

    def families(self, loads: Iterable[tuple[str, tuple[int, int]]]) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        loads = list(loads)
        for prefix in PREFIXES:
            running = GaugeMetricFamily(f"{prefix}num_requests_running", "Requests being generated now.",
                                        labels=_MODEL)
            waiting = GaugeMetricFamily(f"{prefix}num_requests_waiting", "Requests waiting to be scheduled.",
                                        labels=_MODEL)
            for name, (run, wait) in loads:
                running.add_metric([name], run)
                waiting.add_metric([name], wait)
            yield running
            yield waiting

    def describe(self) -> Iterator[Any]:
        return self.families(())

    def collect(self) -> Iterator[Any]:
        return self.families((name, load()) for name, load in sorted(self.sources.items()))


class LlmMetrics:
    """The token metrics of one app (its own registry). The route reports what it sees with the methods below;
    `exposition` answers ``GET /metrics``."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = registry = CollectorRegistry(auto_describe=True)
        self._ttft = _Twin(Histogram, "time_to_first_token_seconds", "Time to first token in seconds.", _MODEL,
                           registry, buckets=TTFT_BUCKETS)
        self._itl = _Twin(Histogram, "inter_token_latency_seconds", "Time between two outputs of a sequence.",
                          _MODEL, registry, buckets=ITL_BUCKETS)
        self._tpot = _Twin(Histogram, "time_per_output_token_seconds",
                           "Time per output token in seconds (the inter-token latency, vLLM 0.x's name).", _MODEL,
                           registry, buckets=ITL_BUCKETS)
        self._e2e = _Twin(Histogram, "e2e_request_latency_seconds", "End-to-end request latency in seconds.",
                          _MODEL, registry, buckets=REQUEST_BUCKETS)
        self._queue = _Twin(Histogram, "request_queue_time_seconds", "Time waiting before first scheduled.",
                            _MODEL, registry, buckets=REQUEST_BUCKETS)
        self._request_prompt = _Twin(Histogram, "request_prompt_tokens", "Prompt tokens per finished request.",
                                     _MODEL, registry, buckets=TOKEN_BUCKETS)
        self._request_generation = _Twin(Histogram, "request_generation_tokens",
                                         "Generated tokens per finished request.", _MODEL, registry,
                                         buckets=TOKEN_BUCKETS)
        self._prompt = _Twin(Counter, "prompt_tokens", "Prompt tokens processed.", _MODEL, registry)
        self._generation = _Twin(Counter, "generation_tokens", "Tokens generated.", _MODEL, registry)
        self._success = _Twin(Counter, "request_success", "Finished requests, by finish reason.",
                              (*_MODEL, "finished_reason"), registry)
        self._load = _LoadCollector()
        registry.register(self._load)  # a Collector by shape (collect, describe)
        self._totals: dict[str, TokenTotals] = {}

    def watch(self, model_name: str, load: Load) -> None:
        """Read ``model_name``'s running and waiting requests from ``load`` at every scrape."""
        self._load.sources[model_name] = load

    # ------------------------------------------------------------------------------------------- reports

    def prompt_tokens(self, model_name: str, tokens: int) -> None:
        """A request's prompt was taken in (its first event)."""
        self._prompt.inc(tokens, model_name)
        totals = self.totals(model_name)
        self._totals[model_name] = TokenTotals(totals.prompt_tokens + tokens, totals.generation_tokens,
                                               totals.requests)

    def generated(self, model_name: str, tokens: int) -> None:
        """``tokens`` more tokens were generated."""
        if tokens:
            self._generation.inc(tokens, model_name)
            totals = self.totals(model_name)
            self._totals[model_name] = TokenTotals(totals.prompt_tokens, totals.generation_tokens + tokens,
                                                   totals.requests)

    def queued(self, model_name: str, seconds: float) -> None:
        """A request waited ``seconds`` before the engine scheduled it."""
        self._queue.observe(seconds, model_name)

    def first_token(self, model_name: str, seconds: float) -> None:
        """A request's first token came ``seconds`` after it arrived."""
        self._ttft.observe(seconds, model_name)

    def inter_token(self, model_name: str, seconds: float) -> None:
        """A sequence's next output came ``seconds`` after its previous one."""
        self._itl.observe(seconds, model_name)
        self._tpot.observe(seconds, model_name)

    def finished(self, model_name: str, reason: str | None, seconds: float, prompt_tokens: int,
                 generation_tokens: int) -> None:
        """A request ended (``reason`` is the engine's finish reason, None when the client went away first)."""
        self._success.inc(1, model_name, finished_reason_label(reason))
        self._e2e.observe(seconds, model_name)
        self._request_prompt.observe(prompt_tokens, model_name)
        self._request_generation.observe(generation_tokens, model_name)
        totals = self.totals(model_name)
        self._totals[model_name] = TokenTotals(totals.prompt_tokens, totals.generation_tokens, totals.requests + 1)

    def totals(self, model_name: str) -> TokenTotals:
        """Tokens and finished requests of ``model_name`` so far."""
        return self._totals.get(model_name, TokenTotals())

    def exposition(self) -> tuple[bytes, str]:
        """The Prometheus text exposition and its content type (``GET /metrics``)."""
        from prometheus_client import generate_latest

        return bytes(generate_latest(self.registry)), CONTENT_TYPE
