"""``capstan serve`` for a language model: detection, the model cache, and the OpenAI-compatible app on the port.

`language_model_target` says whether ``capstan serve``'s MODEL_URI is a language model: a local folder with the
``transformers`` flavor or a bare ``save_pretrained`` / sentence-transformers folder, or a registry or run model
whose files hold a ``save_pretrained`` subfolder next to its MLmodel with the ``transformers`` flavor (its MLmodel
file alone is downloaded to decide). A
registry or run model is fetched through the model cache (`capstan.llm.model_cache`, below ``CAPSTAN_HOME/
serving-cache/models``), so a restart or another replica reuses the verified folder; the listening line reports
the cold start (fetch + load) and whether the cache had it. The app is `capstan.llm.openai_app.llm_serving_app`,
which also answers the health routes the deployment controller probes, so replicas serve language models unchanged.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from capstan.errors import InvalidParameterValue

if TYPE_CHECKING:
    from capstan.llm.ports import LanguageModel
    from capstan.sdk.backends import TrackingBackend
    from capstan.server.tls import TlsOptions
    from capstan.settings import Settings

DEFAULT_MAX_NUM_SEQS = 8
DEFAULT_MAX_WAITING = 64


@dataclass(frozen=True, slots=True)
class LlmOptions:
    """The language-model options of ``capstan serve`` (None: not given on the command line)."""

    backend: str | None = None
    device: str | None = None
    max_num_seqs: int | None = None
    max_waiting: int | None = None
    gpu_memory_utilization: float | None = None

    def given(self) -> list[str]:
        """The options given, as their flags (refused for a model that is not a language model)."""
        flags = {"--backend": self.backend, "--device": self.device, "--max-num-seqs": self.max_num_seqs,
                 "--max-waiting": self.max_waiting, "--gpu-memory-utilization": self.gpu_memory_utilization}
        return [flag for flag, value in flags.items() if value is not None]


@dataclass(slots=True)
class LoadedLanguageModel:
    """A loaded language model, where it came from (for the listening line) and the registry connection its
    adapters read (closed at exit)."""

    model: LanguageModel
    source: str
    backend: TrackingBackend | None = None


def language_model_target(model_uri: str, settings: Settings) -> bool:
    """Whether ``model_uri`` names a language model (see the module docstring)."""
    from capstan.llm.loading import is_language_model_folder

    if not model_uri.startswith(("models:/", "runs:/")):
        return is_language_model_folder(Path(model_uri.removeprefix("file://")))
    from capstan.sdk.model_kind import registered_language_model

    return registered_language_model(model_uri, settings)


def refuse_classic_options(options: LlmOptions) -> None:
    """Refuse language-model options for a model that is not one (a flag that does nothing is an error)."""
    given = options.given()
    if given:
        raise InvalidParameterValue(f"{given[0]} applies to language models (transformers flavor or a "
                                    "save_pretrained folder); this model is not one")


def refuse_llm_options(*, workers: int, max_batch_size: int, grpc_port: int | None, payload_sample_rate: float,
                       drift_window: int, default_drift_window: int) -> None:
    """Refuse the classic-model options a language model has no use for, naming the one to use instead."""
    if workers > 1:
        raise InvalidParameterValue("--workers: a language model is served by one process (its engine batches the "
                                    "requests); use --max-num-seqs")
    if max_batch_size > 0:
        raise InvalidParameterValue("--max-batch-size: a language model batches by sequence; use --max-num-seqs")
    if grpc_port is not None:
        raise InvalidParameterValue("--grpc-port: a language model answers OpenAI's API over HTTP only")
    if payload_sample_rate > 0:
        raise InvalidParameterValue("--payload-sample-rate: payload logging is not available for language models")
    if drift_window != default_drift_window:
        raise InvalidParameterValue("--drift-window: drift is not measured for language models")


def load(model_uri: str, name: str | None, options: LlmOptions, settings: Settings) -> LoadedLanguageModel:
    """Fetch (through the cache) and load the language model at ``model_uri`` as ``name``."""
    import os

    from capstan.llm.loading import load_language_model, set_offline

    set_offline()
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # no progress bars between the server's log lines
    started = time.monotonic()
    kwargs: dict[str, Any] = {"backend": options.backend or "transformers", "device": options.device or "auto",
                              "max_batch_size": options.max_num_seqs or DEFAULT_MAX_NUM_SEQS, "started": started,
                              "gpu_memory_utilization": options.gpu_memory_utilization}
    if not model_uri.startswith(("models:/", "runs:/")):
        folder = Path(model_uri.removeprefix("file://")).resolve()
        adapters = _local_adapters(folder, settings)
        model = load_language_model(folder, name=name or folder.name, version="1", adapters=adapters.source,
                                    details={"cache": "local folder"}, **kwargs)
        return LoadedLanguageModel(model, "local folder", adapters.backend)
    from capstan.cli.serve_cmds import serving_cache
    from capstan.llm.model_cache import ModelCache
    from capstan.sdk.backends import open_backend
    from capstan.sdk.model_source import BackendModelSource

    backend = open_backend(settings)
    try:
        source = BackendModelSource(backend)
        cached = ModelCache(serving_cache(settings) / "models").fetch(source, model_uri)
        how = "model cache hit" if cached.hit else f"fetched in {cached.fetch_seconds:.2f} s into the model cache"
        adapter_source = _registry_adapters(model_uri, cached.name, cached.version, backend, source)
        model = load_language_model(cached.folder, name=name or cached.name, version=cached.version,
                                    adapters=adapter_source, details={
                                        "cache": "hit" if cached.hit else "miss", "cache_key": cached.key,
                                        "fetch_seconds": f"{cached.fetch_seconds:.3f}"}, **kwargs)
    except BaseException:
        backend.close()
        raise
    return LoadedLanguageModel(model, how, backend)


@dataclass(frozen=True, slots=True)
class _Adapters:
    source: Any = None
    backend: TrackingBackend | None = None


def _local_adapters(folder: Path, settings: Settings) -> _Adapters:
    """The registry adapters of a base model served from a local folder (they name its absolute path), read from
    the local stores; none with ``CAPSTAN_URL`` unset and no local stores is still a working registry."""
    from capstan.llm.loading import model_folder

    if model_folder(folder).is_embedding:
        return _Adapters()
    from capstan.llm.adapters import RegistryAdapterSource, base_key
    from capstan.sdk.backends import open_backend
    from capstan.sdk.model_source import BackendModelSource

    backend = open_backend(settings)
    return _Adapters(RegistryAdapterSource(base_key(str(folder)), backend, BackendModelSource(backend)), backend)


def _registry_adapters(model_uri: str, name: str, version: str, backend: TrackingBackend, source: Any) -> Any:
    """The adapters of a registry base model (they name it ``models:/NAME/VERSION``, or the URI for a logged model
    or a run); the loader leaves them out for an embedding model."""
    from capstan.llm.adapters import RegistryAdapterSource, base_key

    rest = model_uri[len("models:/"):] if model_uri.startswith("models:/") else ""
    registered = (name, int(version)) if ("/" in rest or "@" in rest) and version.isdigit() else None
    return RegistryAdapterSource(base_key(model_uri, registered=registered), backend, source)


def listening_line(loaded: LoadedLanguageModel, model_uri: str, url: str, max_waiting: int) -> str:
    """The start-up line: the model, where it answers, how it generates, and its cold start."""
    model = loaded.model
    kind = "embedding model" if model.engine is None else "language model"
    details = model.details
    backend = details.get("backend", "transformers")
    notes = [backend if backend == "vllm" else f"{backend} on {details.get('device', '?')}"]
    if model.engine is not None:
        notes.append(f"up to {details.get('max_batch_size', '?')} sequences at once, {max_waiting} waiting")
    notes.append(f"loaded in {model.load_seconds:.1f} s ({loaded.source})")
    return (f"capstan serve: {kind} {model.name} version {model.version} ({model_uri}) listening on {url}"
            + "".join(f", {note}" for note in notes))


def serve(model_uri: str, name: str | None, options: LlmOptions, settings: Settings, *, host: str, port: int,
          tls: TlsOptions | None, access_log: bool, max_body_bytes: int) -> None:
    """Load the language model and serve it on ``host:port`` in this process until Ctrl-C."""
    import uvicorn

    from capstan.llm.openai_app import llm_serving_app
    from capstan.server.runner import bind_socket, run_uvicorn, uvicorn_options
    from capstan.serving.access_log import AccessLogMiddleware
    from capstan.serving.process import with_access_log

    max_waiting = DEFAULT_MAX_WAITING if options.max_waiting is None else options.max_waiting
    loaded = load(model_uri, name, options, settings)
    try:
        app: Any = llm_serving_app(loaded.model, max_waiting=max_waiting, max_body_bytes=max_body_bytes)
        if access_log:
            app = AccessLogMiddleware(app)
        config = uvicorn_options(host, port, tls=tls, proxy_headers=False)
        config["log_config"] = with_access_log(config["log_config"], access_log)
        uvicorn_config = uvicorn.Config(app, **config)
        sock = bind_socket(uvicorn_config, host, port)
        shown_host = f"[{host}]" if ":" in host else host
        url = f"{'https' if tls is not None else 'http'}://{shown_host}:{sock.getsockname()[1]}"
        click.echo(listening_line(loaded, model_uri, url, max_waiting))
        sys.stdout.flush()
        code = run_uvicorn(uvicorn_config, sock)
    finally:
        if loaded.backend is not None:
            loaded.backend.close()
    if code:
        raise SystemExit(code)
