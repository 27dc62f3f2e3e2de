"""Prometheus metrics of serving, per model and version: a `ServingObserver` with its own `CollectorRegistry`.

`ServingMetrics` counts what the serving core reports (requests by protocol and code, latency, rows per ``predict``
call, queue depth) and holds what the deployment controller sets (replicas by state, cold starts and their
duration) and what the drift monitor sets (``capstan_feature_drift``). `exposition` answers ``GET /metrics``.

Conventions are the server's (`capstan.server.metrics`): one registry per app, never the global one, so several
apps in one process keep their counts apart; with several worker processes each counts what it served. The label
children of the hot-path metrics are cached, so an observation is a dictionary look-up and an increment.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from capstan.serving.observe import Array

__all__ = [
    "BATCH_BUCKETS",
    "COLD_START_BUCKETS",
    "CONTENT_TYPE",
    "LATENCY_BUCKETS",
    "REPLICA_STATES",
    "ServingMetrics",
]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""The content type of `ServingMetrics.exposition` (the Prometheus text format 0.0.4, as ``capstan server``'s)."""

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
COLD_START_BUCKETS = (0.1, 0.25, 0.5, 1.0, 1.5, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
REPLICA_STATES = ("pending", "starting", "ready", "draining", "failed")
"""The replica states the controller reports; `set_replicas` zeroes the ones it is not given."""

_VERSION = ("model", "version")


class ServingMetrics:
    """The serving metrics of one process (or app): a `ServingObserver`, plus setters for the controller and drift.

    Families (``_total``, ``_bucket``... suffixes as Prometheus adds them):

    - ``capstan_serving_requests_total{model,version,protocol,code}``
    - ``capstan_serving_request_duration_seconds{model,version,protocol}`` (histogram)
    - ``capstan_serving_batch_size{model,version}`` (histogram of rows per ``predict`` call)
    - ``capstan_serving_predict_duration_seconds{model,version}`` (histogram of ``predict`` calls)
    - ``capstan_serving_queue_depth{model,version}`` (gauge, rows waiting)
    - ``capstan_serving_replicas{model,version,state}`` (gauge)
    - ``capstan_serving_desired_replicas{model,version}`` (gauge)
    - ``capstan_serving_cold_starts_total{model,version}`` and ``capstan_serving_cold_start_duration_seconds``
    - ``capstan_feature_drift{model,version,feature,stat}`` (gauge)
    """

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self.requests = Counter("capstan_serving_requests", "Inference requests answered, by protocol and code.",
                                (*_VERSION, "protocol", "code"), registry=registry)
        self.latency = Histogram("capstan_serving_request_duration_seconds",
                                 "Time to answer an inference request.", (*_VERSION, "protocol"),
                                 buckets=LATENCY_BUCKETS, registry=registry)
        self.batch_size = Histogram("capstan_serving_batch_size", "Rows per predict call (the batches formed).",
                                    _VERSION, buckets=BATCH_BUCKETS, registry=registry)
        self.predict_latency = Histogram("capstan_serving_predict_duration_seconds", "Time of one predict call.",
                                         _VERSION, buckets=LATENCY_BUCKETS, registry=registry)
        self.queue = Gauge("capstan_serving_queue_depth", "Rows waiting in the batching queue.", _VERSION,
                           registry=registry)
        self.replicas = Gauge("capstan_serving_replicas", "Replicas of a model version, by state.",
                              (*_VERSION, "state"), registry=registry)
        self.desired_replicas = Gauge("capstan_serving_desired_replicas",
                                      "Replicas of a model version the controller is aiming for.", _VERSION,
                                      registry=registry)
        self.cold_starts = Counter("capstan_serving_cold_starts", "Replicas started from zero for a waiting request.",
                                   _VERSION, registry=registry)
        self.cold_start_seconds = Histogram("capstan_serving_cold_start_duration_seconds",
                                            "Time from a cold start's first request to a ready replica.", _VERSION,
                                            buckets=COLD_START_BUCKETS, registry=registry)
        self.drift = Gauge("capstan_feature_drift", "Drift of a feature's live window from its reference, by stat.",
                           (*_VERSION, "feature", "stat"), registry=registry)
        self._families = {id(f): f for f in (self.requests, self.latency, self.batch_size, self.predict_latency,
                                             self.queue, self.replicas, self.desired_replicas, self.cold_starts,
                                             self.cold_start_seconds, self.drift)}
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}

    def _child(self, family: Any, *labels: str) -> Any:
        """The child of ``family`` for ``labels``, cached (and remembered for `forget`)."""
        key = (id(family), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = family.labels(*labels)
        return child

    # ------------------------------------------------------------------------------------ ServingObserver

    def request_done(self, model: str, version: str, protocol: str, status: int, seconds: float) -> None:
        """Count the request and observe its latency."""
        self._child(self.requests, model, version, protocol, str(status)).inc()
        self._child(self.latency, model, version, protocol).observe(seconds)

    def predicted(self, model: str, version: str, request_id: str, inputs: Array, outputs: Array) -> None:
        """Not measured here (rows are counted per batch)."""

    def batch_done(self, model: str, version: str, rows: int, seconds: float) -> None:
        """Observe the batch's size and its ``predict`` time."""
        self._child(self.batch_size, model, version).observe(rows)
        self._child(self.predict_latency, model, version).observe(seconds)

    def queue_depth(self, model: str, version: str, rows: int) -> None:
        """Set the queue-depth gauge."""
        self._child(self.queue, model, version).set(rows)

    # ------------------------------------------------------------------------ deployment controller, drift

    def set_replicas(self, model: str, version: str, by_state: Mapping[str, int]) -> None:
        """Set the replica gauges of a version: ``by_state`` maps a state to a count; known states absent are 0."""
        for state in (*REPLICA_STATES, *sorted(set(by_state) - set(REPLICA_STATES))):
            self._child(self.replicas, model, version, state).set(by_state.get(state, 0))

    def set_desired_replicas(self, model: str, version: str, count: int) -> None:
        """Set how many replicas of a version the controller is aiming for."""
        self._child(self.desired_replicas, model, version).set(count)

    def cold_start(self, model: str, version: str, seconds: float) -> None:
        """Record one cold start (scale from zero) that took ``seconds`` until the replica was ready."""
        self._child(self.cold_starts, model, version).inc()
        self._child(self.cold_start_seconds, model, version).observe(seconds)

    def set_drift(self, model: str, version: str, feature: str, stat: str, value: float) -> None:
        """Set ``capstan_feature_drift`` for one feature and statistic of a version."""
        self._child(self.drift, model, version, feature, stat).set(value)

    def forget(self, model: str, version: str) -> None:
        """Drop every series of a version (when it is no longer served), so its last values do not linger."""
        for key in [k for k in self._children if k[1][:2] == (model, version)]:
            self._families[key[0]].remove(*key[1])
            del self._children[key]

    # ----------------------------------------------------------------------------------------- exposition

    def exposition(self) -> tuple[bytes, str]:
        """The Prometheus text exposition of these metrics, and its content type (for ``GET /metrics``)."""
        from prometheus_client import generate_latest

        return bytes(generate_latest(self.registry)), CONTENT_TYPE

