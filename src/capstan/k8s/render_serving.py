"""Render a deployment spec (`capstan.serving.spec.DeploymentSpec`) to Kubernetes manifests. Pure.

``render_serving(spec, options)`` returns manifest dicts in the format ``options.format`` names
(docs/kubernetes-serving.md, decisions 0710-0712 and 0714):

- ``native``: per model version of the spec (the primary, and the canary and shadow when present) a `Deployment`
  running ``capstan serve`` in the Capstan image, a `Service`, an ``autoscaling/v2`` `HorizontalPodAutoscaler`
  (CPU utilisation plus a Pods metric from the spec's target, when the spec autoscales) and a
  `PodDisruptionBudget` (when the version keeps at least two replicas). With a canary or a shadow, Capstan's own
  router (``capstan k8s router``, the same `capstan.serving.router` as ``capstan server`` runs) gets a `Deployment`,
  its budget and a `NetworkPolicy` letting it reach the versions; the client-facing `Service` named like the
  deployment selects the router, else the primary's pods. No Istio, no Knative.
- ``kserve``: one KServe `InferenceService` (``serving.kserve.io/v1beta1``) with ``canaryTrafficPercent`` from the
  spec's canary, its model from an object-store location the caller gives per role.

Every pod template comes from `capstan.k8s.pods.pod_template` (the restricted profile), carries the plain
Prometheus scrape annotations, and probes the health routes ``capstan serve`` answers. TLS comes from a Secret
mounted by name; a cert-manager `Certificate` for it is rendered when an issuer is given.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from capstan.errors import InvalidParameterValue
from capstan.k8s.labels import QUEUE_NAME_LABEL
from capstan.k8s.pods import Container, PodOptions, Resources, SecretEnv, pod_template
from capstan.k8s.render_project import COMPONENT_LABEL, SERVING
from capstan.k8s.render_queues import KueueOptions, namespace_for
from capstan.queue.model import ResourceFlavor
from capstan.resources.quantity import MILLI
from capstan.serving.autoscale import side_replicas
from capstan.serving.spec import DeploymentSpec, ScalingMetric, TrafficTarget

ServingFormat = Literal["native", "kserve"]
FORMATS: Final = ("native", "kserve")
"""The formats `render_serving` writes."""
Role = Literal["primary", "canary", "shadow"]

DEPLOYMENT_LABEL: Final = "capstan.dev/deployment"
ROLE_LABEL: Final = "capstan.dev/role"
"""Pod labels: the deployment's name, and the version's role (``router`` for the router's pods)."""
MANAGED_BY: Final = {"app.kubernetes.io/managed-by": "capstan"}
SERVER_CONTAINER: Final = "server"
ROUTER_CONTAINER: Final = "router"
ROUTER_ROLE: Final = "router"
PORT_NAME: Final = "http"

LIVE_PATH: Final = "/v2/health/live"
READY_PATH: Final = "/v2/health/ready"
METRICS_PATH: Final = "/metrics"
"""The routes ``capstan serve`` answers for a classic model and a language model alike (`capstan.serving.app`,
`capstan.llm.openai_app`); the router answers ``/v2/health/live`` and ``/v2/health/ready`` itself."""

POD_METRICS: Final[Mapping[ScalingMetric, str]] = {
    "concurrency": "inference_requests_in_flight",
    "rps": "inference_requests_per_second",
}
"""The HPA Pods metric per spec target of a classic model. The custom metrics API serves them from Capstan's
exported series through the prometheus-adapter rules `capstan.k8s.render_monitoring` renders (decision 0711)."""
LLM_POD_METRICS: Final[Mapping[ScalingMetric, str]] = {
    "concurrency": "llm_requests_in_flight",
    "rps": "llm_requests_per_second",
    "waiting": "llm_requests_waiting",
    "tokens_per_second": "llm_generation_tokens_per_second",
}
"""The same for a language model (a spec with an ``llm`` section, or one scaling on an engine metric), whose
replicas export the token metrics (`capstan.llm.metrics`) instead of the classic serving ones."""

DEFAULT_SERVER_URL: Final = "https://capstan-server.capstan-system.svc:8080"
"""The Service of the kustomize base in deploy/kubernetes (HTTPS on 8080)."""
TLS_VOLUME: Final = "tls"
TLS_MOUNT: Final = "/etc/capstan/tls"
KSERVE_API: Final = "serving.kserve.io/v1beta1"
KSERVE_SCRAPE: Final = "serving.kserve.io/enable-prometheus-scraping"
CERT_MANAGER_API: Final = "cert-manager.io/v1"
STORAGE_SCHEMES: Final = ("s3", "gs", "pvc", "https", "hf")
"""The model locations KServe's storage initializer downloads from (a local path is refused)."""
KSERVE_SCALE_METRICS: Final[Mapping[ScalingMetric, str]] = {"concurrency": "concurrency", "rps": "rps"}

_DNS_1035: Final = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_SCHEME: Final = re.compile(r"^(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*)://(?P<rest>.+)$")
_MODEL_FORMAT: Final = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
_LONGEST_SUFFIX: Final = len("-primary")


@dataclass(frozen=True, slots=True)
class ServingTls:
    """TLS of the serving endpoint: Secret ``secret`` (``tls.crt``, ``tls.key``, as cert-manager and
    ``kubectl create secret tls`` write it) is mounted by name into the pods that face clients. With ``issuer``, a
    cert-manager ``Certificate`` is rendered into that Secret for the client-facing Service's DNS names and
    ``dns_names`` (e.g. an ingress host)."""

    secret: str
    issuer: str | None = None
    issuer_kind: str = "ClusterIssuer"
    dns_names: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ServingRenderOptions:
    """How a deployment meets a cluster.

    - ``format``: ``native`` or ``kserve``; ``namespace``: the objects' namespace (none: the one they are applied
      to); ``image``: the Capstan image (``native``); ``project``: the Capstan project of the deployment.
    - ``port``: the serving port of every pod; ``startup_seconds``: how long a replica may take to load its model.
    - Model access: by default the pods read models through the Capstan server at ``server_url`` with the token in
      key ``token_key`` of Secret ``token_secret`` (what the project's NetworkPolicies allow). With
      ``store_secret`` they reach the stores directly, as local replicas do (``envFrom`` that Secret, which holds
      ``CAPSTAN_DB_URL``, ``CAPSTAN_ARTIFACTS`` and the object store's credentials), which payload logging needs;
      a NetworkPolicy then lets them reach ``store_ports``.
    - ``tls``: see `ServingTls`; ``router_replicas``: the router's pods; ``cpu_utilization``: the HPA's CPU target
      (percent of the request).
    - ``flavor``/``kueue``: the GPU resource names (a fractional GPU needs a shareable or MIG flavor).
    - ``kserve``: ``storage_uris`` maps a role to its model folder in an object store, ``model_format`` names the
      KServe format (default ``mlflow``, ``huggingface`` for a language model), ``without_shadow`` renders a spec
      with a shadow without it (KServe cannot mirror traffic).
    """

    format: ServingFormat = "native"
    namespace: str | None = None
    image: str = ""
    project: str = "default"
    port: int = 8080
    startup_seconds: int = 600
    server_url: str = DEFAULT_SERVER_URL
    token_secret: str = "capstan-token"
    token_key: str = "token"
    store_secret: str | None = None
    store_ports: tuple[int, ...] = (443, 5432)
    tls: ServingTls | None = None
    router_replicas: int = 2
    cpu_utilization: int = 80
    flavor: ResourceFlavor | None = None
    kueue: KueueOptions = field(default_factory=KueueOptions)
    storage_uris: Mapping[str, str] = field(default_factory=dict)
    model_format: str | None = None
    without_shadow: bool = False


@dataclass(frozen=True, slots=True)
class Version:
    """One model version a deployment runs: its role, model URI, traffic percent (the shadow's: mirrored) and
    replica bounds (``low == high`` for a fixed count)."""

    role: Role
    model: str
    traffic: float
    low: int
    high: int


def _fail(path: str, message: str) -> InvalidParameterValue:
    return InvalidParameterValue(f"{path}: {message}")


# ---------------------------------------------------------------------------------------------------- shared


def object_name(spec: DeploymentSpec, role: str) -> str:
    """The Kubernetes name of one version's (or the router's) objects: ``<deployment>-<role>``."""
    return f"{spec.name}-{role}"


def versions(spec: DeploymentSpec) -> list[Version]:
    """The versions the spec runs. A canary or shadow runs its traffic share of the primary's replicas, at least
    one (`capstan.serving.autoscale.side_replicas`, as the local controller does); an autoscaled primary's floor is
    at least one, because a HorizontalPodAutoscaler cannot scale to zero (decision 0711)."""
    if spec.autoscaling is not None:
        low, high = max(1, spec.autoscaling.min_replicas), spec.autoscaling.max_replicas
    else:
        low = high = spec.replicas or 1
    out = [Version("primary", spec.model.uri, 100.0 - (spec.canary.traffic if spec.canary else 0.0), low, high)]
    sides: tuple[tuple[Role, TrafficTarget | None], ...] = (("canary", spec.canary), ("shadow", spec.shadow))
    for role, target in sides:
        if target is not None:
            side_low, side_high = side_replicas(low, target.traffic), side_replicas(high, target.traffic)
            out.append(Version(role, target.model.uri, target.traffic, side_low, max(side_low, side_high)))
    return out


def _check(spec: DeploymentSpec, options: ServingRenderOptions) -> None:
    if not _DNS_1035.match(spec.name):
        raise _fail("spec.name", f"{spec.name!r} must start with a letter to name a Kubernetes Service")
    if len(spec.name) + _LONGEST_SUFFIX > 63:
        raise _fail("spec.name", f"{spec.name!r} is too long for Kubernetes: at most {63 - _LONGEST_SUFFIX} "
                                 "characters leave room for the version suffix (-primary)")
    if options.namespace is not None:
        namespace_for(options.namespace, "namespace")
    if not 1 <= options.port <= 65535:
        raise _fail("port", f"{options.port} is not a port (1-65535)")
    if options.store_secret is not None and (not options.store_ports
                                             or not all(1 <= p <= 65535 for p in options.store_ports)):
        raise _fail("store_ports", f"must be ports (1-65535), got {list(options.store_ports)}")
    if not 1 <= options.cpu_utilization <= 100:
        raise _fail("cpu_utilization", f"must be between 1 and 100 percent, got {options.cpu_utilization}")
    if options.router_replicas < 1:
        raise _fail("router_replicas", f"must be at least 1, got {options.router_replicas}")
    if options.startup_seconds < 5:
        raise _fail("startup_seconds", f"must be at least 5, got {options.startup_seconds}")
    if spec.resources.shares_a_gpu and options.flavor is None:
        raise _fail("spec.resources.gpus", f"{spec.resources.gpus:g} GPU needs a shareable or MIG flavor "
                                           "(--queue-config with --gpu-flavor)")


def _metadata(spec: DeploymentSpec, options: ServingRenderOptions, name: str,
              labels: Mapping[str, str] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "labels": {**MANAGED_BY, DEPLOYMENT_LABEL: spec.name, **(labels or {})}}
    if options.namespace is not None:
        meta["namespace"] = options.namespace
    return meta


def _selector(spec: DeploymentSpec, role: str) -> dict[str, str]:
    return {DEPLOYMENT_LABEL: spec.name, ROLE_LABEL: role}


def _resources(spec: DeploymentSpec) -> Resources:
    r = spec.resources
    return Resources(cpu=r.cpu_milli or 0, memory=(r.memory_milli or 0) // MILLI, gpu=round(r.gpus * MILLI))


def _quantity(value: float) -> str:
    """A metric target as a Kubernetes quantity: ``4``, ``2500m``."""
    milli = round(value * MILLI)
    return str(milli // MILLI) if milli % MILLI == 0 else f"{milli}m"


# ---------------------------------------------------------------------------------------------------- pods


def serve_command(spec: DeploymentSpec, version: Version, options: ServingRenderOptions,
                  tls: bool) -> tuple[str, ...]:
    """The ``capstan serve`` command of one version's pods: the options the local controller gives a replica
    (`capstan.serving.replicas.serve_command`), listening on every address of the pod on the serving port, with
    the mounted TLS Secret when the pods face clients."""
    command = ["capstan", "serve", version.model, "--name", spec.name, "--host", "0.0.0.0",
               "--port", str(options.port), "--deployment", spec.name, "--project", options.project]
    if spec.batching is not None:
        command += ["--max-batch-size", str(spec.batching.max_batch_size),
                    "--max-batch-delay-ms", f"{spec.batching.max_delay_ms:g}"]
    if spec.payload_sample_rate > 0:
        command += ["--payload-sample-rate", str(spec.payload_sample_rate)]
    if spec.llm is None:
        command += ["--drift-window", str(spec.drift_window)]
    else:
        command += spec.llm.serve_options()
    if tls:
        command += _tls_args()
    return tuple(command)


def _tls_args() -> list[str]:
    return ["--tls-cert", f"{TLS_MOUNT}/tls.crt", "--tls-key", f"{TLS_MOUNT}/tls.key"]


def _probe(path: str, scheme: str, period: int, failures: int) -> dict[str, Any]:
    return {"httpGet": {"path": path, "port": PORT_NAME, "scheme": scheme}, "periodSeconds": period,
            "timeoutSeconds": 2, "failureThreshold": failures}


def _model_env(spec: DeploymentSpec, options: ServingRenderOptions) -> tuple[dict[str, str], tuple[SecretEnv, ...],
                                                                              tuple[str, ...]]:
    env = {"CAPSTAN_HOME": "/tmp/capstan", "CAPSTAN_PROJECT": options.project}
    if options.store_secret is not None:
        return env, (), (options.store_secret,)
    if spec.payload_sample_rate > 0:
        raise _fail("spec.payload_logging", "payloads are written to the artifact store, which a pod reading "
                                            "models through the Capstan server cannot reach; pass --store-secret "
                                            "(direct store access) or remove payload_logging")
    env["CAPSTAN_URL"] = options.server_url
    return env, (SecretEnv("CAPSTAN_TOKEN", options.token_secret, options.token_key),), ()


def _finish_pod(template: dict[str, Any], options: ServingRenderOptions, tls: bool,
                startup: bool = True) -> dict[str, Any]:
    """Add the probes (and the TLS Secret's volume) to a pod template from `pod_template`."""
    scheme = "HTTPS" if tls else "HTTP"
    container = template["spec"]["containers"][0]
    container["readinessProbe"] = _probe(READY_PATH, scheme, 5, 3)
    container["livenessProbe"] = _probe(LIVE_PATH, scheme, 10, 3)
    if startup:  # capstan serve loads the model before it listens; a large one takes a while
        container["startupProbe"] = _probe(LIVE_PATH, scheme, 5, -(-options.startup_seconds // 5))
    if tls:
        assert options.tls is not None  # the callers pass tls only when options.tls is set
        template["spec"]["volumes"].append({"name": TLS_VOLUME, "secret": {"secretName": options.tls.secret}})
        container["volumeMounts"].append({"name": TLS_VOLUME, "mountPath": TLS_MOUNT, "readOnly": True})
    return template


def version_pod(spec: DeploymentSpec, version: Version, options: ServingRenderOptions,
                tls: bool) -> dict[str, Any]:
    """The pod template of one version: ``capstan serve`` in the Capstan image, scraped by Prometheus."""
    env, secret_env, env_from = _model_env(spec, options)
    container = Container(name=SERVER_CONTAINER, image=options.image,
                          command=serve_command(spec, version, options, tls), env=env, secret_env=secret_env,
                          env_from_secrets=env_from, resources=_resources(spec), ports={PORT_NAME: options.port})
    annotations = {"prometheus.io/scrape": "true", "prometheus.io/port": str(options.port),
                   "prometheus.io/path": METRICS_PATH}
    if tls:
        annotations["prometheus.io/scheme"] = "https"
    labels = {**_selector(spec, version.role), COMPONENT_LABEL: SERVING}
    template = pod_template(container, PodOptions(flavor=options.flavor, kueue=options.kueue, labels=labels,
                                                  annotations=annotations, restart_policy="Always"))
    return _finish_pod(template, options, tls)


def router_args(spec: DeploymentSpec, options: ServingRenderOptions, tls: bool) -> tuple[str, ...]:
    """The ``capstan k8s router`` command: the deployment's split and shadow share, each version's model URI and
    the in-cluster URL of its Service."""
    command = ["capstan", "k8s", "router", spec.name, "--project", options.project, "--host", "0.0.0.0",
               "--port", str(options.port)]
    for version in versions(spec):
        if version.role == "primary":
            command += ["--model", version.model, "--upstream", _upstream(spec, version.role, options)]
        else:
            command += [f"--{version.role}", version.model,
                        f"--{version.role}-upstream", _upstream(spec, version.role, options),
                        f"--{version.role}-traffic", f"{version.traffic:g}"]
    if tls:
        command += _tls_args()
    return tuple(command)


def _upstream(spec: DeploymentSpec, role: str, options: ServingRenderOptions) -> str:
    host = object_name(spec, role)
    if options.namespace is not None:
        host += f".{options.namespace}.svc"
    return f"http://{host}:{options.port}"


def router_pod(spec: DeploymentSpec, options: ServingRenderOptions) -> dict[str, Any]:
    """The pod template of the router (no model: a small CPU and memory request)."""
    tls = options.tls is not None
    container = Container(name=ROUTER_CONTAINER, image=options.image, command=router_args(spec, options, tls),
                          env={"CAPSTAN_HOME": "/tmp/capstan"}, resources=Resources(cpu=250, memory=256 * 2**20),
                          ports={PORT_NAME: options.port})
    labels = {**_selector(spec, ROUTER_ROLE), COMPONENT_LABEL: SERVING}
    template = pod_template(container, PodOptions(labels=labels, restart_policy="Always"))
    return _finish_pod(template, options, tls, startup=False)


# ---------------------------------------------------------------------------------------------------- native


def _deployment(spec: DeploymentSpec, options: ServingRenderOptions, role: str, template: dict[str, Any],
                replicas: int | None) -> dict[str, Any]:
    labels = {ROLE_LABEL: role}
    if spec.resources.queue is not None and role != ROUTER_ROLE:
        labels[QUEUE_NAME_LABEL] = spec.resources.queue  # Kueue's Deployment integration reads it here
    body: dict[str, Any] = {"selector": {"matchLabels": _selector(spec, role)},
                            "strategy": {"type": "RollingUpdate",
                                         "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
                            "template": template}
    if replicas is not None:  # left out under an HPA, so re-applying never fights the autoscaler
        body["replicas"] = replicas
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": _metadata(spec, options, object_name(spec, role), labels), "spec": body}


def _service(spec: DeploymentSpec, options: ServingRenderOptions, name: str, role: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": _metadata(spec, options, name, {ROLE_LABEL: role}),
            "spec": {"type": "ClusterIP", "selector": _selector(spec, role),
                     "ports": [{"name": PORT_NAME, "port": options.port, "targetPort": PORT_NAME,
                                "protocol": "TCP"}]}}


def hpa_metrics(spec: DeploymentSpec, options: ServingRenderOptions) -> list[dict[str, Any]]:
    """The HPA's metrics: CPU utilisation of the request (when the spec requests CPU: utilisation is a share of
    it) and the Pods metric of the spec's target (`pod_metric`) at the target's value per pod."""
    assert spec.autoscaling is not None
    metrics: list[dict[str, Any]] = []
    if spec.resources.cpu_milli:
        metrics.append({"type": "Resource", "resource": {"name": "cpu", "target": {
            "type": "Utilization", "averageUtilization": options.cpu_utilization}}})
    metrics.append({"type": "Pods", "pods": {
        "metric": {"name": pod_metric(spec)},
        "target": {"type": "AverageValue", "averageValue": _quantity(spec.autoscaling.target)}}})
    return metrics


def pod_metric(spec: DeploymentSpec) -> str:
    """The name of the Pods metric the HPA of ``spec`` reads (`POD_METRICS`, `LLM_POD_METRICS`)."""
    assert spec.autoscaling is not None
    if spec.llm is not None or spec.autoscaling.reads_engine_load:
        return LLM_POD_METRICS[spec.autoscaling.metric]
    return POD_METRICS[spec.autoscaling.metric]


def _hpa(spec: DeploymentSpec, options: ServingRenderOptions, version: Version) -> dict[str, Any]:
    assert spec.autoscaling is not None
    name = object_name(spec, version.role)
    window = spec.autoscaling.stabilization_window_seconds
    return {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": _metadata(spec, options, name, {ROLE_LABEL: version.role}),
            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
                     "minReplicas": version.low, "maxReplicas": version.high,
                     "metrics": hpa_metrics(spec, options),
                     "behavior": {"scaleDown": {"stabilizationWindowSeconds": window}}}}


def min_available(low: int) -> int | None:
    """The budget's ``minAvailable`` for a version that keeps at least ``low`` replicas: all but one (a drain
    takes one at a time); None below two replicas, where any budget would block drains or allow everything."""
    return low - 1 if low >= 2 else None


def _pdb(spec: DeploymentSpec, options: ServingRenderOptions, role: str, low: int) -> list[dict[str, Any]]:
    keep = min_available(low)
    if keep is None:
        return []
    return [{"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
             "metadata": _metadata(spec, options, object_name(spec, role), {ROLE_LABEL: role}),
             "spec": {"minAvailable": keep, "selector": {"matchLabels": _selector(spec, role)},
                      "unhealthyPodEvictionPolicy": "AlwaysAllow"}}]


def _network_policy(spec: DeploymentSpec, options: ServingRenderOptions, name: str, pods: dict[str, Any],
                    egress: list[dict[str, Any]]) -> dict[str, Any]:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": _metadata(spec, options, name),
            "spec": {"podSelector": pods, "policyTypes": ["Egress"], "egress": egress}}


def _policies(spec: DeploymentSpec, options: ServingRenderOptions, routed: bool) -> list[dict[str, Any]]:
    """Egress the project's default-deny NetworkPolicy would block: router to versions, pods to the stores."""
    version_pods = {"matchExpressions": [
        {"key": DEPLOYMENT_LABEL, "operator": "In", "values": [spec.name]},
        {"key": ROLE_LABEL, "operator": "In", "values": [v.role for v in versions(spec)]}]}
    out = []
    if routed:
        out.append(_network_policy(spec, options, object_name(spec, "router-egress"),
                                   {"matchLabels": _selector(spec, ROUTER_ROLE)},
                                   [{"to": [{"podSelector": version_pods}],
                                     "ports": [{"protocol": "TCP", "port": options.port}]}]))
    if options.store_secret is not None:
        out.append(_network_policy(spec, options, object_name(spec, "store-egress"), version_pods,
                                   [{"ports": [{"protocol": "TCP", "port": p} for p in options.store_ports]}]))
    return out


def certificate(spec: DeploymentSpec, options: ServingRenderOptions) -> dict[str, Any]:
    """The cert-manager ``Certificate`` of the client-facing Service (its in-cluster DNS names and any extra
    ones), written into the Secret the pods mount."""
    tls = options.tls
    assert tls is not None and tls.issuer is not None
    names = [spec.name]
    if options.namespace is not None:
        names += [f"{spec.name}.{options.namespace}.svc", f"{spec.name}.{options.namespace}.svc.cluster.local"]
    names += [n for n in tls.dns_names if n not in names]
    return {"apiVersion": CERT_MANAGER_API, "kind": "Certificate", "metadata": _metadata(spec, options, spec.name),
            "spec": {"secretName": tls.secret, "dnsNames": names,
                     "issuerRef": {"name": tls.issuer, "kind": tls.issuer_kind, "group": "cert-manager.io"}}}


def _check_tls(tls: ServingTls | None) -> None:
    if tls is None:
        return
    if not tls.secret:
        raise _fail("tls.secret", "must name the TLS Secret")
    if tls.issuer is not None and not tls.issuer:
        raise _fail("tls.issuer", "must not be empty")
    if tls.issuer_kind not in ("ClusterIssuer", "Issuer"):
        raise _fail("tls.issuer_kind", f"must be ClusterIssuer or Issuer, got {tls.issuer_kind!r}")
    if tls.dns_names and tls.issuer is None:
        raise _fail("tls.dns_names", "only apply to a Certificate: give an issuer too")


def _native(spec: DeploymentSpec, options: ServingRenderOptions) -> list[dict[str, Any]]:
    if not options.image.strip():
        raise _fail("image", "the native rendering runs the Capstan image: give one (--image)")
    routed = spec.canary is not None or spec.shadow is not None
    tls_on_versions = options.tls is not None and not routed  # behind a router, TLS ends at the router
    objects: list[dict[str, Any]] = []
    for version in versions(spec):
        template = version_pod(spec, version, options, tls_on_versions)
        autoscaled = spec.autoscaling is not None
        objects.append(_deployment(spec, options, version.role, template, None if autoscaled else version.low))
        objects.append(_service(spec, options, object_name(spec, version.role), version.role))
        if autoscaled:
            objects.append(_hpa(spec, options, version))
        objects += _pdb(spec, options, version.role, version.low)
    front = ROUTER_ROLE if routed else "primary"
    if routed:
        objects.append(_deployment(spec, options, ROUTER_ROLE, router_pod(spec, options), options.router_replicas))
        objects += _pdb(spec, options, ROUTER_ROLE, options.router_replicas)
    objects.append(_service(spec, options, spec.name, front))
    objects += _policies(spec, options, routed)
    if options.tls is not None and options.tls.issuer is not None:
        objects.append(certificate(spec, options))
    return objects


# ---------------------------------------------------------------------------------------------------- kserve


def storage_uri(role: str, uri: str | None) -> str:
    """A model location KServe can download: ``s3://``, ``gs://``, ``pvc://``, ``https://`` or ``hf://``.

    Raises `InvalidParameterValue` for a missing one, a local path (KServe's storage initializer runs in the
    cluster, where the path does not exist) or another scheme."""
    path = f"storage_uris.{role}"
    if not uri:
        raise _fail(path, f"KServe downloads the {role} model from an object store: give its location "
                          f"(--storage-uri {role}=s3://BUCKET/PATH, gs://..., or pvc://CLAIM/PATH)")
    match = _SCHEME.match(uri)
    if match is None or match["scheme"].lower() == "file":
        raise _fail(path, f"{uri!r} is a local path, which KServe cannot read in the cluster: copy the model "
                          "folder to an object store (s3://, gs://) or a PVC (pvc://CLAIM/PATH) and give that")
    if match["scheme"].lower() not in STORAGE_SCHEMES:
        raise _fail(path, f"{uri!r}: the scheme must be one of {', '.join(STORAGE_SCHEMES)}")
    return uri


def _model_format(spec: DeploymentSpec, options: ServingRenderOptions) -> str:
    fmt = options.model_format or ("huggingface" if spec.llm is not None else "mlflow")
    if not _MODEL_FORMAT.match(fmt):
        raise _fail("model_format", f"{fmt!r} is not a KServe model format name (e.g. mlflow, sklearn, onnx)")
    return fmt


def _scaling(spec: DeploymentSpec) -> dict[str, Any]:
    if spec.autoscaling is None:
        return {"minReplicas": spec.replicas, "maxReplicas": spec.replicas}
    a = spec.autoscaling
    metric = KSERVE_SCALE_METRICS.get(a.metric)
    if metric is None:
        raise _fail("spec.autoscaling", f"KServe scales on concurrency or rps, not on the language-model metric "
                                        f"{a.metric}; render --format native for it")
    target = max(1, round(a.target))
    # KServe (Knative) scales to zero itself, so min_replicas 0 is kept here.
    return {"minReplicas": a.min_replicas, "maxReplicas": a.max_replicas, "scaleMetric": metric,
            "scaleTarget": target}


def kserve_pod(spec: DeploymentSpec, options: ServingRenderOptions) -> dict[str, Any]:
    """The restricted pod whose security context, ``/tmp`` volume and resources the predictor carries."""
    container = Container(name="kserve-container", image="kserve-runtime", resources=_resources(spec))
    return pod_template(container, PodOptions(flavor=options.flavor, kueue=options.kueue, restart_policy="Always"))


def _kserve(spec: DeploymentSpec, options: ServingRenderOptions) -> list[dict[str, Any]]:
    if options.tls is not None:
        raise _fail("tls", "KServe's ingress gateway terminates TLS; configure the certificate there")
    if spec.shadow is not None and not options.without_shadow:
        raise _fail("spec.shadow", "KServe cannot mirror traffic to a shadow: render --format native (Capstan's "
                                   "router mirrors it), or --without-shadow to leave it out")
    role: Role = "canary" if spec.canary is not None else "primary"
    unused = sorted(set(options.storage_uris) - {role})
    if unused:
        why = ("with a canary, the InferenceService carries the canary's model and KServe keeps the applied primary "
               "as its previous revision" if spec.canary is not None else f"the spec has no {unused[0]}")
        raise _fail(f"storage_uris.{unused[0]}", f"not used: {why}")
    pod = kserve_pod(spec, options)["spec"]
    container = pod["containers"][0]
    model: dict[str, Any] = {"modelFormat": {"name": _model_format(spec, options)},
                             "storageUri": storage_uri(role, options.storage_uris.get(role)),
                             "securityContext": container["securityContext"],
                             "volumeMounts": container["volumeMounts"]}
    if container.get("resources"):
        model["resources"] = container["resources"]
    predictor: dict[str, Any] = {**_scaling(spec), "model": model, "securityContext": pod["securityContext"],
                                 "automountServiceAccountToken": False, "volumes": pod["volumes"]}
    for key in ("affinity", "tolerations"):
        if key in pod:
            predictor[key] = pod[key]
    # KServe puts the prometheus.io annotations on its pods itself (its queue-proxy merges the model's metrics).
    annotations = {KSERVE_SCRAPE: "true"}
    if spec.canary is not None:
        # KServe splits between this (new) revision and the last ready one: the primary must already be applied.
        if spec.canary.traffic != round(spec.canary.traffic):
            raise _fail("spec.canary.traffic", f"KServe's canaryTrafficPercent is a whole percent, got "
                                               f"{spec.canary.traffic:g}")
        predictor["canaryTrafficPercent"] = round(spec.canary.traffic)
        annotations["capstan.dev/primary-model"] = spec.model.uri
    meta = _metadata(spec, options, spec.name)
    meta["annotations"] = annotations
    return [{"apiVersion": KSERVE_API, "kind": "InferenceService", "metadata": meta,
             "spec": {"predictor": predictor}}]


# ---------------------------------------------------------------------------------------------------- entry


def render_serving(spec: DeploymentSpec, options: ServingRenderOptions | None = None) -> list[dict[str, Any]]:
    """The manifests of ``spec`` in ``options.format``, in apply order.

    Raises `InvalidParameterValue` naming the field for a name Kubernetes refuses, a missing image (native), a
    fractional GPU without a shareable flavor, payload logging without direct store access, bad TLS options, or,
    for KServe, a shadow, a language-model scaling metric, or a missing or local model location.
    """
    opts = options if options is not None else ServingRenderOptions()
    if opts.format not in FORMATS:
        raise _fail("format", f"{opts.format!r} is not one of {', '.join(FORMATS)}")
    _check(spec, opts)
    _check_tls(opts.tls)
    return _native(spec, opts) if opts.format == "native" else _kserve(spec, opts)
