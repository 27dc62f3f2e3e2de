"""``capstan k8s render deployment SPEC.yaml -o DIR`` and ``capstan k8s render monitoring -o DIR``.

``deployment`` renders a deployment spec (the file ``capstan deployments create -f`` reads) with
`capstan.k8s.render_serving`: per version a Deployment, Service, HPA and PodDisruptionBudget plus Capstan's router for
a canary or shadow (``--format native``), or a KServe InferenceService (``--format kserve``). ``monitoring`` renders
`capstan.k8s.render_monitoring`: the Grafana dashboard, the alert rules (PrometheusRule and a plain rule file) and
the prometheus-adapter rules behind the HPA's Pods metrics. See docs/kubernetes-serving.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from capstan.errors import InvalidParameterValue


def _pairs(option: str, values: tuple[str, ...], example: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for value in values:
        key, sep, item = value.partition("=")
        if not sep or not key or not item:
            raise InvalidParameterValue(f"{option}: {value!r} is not KEY=VALUE (e.g. {example})")
        if key in out:
            raise InvalidParameterValue(f"{option}: {key!r} is given twice")
        out[key] = item
    return out


def _flavor(queue_config: Path | None, gpu_flavor: str | None) -> Any:
    """The GPU flavor named ``gpu_flavor`` in the queue configuration (None without one)."""
    from capstan.queue.config import load_config

    if gpu_flavor is None:
        if queue_config is not None:
            raise InvalidParameterValue("--queue-config: give --gpu-flavor too (the flavor the replicas run on)")
        return None
    if queue_config is None:
        raise InvalidParameterValue("--gpu-flavor: give --queue-config too (the file that declares the flavor)")
    config = load_config(queue_config)
    flavors = {f.name: f for f in config.flavors}
    if gpu_flavor not in flavors:
        raise InvalidParameterValue(f"--gpu-flavor: {gpu_flavor!r} is not a flavor of {queue_config} "
                                    f"(declared: {', '.join(sorted(flavors)) or 'none'})")
    return flavors[gpu_flavor]


def _deployment_command(render: click.Group) -> None:
    @render.command("deployment")
    @click.argument("source", type=click.Path(exists=True, dir_okay=False, path_type=Path), metavar="SPEC.yaml")
    @click.option("-o", "--output", "out", required=True, type=click.Path(path_type=Path), metavar="DIR",
                  help="Folder to write the manifests to (created when missing).")
    @click.option("--format", "fmt", type=click.Choice(["native", "kserve"]), default="native", show_default=True,
                  help="Deployments, Services, HPAs, budgets and Capstan's router, or a KServe InferenceService.")
    @click.option("--image", default="", help="The Capstan image the pods run (native) [default: "
                  "capstan-runtime:latest, the repository's Dockerfile].")
    @click.option("--namespace", help="Namespace of the objects (default: the one they are applied to).")
    @click.option("--project", default="default", show_default=True, help="Capstan project of the deployment.")
    @click.option("--port", default=8080, show_default=True, type=click.IntRange(1, 65535), help="Serving port.")
    @click.option("--server-url", default=None, help="Capstan server the pods read models through "
                  "[default: https://capstan-server.capstan-system.svc:8080].")
    @click.option("--token-secret", default="capstan-token", show_default=True,
                  help="Secret holding the pods' Capstan token (key --token-key).")
    @click.option("--token-key", default="token", show_default=True, help="Key of the token in --token-secret.")
    @click.option("--store-secret", default=None, metavar="SECRET",
                  help="Read the stores directly instead (envFrom this Secret: CAPSTAN_DB_URL, CAPSTAN_ARTIFACTS, "
                       "object-store credentials); needed for payload logging.")
    @click.option("--tls-secret", default=None, metavar="SECRET",
                  help="TLS Secret (tls.crt, tls.key) the client-facing pods mount and serve HTTPS with.")
    @click.option("--tls-issuer", default=None, metavar="ISSUER",
                  help="Also render a cert-manager Certificate into --tls-secret, issued by ISSUER.")
    @click.option("--tls-issuer-kind", type=click.Choice(["ClusterIssuer", "Issuer"]), default="ClusterIssuer",
                  show_default=True, help="Kind of --tls-issuer.")
    @click.option("--tls-dns-name", "dns_names", multiple=True, metavar="HOST",
                  help="Extra DNS name of the Certificate (e.g. an ingress host); repeatable.")
    @click.option("--router-replicas", default=2, show_default=True, type=click.IntRange(1, 100),
                  help="Pods of the router (with a canary or shadow).")
    @click.option("--cpu-utilization", default=80, show_default=True, type=click.IntRange(1, 100),
                  help="The HPA's CPU target, percent of the request.")
    @click.option("--queue-config", type=click.Path(exists=True, dir_okay=False, path_type=Path), metavar="FILE",
                  help="Queue configuration declaring --gpu-flavor.")
    @click.option("--gpu-flavor", default=None, help="Flavor the replicas' GPUs come from (placement, shared/MIG).")
    @click.option("--storage-uri", "storage_uris", multiple=True, metavar="ROLE=URI",
                  help="KServe: where a role's model folder is (s3://, gs://, pvc://, https://, hf://); repeatable.")
    @click.option("--model-format", default=None,
                  help="KServe model format [default: mlflow; huggingface for a language model].")
    @click.option("--without-shadow", is_flag=True, help="KServe: leave the spec's shadow out (KServe cannot "
                  "mirror traffic).")
    def deployment(source: Path, out: Path, fmt: str, image: str, namespace: str | None, project: str, port: int,
                   server_url: str | None, token_secret: str, token_key: str, store_secret: str | None,
                   tls_secret: str | None, tls_issuer: str | None, tls_issuer_kind: str, dns_names: tuple[str, ...],
                   router_replicas: int, cpu_utilization: int, queue_config: Path | None, gpu_flavor: str | None,
                   storage_uris: tuple[str, ...], model_format: str | None, without_shadow: bool) -> None:
        """Render SPEC.yaml (a deployment spec, as `capstan deployments create -f` reads it), one YAML file per
        object."""
        from capstan.cli.k8s_render import write_manifests
        from capstan.k8s.render_serving import DEFAULT_SERVER_URL, ServingRenderOptions, ServingTls, render_serving
        from capstan.serving.spec import load_spec_yaml

        spec = load_spec_yaml(source.read_text(encoding="utf-8"), source=str(source))
        if tls_secret is None and (tls_issuer is not None or dns_names):
            raise InvalidParameterValue("--tls-issuer: give --tls-secret too (the Secret the Certificate fills)")
        if fmt == "native" and (storage_uris or model_format or without_shadow):
            raise InvalidParameterValue("--storage-uri, --model-format and --without-shadow apply to --format kserve")
        if fmt == "kserve" and (image or store_secret or tls_secret):
            raise InvalidParameterValue("--image, --store-secret and --tls-secret apply to --format native (KServe "
                                        "runs its own runtime image, downloads the model and terminates TLS at its "
                                        "gateway)")
        if store_secret is not None and (server_url or token_secret != "capstan-token" or token_key != "token"):
            raise InvalidParameterValue("--store-secret: the pods then read the stores directly; --server-url, "
                                        "--token-secret and --token-key do not apply")
        if fmt == "native" and not image:
            from capstan.k8s.render_pipelines import DEFAULT_IMAGE
            image = DEFAULT_IMAGE
        flavor = _flavor(queue_config, gpu_flavor)
        tls = (ServingTls(tls_secret, tls_issuer, tls_issuer_kind, dns_names) if tls_secret is not None else None)
        options = ServingRenderOptions(
            format="kserve" if fmt == "kserve" else "native", namespace=namespace, image=image, project=project,
            port=port, server_url=server_url or DEFAULT_SERVER_URL, token_secret=token_secret, token_key=token_key,
            store_secret=store_secret, tls=tls, router_replicas=router_replicas, cpu_utilization=cpu_utilization,
            flavor=flavor,
            storage_uris=_pairs("--storage-uri", storage_uris, "primary=s3://models/fraud/6"),
            model_format=model_format, without_shadow=without_shadow)
        written = write_manifests(render_serving(spec, options), out)
        click.echo(f"wrote {len(written)} object(s) to {out}")


def _monitoring_command(render: click.Group) -> None:
    @render.command("monitoring")
    @click.option("-o", "--output", "out", required=True, type=click.Path(path_type=Path), metavar="DIR",
                  help="Folder to write the manifests to (created when missing).")
    @click.option("--namespace", help="Namespace of the objects (default: the one they are applied to).")
    @click.option("--prefix", default="capstan", show_default=True, help="Start of every object's name.")
    @click.option("--latency-ms", default=100.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
                  help="Alert when a version's p95 serving latency stays above this.")
    @click.option("--latency-for", default="5m", show_default=True, help="...for this long.")
    @click.option("--error-ratio", default=0.05, show_default=True, type=click.FloatRange(0, 1, min_open=True,
                                                                                          max_open=True),
                  help="Alert when this share of a version's requests answer 5xx (for 5m).")
    @click.option("--queue-wait", default=1800, show_default=True, type=click.IntRange(min=1),
                  help="Alert when 90 %% of admitted workloads waited longer (seconds).")
    @click.option("--rule-label", "rule_labels", multiple=True, metavar="KEY=VALUE",
                  help="Label of the PrometheusRule (the operator's ruleSelector, e.g. release=prometheus); "
                       "repeatable.")
    def monitoring(out: Path, namespace: str | None, prefix: str, latency_ms: float, latency_for: str,
                   error_ratio: float, queue_wait: int, rule_labels: tuple[str, ...]) -> None:
        """Render the Grafana dashboard, the alerts (a PrometheusRule and the same rules as a plain Prometheus rule
        file) and the prometheus-adapter rules for the HPAs, one YAML file per object."""
        from capstan.cli.k8s_render import write_manifests
        from capstan.k8s.render_monitoring import MonitoringOptions, render_monitoring

        options = MonitoringOptions(namespace=namespace, prefix=prefix, latency_p95_seconds=latency_ms / 1000,
                                    latency_for=latency_for, error_ratio=error_ratio, queue_wait_seconds=queue_wait,
                                    rule_labels=_pairs("--rule-label", rule_labels, "release=prometheus"))
        written = write_manifests(render_monitoring(options), out)
        click.echo(f"wrote {len(written)} object(s) to {out}")


def register(group: click.Group) -> None:
    """Add ``deployment`` and ``monitoring`` to the ``capstan k8s render`` group (`capstan.cli.k8s_render`)."""
    render = group.commands["render"]
    if not isinstance(render, click.Group):
        raise TypeError("capstan k8s render must be a group")  # a wiring mistake, not user input
    _deployment_command(render)
    _monitoring_command(render)
