"""Pod templates that pass the Pod Security "restricted" profile by default, for every renderer. Pure.

`pod_template(container, options)` returns the ``template`` of a Job, Deployment or training job: one container
running as a non-root user with no privilege escalation, every capability dropped, seccomp ``RuntimeDefault``, a
read-only root filesystem with a writable ``emptyDir`` on ``/tmp``, and no service-account token unless asked.
Resources come from Capstan's requests (milli-CPU, bytes, milli-GPU); a GPU becomes ``nvidia.com/gpu``, or the
shared or MIG resource of the flavor (`capstan.k8s.render_queues.gpu_request`). A flavor also gives the pod node
affinity for its labels and tolerations for its taints. Secrets are only ever referenced (``secretKeyRef``,
``envFrom``), never inlined.

`restricted_violations(pod_spec)` checks a pod spec against the restricted profile's rules (and Capstan's own
read-only root filesystem rule); every renderer's tests run it on what they render.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from capstan.errors import InvalidParameterValue
from capstan.k8s.render_queues import KueueOptions, gpu_request, quantity
from capstan.queue.model import ResourceFlavor
from capstan.resources.quantity import MILLI

DEFAULT_USER: Final = 1000
"""The user and group a pod runs as when the options name none (any non-zero id passes ``runAsNonRoot``)."""
TMP_VOLUME: Final = "tmp"
SHM_VOLUME: Final = "dshm"

_LABEL: Final = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_ENV_NAME: Final = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
_RESTRICTED_VOLUMES: Final = frozenset({"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
                                        "persistentVolumeClaim", "projected", "secret"})
_SAFE_SYSCTLS: Final = frozenset({"kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range",
                                  "net.ipv4.ip_unprivileged_port_start", "net.ipv4.tcp_syncookies",
                                  "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
                                  "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout",
                                  "net.ipv4.tcp_keepalive_intvl", "net.ipv4.tcp_keepalive_probes"})
_SELINUX_TYPES: Final = frozenset({"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"})


@dataclass(frozen=True, slots=True)
class Resources:
    """What one pod asks for, in Capstan's units: milli-CPU, bytes of memory, milli-GPU (250 is ``gpu: 0.25``)."""

    cpu: int = 0
    memory: int = 0
    gpu: int = 0


@dataclass(frozen=True, slots=True)
class SecretEnv:
    """An environment variable read from key ``key`` of Secret ``secret`` (a ``secretKeyRef``)."""

    name: str
    secret: str
    key: str
    optional: bool = False


@dataclass(frozen=True, slots=True)
class ClaimMount:
    """A PersistentVolumeClaim mounted at ``mount_path`` (read-only unless ``read_only`` is false)."""

    claim: str
    mount_path: str
    read_only: bool = True


@dataclass(frozen=True, slots=True)
class ConfigMapMount:
    """A ConfigMap mounted read-only at ``mount_path`` (each key a file)."""

    config_map: str
    mount_path: str


@dataclass(frozen=True, slots=True)
class Container:
    """The one container of a pod.

    ``env`` holds plain values; ``field_env`` maps variables to a downward-API ``fieldPath`` (an indexed Job's
    ``metadata.annotations['batch.kubernetes.io/job-completion-index']``); ``secret_env`` and ``env_from_secrets``
    reference Secrets by name. ``ports`` maps port names to container ports.
    """

    name: str
    image: str
    command: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    field_env: Mapping[str, str] = field(default_factory=dict)
    secret_env: tuple[SecretEnv, ...] = ()
    env_from_secrets: tuple[str, ...] = ()
    resources: Resources = Resources()
    ports: Mapping[str, int] = field(default_factory=dict)
    working_dir: str | None = None


@dataclass(frozen=True, slots=True)
class PodOptions:
    """Where and how the pod runs.

    ``flavor`` gives node affinity, tolerations and the GPU resource (with ``kueue``'s resource names); without
    one a GPU request is whole ``nvidia.com/gpu``. ``shm_bytes`` adds a memory-backed ``emptyDir`` on
    ``/dev/shm`` of that size (0: none); ``tmp_bytes`` caps the ``/tmp`` ``emptyDir`` (0: no cap).
    ``claims`` and ``config_maps`` add PersistentVolumeClaim and (read-only) ConfigMap volumes.
    ``service_account`` and ``automount_token`` control the API token; ``restart_policy`` is the pod's.
    """

    flavor: ResourceFlavor | None = None
    kueue: KueueOptions = field(default_factory=KueueOptions)
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    run_as_user: int = DEFAULT_USER
    run_as_group: int = DEFAULT_USER
    shm_bytes: int = 0
    tmp_bytes: int = 0
    claims: tuple[ClaimMount, ...] = ()
    config_maps: tuple[ConfigMapMount, ...] = ()
    service_account: str | None = None
    automount_token: bool = False
    restart_policy: str = "Never"
    subdomain: str | None = None


