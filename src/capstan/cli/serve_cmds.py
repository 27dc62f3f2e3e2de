"""``capstan serve MODEL_URI``: one scikit-learn model served in the foreground by `capstan.serving.app`.

The model is found through the SDK (`capstan.sdk.fluent_models`), so ``models:/NAME@ALIAS``, ``models:/NAME/VERSION``,
``models:/NAME/latest``, ``models:/MODEL_ID`` and ``runs:/RUN_ID/PATH`` resolve against the local stores, or the
server named by ``CAPSTAN_URL``; a local model folder (one holding an ``MLmodel`` file) is read directly. The app
answers OIP v2, KServe v1 and MLflow scoring (``/invocations``) on one port, on uvicorn with TCP_NODELAY as
``capstan server`` runs, in one process or in ``--workers`` processes forked after the model is loaded
(`capstan.server.runner.serve_workers`), over HTTPS with ``--tls-cert``/``--tls-key``.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from capstan.cli.context import cli_settings
from capstan.errors import InvalidParameterValue
from capstan.server.tls import tls_click_options

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from capstan.sdk.backends import TrackingBackend
    from capstan.server.tls import TlsOptions
    from capstan.serving.app import GrpcOptions
    from capstan.serving.model import SklearnServedModel

MAX_BODY_BYTES = 64 * 1024 * 1024
"""Largest request body the served model accepts (413 beyond)."""


@dataclass(frozen=True)
class ResolvedModel:
    """Where a model URI points: its folder on this machine, and the name and version to serve it as."""

    folder: Path
    name: str
    version: str


def _resolve(backend: TrackingBackend, uri: str, dst: Path) -> ResolvedModel:
    """Download the model at ``uri`` into ``dst`` (a local folder is used where it is) and name it."""
    from capstan.sdk import fluent_models as sdk_models

    if not uri.startswith(("models:/", "runs:/")):
        local = Path(uri.removeprefix("file://"))
        if not local.is_dir():
            raise InvalidParameterValue(
                f"model uri: {uri!r} is not models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN/PATH or a folder")
        resolved = local.resolve()
        return ResolvedModel(resolved, resolved.name, "1")
    owner, path = sdk_models.resolve_model_uri(backend, uri)
    if owner.kind == "model_version":
        name, number = owner.split_version()
        # Pinned to the version the alias (or "latest") named now, so the name and the files agree.
        folder = sdk_models.download_model(backend, f"models:/{name}/{number}", dst)
        return ResolvedModel(folder, name, str(number))
    local = backend.download_artifacts(owner, path, dst)
    if not (local / "MLmodel").is_file():
        raise InvalidParameterValue(f"model uri: {uri!r} does not point at a model folder (no MLmodel file)")
    if owner.kind == "logged_model":
        name = backend.get_logged_model(owner.id).name
    else:
        name = path.rstrip("/").rpartition("/")[2] or owner.id
    return ResolvedModel(local, name, "1")


def load_served_model(backend: TrackingBackend, uri: str, name: str | None = None) -> SklearnServedModel:
    """The scikit-learn model at ``uri`` as a `SklearnServedModel` named ``name`` (default: the registered model's
    name, the logged model's name or the folder's name). Anything but the sklearn flavor is refused."""
    from capstan.models.format import load_model_dir, read_mlmodel
    from capstan.models.sklearn import FLAVOR_NAME
    from capstan.serving.model import SklearnServedModel

    tmp = Path(tempfile.mkdtemp(prefix="capstan-serve-"))
    try:
        found = _resolve(backend, uri, tmp)
        flavors = sorted(read_mlmodel(found.folder)["flavors"])
        if FLAVOR_NAME not in flavors:
            raise InvalidParameterValue(
                f"model {uri!r} is not a scikit-learn model (flavors: {', '.join(flavors) or 'none'}); "
                "capstan serve serves the sklearn flavor")
        estimator: Any = load_model_dir(found.folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    n_features = getattr(estimator, "n_features_in_", None)
    if not isinstance(n_features, int):
        raise InvalidParameterValue(f"model {uri!r} has no n_features_in_: it is not a fitted scikit-learn estimator")
    return SklearnServedModel(name or found.name, found.version, estimator, n_features)


@click.command("serve")
@click.argument("model_uri")
@click.option("--name", default=None,
              help="Name clients use for the model (default: the registered model's name, or the folder's).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535),
              help="TCP port (0 picks a free one and prints it).")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 256),
              help="Worker processes answering on the port, forked after the model is loaded.")
@click.option("--max-batch-size", default=0, show_default=True, type=click.IntRange(min=0),
              help="Rows per batch of the adaptive batcher; 0 turns batching off.")
@click.option("--max-batch-delay-ms", default=5.0, show_default=True, type=click.FloatRange(min=0),
              help="How long a batch waits for more rows (with --max-batch-size > 0).")
@click.option("--grpc-port", default=None, type=click.IntRange(0, 65535),
              help="Also serve OIP v2 over gRPC on this port (0 picks a free one), with the same TLS. Needs the "
                   "grpc extra.")
@tls_click_options
def serve_cmd(model_uri: str, name: str | None, host: str, port: int, workers: int, max_batch_size: int,
              max_batch_delay_ms: float, grpc_port: int | None, tls_cert: str | None, tls_key: str | None,
              tls_client_ca: str | None) -> None:
    """Serve one scikit-learn model in the foreground until Ctrl-C.

    MODEL_URI is models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN_ID/PATH or a local model folder. The model
    answers the Open Inference Protocol v2 (/v2/models/NAME/infer), KServe v1 (/v1/models/NAME:predict) and
    MLflow scoring (/invocations) on one port, and OIP v2 over gRPC on --grpc-port. With --workers N, N processes
    forked after the model is loaded answer on those ports; with --tls-cert and --tls-key they speak TLS
    (--tls-client-ca: mutual TLS).
    """
    import uvicorn

    from capstan.server.prefork import is_fork_safe
    from capstan.server.runner import bind_socket, free_tcp_port, run_uvicorn, serve_workers, uvicorn_options
    from capstan.server.tls import TlsOptions

    if name is not None and (not name or "/" in name):
        raise click.BadParameter(f"{name!r} must be a non-empty name without '/'", param_hint="--name")
    tls = TlsOptions.from_cli(tls_cert, tls_key, tls_client_ca)
    # Every worker listens for gRPC on the same port (SO_REUSEPORT), so port 0 is resolved here, once.
    grpc = _grpc_options(host, free_tcp_port(host, grpc_port, what="gRPC"), tls) if grpc_port is not None else None
    model, app = _load_app(model_uri, name, max_batch_size, max_batch_delay_ms, grpc)
    # A model whose runtime's thread pools do not survive fork is loaded again in each worker; the parent's load
    # above still checks it before anything listens.
    reload_in_workers = workers > 1 and not is_fork_safe(model)
    options = uvicorn_options(host, port, tls=tls)
    sock = bind_socket(uvicorn.Config(app, **options), host, port)
    click.echo(_listening_line(model, model_uri, host, sock.getsockname()[1], workers, max_batch_size, tls))
    if grpc is not None:
        click.echo(f"  OIP v2 over gRPC on {grpc.address}{' (TLS)' if tls is not None else ''}")
    if reload_in_workers:
        click.echo("  each worker loads its own copy of the model (its runtime is not fork-safe)")
    sys.stdout.flush()

    def worker_main() -> int:
        served = _load_app(model_uri, name, max_batch_size, max_batch_delay_ms, grpc)[1] if reload_in_workers else app
        return run_uvicorn(uvicorn.Config(served, **options), sock)

    serve_workers(sock, workers, worker_main, name="capstan serve")


def _grpc_options(host: str, port: int, tls: TlsOptions | None) -> GrpcOptions:
    from capstan.serving.app import GrpcOptions

    if tls is None:
        return GrpcOptions(port=port, host=host)
    return GrpcOptions(port=port, host=host, tls_cert=tls.cert, tls_key=tls.key, tls_client_ca=tls.client_ca)


def _load_app(model_uri: str, name: str | None, max_batch_size: int, max_batch_delay_ms: float,
              grpc: GrpcOptions | None) -> tuple[SklearnServedModel, Starlette]:
    """The model at ``model_uri`` and the serving app around it (the gRPC server starts with the app)."""
    from capstan.sdk.backends import open_backend
    from capstan.serving.app import BatchingOptions, serving_app

    batching = (BatchingOptions(max_batch_size=max_batch_size, max_delay_ms=max_batch_delay_ms)
                if max_batch_size > 0 else None)
    backend = open_backend(cli_settings())
    try:
        model = load_served_model(backend, model_uri, name)
    finally:
        backend.close()
    return model, serving_app({model.name: model}, max_body_bytes=MAX_BODY_BYTES, batching=batching, grpc=grpc)


def _listening_line(model: SklearnServedModel, model_uri: str, host: str, port: int, workers: int,
                    max_batch_size: int, tls: TlsOptions | None) -> str:
    """The start-up line: the model, where it answers, and how."""
    shown_host = f"[{host}]" if ":" in host else host
    scheme = "https" if tls is not None else "http"
    notes = [f"batches of up to {max_batch_size} rows"] if max_batch_size > 0 else []
    if workers > 1:
        notes.append(f"{workers} workers")
    if tls is not None and tls.client_ca is not None:
        notes.append("client certificates required")
    return (f"capstan serve: model {model.name} version {model.version} ({model_uri}) listening on "
            f"{scheme}://{shown_host}:{port}" + "".join(f", {note}" for note in notes))


def register(cli: click.Group) -> None:
    """Add this module's commands to ``cli``."""
    cli.add_command(serve_cmd)
