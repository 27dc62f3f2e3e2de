"""``capstan serve MODEL_URI``: one model served in the foreground by `capstan.serving.process`.

The model is loaded by `capstan.serving.loading` (sklearn, ONNX, TorchScript, Python-class and MLflow pyfunc
models; verified against the artifact store's digests) through the SDK's backend, so ``models:/NAME@ALIAS``,
``models:/NAME/VERSION``, ``models:/NAME/latest``, ``models:/MODEL_ID`` and ``runs:/RUN_ID/PATH`` resolve against
the local stores, or the server named by ``CAPSTAN_URL``; a local model folder (one holding an ``MLmodel`` file)
is read directly and trusted (the user named it). The app answers OIP v2, KServe v1 and MLflow scoring
(``/invocations``), ``/metrics`` and ``/drift`` on one port, on uvicorn with TCP_NODELAY as ``capstan server``
runs, in one process or in ``--workers`` processes forked after the model is loaded
(`capstan.server.runner.serve_workers`), each building its own app, observers and store connections.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from capstan.cli.context import cli_settings
from capstan.server.tls import tls_click_options

if TYPE_CHECKING:
    from capstan.server.tls import TlsOptions
    from capstan.services import Services
    from capstan.serving.app import GrpcOptions
    from capstan.serving.drift_monitor import ModelReference
    from capstan.serving.model import ServedModel
    from capstan.serving.process import ServeStores
    from capstan.settings import Settings

MAX_BODY_BYTES = 64 * 1024 * 1024
"""Largest request body the served model accepts (413 beyond)."""


def load_model(model_uri: str, name: str | None) -> tuple[ServedModel, ModelReference | None]:
    """The model at ``model_uri`` (named ``name``) and the drift reference stored in its folder, if any."""
    from capstan.sdk.backends import open_backend
    from capstan.sdk.model_source import BackendModelSource
    from capstan.serving.drift_monitor import read_reference
    from capstan.serving.loading import load_served

    settings = cli_settings()
    backend = open_backend(settings)
    try:
        loaded = load_served(BackendModelSource(backend), model_uri, name, trusted_local=True,
                             compiled_cache=serving_cache(settings))
    finally:
        backend.close()
    return loaded.model, read_reference(loaded.folder)


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
@click.option("--payload-sample-rate", default=0.0, show_default=True, type=float,
              help="Share of requests (0..1, by request id) whose inputs and predictions are written to Parquet in "
                   "the artifact store. Needs the parquet extra and the local stores.")
@click.option("--drift-window", default=1000, show_default=True, type=int,
              help="Rows per drift window: each full window is compared with the model's reference data "
                   "(GET /drift, capstan_feature_drift, DriftDetected events).")
@click.option("--access-log/--no-access-log", default=True, show_default=True,
              help="One JSON line per HTTP request on stderr.")
@click.option("--deployment", default=None, hidden=True,
              help="The deployment this replica serves: payloads go to deployments/NAME/payloads and drift events "
                   "name the deployment (set by the deployment controller).")
@click.option("--project", default="", hidden=True, help="The deployment's project (with --deployment).")
@click.option("--backend", type=click.Choice(["transformers", "vllm"]), default=None,
              help="Language models: the generation engine (default transformers; vllm needs the vllm extra).")
@click.option("--device", default=None,
              help="Language models, transformers backend: auto (default: CUDA when present, else CPU), cpu, "
                   "cuda, cuda:N or mps.")
@click.option("--max-num-seqs", default=None, type=click.IntRange(1, 4096),
              help="Language models: sequences generated at once (the continuous batch) [default: 8].")
@click.option("--max-waiting", default=None, type=click.IntRange(1, 1_000_000),
              help="Language models: requests that may wait for a slot; beyond it 429 with Retry-After "
                   "[default: 64].")
@click.option("--gpu-memory-utilization", default=None, type=click.FloatRange(0, 1, min_open=True),
              help="Language models, vllm backend: the share of the GPU's memory vLLM reserves for weights and KV "
                   "cache (on vLLM's CPU build, of the machine's memory) [default: vLLM's 0.9].")
@tls_click_options
def serve_cmd(model_uri: str, name: str | None, host: str, port: int, workers: int, max_batch_size: int,
              max_batch_delay_ms: float, grpc_port: int | None, payload_sample_rate: float, drift_window: int,
              access_log: bool, deployment: str | None, project: str, backend: str | None, device: str | None,
              max_num_seqs: int | None, max_waiting: int | None, gpu_memory_utilization: float | None,
              tls_cert: str | None, tls_key: str | None, tls_client_ca: str | None) -> None:
    """Serve one model in the foreground until Ctrl-C: scikit-learn, ONNX, TorchScript, a Python class
    (capstan_python), an MLflow pyfunc model, or a language model.

    MODEL_URI is models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN_ID/PATH or a local model folder. The model
    answers the Open Inference Protocol v2 (/v2/models/NAME/infer), KServe v1 (/v1/models/NAME:predict) and
    MLflow scoring (/invocations) on one port, with Prometheus metrics on /metrics and live data drift on /drift,
    and OIP v2 over gRPC on --grpc-port. With --workers N, N processes forked after the model is loaded answer on
    those ports; with --tls-cert and --tls-key they speak TLS (--tls-client-ca: mutual TLS).

    A language model (the transformers flavor, or a folder transformers' save_pretrained or sentence-transformers
    wrote) answers OpenAI's API instead (/v1/chat/completions, /v1/completions, /v1/embeddings, /v1/models), with
    token metrics on /metrics; see docs/llm.md.
    """
    import uvicorn

    from capstan.cli import serve_llm
    from capstan.server.prefork import is_fork_safe
    from capstan.server.runner import bind_socket, free_tcp_port, run_uvicorn, serve_workers, uvicorn_options
    from capstan.server.tls import TlsOptions
    from capstan.serving.app import BatchingOptions
    from capstan.serving.process import ServeOptions, serve_process_app, with_access_log

    for option, value in (("--name", name), ("--deployment", deployment)):
        if value is not None and (not value or "/" in value):
            raise click.BadParameter(f"{value!r} must be a non-empty name without '/'", param_hint=option)
    tls = TlsOptions.from_cli(tls_cert, tls_key, tls_client_ca)
    settings = cli_settings()
    llm = serve_llm.LlmOptions(backend, device, max_num_seqs, max_waiting, gpu_memory_utilization)
    if device is not None:
        from capstan.llm.loading import check_device

        check_device(device)
    if serve_llm.language_model_target(model_uri, settings):
        from capstan.serving.spec import DEFAULT_DRIFT_WINDOW

        serve_llm.refuse_llm_options(workers=workers, max_batch_size=max_batch_size, grpc_port=grpc_port,
                                     payload_sample_rate=payload_sample_rate, drift_window=drift_window,
                                     default_drift_window=DEFAULT_DRIFT_WINDOW)
        serve_llm.serve(model_uri, name, llm, settings, host=host, port=port, tls=tls, access_log=access_log,
                        max_body_bytes=MAX_BODY_BYTES)
        return
    serve_llm.refuse_classic_options(llm)
    batching = (BatchingOptions(max_batch_size=max_batch_size, max_delay_ms=max_batch_delay_ms)
                if max_batch_size > 0 else None)
    ServeOptions(MAX_BODY_BYTES, payload_sample_rate=payload_sample_rate, drift_window=drift_window).check(
        stores_for(settings))
    # Every worker listens for gRPC on the same port (SO_REUSEPORT), so port 0 is resolved here, once.
    grpc = _grpc_options(host, free_tcp_port(host, grpc_port, what="gRPC"), tls) if grpc_port is not None else None
    if grpc is not None:
        grpc.validate()  # the workers build their apps after the start-up line: a missing extra fails here
    options = ServeOptions(MAX_BODY_BYTES, batching, grpc, payload_sample_rate, deployment, project, drift_window,
                           access_log)
    model, reference = load_model(model_uri, name)
    # A model whose runtime's thread pools do not survive fork is loaded again in each worker; the parent's load
    # above still checks it before anything listens.
    reload_in_workers = workers > 1 and not is_fork_safe(model)
    uvicorn_config = uvicorn_options(host, port, tls=tls, proxy_headers=False)  # a model server: no X-Forwarded-*
    uvicorn_config["log_config"] = with_access_log(uvicorn_config["log_config"], access_log)
    sock = bind_socket(uvicorn.Config(_unused_app, **uvicorn_config), host, port)
    click.echo(_listening_line(model, model_uri, host, sock.getsockname()[1], workers, max_batch_size, tls))
    if grpc is not None:
        click.echo(f"  OIP v2 over gRPC on {grpc.address}{' (TLS)' if tls is not None else ''}")
    if reload_in_workers:
        click.echo("  each worker loads its own copy of the model (its runtime is not fork-safe)")
    sys.stdout.flush()

    def worker_main() -> int:
        served, served_reference = load_model(model_uri, name) if reload_in_workers else (model, reference)
        # Built here, in the worker: the drift and payload threads and the stores' connections are its own.
        app = serve_process_app(served, served_reference, options, stores_for(settings))
        return run_uvicorn(uvicorn.Config(app, **uvicorn_config), sock)

    serve_workers(sock, workers, worker_main, name="capstan serve")


async def _unused_app(scope: object, receive: object, send: object) -> None:
    """Stands in for the app while the socket is bound (each worker builds its own)."""


def serving_cache(settings: Settings) -> Path:
    """Where compiled tree ensembles are kept between starts: ``CAPSTAN_HOME/serving-cache``."""
    return settings.home / "serving-cache"


def stores_for(settings: Settings) -> ServeStores:
    """Where drift events and payloads go: the local stores (opened on first use), or, with ``CAPSTAN_URL`` set,
    the ``capstan.serving`` logger and no payload sink."""
    from capstan.serving.process import LocalStores, RemoteStores

    if settings.url:
        return RemoteStores()

    def open_stores() -> Services:
        from capstan.services import Services

        return Services.open(settings)

    return LocalStores(open_stores)


def _grpc_options(host: str, port: int, tls: TlsOptions | None) -> GrpcOptions:
    from capstan.serving.app import GrpcOptions

    if tls is None:
        return GrpcOptions(port=port, host=host)
    return GrpcOptions(port=port, host=host, tls_cert=tls.cert, tls_key=tls.key, tls_client_ca=tls.client_ca)


def _listening_line(model: ServedModel, model_uri: str, host: str, port: int, workers: int,
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
