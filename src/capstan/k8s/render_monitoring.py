"""Render Capstan's monitoring for a cluster: a Grafana dashboard, alert rules, and the HPA's custom metrics. Pure.

``render_monitoring(options)`` returns (docs/kubernetes-serving.md, decision 0713):

- a `ConfigMap` holding the Grafana dashboard JSON (labelled for Grafana's dashboard sidecar): serving latency
  p50/p95, requests per second and error ratio per model version, language-model tokens and waiting requests,
  queue pending workloads and admission wait, GPU quota use;
- a prometheus-operator `PrometheusRule` (``monitoring.coreos.com/v1``) with the alerts, and the same rule groups
  as a plain Prometheus rule file in a `ConfigMap`, for a Prometheus without the operator;
- a `ConfigMap` with prometheus-adapter rules that serve the HPA's Pods metrics (`render_serving.POD_METRICS`,
  `render_serving.LLM_POD_METRICS`) from Capstan's series.

Every query reads the series Capstan exports (`capstan.serving.metrics`, `capstan.queue.metrics`,
`capstan.llm.metrics`) and, for replicas, kube-state-metrics'. Pods are scraped through the plain
``prometheus.io/*`` annotations; no ServiceMonitor is needed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from capstan.errors import InvalidParameterValue
from capstan.k8s.render_queues import namespace_for
from capstan.k8s.render_serving import LLM_POD_METRICS, POD_METRICS, ROUTER_ROLE

PROMETHEUS_RULE_API: Final = "monitoring.coreos.com/v1"
DASHBOARD_FILE: Final = "capstan.json"
RULES_FILE: Final = "capstan-rules.yaml"
ADAPTER_FILE: Final = "config.yaml"
DASHBOARD_UID: Final = "capstan-overview"
RATE: Final = "$__rate_interval"
"""Grafana's rate window, in the dashboard's queries (the rules use fixed windows)."""

EXPORTED_METRICS: Final = frozenset({
    "capstan_serving_requests_total", "capstan_serving_request_duration_seconds_bucket",
    "capstan_serving_request_duration_seconds_sum", "capstan_queue_pending_workloads",
    "capstan_queue_admission_wait_seconds_bucket", "capstan_queue_admission_wait_seconds_count",
    "capstan_queue_quota_used", "capstan_queue_quota_nominal", "capstan_llm_num_requests_running",
    "capstan_llm_num_requests_waiting", "capstan_llm_generation_tokens_total", "capstan_llm_request_success_total",
    "capstan_llm_time_to_first_token_seconds_bucket"})
"""The Capstan series the queries read (the tests check each against the live registries)."""
EXTERNAL_METRICS: Final = frozenset({"kube_deployment_status_replicas_unavailable", "kube_deployment_spec_replicas"})
"""kube-state-metrics' series the replica alert reads."""

_DURATION: Final = re.compile(r"^[0-9]+(ms|s|m|h|d)$")
_VERSIONED: Final = f'deployment=~".+-(primary|canary|shadow|{ROUTER_ROLE})"'


@dataclass(frozen=True, slots=True)
class MonitoringOptions:
    """Thresholds and names.

    - ``namespace``: where the ConfigMaps and the PrometheusRule go (none: where they are applied); ``prefix``
      starts every object's name.
    - ``latency_p95_seconds`` held for ``latency_for``: the serving latency alert (100 ms for 5 minutes);
      ``error_ratio`` held for ``error_for``: the 5xx share alert; ``replicas_for``: how long a version may miss
      replicas; ``queue_wait_seconds``/``queue_for``: the queue alerts.
    - ``dashboard_labels``: the labels Grafana's sidecar finds dashboards by; ``rule_labels``: the labels the
      operator's ``ruleSelector`` picks PrometheusRules by (e.g. ``release: prometheus``).
    """

    namespace: str | None = None
    prefix: str = "capstan"
    latency_p95_seconds: float = 0.1
    latency_for: str = "5m"
    error_ratio: float = 0.05
    error_for: str = "5m"
    replicas_for: str = "5m"
    queue_wait_seconds: int = 1800
    queue_for: str = "30m"
    dashboard_labels: Mapping[str, str] = field(default_factory=lambda: {"grafana_dashboard": "1"})
    rule_labels: Mapping[str, str] = field(default_factory=dict)


def _fail(path: str, message: str) -> InvalidParameterValue:
    return InvalidParameterValue(f"{path}: {message}")


