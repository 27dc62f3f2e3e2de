"""How many replicas a deployment wants, from what its routers saw. Pure: no clock, no I/O.

The rules follow Kubernetes' HorizontalPodAutoscaler and Knative's KPA:

- the metric is the summed concurrency (requests in flight plus requests waiting for a replica) or the request rate
  of every router worker, or, for language models, the requests waiting in the replicas' engines (plus those waiting
  for a replica) or the tokens they generate per second (from the counters of each replica's ``GET /llm/stats``,
  sampled by the controller: `EngineSample`, `engine_demand`), against a target per replica:
  ``ceil(metric / target)``, clamped to ``[min_replicas, max_replicas]``;
- while any request is in flight or waiting, at least one replica is kept (a metric such as waiting requests can be
  0 while requests run);
- within a tolerance of 10% of the current count's capacity nothing changes (no flapping around the target);
- scaling up is immediate; scaling down follows the highest recommendation of the stabilisation window, so a
  short lull does not remove replicas that are needed again a moment later;
- scale to zero (``min_replicas: 0``) is the same rule: after a whole window without requests every recommendation
  in it is 0. A router reporting a waiting request scales a deployment at zero to one at once (scale from zero).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from capstan.serving.ports import LoadReport
from capstan.serving.spec import Autoscaling

TOLERANCE = 0.1
"""Relative distance from the target within which the replica count is left alone (HPA's default)."""


@dataclass(frozen=True, slots=True)
class Demand:
    """The load of one deployment at one moment, summed over router workers."""

    in_flight: int = 0
    waiting: int = 0
    rps: float = 0.0
    engine_running: int = 0
    """Sequences the replicas' language-model engines are generating (summed ``running`` of ``/llm/stats``)."""
    engine_waiting: int = 0
    """Requests queued inside the replicas' engines for a batch slot (summed ``waiting``)."""
    tokens_per_s: float = 0.0
    """Tokens the replicas generated per second (from their ``generation_tokens_total`` counters)."""

    @property
    def concurrency(self) -> int:
        """Requests being answered plus requests waiting for a replica."""
        return self.in_flight + self.waiting

    @property
    def waiting_total(self) -> int:
        """Requests waiting anywhere: for a replica at the routers, or for a slot in a replica's engine."""
        return self.waiting + self.engine_waiting

    @property
    def busy(self) -> bool:
        """Some request is in flight or waiting (at a router or in an engine)."""
        return self.concurrency > 0 or self.engine_running > 0 or self.engine_waiting > 0

    @property
    def idle(self) -> bool:
        """No request in flight, waiting or recently completed, and no token generated recently."""
        return not self.busy and self.rps == 0 and self.tokens_per_s == 0


@dataclass(frozen=True, slots=True)
class EngineSample:
    """One replica's language-model engine load at ``time_ms``, as ``GET /llm/stats`` answered it."""

    time_ms: int
    running: int
    waiting: int
    generation_tokens_total: int


def engine_sample(body: object, time_ms: int) -> EngineSample | None:
    """The sample in a ``GET /llm/stats`` answer (``{"running", "waiting", "generation_tokens_total", ...}``), or
    None when it is not one (a replica that serves no language model)."""
    if not isinstance(body, Mapping):
        return None
    values: list[int] = []
    for key in ("running", "waiting", "generation_tokens_total"):
        value: Any = body.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            return None
        values.append(value)
    return EngineSample(time_ms, *values)


def tokens_per_second(samples: Sequence[EngineSample]) -> float:
    """Generated tokens per second over ``samples`` of one replica (oldest first): the counter's growth from the
    oldest to the newest sample, or from the last restart (a counter that went down) when the replica restarted
    in between. 0 with fewer than two samples."""
    start = 0
    for i in range(1, len(samples)):
        if samples[i].generation_tokens_total < samples[i - 1].generation_tokens_total:
            start = i
    if not samples or len(samples) - start < 2:
        return 0.0
    first, last = samples[start], samples[-1]
    elapsed_ms = last.time_ms - first.time_ms
    if elapsed_ms <= 0:
        return 0.0
    return (last.generation_tokens_total - first.generation_tokens_total) * 1000.0 / elapsed_ms


def engine_demand(demand: Demand, samples: Mapping[str, Sequence[EngineSample]]) -> Demand:
    """``demand`` with the engine load of every replica's samples (oldest first) added: the newest ``running`` and
    ``waiting`` of each, and the summed token rates."""
    latest = [s[-1] for s in samples.values() if s]
    return dataclasses.replace(
        demand, engine_running=sum(s.running for s in latest), engine_waiting=sum(s.waiting for s in latest),
        tokens_per_s=sum(tokens_per_second(s) for s in samples.values()))


@dataclass(frozen=True, slots=True)
class ScaleHistory:
    """The recommendations of the stabilisation window, ``(time_ms, replicas)``, oldest first."""

    recommendations: tuple[tuple[int, int], ...] = ()


def fresh_reports(reports: Iterable[LoadReport], now_ms: int, max_age_ms: int) -> tuple[LoadReport, ...]:
    """The reports written within ``max_age_ms`` of ``now_ms`` (a worker that stopped reporting counts no more)."""
    return tuple(r for r in reports if now_ms - r.time_ms <= max_age_ms)


def demand_of(reports: Sequence[LoadReport], completed_per_s: float = 0.0) -> Demand:
    """Summed in-flight and waiting requests of ``reports``, with the request rate measured by the caller."""
    return Demand(sum(max(0, r.in_flight) for r in reports), sum(max(0, r.waiting) for r in reports),
                  max(0.0, completed_per_s))


def rate(samples: Iterable[tuple[int, int]], now_ms: int, window_ms: int) -> float:
    """Requests per second from ``(time_ms, completed)`` samples within the last ``window_ms``."""
    if window_ms <= 0:
        return 0.0
    total = sum(count for at, count in samples if now_ms - at <= window_ms)
    return total * 1000.0 / window_ms


def metric_value(policy: Autoscaling, demand: Demand) -> float:
    """The value of the policy's metric in ``demand`` (summed over replicas and routers)."""
    metric = policy.metric
    if metric == "concurrency":
        return float(demand.concurrency)
    if metric == "waiting":
        return float(demand.waiting_total)
    if metric == "tokens_per_second":
        return demand.tokens_per_s
    return demand.rps


def recommend(policy: Autoscaling, demand: Demand, current: int) -> int:
    """The replica count the demand asks for now (before stabilisation), within the policy's bounds."""
    metric, target = metric_value(policy, demand), policy.target
    wanted = math.ceil(metric / target - 1e-9) if metric > 0 else 0
    if current > 0 and metric > 0 and abs(metric / (current * target) - 1.0) <= TOLERANCE:
        wanted = current
    if demand.waiting > 0 or demand.busy or (metric > 0 and wanted == 0):
        wanted = max(wanted, 1)  # a waiting or running request always has a replica: scale from zero
    return max(policy.min_replicas, min(policy.max_replicas, wanted))


def decide(policy: Autoscaling, demand: Demand, current: int, history: ScaleHistory,
           now_ms: int) -> tuple[int, ScaleHistory]:
    """The replica count to run now and the history to pass next time.

    Up at once; down only to the highest recommendation of the last ``stabilization_window_seconds``.
    """
    window_ms = policy.stabilization_window_seconds * 1000
    wanted = recommend(policy, demand, current)
    # A fresh history (a controller that just started) remembers the current count, so it never scales down at once.
    past = history.recommendations or ((now_ms, current),)
    kept = (*((at, n) for at, n in past if now_ms - at < window_ms), (now_ms, wanted))
    if wanted >= current or window_ms == 0:
        return wanted, ScaleHistory(kept)
    return max(n for _at, n in kept), ScaleHistory(kept)


def side_replicas(primary: int, traffic_percent: float) -> int:
    """Replicas for a canary or shadow taking ``traffic_percent`` of the primary's requests: its share of the
    primary's count, at least one while the primary runs any (so a promote finds it warm), none at zero."""
    if primary <= 0:
        return 0
    return max(1, math.ceil(primary * traffic_percent / 100.0 - 1e-9))
