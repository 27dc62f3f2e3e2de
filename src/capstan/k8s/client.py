"""The Kubernetes API as the executor and ``capstan k8s apply`` use it: a typed port (`KubeApi`) over plain
manifest dicts, and its adapter on lightkube (`LightkubeApi`, imported lazily: lightkube is the ``k8s`` extra).

Every object crosses the port as the dict the API server speaks (``apiVersion``, ``kind``, ``metadata``...), so
the renderers' output goes in unchanged and the status mapping (`capstan.k8s.reasons`) reads what comes back. The
adapter uses lightkube's generic resources, which keep the documents as they are instead of converting them to
typed models. Failures become the typed errors below: `KubeUnreachable` (no cluster, no context: one line),
`KubeRejected` (the API server's message, with the field it names), `KubeNotFound`, `WatchExpired` (410 Gone: the
caller lists again and watches from the new resourceVersion).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, Protocol

from capstan.errors import CapstanError, InvalidParameterValue, ResourceDoesNotExist, StoreUnavailable

__all__ = [
    "CONFIG_MAP",
    "FIELD_MANAGER",
    "JOB",
    "NAMESPACE",
    "NODE",
    "POD",
    "RESOURCE_QUOTA",
    "WORKLOAD",
    "KubeApi",
    "KubeNotFound",
    "KubeRejected",
    "KubeUnreachable",
    "LightkubeApi",
    "Listing",
    "Ref",
    "WatchEvent",
    "WatchExpired",
    "connect",
    "ref_of",
]

FIELD_MANAGER: Final = "capstan"
"""The field manager of every server-side apply Capstan makes."""

Propagation = Literal["Foreground", "Background", "Orphan"]


@dataclass(frozen=True, slots=True)
class Ref:
    """A kind of object: its ``apiVersion``, ``kind``, REST ``plural`` and whether it lives in a namespace."""

    api_version: str
    kind: str
    plural: str
    namespaced: bool = True

    @property
    def group(self) -> str:
        """The API group (empty for the core ``v1`` group)."""
        return self.api_version.rpartition("/")[0]

    @property
    def version(self) -> str:
        """The API version within the group."""
        return self.api_version.rpartition("/")[2]


JOB: Final = Ref("batch/v1", "Job", "jobs")
POD: Final = Ref("v1", "Pod", "pods")
CONFIG_MAP: Final = Ref("v1", "ConfigMap", "configmaps")
RESOURCE_QUOTA: Final = Ref("v1", "ResourceQuota", "resourcequotas")
NAMESPACE: Final = Ref("v1", "Namespace", "namespaces", namespaced=False)
NODE: Final = Ref("v1", "Node", "nodes", namespaced=False)
WORKLOAD: Final = Ref("kueue.x-k8s.io/v1beta2", "Workload", "workloads")

_KNOWN: Final = {(r.api_version, r.kind): r for r in (JOB, POD, CONFIG_MAP, RESOURCE_QUOTA, NAMESPACE, NODE,
                                                      WORKLOAD)}
_CLUSTER_KINDS: Final = frozenset({"Namespace", "Node", "ClusterRole", "ClusterRoleBinding", "ClusterQueue",
                                   "ResourceFlavor", "Cohort", "WorkloadPriorityClass", "AdmissionCheck",
                                   "ProvisioningRequestConfig", "CustomResourceDefinition", "PriorityClass",
                                   "StorageClass", "PersistentVolume", "ClusterTrainingRuntime"})


def ref_of(doc: Mapping[str, Any]) -> Ref:
    """The `Ref` of a manifest: the known kinds by table, others with the plural the API server derives (lower
    case plus ``s``, ``es`` after s/x/ch/sh, ``ies`` after a consonant and y), cluster-scoped for the kinds
    Capstan renders that are."""
    api_version, kind = str(doc.get("apiVersion", "")), str(doc.get("kind", ""))
    if not api_version or not kind:
        raise InvalidParameterValue("a manifest has no apiVersion or kind")
    known = _KNOWN.get((api_version, kind))
    if known is not None:
        return known
    low = kind.lower()
    if re.search(r"(s|x|ch|sh)$", low):
        plural = low + "es"
    elif re.search(r"[^aeiou]y$", low):
        plural = low[:-1] + "ies"
    else:
        plural = low + "s"
    return Ref(api_version, kind, plural, namespaced=kind not in _CLUSTER_KINDS)


class KubeUnreachable(StoreUnavailable):
    """The cluster cannot be reached, or the kubeconfig has no such context (a one-line message)."""


class KubeNotFound(ResourceDoesNotExist):
    """The object (or its kind) does not exist."""


class KubeRejected(InvalidParameterValue):
    """The API server refused a request: ``message`` is its own words (naming the field), ``status_code`` its HTTP
    status, ``reason`` its ``Status.reason`` (``Invalid``, ``Conflict``, ``Forbidden``...), ``fields`` the field
    paths of its ``details.causes``."""

    def __init__(self, message: str, *, code: int = 422, reason: str = "", fields: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.status_code = code
        self.reason = reason
        self.fields = tuple(fields)


class WatchExpired(CapstanError):
    """The watch's resourceVersion is too old (410 Gone): list again and watch from the listing's version."""


@dataclass(frozen=True, slots=True)
class Listing:
    """The objects of a list call and the collection's ``resourceVersion`` to watch from."""

    items: tuple[dict[str, Any], ...]
    resource_version: str


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """One watch event: ``ADDED``, ``MODIFIED``, ``DELETED`` or ``BOOKMARK`` with the object."""

    type: str
    object: dict[str, Any]


