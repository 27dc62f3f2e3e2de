"""Running the server on uvicorn, with TCP_NODELAY on every accepted connection.

asyncio turns Nagle's algorithm off only for sockets whose protocol number is TCP. uvicorn binds its listening
socket itself with ``socket.socket(family)`` (protocol number 0) whenever it hands sockets to workers, so in
multi-worker mode (uvicorn#3149) the accepted connections keep Nagle on and every small response that is written
in two parts (headers, then body) waits for the client's delayed ACK: ~40 ms per request. The protocol classes
below set TCP_NODELAY in ``connection_made`` whatever the socket's origin, in every worker.

With Nagle off, every ``transport.write`` is a ``send`` of its own, and uvicorn writes a response's status line and
headers, then its body, separately: two system calls and two packets (two wake-ups of the client) per small
response. The protocols therefore write through a `CoalescingTransport`, which holds a first write until the next
one or the end of the event loop's current iteration, so a header and a body written in one go leave as one.

Logging goes through `log_config`: uvicorn's own configuration plus a filter on every handler that cuts anything
shaped like a token secret down to its display prefix, so neither the access log (``--access-log``) nor the
server's error log ever prints a usable credential that a client put into a URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import socket
import sys
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, cast

import click
from uvicorn.protocols.http.h11_impl import H11Protocol

from capstan.auth.tokens import redact_secrets
from capstan.settings import Settings

if TYPE_CHECKING:
    from capstan.server.tls import TlsOptions
    from capstan.serving.grpc_server import GrpcOptions


def set_nodelay(transport: asyncio.BaseTransport) -> bool:
    """Switch Nagle's algorithm off on ``transport``'s TCP socket; returns whether it applied."""
    sock = transport.get_extra_info("socket")
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return False
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        return False
    return True


class CoalescingTransport:
    """A transport whose writes within one event-loop iteration leave as one ``send``.

    A write while nothing is held is held, and a flush is scheduled for the end of the loop's current iteration; the
    next write (uvicorn's response body after its headers) sends what is held and itself together at once. Closing,
    ``write_eof`` and the flush send what is held first; `abort` drops it, as the transport drops its own buffer.
    Everything else is the wrapped transport's.
    """

    __slots__ = ("_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Hold ``data`` when nothing is held, else send what is held and ``data`` as one write."""
        held = self._held
        if held is None:
            if data:
                self._held = bytes(data)
                self._loop.call_soon(self.flush)
            return
        self._held = None
        self._transport.write(held + data)

    def writelines(self, chunks: Iterable[bytes | bytearray | memoryview]) -> None:
        """`write` of the chunks joined."""
        self.write(b"".join(chunks))

    def flush(self) -> None:
        """Send what is held, if anything."""
        held = self._held
        if held is not None:
            self._held = None
            if not self._transport.is_closing():
                self._transport.write(held)

    def close(self) -> None:
        """Send what is held, then close (the transport still sends what it has buffered)."""
        self.flush()
        self._transport.close()

    def write_eof(self) -> None:
        """Send what is held, then half-close."""
        self.flush()
        self._transport.write_eof()

    def abort(self) -> None:
        """Close at once, dropping what is held and buffered."""
        self._held = None
        self._transport.abort()

    def get_write_buffer_size(self) -> int:
        """Bytes held here and in the transport's buffer."""
        return len(self._held or b"") + self._transport.get_write_buffer_size()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def _coalescing(transport: asyncio.Transport) -> asyncio.Transport:
    return cast(asyncio.Transport, CoalescingTransport(transport, asyncio.get_running_loop()))


class NoDelayH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with TCP_NODELAY set on each connection, writing through a `CoalescingTransport`."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]  # as uvicorn's
        set_nodelay(transport)
        super().connection_made(_coalescing(transport))


try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # httptools is optional; h11 is used without it
    NoDelayHttpToolsProtocol: type[asyncio.Protocol] | None = None
else:

    class _NoDelayHttpTools(HttpToolsProtocol):
        """uvicorn's httptools protocol with TCP_NODELAY set on each connection, writing through a
        `CoalescingTransport`."""

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]  # as uvicorn's
            set_nodelay(transport)
            super().connection_made(_coalescing(transport))

    NoDelayHttpToolsProtocol = _NoDelayHttpTools


def protocol_class() -> type[asyncio.Protocol]:
    """The fastest available HTTP/1.1 protocol class, with TCP_NODELAY."""
    return NoDelayHttpToolsProtocol or NoDelayH11Protocol


