"""Render a Capstan project's namespace with security by default. Pure.

``render_project(project, config, options)`` returns manifest dicts, in apply order, for one project namespace
(docs/kubernetes-security.md, decision 0708):

- the `Namespace`, labelled for Pod Security ``restricted`` (enforce, audit and warn, pinned to a version);
- the project's `ServiceAccount`, with ``automountServiceAccountToken: false``;
- the Capstan server's `ServiceAccount` (in the server's namespace), and a `Role` and `RoleBinding` in the project
  namespace that grant it exactly the rules in `SERVER_RULES`;
- a default-deny `NetworkPolicy` (ingress and egress) and the allow rules: DNS egress, egress to the Capstan
  server, ingress to serving pods on their port, and traffic between training pods of the namespace;
- a `ResourceQuota` equal to the nominal quota of the ClusterQueues the project's LocalQueues point to;
- optionally a cert-manager `Certificate` for the project's serving endpoints (`TlsOptions`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from capstan.errors import InvalidParameterValue
from capstan.k8s.render_queues import GPU, KueueOptions, gpu_units, namespace_for, quantity
from capstan.queue.model import QueueConfig
from capstan.resources.quantity import MILLI

MANAGED_BY: Final = {"app.kubernetes.io/managed-by": "capstan"}
"""The label on every object Capstan renders."""
COMPONENT_LABEL: Final = "capstan.io/component"
"""The pod label the allow rules select on: `SERVING` for serving pods, `TRAINING` for training pods."""
SERVING: Final = "serving"
TRAINING: Final = "training"
PROJECT_SERVICE_ACCOUNT: Final = "capstan-workload"
"""The ServiceAccount the project's pods run as."""
POD_SECURITY_LEVEL: Final = "restricted"
_PSA_VERSION: Final = re.compile(r"^(v1\.[0-9]+|latest)$")


@dataclass(frozen=True, slots=True)
class RoleRule:
    """One rule of the server's Role, with the reason the server needs it (shown in docs/kubernetes-security.md)."""

    api_group: str
    resource: str
    verbs: tuple[str, ...]
    why: str


SERVER_RULES: Final = (
    RoleRule("batch", "jobs", ("create", "get", "list", "watch", "patch", "delete"),
             "runs steps, chunks, trials and training as Jobs; watches them; patch unsuspends on admission and is "
             "server-side apply; delete cancels (with propagation) and garbage-collects finished Jobs"),
    RoleRule("batch", "cronjobs", ("create", "get", "list", "patch", "delete"),
             "pipeline schedules are CronJobs: applied, listed to reconcile, deleted when a schedule is removed"),
    RoleRule("", "pods", ("get", "list", "watch"),
             "pod status carries the reasons (OOMKilled, ImagePullBackOff, Unschedulable); the Job controller, "
             "not the server, deletes pods"),
    RoleRule("", "pods/log", ("get",), "streams and stores logs so they survive pod deletion"),
    RoleRule("", "services", ("create", "get", "list", "patch", "delete"),
             "headless Services for training rendezvous and serving Services; list finds them for garbage collection"),
    RoleRule("", "events", ("get", "list", "watch"),
             "the scheduler's and kubelet's messages (FailedScheduling, Evicted) for capstan why; the server "
             "records what it sees in its own event log, so it never creates Kubernetes events"),
    RoleRule("", "resourcequotas", ("get", "list"),
             "refuses a request the namespace's quota can never satisfy before submitting it"),
    RoleRule("apps", "deployments", ("create", "get", "list", "watch", "patch", "delete"),
             "serving deployments and the canary/shadow router, reconciled by the leader"),
    RoleRule("autoscaling", "horizontalpodautoscalers", ("create", "get", "list", "patch", "delete"),
             "the autoscaler of each serving deployment"),
    RoleRule("policy", "poddisruptionbudgets", ("create", "get", "list", "patch", "delete"),
             "the disruption budget of each serving deployment"),
    RoleRule("kueue.x-k8s.io", "workloads", ("get", "list", "watch"),
             "where Kueue is installed, admission and preemption are read from the Workload status"),
)
"""Everything the Capstan server may do in a project namespace: no wildcards, no secrets, no pods/exec."""


@dataclass(frozen=True, slots=True)
class TlsOptions:
    """A cert-manager `Certificate` for the project's serving endpoints, stored in Secret ``secret_name`` (the name
    serving Deployments mount), issued by ``issuer`` (a ``ClusterIssuer`` or namespaced ``Issuer``)."""

    issuer: str
    secret_name: str = "capstan-serving-tls"
    issuer_kind: str = "ClusterIssuer"