def _check(options: MonitoringOptions) -> None:
    if options.namespace is not None:
        namespace_for(options.namespace, "namespace")
    namespace_for(options.prefix, "prefix")
    for name in ("latency_for", "error_for", "replicas_for", "queue_for"):
        value = getattr(options, name)
        if not _DURATION.match(value):
            raise _fail(name, f"{value!r} is not a Prometheus duration such as 5m, 30s or 1h")
    if not options.latency_p95_seconds > 0:
        raise _fail("latency_p95_seconds", f"must be greater than 0, got {options.latency_p95_seconds:g}")
    if not 0 < options.error_ratio < 1:
        raise _fail("error_ratio", f"must be between 0 and 1, got {options.error_ratio:g}")
    if options.queue_wait_seconds < 1:
        raise _fail("queue_wait_seconds", f"must be at least 1, got {options.queue_wait_seconds}")


# ---------------------------------------------------------------------------------------------------- queries


def latency_quantile(q: float, window: str, by: str = "namespace, model, version") -> str:
    """The ``q`` quantile of serving latency per model version over ``window``."""
    return (f"histogram_quantile({q:g}, sum by ({by}, le) "
            f"(rate(capstan_serving_request_duration_seconds_bucket[{window}])))")


def error_ratio(window: str, by: str = "namespace, model, version") -> str:
    """The share of inference requests answered 5xx per model version over ``window``."""
    return (f'sum by ({by}) (rate(capstan_serving_requests_total{{code=~"5.."}}[{window}])) / '
            f"sum by ({by}) (rate(capstan_serving_requests_total[{window}]))")


def rule_groups(options: MonitoringOptions | None = None) -> list[dict[str, Any]]:
    """The alert rule groups, shared by the PrometheusRule and the plain rule file."""
    o = options if options is not None else MonitoringOptions()
    ms = round(o.latency_p95_seconds * 1000)
    serving = [
        {"alert": "CapstanServingLatencyP95High",
         "expr": f"{latency_quantile(0.95, '5m')} > {o.latency_p95_seconds:g}", "for": o.latency_for,
         "labels": {"severity": "warning"},
         "annotations": {"summary": f"p95 serving latency above {ms} ms",
                         "description": "{{ $labels.model }} version {{ $labels.version }} in {{ $labels.namespace "
                                        "}}: p95 latency is {{ $value | humanizeDuration }} (limit " + f"{ms} ms)."}},
        {"alert": "CapstanServingErrorRateHigh", "expr": f"({error_ratio('5m')}) > {o.error_ratio:g}",
         "for": o.error_for, "labels": {"severity": "critical"},
         "annotations": {"summary": "inference requests failing with 5xx",
                         "description": "{{ $labels.model }} version {{ $labels.version }}: {{ $value | "
                                        "humanizePercentage }} of requests answered 5xx."}},
        {"alert": "CapstanServingReplicasDown",
         "expr": f"kube_deployment_status_replicas_unavailable{{{_VERSIONED}}} > 0", "for": o.replicas_for,
         "labels": {"severity": "warning"},
         "annotations": {"summary": "serving replicas unavailable",
                         "description": "{{ $labels.namespace }}/{{ $labels.deployment }} has {{ $value }} "
                                        "unavailable replicas."}},
        {"alert": "CapstanServingAllReplicasDown",
         "expr": (f"kube_deployment_spec_replicas{{{_VERSIONED}}} > 0 and "
                  f"kube_deployment_status_replicas_unavailable{{{_VERSIONED}}} "
                  f"== kube_deployment_spec_replicas{{{_VERSIONED}}}"),
         "for": "1m", "labels": {"severity": "critical"},
         "annotations": {"summary": "no serving replica available",
                         "description": "{{ $labels.namespace }}/{{ $labels.deployment }} has no available replica."}},
    ]
    queue = [
        {"alert": "CapstanQueueWorkloadsPendingTooLong",
         "expr": ("sum by (cluster_queue) (capstan_queue_pending_workloads) > 0 unless on (cluster_queue) "
                  f"sum by (cluster_queue) (increase(capstan_queue_admission_wait_seconds_count[{o.queue_for}])) "
                  "> 0"),
         "for": o.queue_for, "labels": {"severity": "warning"},
         "annotations": {"summary": "workloads pending and none admitted",
                         "description": "{{ $labels.cluster_queue }} has {{ $value }} pending workloads and admitted "
                                        f"none in {o.queue_for}."}},
        {"alert": "CapstanQueueAdmissionWaitHigh",
         "expr": (f"histogram_quantile(0.9, sum by (cluster_queue, le) "
                  f"(rate(capstan_queue_admission_wait_seconds_bucket[1h]))) > {o.queue_wait_seconds}"),
         "for": o.queue_for, "labels": {"severity": "info"},
         "annotations": {"summary": "workloads wait long for admission",
                         "description": "{{ $labels.cluster_queue }}: 90 % of admitted workloads waited up to "
                                        "{{ $value | humanizeDuration }}."}},
    ]
    return [{"name": "capstan-serving", "rules": serving}, {"name": "capstan-queue", "rules": queue}]


