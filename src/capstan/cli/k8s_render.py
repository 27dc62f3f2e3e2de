"""``capstan k8s render``: write Capstan's specs as Kubernetes manifests, one YAML file per object.

``capstan k8s render queues CONFIG.yaml -o DIR`` renders a queue configuration to Kueue objects
(`capstan.k8s.render_queues`, docs/kubernetes-queues.md). Other kinds add their subcommands to the ``render`` group.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import click

from capstan.errors import InvalidParameterValue

_MIG = re.compile(r"^(?P<flavor>[^=]+)=(?P<profile>[^:]+):(?P<per_gpu>[1-9][0-9]*)$")


def file_name(obj: dict[str, Any]) -> str:
    """``<kind>-[<namespace>-]<name>.yaml``, lowercase: unique per object in one rendering."""
    meta = obj["metadata"]
    parts = [obj["kind"].lower(), *([meta["namespace"]] if "namespace" in meta else []), meta["name"]]
    return "-".join(parts) + ".yaml"


def write_manifests(objects: list[dict[str, Any]], out: Path) -> list[Path]:
    """Write each object to its own YAML file under ``out`` (created when missing); the paths written."""
    import yaml

    out.mkdir(parents=True, exist_ok=True)
    written = []
    for obj in objects:
        path = out / file_name(obj)
        path.write_text(yaml.safe_dump(obj, sort_keys=False), encoding="utf-8")
        written.append(path)
    return written


def _mig_options(values: tuple[str, ...]) -> dict[str, Any]:
    from capstan.k8s.render_queues import MigProfile

    profiles = {}
    for value in values:
        match = _MIG.match(value)
        if match is None:
            raise InvalidParameterValue(f"--mig: {value!r} is not FLAVOR=PROFILE:PER_GPU (e.g. a100=1g.10gb:7)")
        profiles[match["flavor"]] = MigProfile(match["profile"], int(match["per_gpu"]))
    return profiles


def _provisioning_options(values: tuple[str, ...]) -> dict[str, Any]:
    from capstan.k8s.render_queues import ProvisioningCheck

    checks = {}
    for value in values:
        queue, _, cls = value.partition("=")
        if not queue:
            raise InvalidParameterValue(f"--provisioning: {value!r} is not CLUSTER_QUEUE[=PROVISIONING_CLASS]")
        checks[queue] = ProvisioningCheck(cls) if cls else ProvisioningCheck()
    return checks


def register(group: click.Group) -> None:
    """Add the ``render`` group, with ``render queues``, to the ``capstan k8s`` group."""

    @group.group("render")
    def render() -> None:
        """Render Capstan's specs to Kubernetes manifests, one YAML file per object."""

    @render.command("queues")
    @click.argument("config", type=click.Path(path_type=Path))
    @click.option("-o", "--output", "out", required=True, type=click.Path(path_type=Path), metavar="DIR",
                  help="Folder to write the manifests to (created when missing).")
    @click.option("--gpu-resource", default="nvidia.com/gpu", show_default=True,
                  help="Kubernetes resource of a whole GPU.")
    @click.option("--shared-gpu-resource", default="nvidia.com/gpu.shared", show_default=True,
                  help="Kubernetes resource of a time-sliced or MPS GPU slot (the device plugin's renamed resource).")
    @click.option("--mig", multiple=True, metavar="FLAVOR=PROFILE:PER_GPU",
                  help="Flavor whose GPUs are MIG-partitioned, e.g. a100=1g.10gb:7; repeatable.")
    @click.option("--provisioning", multiple=True, metavar="CLUSTER_QUEUE[=CLASS]",
                  help="Give a ClusterQueue Kueue's ProvisioningRequest admission check (default class "
                       "check-capacity.autoscaling.x-k8s.io); repeatable.")
    def queues(config: Path, out: Path, gpu_resource: str, shared_gpu_resource: str, mig: tuple[str, ...],
               provisioning: tuple[str, ...]) -> None:
        """Render a queue configuration (the file ``capstan queue apply -f`` reads) to Kueue v1beta2 objects:
        WorkloadPriorityClasses, ResourceFlavors, Cohorts, ClusterQueues and LocalQueues."""
        from capstan.k8s.render_queues import KueueOptions, render_queues
        from capstan.queue.config import load_config

        options = KueueOptions(gpu_resource=gpu_resource, shared_gpu_resource=shared_gpu_resource,
                               mig=_mig_options(mig), provisioning=_provisioning_options(provisioning))
        objects = render_queues(load_config(config), options)
        written = write_manifests(objects, out)
        click.echo(f"wrote {len(written)} Kueue object(s) to {out}")