class RedactSecretsFilter(logging.Filter):
    """Replaces token-shaped strings in a log record's message and arguments (never drops a record)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact_secrets(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(redact_secrets(a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {k: redact_secrets(v) if isinstance(v, str) else v for k, v in record.args.items()}
        return True


def log_config(log_level: str = "warning") -> dict[str, Any]:
    """uvicorn's logging configuration with `RedactSecretsFilter` on every handler, and Capstan's own loggers
    (``capstan.*``) sent through the same redacting handler at ``log_level``."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["filters"] = {"redact_secrets": {"()": f"{__name__}.RedactSecretsFilter"}}
    for handler in config["handlers"].values():
        handler["filters"] = [*handler.get("filters", []), "redact_secrets"]
    config["loggers"]["capstan"] = {"handlers": ["default"], "level": log_level.upper(), "propagate": False}
    return config


def freeze_startup_objects() -> None:
    """Move everything allocated so far (modules, routes, SQLAlchemy's tables) out of the garbage collector's reach.

    Those objects live as long as the process. Left tracked, each full collection walks all ~70,000 of them,
    which here pauses whichever request triggers it for 30-40 ms.
    """
    import gc

    gc.freeze()


def settings_environment(settings: Settings, host: str) -> dict[str, str]:
    """``CAPSTAN_*`` variables that make `Settings.from_env` in a worker process rebuild ``settings``."""
    return {**settings.store_environment(), "CAPSTAN_SERVER_HOST": host}


def describe(settings: Settings, host: str, port: int, workers: int, *, auth_required: bool,
             users_exist: bool, tls: TlsOptions | None = None) -> list[str]:
    """The start-up lines: where the server listens, its stores, and its auth mode."""
    from sqlalchemy.engine import make_url

    shown_host = f"[{host}]" if ":" in host else host
    plural = "s" if workers != 1 else ""
    scheme = "https" if tls is not None else "http"
    mutual = ", client certificates required" if tls is not None and tls.client_ca is not None else ""
    lines = [f"capstan server listening on {scheme}://{shown_host}:{port} ({workers} worker{plural}{mutual})",
             f"  metadata store: {make_url(settings.db_url).render_as_string(hide_password=True)}",
             f"  artifacts:      {settings.artifacts}"]
    if not auth_required:
        lines.append("  auth:           single-user mode (loopback only, no users): every call acts as 'local'."
                     " Create a user to require tokens.")
    elif users_exist:
        lines.append("  auth:           required (Authorization: Bearer <token>, or basic auth with user and token)")
    else:
        lines.append("  auth:           required, but no users exist yet: run `capstan users create NAME --admin`"
                     " and `capstan tokens create --user NAME`")
    return lines


def bind_socket(config: Any, host: str, port: int) -> socket.socket:
    """uvicorn's bind, with its logged error turned into one ``error: ...`` line."""
    import logging

    messages: list[str] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    logger = logging.getLogger("uvicorn.error")
    handler, propagate = Capture(level=logging.ERROR), logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        sock: socket.socket = config.bind_socket()
    except SystemExit:
        reason = messages[-1] if messages else "the address cannot be bound"
        raise click.ClickException(f"cannot listen on {host}:{port}: {reason}") from None
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate
    return sock


