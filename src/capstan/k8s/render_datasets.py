"""Datasets on Kubernetes: a dataset is a PersistentVolumeClaim, and pods mount it by name. Pure.

`render_dataset(dataset)` returns the ``PersistentVolumeClaim`` of a `Dataset` (docs/kubernetes-pipelines.md,
decision 0716):

- ``read-write-many`` (the default): ``ReadWriteMany``; steps and jobs write outputs to it, and any number of pods
  read it (mounted read-only where they only read);
- ``read-only-many``: ``ReadOnlyMany``, shared read-only input. A new empty volume that no pod can write is of no
  use, so it needs its data from somewhere: a ``VolumeSnapshot`` (``from_snapshot``), another claim to clone
  (``from_claim``), or an existing PersistentVolume to bind to (``volume``, e.g. an NFS export that holds it);
- ``read-write-once``: ``ReadWriteOnce``, one node at a time (a controller's state, a single writer).

`parse_mount` reads the ``NAME:/mount/path[:ro|rw]`` text of ``--dataset`` into a `capstan.k8s.pods.ClaimMount`,
which `capstan.k8s.pods.pod_template` turns into the volume and the mount; `check_mounts` refuses two mounts on one
path or on the paths the pod template owns (``/tmp``, ``/dev/shm``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

from capstan.errors import InvalidParameterValue
from capstan.k8s.pods import ClaimMount
from capstan.k8s.render_queues import namespace_for, quantity
from capstan.resources.quantity import MILLI

Access = Literal["read-only-many", "read-write-many", "read-write-once"]
ACCESS_MODES: Final[dict[str, str]] = {"read-only-many": "ReadOnlyMany", "read-write-many": "ReadWriteMany",
                                       "read-write-once": "ReadWriteOnce"}
"""Capstan's access names and the PersistentVolumeClaim access mode each becomes."""
DATASET_LABEL: Final = "capstan.dev/dataset"
RESERVED_PATHS: Final = ("/tmp", "/dev/shm")
"""Mount points the pod template itself uses (`capstan.k8s.pods`)."""

_NAME: Final = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_PATH: Final = re.compile(r"^/[^:\s]*$")


@dataclass(frozen=True, slots=True)
class Dataset:
    """A dataset's claim: ``name`` (a DNS label, the claim's name), ``size_bytes``, ``access``, the project
    (namespace), an optional ``storage_class`` (none: the cluster's default class), and where a read-only-many
    claim's data comes from: ``from_snapshot`` (a VolumeSnapshot), ``from_claim`` (a claim to clone) or
    ``volume`` (a PersistentVolume to bind to)."""

    name: str
    size_bytes: int
    access: Access = "read-write-many"
    project: str = "default"
    storage_class: str | None = None
    from_snapshot: str | None = None
    from_claim: str | None = None
    volume: str | None = None


def _fail(path: str, message: str) -> InvalidParameterValue:
    return InvalidParameterValue(f"{path}: {message}")


def _name(value: str, path: str) -> str:
    if not _NAME.match(value):
        raise _fail(path, f"{value!r} is not a valid name (at most 63 lowercase letters, digits and '-')")
    return value


def _source(dataset: Dataset) -> dict[str, Any]:
    sources = {k: v for k, v in (("from_snapshot", dataset.from_snapshot), ("from_claim", dataset.from_claim),
                                 ("volume", dataset.volume)) if v is not None}
    if len(sources) > 1:
        raise _fail("dataset", f"give one data source, not {' and '.join(sorted(sources))}")
    if not sources:
        if dataset.access == "read-only-many":
            raise _fail("dataset.access", "a read-only-many claim needs its data from a snapshot, a claim to clone "
                                          "or an existing volume (a new empty volume nobody can write is no use)")
        return {}
    (key, value), = sources.items()
    _name(value, f"dataset.{key}")
    if key == "volume":
        return {"volumeName": value}
    if key == "from_claim":
        return {"dataSource": {"kind": "PersistentVolumeClaim", "name": value}}
    return {"dataSource": {"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": value}}


def render_dataset(dataset: Dataset) -> dict[str, Any]:
    """The ``PersistentVolumeClaim`` of ``dataset``. Raises `InvalidParameterValue` naming the field for a bad
    name, size, access or namespace, or a read-only-many claim with no data source."""
    _name(dataset.name, "dataset.name")
    if dataset.size_bytes <= 0:
        raise _fail("dataset.size", "must be more than 0 bytes")
    if dataset.access not in ACCESS_MODES:
        raise _fail("dataset.access", f"{dataset.access!r} is not one of {', '.join(ACCESS_MODES)}")
    spec: dict[str, Any] = {"accessModes": [ACCESS_MODES[dataset.access]],
                            "resources": {"requests": {"storage": quantity(dataset.size_bytes * MILLI, "memory")}}}
    if dataset.storage_class is not None:
        spec["storageClassName"] = _name(dataset.storage_class, "dataset.storage_class")
    spec.update(_source(dataset))
    labels = {"app.kubernetes.io/managed-by": "capstan", DATASET_LABEL: dataset.name}
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": dataset.name, "namespace": namespace_for(dataset.project), "labels": labels},
            "spec": spec}


def parse_mount(text: str, path: str = "--dataset") -> ClaimMount:
    """``NAME:/mount/path[:ro|rw]`` as a `ClaimMount` (read-only unless ``rw``). Raises `InvalidParameterValue`
    naming ``path`` for any other text."""
    parts = text.split(":")
    mode = "ro"
    if len(parts) == 3:
        mode = parts.pop()
    if len(parts) != 2 or mode not in ("ro", "rw") or not _PATH.match(parts[1]):
        raise _fail(path, f"{text!r} is not NAME:/mount/path[:ro|rw] (e.g. imagenet:/data/imagenet:ro)")
    name, mount_path = parts
    _name(name, path)
    clean = "/" + "/".join(p for p in mount_path.split("/") if p)
    if clean == "/" or any(p in (".", "..") for p in clean.split("/")):
        raise _fail(path, f"{mount_path!r} is not a mount point (an absolute path below /, without . or ..)")
    return ClaimMount(claim=name, mount_path=clean, read_only=mode == "ro")


def check_mounts(mounts: Sequence[ClaimMount], path: str = "--dataset") -> tuple[ClaimMount, ...]:
    """``mounts`` when no two share a mount point and none is at or above a path the pod template owns, or at
    or inside another mount's path; else `InvalidParameterValue` naming the clash."""
    taken: list[str] = list(RESERVED_PATHS)
    for mount in mounts:
        for other in taken:
            if mount.mount_path == other or mount.mount_path.startswith(other + "/") \
                    or other.startswith(mount.mount_path + "/"):
                raise _fail(path, f"{mount.claim} at {mount.mount_path} clashes with the mount at {other}")
        taken.append(mount.mount_path)
    return tuple(mounts)
