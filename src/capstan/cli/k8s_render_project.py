"""``capstan k8s render project NAME -o DIR``: a project namespace with security by default
(`capstan.k8s.render_project`, docs/kubernetes-security.md)."""

from __future__ import annotations

from pathlib import Path

import click

from capstan.errors import InvalidParameterValue


def _labels(values: tuple[str, ...], option: str) -> dict[str, str]:
    labels = {}
    for value in values:
        key, sep, val = value.partition("=")
        if not key or not sep:
            raise InvalidParameterValue(f"{option}: {value!r} is not KEY=VALUE")
        labels[key] = val
    return labels


def register(group: click.Group) -> None:
    """Add ``project`` to the ``capstan k8s render`` group (which `capstan.cli.k8s_render` adds first)."""
    render = group.commands["render"]
    if not isinstance(render, click.Group):  # PARTS must list capstan.cli.k8s_render before this module
        raise TypeError("capstan k8s render is not a command group")

    @render.command("project")
    @click.argument("name")
    @click.option("--queues", "queues", type=click.Path(path_type=Path), metavar="CONFIG",
                  help="Queue configuration (the file `capstan queue apply -f` reads); the namespace gets a "
                       "ResourceQuota equal to its LocalQueues' nominal quota. Without it, no ResourceQuota.")
    @click.option("-o", "--output", "out", required=True, type=click.Path(path_type=Path), metavar="DIR",
                  help="Folder to write the manifests to (created when missing).")
    @click.option("--server-namespace", default="capstan-system", show_default=True,
                  help="Namespace the Capstan server runs in.")
    @click.option("--server-service-account", default="capstan-server", show_default=True,
                  help="ServiceAccount the Capstan server runs as; bound to the project's Role.")
    @click.option("--server-label", "server_labels", multiple=True, metavar="KEY=VALUE",
                  help="Label of the server's pods, for the egress rule (default app.kubernetes.io/name="
                       "capstan-server); repeatable.")
    @click.option("--server-port", default=8080, show_default=True, type=int, help="Port the server listens on.")
    @click.option("--serving-port", default=8080, show_default=True, type=int,
                  help="Port serving pods listen on; the only port open for ingress.")
    @click.option("--mount-token", is_flag=True, help="Give the project's ServiceAccount an API token.")
    @click.option("--pod-security-version", default="v1.33", show_default=True,
                  help="Pod Security Standards version the namespace labels pin (v1.N or latest).")
    @click.option("--tls-issuer", default=None, metavar="ISSUER",
                  help="Render a cert-manager Certificate for serving, issued by ISSUER (off by default).")
    @click.option("--tls-issuer-kind", default="ClusterIssuer", show_default=True,
                  type=click.Choice(["ClusterIssuer", "Issuer"]), help="Kind of --tls-issuer.")
    @click.option("--tls-secret", default="capstan-serving-tls", show_default=True,
                  help="Secret the Certificate is stored in and serving pods mount.")
    @click.option("--gpu-resource", default="nvidia.com/gpu", show_default=True,
                  help="Kubernetes resource of a whole GPU (in the ResourceQuota).")
    @click.option("--shared-gpu-resource", default="nvidia.com/gpu.shared", show_default=True,
                  help="Kubernetes resource of a time-sliced or MPS GPU slot (in the ResourceQuota).")
    @click.option("--mig", multiple=True, metavar="FLAVOR=PROFILE:PER_GPU",
                  help="Flavor whose GPUs are MIG-partitioned, e.g. a100=1g.10gb:7; repeatable.")
    def project(name: str, queues: Path | None, out: Path, server_namespace: str, server_service_account: str,
                server_labels: tuple[str, ...], server_port: int, serving_port: int, mount_token: bool,
                pod_security_version: str, tls_issuer: str | None, tls_issuer_kind: str, tls_secret: str,
                gpu_resource: str, shared_gpu_resource: str, mig: tuple[str, ...]) -> None:
        """Render project NAME's namespace: Pod Security restricted labels, a token-less ServiceAccount, the
        server's least-privilege Role and RoleBinding, default-deny NetworkPolicies with their allow rules, and the
        ResourceQuota of its queues."""
        from capstan.cli.k8s_render import _mig_options, write_manifests
        from capstan.k8s.render_project import ProjectOptions, TlsOptions, render_project
        from capstan.k8s.render_queues import KueueOptions
        from capstan.queue.config import load_config

        if tls_issuer is None and (tls_secret != "capstan-serving-tls" or tls_issuer_kind != "ClusterIssuer"):
            raise InvalidParameterValue("--tls-secret/--tls-issuer-kind: only apply with --tls-issuer")
        options = ProjectOptions(
            server_namespace=server_namespace, server_service_account=server_service_account,
            server_labels=_labels(server_labels, "--server-label") or {"app.kubernetes.io/name": "capstan-server"},
            server_port=server_port, serving_port=serving_port, mount_token=mount_token,
            pod_security_version=pod_security_version,
            kueue=KueueOptions(gpu_resource=gpu_resource, shared_gpu_resource=shared_gpu_resource,
                               mig=_mig_options(mig)),
            tls=TlsOptions(tls_issuer, tls_secret, tls_issuer_kind) if tls_issuer is not None else None)
        if queues is None and (mig or gpu_resource != "nvidia.com/gpu"
                               or shared_gpu_resource != "nvidia.com/gpu.shared"):
            raise InvalidParameterValue("--gpu-resource/--shared-gpu-resource/--mig: only apply with --queues")
        objects = render_project(name, load_config(queues) if queues is not None else None, options)
        written = write_manifests(objects, out)
        click.echo(f"wrote {len(written)} object(s) for project {name} to {out}")