def free_tcp_port(host: str, port: int, *, what: str) -> int:
    """``port`` on ``host`` if nothing listens there now (a free one for 0): binds a probe socket and closes it.
    Raises a one-line `click.ClickException` naming ``what`` when the port is taken or the address is not here."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise click.ClickException(f"cannot listen for {what} on {host}:{port}: {exc.strerror or exc}") from None
        return int(probe.getsockname()[1])


def uvicorn_options(host: str, port: int, *, access_log: bool = False, log_level: str = "warning",
                    tls: TlsOptions | None = None, proxy_headers: bool = True) -> dict[str, Any]:
    """The `uvicorn.Config` options every Capstan server uses: TCP_NODELAY on each connection, secrets redacted from
    the logs, the lifespan run, a 10 s graceful shutdown, and HTTPS with ``tls``.

    ``proxy_headers=False`` leaves out uvicorn's middleware that takes the client's address and scheme from
    ``X-Forwarded-For``/``X-Forwarded-Proto`` (sent from a trusted address, loopback by default): ``capstan serve``
    needs neither, and skips its per-request cost."""
    options = {"host": host, "port": port, "http": protocol_class(), "access_log": access_log,
               "log_level": log_level, "log_config": log_config(log_level), "lifespan": "on",
               "timeout_graceful_shutdown": 10, "proxy_headers": proxy_headers}
    return options | (tls.uvicorn_options() if tls is not None else {})


def run_uvicorn(config: Any, sock: socket.socket) -> int:
    """Serve ``config``'s app on the bound ``sock`` until SIGINT/SIGTERM; returns 0, or 3 when the app's start-up
    (its lifespan) failed. This is what each worker process runs."""
    import uvicorn

    from capstan.server.staged import StagedApp

    server = uvicorn.Server(config)
    staged = config.app if isinstance(config.app, StagedApp) else None
    if staged is not None:  # an application that fails to build or start stops the server
        staged.on_failure = lambda: setattr(server, "should_exit", True)
    with contextlib.suppress(KeyboardInterrupt):  # uvicorn re-raises the Ctrl-C it handled, once shut down
        server.run(sockets=[sock])
    return 0 if server.started and not (staged is not None and staged.failed) else 3


def _unbuilt() -> None:  # pragma: no cover - never called: the Config that binds the socket serves nothing
    raise RuntimeError("not an application")


def serve_workers(sock: socket.socket, workers: int, worker_main: Callable[[], int], *, name: str) -> None:
    """Run ``worker_main`` on ``sock``: in this process with one worker, else in ``workers`` forked processes
    supervised by `capstan.server.prefork.PreforkSupervisor`. Returns once stopped by SIGINT or SIGTERM."""
    from capstan.server.prefork import PreforkSupervisor

    freeze_startup_objects()  # before forking, so the children share these pages and never rewrite them
    code = worker_main() if workers == 1 else PreforkSupervisor(sock, workers, worker_main, name=name).run()
    if code:
        raise click.ClickException(f"{name} did not start (exit status {code}); see the log above")


def serve(settings: Settings, host: str = "127.0.0.1", port: int = 8080, workers: int = 1, *,
          access_log: bool = False, log_level: str = "warning", tls: TlsOptions | None = None,
          grpc: GrpcOptions | None = None) -> None:
    """Serve the Capstan API until interrupted.

    The listening socket is bound here, before anything is printed, so a port that is taken fails at once;
    ``port=0`` picks a free port (the start-up line says which). With ``workers > 1`` the worker processes are
    forked from this one (`serve_workers`), and each builds its own app and database connections. With ``grpc``
    (its port already chosen: every worker listens on it, SO_REUSEPORT) each worker also serves the managed
    deployments over OIP v2 gRPC.
    """
    import uvicorn

    from capstan.auth.policy import auth_required
    from capstan.server.staged import StagedApp, store_probe
    from capstan.server.tls import plaintext_warning
    from capstan.services import Services

    if workers < 1:
        raise click.BadParameter("must be at least 1", param_hint="--workers")
    services = Services.open(settings)  # applies pending migrations once, before any worker starts
    users_exist = services.auth.users_exist()
    options = uvicorn_options(host, port, access_log=access_log, log_level=log_level, tls=tls)
    if workers > 1:
        services.close()  # each worker opens its own connections: a pooled one must not cross a fork
    # Used here only to bind the socket (and set up logging); each worker makes its own Config with its app.
    sock = bind_socket(uvicorn.Config(_unbuilt, **options), host, port)
    bound_port = sock.getsockname()[1]
    required = auth_required(bind_host=host, users_exist=users_exist)
    for line in describe(settings, host, bound_port, workers, auth_required=required, users_exist=users_exist,
                         tls=tls):
        click.echo(line)
    if grpc is not None:
        click.echo(f"  deployments:    OIP v2 over gRPC on {grpc.address}{' (TLS)' if tls is not None else ''}")
    warning = plaintext_warning(host, tls=tls, auth_required=required, what="capstan server")
    if warning:
        click.echo(warning, err=True)
    sys.stdout.flush()

    def worker_main() -> int:
        # /health answers as soon as the socket is served; the application is built and started beside it
        # (decision 0750), and every other request waits for it.
        worker_services = services if workers == 1 else Services.open(settings, migrate=False)

        def build() -> Any:
            from capstan.server.app import create_app

            app = create_app(settings, services=worker_services, bind_host=host, grpc=grpc)
            freeze_startup_objects()
            return app

        staged = StagedApp(build, lambda: store_probe(worker_services))
        try:
            return run_uvicorn(uvicorn.Config(staged, **options), sock)
        finally:
            if workers > 1:
                worker_services.close()

    try:
        serve_workers(sock, workers, worker_main, name="capstan server")
    finally:
        if workers == 1:
            services.close()