@dataclass(frozen=True, slots=True)
class ProjectOptions:
    """How a project namespace meets the cluster.

    The Capstan server runs as ServiceAccount ``server_service_account`` in ``server_namespace``, its pods carry
    ``server_labels`` and listen on ``server_port``. Serving pods listen on ``serving_port``. DNS is served by pods
    labelled ``dns_labels`` in ``dns_namespace``. ``mount_token`` gives the project's pods an API token (off: they
    never talk to the API server). ``pod_security_version`` pins the Pod Security profile's version.
    """

    server_namespace: str = "capstan-system"
    server_service_account: str = "capstan-server"
    server_labels: Mapping[str, str] = field(default_factory=lambda: {"app.kubernetes.io/name": "capstan-server"})
    server_port: int = 8080
    serving_port: int = 8080
    dns_namespace: str = "kube-system"
    dns_labels: Mapping[str, str] = field(default_factory=lambda: {"k8s-app": "kube-dns"})
    mount_token: bool = False
    pod_security_version: str = "v1.33"
    kueue: KueueOptions = field(default_factory=KueueOptions)
    tls: TlsOptions | None = None


def _fail(path: str, message: str) -> InvalidParameterValue:
    return InvalidParameterValue(f"{path}: {message}")


def _object(api_version: str, kind: str, name: str, namespace: str | None = None) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "labels": dict(MANAGED_BY)}
    if namespace is not None:
        metadata["namespace"] = namespace
    return {"apiVersion": api_version, "kind": kind, "metadata": metadata}


def _check_options(options: ProjectOptions) -> None:
    namespace_for(options.server_namespace, "server_namespace")
    namespace_for(options.dns_namespace, "dns_namespace")
    for name, port in (("server_port", options.server_port), ("serving_port", options.serving_port)):
        if not 1 <= port <= 65535:
            raise _fail(name, f"{port} is not a port (1-65535)")
    if not options.server_labels:
        raise _fail("server_labels", "must name at least one label, or every pod of the namespace would match")
    if not options.dns_labels:
        raise _fail("dns_labels", "must name at least one label")
    if not _PSA_VERSION.match(options.pod_security_version):
        raise _fail("pod_security_version", f"{options.pod_security_version!r} is not v1.N or latest")


def _namespace(namespace: str, options: ProjectOptions) -> dict[str, Any]:
    obj = _object("v1", "Namespace", namespace)
    for mode in ("enforce", "audit", "warn"):
        obj["metadata"]["labels"][f"pod-security.kubernetes.io/{mode}"] = POD_SECURITY_LEVEL
        obj["metadata"]["labels"][f"pod-security.kubernetes.io/{mode}-version"] = options.pod_security_version
    return obj


def _service_accounts(namespace: str, options: ProjectOptions) -> list[dict[str, Any]]:
    workload = _object("v1", "ServiceAccount", PROJECT_SERVICE_ACCOUNT, namespace)
    workload["automountServiceAccountToken"] = options.mount_token
    server = _object("v1", "ServiceAccount", options.server_service_account, options.server_namespace)
    return [workload, server]


def _rbac(namespace: str, options: ProjectOptions) -> list[dict[str, Any]]:
    name = options.server_service_account
    role = _object("rbac.authorization.k8s.io/v1", "Role", name, namespace)
    role["rules"] = [{"apiGroups": [r.api_group], "resources": [r.resource], "verbs": list(r.verbs)}
                     for r in SERVER_RULES]
    binding = _object("rbac.authorization.k8s.io/v1", "RoleBinding", name, namespace)
    binding["roleRef"] = {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name}
    binding["subjects"] = [{"kind": "ServiceAccount", "name": name, "namespace": options.server_namespace}]
    return [role, binding]