def _fail(path: str, message: str) -> InvalidParameterValue:
    return InvalidParameterValue(f"{path}: {message}")


def _env_name(name: str, path: str) -> str:
    if not _ENV_NAME.match(name):
        raise _fail(path, f"{name!r} is not a valid environment variable name")
    return name


def container_resources(resources: Resources, options: PodOptions) -> dict[str, Any]:
    """The container's ``resources``: CPU and memory requests, memory also as the limit (a pod never uses more
    than it was admitted with), no CPU limit (throttling slows a job without protecting anyone), and the GPU
    resource as a limit (extended resources take the limit as the request)."""
    requests: dict[str, str] = {}
    limits: dict[str, str] = {}
    if resources.cpu < 0 or resources.memory < 0 or resources.gpu < 0:
        raise _fail("resources", "cpu, memory and gpu must not be negative")
    if resources.cpu:
        requests["cpu"] = quantity(resources.cpu, "cpu")
    if resources.memory:
        requests["memory"] = limits["memory"] = quantity(resources.memory * MILLI, "memory")
    if resources.gpu:
        if options.flavor is not None:
            name, count = gpu_request(options.flavor, resources.gpu, options.kueue)
        elif resources.gpu % MILLI:
            raise _fail("gpu", f"{resources.gpu / MILLI:g} GPU needs a shareable or MIG flavor")
        else:
            name, count = options.kueue.gpu_resource, resources.gpu // MILLI
        limits[name] = str(count)
    out: dict[str, Any] = {}
    if requests:
        out["requests"] = requests
    if limits:
        out["limits"] = limits
    return out


def _env(container: Container) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [{"name": _env_name(k, "env"), "value": v} for k, v in container.env.items()]
    env += [{"name": _env_name(k, "field_env"), "valueFrom": {"fieldRef": {"fieldPath": p}}}
            for k, p in container.field_env.items()]
    for s in container.secret_env:
        ref: dict[str, Any] = {"name": s.secret, "key": s.key}
        if s.optional:
            ref["optional"] = True
        env.append({"name": _env_name(s.name, "secret_env"), "valueFrom": {"secretKeyRef": ref}})
    seen: set[str] = set()
    for item in env:
        if item["name"] in seen:
            raise _fail("env", f"{item['name']!r} is set twice")
        seen.add(item["name"])
    return env


def restricted_security_context() -> dict[str, Any]:
    """The container ``securityContext`` every Capstan pod gets."""
    return {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}, "privileged": False,
            "readOnlyRootFilesystem": True, "runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}


def _container(container: Container, options: PodOptions) -> dict[str, Any]:
    if not _LABEL.match(container.name) or len(container.name) > 63:
        raise _fail("container.name", f"{container.name!r} is not a valid container name")
    if not container.image.strip():
        raise _fail("image", "must not be empty")
    out: dict[str, Any] = {"name": container.name, "image": container.image}
    if container.command:
        out["command"] = list(container.command)
    if container.args:
        out["args"] = list(container.args)
    if container.working_dir:
        out["workingDir"] = container.working_dir
    env = _env(container)
    if env:
        out["env"] = env
    if container.env_from_secrets:
        out["envFrom"] = [{"secretRef": {"name": name}} for name in container.env_from_secrets]
    if container.ports:
        out["ports"] = [{"name": n, "containerPort": p, "protocol": "TCP"} for n, p in container.ports.items()]
    resources = container_resources(container.resources, options)
    if resources:
        out["resources"] = resources
    out["securityContext"] = restricted_security_context()
    mounts: list[dict[str, Any]] = [{"name": TMP_VOLUME, "mountPath": "/tmp"}]
    if options.shm_bytes:
        mounts.append({"name": SHM_VOLUME, "mountPath": "/dev/shm"})
    mounts += [{"name": f"claim-{i}", "mountPath": c.mount_path, "readOnly": c.read_only}
               for i, c in enumerate(options.claims)]
    mounts += [{"name": f"config-{i}", "mountPath": c.mount_path, "readOnly": True}
               for i, c in enumerate(options.config_maps)]
    out["volumeMounts"] = mounts
    return out