# ---------------------------------------------------------------------------------------------------- dashboard


def _target(expr: str, legend: str, ref: str) -> dict[str, Any]:
    return {"datasource": {"type": "prometheus", "uid": "${datasource}"}, "expr": expr, "legendFormat": legend,
            "refId": ref}


def _panel(pid: int, title: str, unit: str, targets: list[dict[str, Any]], x: int, y: int) -> dict[str, Any]:
    return {"id": pid, "type": "timeseries", "title": title,
            "datasource": {"type": "prometheus", "uid": "${datasource}"},
            "gridPos": {"h": 8, "w": 12, "x": x, "y": y},
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
            "options": {"legend": {"displayMode": "list", "placement": "bottom"}}, "targets": targets}


def dashboard_panels() -> list[dict[str, Any]]:
    """The dashboard's panels, two per row."""
    model = 'model=~"$model"'
    by_version = "namespace, model, version"
    served = f"capstan_serving_request_duration_seconds_bucket{{{model}}}"
    specs = [
        ("Serving latency p50 / p95 per version", "s", [
            (f"histogram_quantile(0.5, sum by ({by_version}, le) (rate({served}[{RATE}])))",
             "p50 {{model}} v{{version}}"),
            (f"histogram_quantile(0.95, sum by ({by_version}, le) (rate({served}[{RATE}])))",
             "p95 {{model}} v{{version}}")]),
        ("Requests per second per version", "reqps", [
            (f"sum by ({by_version}) (rate(capstan_serving_requests_total{{{model}}}[{RATE}]))",
             "{{model}} v{{version}}")]),
        ("Error ratio (5xx) per version", "percentunit", [
            (f'sum by ({by_version}) (rate(capstan_serving_requests_total{{{model},code=~"5.."}}[{RATE}])) / '
             f"sum by ({by_version}) (rate(capstan_serving_requests_total{{{model}}}[{RATE}]))",
             "{{model}} v{{version}}")]),
        ("Language models: generated tokens per second and waiting requests", "short", [
            (f"sum by (namespace, model_name) (rate(capstan_llm_generation_tokens_total[{RATE}]))",
             "tokens/s {{model_name}}"),
            ("sum by (namespace, model_name) (capstan_llm_num_requests_waiting)", "waiting {{model_name}}")]),
        ("Queue: pending workloads", "short", [
            ("sum by (cluster_queue) (capstan_queue_pending_workloads)", "{{cluster_queue}}")]),
        ("Queue: admission wait p50 / p95", "s", [
            (f"histogram_quantile({q}, sum by (cluster_queue, le) "
             f"(rate(capstan_queue_admission_wait_seconds_bucket[{RATE}])))",
             f"p{round(q * 100)} {{{{cluster_queue}}}}")
            for q in (0.5, 0.95)]),
        ("GPU quota use", "percentunit", [
            ('sum by (cluster_queue) (capstan_queue_quota_used{resource="gpu"}) / '
             'sum by (cluster_queue) (capstan_queue_quota_nominal{resource="gpu"})', "{{cluster_queue}}")]),
        ("GPUs in use / nominal", "short", [
            ('sum by (cluster_queue) (capstan_queue_quota_used{resource="gpu"})', "used {{cluster_queue}}"),
            ('sum by (cluster_queue) (capstan_queue_quota_nominal{resource="gpu"})', "nominal {{cluster_queue}}")]),
    ]
    panels = []
    for i, (title, unit, queries) in enumerate(specs):
        targets = [_target(expr, legend, chr(ord("A") + j)) for j, (expr, legend) in enumerate(queries)]
        panels.append(_panel(i + 1, title, unit, targets, 12 * (i % 2), 8 * (i // 2)))
    return panels


def dashboard() -> dict[str, Any]:
    """The Grafana dashboard (JSON model, schema 39) with a Prometheus data source and a model variable."""
    variables = [
        {"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Data source",
         "current": {}, "hide": 0},
        {"name": "model", "type": "query", "label": "Model", "includeAll": True, "multi": True, "allValue": ".*",
         "datasource": {"type": "prometheus", "uid": "${datasource}"},
         "query": {"query": "label_values(capstan_serving_requests_total, model)", "refId": "model"},
         "definition": "label_values(capstan_serving_requests_total, model)", "refresh": 2, "current": {},
         "hide": 0},
    ]
    return {"uid": DASHBOARD_UID, "title": "Capstan: serving and queues", "tags": ["capstan"],
            "schemaVersion": 39, "version": 1, "editable": True, "timezone": "browser", "refresh": "30s",
            "time": {"from": "now-6h", "to": "now"}, "templating": {"list": variables},
            "panels": dashboard_panels()}


# ---------------------------------------------------------------------------------------------------- adapter


def adapter_rules() -> dict[str, Any]:
    """prometheus-adapter rules serving the HPA's Pods metrics per pod: mean requests in flight (Little's law: the
    rate of the latency sum), requests per second, a language model's running and waiting requests and generated
    tokens per second."""
    def rule(series: str, name: str, query: str) -> dict[str, Any]:
        return {"seriesQuery": f'{series}{{namespace!="",pod!=""}}',
                "resources": {"overrides": {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}},
                "name": {"matches": f"^{series}$", "as": name}, "metricsQuery": query}

    rate = "sum(rate(<<.Series>>{<<.LabelMatchers>>}[2m])) by (<<.GroupBy>>)"
    gauge = "sum(<<.Series>>{<<.LabelMatchers>>}) by (<<.GroupBy>>)"
    return {"rules": [
        rule("capstan_serving_request_duration_seconds_sum", POD_METRICS["concurrency"], rate),
        rule("capstan_serving_requests_total", POD_METRICS["rps"], rate),
        rule("capstan_llm_num_requests_running", LLM_POD_METRICS["concurrency"], gauge),
        rule("capstan_llm_request_success_total", LLM_POD_METRICS["rps"], rate),
        rule("capstan_llm_num_requests_waiting", LLM_POD_METRICS["waiting"], gauge),
        rule("capstan_llm_generation_tokens_total", LLM_POD_METRICS["tokens_per_second"], rate),
    ]}


# ---------------------------------------------------------------------------------------------------- objects


def _object(api_version: str, kind: str, name: str, options: MonitoringOptions,
            labels: Mapping[str, str] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "labels": {"app.kubernetes.io/managed-by": "capstan", **(labels or {})}}
    if options.namespace is not None:
        meta["namespace"] = options.namespace
    return {"apiVersion": api_version, "kind": kind, "metadata": meta}


def _dump_yaml(document: Any) -> str:
    import yaml  # pure: formats a string, no I/O

    return str(yaml.safe_dump(document, sort_keys=False))


def render_monitoring(options: MonitoringOptions | None = None) -> list[dict[str, Any]]:
    """The dashboard ConfigMap, the PrometheusRule, the plain rule file ConfigMap and the adapter ConfigMap.

    Raises `InvalidParameterValue` naming the option for a bad name, duration or threshold."""
    o = options if options is not None else MonitoringOptions()
    _check(o)
    groups = rule_groups(o)
    board = _object("v1", "ConfigMap", f"{o.prefix}-grafana-dashboard", o, o.dashboard_labels)
    board["data"] = {DASHBOARD_FILE: json.dumps(dashboard(), indent=2)}
    rule = _object(PROMETHEUS_RULE_API, "PrometheusRule", f"{o.prefix}-alerts", o, o.rule_labels)
    rule["spec"] = {"groups": groups}
    plain = _object("v1", "ConfigMap", f"{o.prefix}-prometheus-rules", o)
    plain["data"] = {RULES_FILE: _dump_yaml({"groups": groups})}
    adapter = _object("v1", "ConfigMap", f"{o.prefix}-prometheus-adapter", o)
    adapter["data"] = {ADAPTER_FILE: _dump_yaml(adapter_rules())}
    return [board, rule, plain, adapter]