def _policy(namespace: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    obj = _object("networking.k8s.io/v1", "NetworkPolicy", name, namespace)
    obj["spec"] = spec
    return obj


def _in_namespace(namespace: str, labels: Mapping[str, str]) -> dict[str, Any]:
    return {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
            "podSelector": {"matchLabels": dict(labels)}}


def _network_policies(namespace: str, options: ProjectOptions) -> list[dict[str, Any]]:
    training = {"podSelector": {"matchLabels": {COMPONENT_LABEL: TRAINING}}}
    return [
        _policy(namespace, "default-deny", {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}),
        _policy(namespace, "allow-dns", {
            "podSelector": {}, "policyTypes": ["Egress"],
            "egress": [{"to": [_in_namespace(options.dns_namespace, options.dns_labels)],
                        "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]}]}),
        _policy(namespace, "allow-capstan-server", {
            "podSelector": {}, "policyTypes": ["Egress"],
            "egress": [{"to": [_in_namespace(options.server_namespace, options.server_labels)],
                        "ports": [{"protocol": "TCP", "port": options.server_port}]}]}),
        _policy(namespace, "allow-serving-ingress", {
            "podSelector": {"matchLabels": {COMPONENT_LABEL: SERVING}}, "policyTypes": ["Ingress"],
            "ingress": [{"ports": [{"protocol": "TCP", "port": options.serving_port}]}]}),
        _policy(namespace, "allow-training-rendezvous", {
            "podSelector": training["podSelector"], "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"from": [training]}], "egress": [{"to": [training]}]}),
    ]


def nominal_quota(project: str, config: QueueConfig, options: KueueOptions | None = None) -> dict[str, str]:
    """The ResourceQuota ``hard`` of a project namespace: the nominal quota of every ClusterQueue its LocalQueues
    point to, summed over flavors and queues, as ``requests.<resource>`` (GPUs as the flavor's Kubernetes resource).

    Raises `InvalidParameterValue` when the configuration has no LocalQueue for the project.
    """
    kueue = options if options is not None else KueueOptions()
    queues = sorted({lq.cluster_queue for lq in config.local_queues if lq.project == project})
    if not queues:
        declared = ", ".join(sorted({lq.project for lq in config.local_queues})) or "none"
        raise _fail("project", f"no LocalQueue of the queue configuration is for project {project!r} "
                               f"(projects with one: {declared})")
    flavors = {f.name: f for f in config.flavors}
    totals: dict[str, int] = {}
    for cq in config.cluster_queues:
        if cq.name not in queues:
            continue
        for group in cq.resource_groups:
            for fq in group.flavors:
                for quota in fq.resources:
                    name, milli = quota.resource, quota.nominal
                    if quota.resource == GPU:
                        name, per_gpu = gpu_units(flavors[fq.flavor], kueue)
                        if per_gpu != 1:  # whole slots or MIG instances, rounded down as the ClusterQueue's
                            milli = quota.nominal * per_gpu // MILLI * MILLI
                    totals[name] = totals.get(name, 0) + milli
    return {f"requests.{name}": quantity(milli, name) for name, milli in sorted(totals.items())}


def _resource_quota(namespace: str, hard: dict[str, str]) -> dict[str, Any]:
    obj = _object("v1", "ResourceQuota", "capstan-queue", namespace)
    obj["spec"] = {"hard": hard}
    return obj


def _certificate(namespace: str, tls: TlsOptions) -> dict[str, Any]:
    obj = _object("cert-manager.io/v1", "Certificate", "capstan-serving", namespace)
    obj["spec"] = {"secretName": tls.secret_name,
                   "dnsNames": [f"*.{namespace}.svc", f"*.{namespace}.svc.cluster.local"],
                   "issuerRef": {"name": tls.issuer, "kind": tls.issuer_kind, "group": "cert-manager.io"}}
    return obj


def render_project(project: str, config: QueueConfig | None = None,
                   options: ProjectOptions | None = None) -> list[dict[str, Any]]:
    """Every object of project ``project``'s namespace, in apply order. With a queue configuration, the namespace
    gets a ResourceQuota equal to its queues' nominal quota (see `nominal_quota`); without one, none.

    Raises `InvalidParameterValue` naming the field for an invalid name, port or option, or a configuration with
    no LocalQueue for the project.
    """
    opts = options if options is not None else ProjectOptions()
    namespace = namespace_for(project)
    _check_options(opts)
    if opts.tls is not None:
        if not opts.tls.issuer:
            raise _fail("tls.issuer", "must not be empty")
        if opts.tls.issuer_kind not in ("ClusterIssuer", "Issuer"):
            raise _fail("tls.issuer_kind", f"{opts.tls.issuer_kind!r} is not ClusterIssuer or Issuer")
    objects = [_namespace(namespace, opts), *_service_accounts(namespace, opts), *_rbac(namespace, opts),
               *_network_policies(namespace, opts)]
    if config is not None:
        objects.append(_resource_quota(namespace, nominal_quota(project, config, opts.kueue)))
    if opts.tls is not None:
        objects.append(_certificate(namespace, opts.tls))
    return objects