def _volumes(options: PodOptions) -> list[dict[str, Any]]:
    tmp: dict[str, Any] = {}
    if options.tmp_bytes:
        tmp["sizeLimit"] = quantity(options.tmp_bytes * MILLI, "memory")
    volumes: list[dict[str, Any]] = [{"name": TMP_VOLUME, "emptyDir": tmp}]
    if options.shm_bytes:
        volumes.append({"name": SHM_VOLUME,
                        "emptyDir": {"medium": "Memory", "sizeLimit": quantity(options.shm_bytes * MILLI, "memory")}})
    volumes += [{"name": f"claim-{i}", "persistentVolumeClaim": {"claimName": c.claim, "readOnly": c.read_only}}
                for i, c in enumerate(options.claims)]
    volumes += [{"name": f"config-{i}", "configMap": {"name": c.config_map}}
                for i, c in enumerate(options.config_maps)]
    return volumes


def flavor_affinity(flavor: ResourceFlavor) -> dict[str, Any] | None:
    """Required node affinity matching every node label of ``flavor`` (None when it has none)."""
    if not flavor.node_labels:
        return None
    expressions = [{"key": k, "operator": "In", "values": [v]} for k, v in sorted(flavor.node_labels.items())]
    return {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": expressions}]}}}


def flavor_tolerations(flavor: ResourceFlavor) -> list[dict[str, Any]]:
    """Tolerations for each taint of ``flavor``, then the flavor's own tolerations."""
    out: list[dict[str, Any]] = []
    for t in flavor.taints:
        item: dict[str, Any] = {"key": t.key, "operator": "Equal" if t.value else "Exists", "effect": t.effect}
        if t.value:
            item["value"] = t.value
        out.append(item)
    for own in flavor.tolerations:
        tol: dict[str, Any] = {"operator": own.operator}
        if own.key:
            tol["key"] = own.key
        if own.value and own.operator == "Equal":
            tol["value"] = own.value
        if own.effect:
            tol["effect"] = own.effect
        if tol not in out:
            out.append(tol)
    return out


def pod_template(container: Container, options: PodOptions | None = None) -> dict[str, Any]:
    """A ``PodTemplateSpec`` (``metadata`` and ``spec``) for ``container`` that passes the restricted profile.

    Raises `InvalidParameterValue` naming the field for an invalid name, an empty image, a duplicate environment
    variable, a negative resource, a user id of 0, or a GPU fraction no flavor can serve.
    """
    opts = options if options is not None else PodOptions()
    if opts.run_as_user <= 0 or opts.run_as_group < 0:
        raise _fail("run_as_user", "a restricted pod runs as a non-zero user id")
    if opts.restart_policy not in ("Never", "OnFailure", "Always"):
        raise _fail("restart_policy", f"{opts.restart_policy!r} is not Never, OnFailure or Always")
    spec: dict[str, Any] = {
        "restartPolicy": opts.restart_policy,
        "automountServiceAccountToken": opts.automount_token,
        "securityContext": {"runAsNonRoot": True, "runAsUser": opts.run_as_user, "runAsGroup": opts.run_as_group,
                            "fsGroup": opts.run_as_group, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [_container(container, opts)],
        "volumes": _volumes(opts),
    }
    if opts.service_account:
        spec["serviceAccountName"] = opts.service_account
    if opts.subdomain:
        spec["subdomain"] = opts.subdomain
    if opts.flavor is not None:
        affinity = flavor_affinity(opts.flavor)
        if affinity is not None:
            spec["affinity"] = affinity
        tolerations = flavor_tolerations(opts.flavor)
        if tolerations:
            spec["tolerations"] = tolerations
    metadata: dict[str, Any] = {"labels": {"app.kubernetes.io/managed-by": "capstan", **opts.labels}}
    if opts.annotations:
        metadata["annotations"] = dict(opts.annotations)
    return {"metadata": metadata, "spec": spec}


# --- the restricted profile, as a check ---------------------------------------------------------------------------

def _all_containers(pod: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    for kind in ("initContainers", "containers", "ephemeralContainers"):
        for i, c in enumerate(pod.get(kind) or ()):
            yield f"spec.{kind}[{i}]", c


def _pod_level(pod: Mapping[str, Any]) -> list[str]:
    found = [f"spec.{f}: must not be true" for f in ("hostNetwork", "hostPID", "hostIPC") if pod.get(f) is True]
    ctx = pod.get("securityContext") or {}
    found += _apparmor(ctx, "spec.securityContext")
    if ctx.get("runAsUser") == 0:
        found.append("spec.securityContext.runAsUser: must not be 0")
    if ctx.get("runAsNonRoot") is False:
        found.append("spec.securityContext.runAsNonRoot: must not be false")
    found += _selinux(ctx, "spec.securityContext")
    for i, s in enumerate(ctx.get("sysctls") or ()):
        if s.get("name") not in _SAFE_SYSCTLS:
            found.append(f"spec.securityContext.sysctls[{i}]: {s.get('name')!r} is not a safe sysctl")
    if (ctx.get("windowsOptions") or {}).get("hostProcess") is True:
        found.append("spec.securityContext.windowsOptions.hostProcess: must not be true")
    for i, v in enumerate(pod.get("volumes") or ()):
        kinds = [k for k in v if k != "name"]
        bad = [k for k in kinds if k not in _RESTRICTED_VOLUMES]
        if bad:
            found.append(f"spec.volumes[{i}]: volume type {bad[0]} is not allowed")
    return found


def _selinux(ctx: Mapping[str, Any], path: str) -> list[str]:
    se = ctx.get("seLinuxOptions") or {}
    found = []
    if se.get("type", "") not in _SELINUX_TYPES:
        found.append(f"{path}.seLinuxOptions.type: {se['type']!r} is not allowed")
    found += [f"{path}.seLinuxOptions.{k}: must not be set" for k in ("user", "role") if se.get(k)]
    return found


def _apparmor(ctx: Mapping[str, Any], path: str) -> list[str]:
    kind = (ctx.get("appArmorProfile") or {}).get("type")
    if kind is not None and kind not in ("RuntimeDefault", "Localhost"):
        return [f"{path}.appArmorProfile.type: {kind!r} is not allowed (RuntimeDefault or Localhost)"]
    return []


def _seccomp(ctx: Mapping[str, Any]) -> str | None:
    profile = ctx.get("seccompProfile") or {}
    value = profile.get("type")
    return value if isinstance(value, str) else None


def _container_level(pod: Mapping[str, Any], path: str, c: Mapping[str, Any], read_only_root: bool) -> list[str]:
    pod_ctx = pod.get("securityContext") or {}
    ctx = c.get("securityContext") or {}
    sc = f"{path}.securityContext"
    found = []
    if ctx.get("privileged") is True:
        found.append(f"{sc}.privileged: must not be true")
    if ctx.get("allowPrivilegeEscalation") is not False:
        found.append(f"{sc}.allowPrivilegeEscalation: must be false")
    caps = ctx.get("capabilities") or {}
    if "ALL" not in (caps.get("drop") or ()):
        found.append(f"{sc}.capabilities.drop: must include ALL")
    added = [a for a in caps.get("add") or () if a != "NET_BIND_SERVICE"]
    if added:
        found.append(f"{sc}.capabilities.add: {added[0]} is not allowed (only NET_BIND_SERVICE)")
    non_root = ctx.get("runAsNonRoot", pod_ctx.get("runAsNonRoot"))
    if non_root is not True:
        found.append(f"{sc}.runAsNonRoot: must be true (here or in spec.securityContext)")
    if ctx.get("runAsUser") == 0:
        found.append(f"{sc}.runAsUser: must not be 0")
    seccomp = _seccomp(ctx) or _seccomp(pod_ctx)
    if seccomp not in ("RuntimeDefault", "Localhost"):
        found.append(f"{sc}.seccompProfile.type: must be RuntimeDefault or Localhost (here or in "
                     "spec.securityContext)")
    found += _selinux(ctx, sc) + _apparmor(ctx, sc)
    if ctx.get("procMount", "Default") != "Default":
        found.append(f"{sc}.procMount: must be Default")
    if (ctx.get("windowsOptions") or {}).get("hostProcess") is True:
        found.append(f"{sc}.windowsOptions.hostProcess: must not be true")
    for j, port in enumerate(c.get("ports") or ()):
        if port.get("hostPort"):
            found.append(f"{path}.ports[{j}].hostPort: must not be set")
    if read_only_root and ctx.get("readOnlyRootFilesystem") is not True:
        found.append(f"{sc}.readOnlyRootFilesystem: must be true (Capstan's rule)")
    return found


def restricted_violations(pod_spec: Mapping[str, Any], *, read_only_root: bool = True) -> list[str]:
    """Every way ``pod_spec`` (a ``PodSpec`` dict) breaks the Pod Security "restricted" profile, as
    ``field path: rule`` lines; empty when it passes. With ``read_only_root`` (the default) a container without
    ``readOnlyRootFilesystem: true`` is also reported, which is Capstan's rule, not the profile's."""
    found = _pod_level(pod_spec)
    for path, c in _all_containers(pod_spec):
        found += _container_level(pod_spec, path, c, read_only_root)
    return found
