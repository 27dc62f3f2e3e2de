"""``capstan k8s router NAME --model URI --upstream URL [--canary ...] [--shadow ...]``: the deployment router of a
Kubernetes rendering, in the foreground.

It runs the same `capstan.serving.router.DeploymentRouter` as every ``capstan server`` worker over a fixed
deployment (`capstan.serving.static_routes`): each version is a URL (its Kubernetes Service), the canary's share and
the shadow's mirrored share come from the command line, which ``capstan k8s render deployment`` writes into the
router's Deployment (docs/kubernetes-serving.md, decision 0712).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from capstan.errors import InvalidParameterValue
from capstan.server.tls import tls_click_options

if TYPE_CHECKING:
    from capstan.serving.ports import Role


def _side(role: str, model: str | None, upstream: str | None, traffic: float | None) -> dict[str, Any] | None:
    given = {f"--{role}": model, f"--{role}-upstream": upstream, f"--{role}-traffic": traffic}
    if all(v is None for v in given.values()):
        return None
    missing = [name for name, value in given.items() if value is None]
    if missing:
        raise InvalidParameterValue(f"{missing[0]}: required with {', '.join(k for k in given if k not in missing)}")
    return {"model": model, "traffic": traffic}


def _check_url(option: str, url: str) -> str:
    scheme, _, rest = url.partition("://")
    if scheme not in ("http", "https") or not rest.strip("/"):
        raise InvalidParameterValue(f"{option}: {url!r} is not an http:// or https:// URL")
    return url.rstrip("/")


def register(group: click.Group) -> None:
    """Add ``router`` to the ``capstan k8s`` group."""

    @group.command("router")
    @click.argument("name")
    @click.option("--model", required=True, help="Model URI of the primary version (what clients see).")
    @click.option("--upstream", required=True, metavar="URL", help="Where the primary version answers.")
    @click.option("--canary", default=None, help="Model URI of the canary.")
    @click.option("--canary-upstream", default=None, metavar="URL", help="Where the canary answers.")
    @click.option("--canary-traffic", default=None, type=float, help="Percent of live requests for the canary.")
    @click.option("--shadow", default=None, help="Model URI of the shadow (mirrored, answers discarded).")
    @click.option("--shadow-upstream", default=None, metavar="URL", help="Where the shadow answers.")
    @click.option("--shadow-traffic", default=None, type=float, help="Percent of requests mirrored to the shadow.")
    @click.option("--project", default="default", show_default=True, help="Capstan project of the deployment.")
    @click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
    @click.option("--port", default=8080, show_default=True, type=click.IntRange(1, 65535), help="TCP port.")
    @tls_click_options
    def router(name: str, model: str, upstream: str, canary: str | None, canary_upstream: str | None,
               canary_traffic: float | None, shadow: str | None, shadow_upstream: str | None,
               shadow_traffic: float | None, project: str, host: str, port: int, tls_cert: str | None,
               tls_key: str | None, tls_client_ca: str | None) -> None:
        """Route deployment NAME's requests between its versions until stopped: the canary gets
        --canary-traffic percent, the shadow a copy of --shadow-traffic percent, a client's x-capstan-version pins
        one. Requests keep the paths of capstan serve (/v2/models/NAME/infer, /invocations, ...)."""
        import uvicorn

        from capstan.server.runner import uvicorn_options
        from capstan.server.tls import TlsOptions
        from capstan.serving.router import DeploymentRouter
        from capstan.serving.spec import parse_spec
        from capstan.serving.static_routes import StaticDeploymentStore, router_app, static_record

        doc: dict[str, Any] = {"name": name, "model": model}
        urls: dict[Role, str] = {"primary": _check_url("--upstream", upstream)}
        sides: tuple[tuple[Role, dict[str, Any] | None, str | None], ...] = (
            ("canary", _side("canary", canary, canary_upstream, canary_traffic), canary_upstream),
            ("shadow", _side("shadow", shadow, shadow_upstream, shadow_traffic), shadow_upstream))
        for role, side, url in sides:
            if side is not None and url is not None:
                doc[role] = side
                urls[role] = _check_url(f"--{role}-upstream", url)
        spec = parse_spec(doc)
        tls = TlsOptions.from_cli(tls_cert, tls_key, tls_client_ca)
        store = StaticDeploymentStore(static_record(spec, project), urls)
        app = router_app(DeploymentRouter(store), project, name)
        scheme = "https" if tls is not None else "http"
        click.echo(f"capstan k8s router: deployment {name} on {scheme}://{host}:{port}, "
                   + ", ".join(f"{role} -> {url}" for role, url in urls.items()))
        uvicorn.Server(uvicorn.Config(app, **uvicorn_options(host, port, tls=tls, proxy_headers=False))).run()