class KubeApi(Protocol):
    """What Capstan needs from a Kubernetes API server. Objects are manifest dicts; ``namespace`` is the default
    namespace of the connection when None. Errors: `KubeUnreachable`, `KubeRejected`, `KubeNotFound`."""

    namespace: str
    """The namespace calls use when they name none."""

    def create(self, doc: Mapping[str, Any]) -> dict[str, Any]:
        """Create ``doc`` (POST); the stored object."""
        ...

    def apply(self, doc: Mapping[str, Any], *, force: bool = False) -> dict[str, Any]:
        """Server-side apply ``doc`` with field manager `FIELD_MANAGER` (``force``: take over conflicting fields)."""
        ...

    def get(self, ref: Ref, name: str, namespace: str | None = None) -> dict[str, Any]:
        """One object."""
        ...

    def list(self, ref: Ref, *, namespace: str | None = None, labels: Mapping[str, str] | None = None) -> Listing:
        """The objects of a kind (``labels``: equality selector), with the version to watch from."""
        ...

    def watch(self, ref: Ref, resource_version: str, *, namespace: str | None = None,
              labels: Mapping[str, str] | None = None, timeout_s: int = 60) -> Iterator[WatchEvent]:
        """Changes after ``resource_version``, endlessly: the adapter asks again after each server timeout
        (``timeout_s``), from the last version it saw. Raises `WatchExpired` when that version is too old (410
        Gone), `KubeUnreachable` when the connection fails."""
        ...

    def merge_patch(self, ref: Ref, name: str, patch: Mapping[str, Any],
                    namespace: str | None = None) -> dict[str, Any]:
        """A JSON merge patch (``{"spec": {"suspend": False}}``); the patched object."""
        ...

    def delete(self, ref: Ref, name: str, namespace: str | None = None,
               propagation: Propagation = "Background") -> None:
        """Delete with that propagation policy (dependents: Foreground first, Background after, Orphan kept).
        A missing object is not an error."""
        ...

    def logs(self, pod: str, *, container: str | None = None, namespace: str | None = None,
             follow: bool = False) -> Iterator[bytes]:
        """A pod's log, chunk by chunk (``follow``: until the container ends)."""
        ...

    def close(self) -> None:
        """Release the connection."""
        ...


def _selector(labels: Mapping[str, str] | None) -> dict[str, str] | None:
    return dict(labels) if labels else None


class LightkubeApi:
    """`KubeApi` on a lightkube `Client` (sync), with generic resources so documents stay dicts."""

    def __init__(self, client: Any, namespace: str) -> None:
        self._client = client
        self.namespace = namespace

    def _res(self, ref: Ref) -> Any:
        return _resource_class(ref)

    def _ns(self, ref: Ref, namespace: str | None) -> dict[str, str]:
        return {"namespace": namespace or self.namespace} if ref.namespaced else {}

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        from lightkube import ApiError

        try:
            return fn(*args, **kwargs)
        except ApiError as exc:
            raise _api_error(what, exc) from None
        except Exception as exc:  # noqa: BLE001  # httpx2's transport errors and OSError: one line
            raise _transport_error(exc) from None

    def create(self, doc: Mapping[str, Any]) -> dict[str, Any]:
        """POST ``doc``."""
        ref = ref_of(doc)
        meta = doc.get("metadata") or {}
        obj = self._res(ref).from_dict(dict(doc))
        out = self._call(f"{ref.kind}/{meta.get('name', '?')}", self._client.create, obj,
                         **self._ns(ref, meta.get("namespace")))
        return _plain(out)

    def apply(self, doc: Mapping[str, Any], *, force: bool = False) -> dict[str, Any]:
        """Server-side apply ``doc`` as field manager ``capstan``."""
        ref = ref_of(doc)
        meta = doc.get("metadata") or {}
        obj = self._res(ref).from_dict(dict(doc))
        out = self._call(f"{ref.kind}/{meta.get('name', '?')}", self._client.apply, obj,
                         field_manager=FIELD_MANAGER, force=force, **self._ns(ref, meta.get("namespace")))
        return _plain(out)

    def get(self, ref: Ref, name: str, namespace: str | None = None) -> dict[str, Any]:
        """GET one object."""
        return _plain(self._call(f"{ref.kind}/{name}", self._client.get, self._res(ref), name,
                                 **self._ns(ref, namespace)))

    def list(self, ref: Ref, *, namespace: str | None = None, labels: Mapping[str, str] | None = None) -> Listing:
        """LIST, with the collection's resourceVersion."""

        def run() -> Listing:
            found = self._client.list(self._res(ref), labels=_selector(labels), **self._ns(ref, namespace))
            items = tuple(_plain(o) for o in found)
            try:
                version = found.resourceVersion
            except Exception:  # noqa: BLE001  # an empty listing can leave lightkube without it: watch from now
                version = ""
            return Listing(items, version)

        return self._call(ref.plural, run)  # type: ignore[no-any-return]  # _call returns what run returns: a Listing

    def watch(self, ref: Ref, resource_version: str, *, namespace: str | None = None,
              labels: Mapping[str, str] | None = None, timeout_s: int = 60) -> Iterator[WatchEvent]:
        """WATCH from ``resource_version``; lightkube reconnects after each server timeout."""
        from lightkube import ApiError

        stream = self._client.watch(self._res(ref), labels=_selector(labels), server_timeout=timeout_s,
                                    resource_version=resource_version or None, **self._ns(ref, namespace))
        try:
            for kind, obj in stream:
                yield WatchEvent(kind, _plain(obj))
        except ApiError as exc:
            if getattr(exc.status, "code", None) == 410:
                raise WatchExpired(f"watch of {ref.plural} expired: {exc.status.message}") from None
            raise _api_error(ref.plural, exc) from None
        except Exception as exc:  # noqa: BLE001  # httpx2's transport errors and OSError: one line
            raise _transport_error(exc) from None

    def merge_patch(self, ref: Ref, name: str, patch: Mapping[str, Any],
                    namespace: str | None = None) -> dict[str, Any]:
        """PATCH with ``application/merge-patch+json``."""
        from lightkube.types import PatchType

        return _plain(self._call(f"{ref.kind}/{name}", self._client.patch, self._res(ref), name, dict(patch),
                                 patch_type=PatchType.MERGE, **self._ns(ref, namespace)))

    def delete(self, ref: Ref, name: str, namespace: str | None = None,
               propagation: Propagation = "Background") -> None:
        """DELETE with a propagation policy; a missing object is fine."""
        from lightkube.types import CascadeType

        try:
            self._call(f"{ref.kind}/{name}", self._client.delete, self._res(ref), name,
                       cascade=CascadeType[propagation.upper()], **self._ns(ref, namespace))
        except KubeNotFound:
            return

    def logs(self, pod: str, *, container: str | None = None, namespace: str | None = None,
             follow: bool = False) -> Iterator[bytes]:
        """The pod's log lines as bytes."""
        lines = self._call(f"Pod/{pod}", self._client.log, pod, namespace=namespace or self.namespace,
                           container=container, follow=follow)
        try:
            for line in lines:
                yield line.encode() if isinstance(line, str) else bytes(line)
        except Exception as exc:  # noqa: BLE001  # a broken log stream: one line
            from lightkube import ApiError

            raise (_api_error(f"Pod/{pod}", exc) if isinstance(exc, ApiError) else _transport_error(exc)) from None

    def close(self) -> None:
        """Close the HTTP client."""
        self._client.close()


_CLASSES: dict[Ref, Any] = {}
_CLASSES_LOCK = threading.Lock()


def _resource_class(ref: Ref) -> Any:
    """lightkube's class for a kind: a generic resource (documents stay dicts), or the class already registered
    for that kind (lightkube's registry is process-wide and takes one class per kind)."""
    with _CLASSES_LOCK:
        cls = _CLASSES.get(ref)
        if cls is None:
            from lightkube import generic_resource
            from lightkube.core.resource_registry import resource_registry

            make = (generic_resource.create_namespaced_resource if ref.namespaced
                    else generic_resource.create_global_resource)
            try:
                cls = make(ref.group, ref.version, ref.kind, ref.plural)
            except ValueError:
                cls = resource_registry.get(ref.api_version, ref.kind) or resource_registry.load(ref.api_version,
                                                                                                 ref.kind)
            _CLASSES[ref] = cls
        return cls


def _plain(obj: Any) -> dict[str, Any]:
    to_dict = getattr(obj, "to_dict", None)
    return dict(to_dict()) if callable(to_dict) else dict(obj)


def _api_error(what: str, exc: Any) -> CapstanError:
    status = exc.status
    code = getattr(status, "code", None) or 0
    message = getattr(status, "message", None) or str(exc)
    if code == 404:
        return KubeNotFound(f"{what}: {message}")
    details = getattr(status, "details", None)
    causes = getattr(details, "causes", None) or []
    fields = [c.field for c in causes if getattr(c, "field", None)]
    return KubeRejected(message, code=code, reason=getattr(status, "reason", "") or "", fields=fields)


def _transport_error(exc: Exception) -> CapstanError:
    if isinstance(exc, CapstanError):
        return exc
    words = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return KubeUnreachable(f"cannot reach the Kubernetes API server: {words}")


def connect(*, context: str | None = None, namespace: str | None = None, kubeconfig: str | None = None) -> KubeApi:
    """A `KubeApi` on the cluster of kubeconfig ``context`` (None: the current context; the in-cluster
    service account when there is no kubeconfig), defaulting to ``namespace`` (None: the context's). Raises
    `KubeUnreachable` with one line for a missing lightkube, kubeconfig or context."""
    try:
        from lightkube import Client, KubeConfig
        from lightkube.core.exceptions import ConfigError
    except ImportError:
        raise KubeUnreachable("the Kubernetes client is not installed: pip install 'capstan[k8s]'") from None
    try:
        config = KubeConfig.from_file(kubeconfig) if kubeconfig is not None else KubeConfig.from_env()
        single = config.get(context_name=context)
    except ConfigError as exc:
        raise KubeUnreachable(f"no usable Kubernetes configuration: {exc}") from None
    except KeyError:
        raise KubeUnreachable(f"the kubeconfig has no context {context!r}") from None
    except OSError as exc:
        raise KubeUnreachable(f"cannot read the kubeconfig: {exc}") from None
    if single is None:
        raise KubeUnreachable(f"the kubeconfig has no context {context!r}" if context
                              else "the kubeconfig names no current context (pass --context)")
    ns = namespace or single.namespace or "default"
    client = Client(config=single, namespace=ns, field_manager=FIELD_MANAGER, trust_env=False)
    return LightkubeApi(client, ns)
