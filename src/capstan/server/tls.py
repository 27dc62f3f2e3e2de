"""TLS for Capstan's servers: the certificate, key and optional client CA given on the command line.

`TlsOptions.from_cli` checks the files the way the server will use them (loading them into an `ssl.SSLContext`)
before anything is bound, so a missing, unreadable or mismatched file is one ``error: ...`` line at start-up rather
than a traceback in each worker. With a client CA, clients must present a certificate that CA signed (mutual TLS).
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click

from capstan.auth.policy import is_loopback_host
from capstan.errors import InvalidParameterValue

_Command = TypeVar("_Command", bound=Callable[..., Any])


def tls_click_options(command: _Command) -> _Command:
    """Add ``--tls-cert``, ``--tls-key`` and ``--tls-client-ca`` (parameters ``tls_cert``, ``tls_key``,
    ``tls_client_ca``) to a click command; `TlsOptions.from_cli` turns them into options."""
    for option in reversed((
        click.option("--tls-cert", default=None, metavar="PEM",
                     help="Serve HTTPS with this certificate (chain), PEM. Needs --tls-key."),
        click.option("--tls-key", default=None, metavar="PEM", help="Private key of --tls-cert, PEM, unencrypted."),
        click.option("--tls-client-ca", default=None, metavar="PEM",
                     help="Mutual TLS: require a client certificate signed by this CA (bundle), PEM."),
    )):
        command = option(command)
    return command


@dataclass(frozen=True)
class TlsOptions:
    """Files of a TLS server: its certificate chain and private key (PEM), and, for mutual TLS, the CA bundle that
    client certificates must chain to."""

    cert: Path
    key: Path
    client_ca: Path | None = None

    @classmethod
    def from_cli(cls, cert: str | None, key: str | None, client_ca: str | None) -> TlsOptions | None:
        """The options given as ``--tls-cert``, ``--tls-key`` and ``--tls-client-ca``, checked; ``None`` without
        any. Raises `InvalidParameterValue` naming the option when a file is missing, unreadable or does not fit."""
        if cert is None and key is None:
            if client_ca is not None:
                raise InvalidParameterValue("--tls-client-ca needs --tls-cert and --tls-key")
            return None
        if cert is None or key is None:
            raise InvalidParameterValue(f"{'--tls-key' if cert else '--tls-cert'} is needed with "
                                        f"{'--tls-cert' if cert else '--tls-key'}")
        options = cls(_readable(cert, "--tls-cert"), _readable(key, "--tls-key"),
                      _readable(client_ca, "--tls-client-ca") if client_ca is not None else None)
        options.server_context()
        return options

    def server_context(self) -> ssl.SSLContext:
        """The server-side context these files make (raises `InvalidParameterValue` naming the bad option)."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            context.load_cert_chain(self.cert, self.key, password=_no_password)
        except ssl.SSLError as exc:
            raise InvalidParameterValue(
                f"--tls-cert/--tls-key: {self.cert} and {self.key} are not a PEM certificate and its private key "
                f"(unencrypted): {_reason(exc)}") from None
        if self.client_ca is not None:
            try:
                context.load_verify_locations(cafile=self.client_ca)
            except ssl.SSLError as exc:
                raise InvalidParameterValue(
                    f"--tls-client-ca: {self.client_ca} is not a PEM CA certificate bundle: {_reason(exc)}") from None
            context.verify_mode = ssl.CERT_REQUIRED
        return context

    def uvicorn_options(self) -> dict[str, Any]:
        """The `uvicorn.Config` options that serve HTTPS with these files."""
        options: dict[str, Any] = {"ssl_certfile": str(self.cert), "ssl_keyfile": str(self.key)}
        if self.client_ca is not None:
            options |= {"ssl_ca_certs": str(self.client_ca), "ssl_cert_reqs": int(ssl.CERT_REQUIRED)}
        return options


def plaintext_warning(host: str, *, tls: TlsOptions | None, auth_required: bool, what: str) -> str | None:
    """The start-up warning for a server (``what``) that listens beyond loopback with auth but without TLS, so tokens
    and data cross the network in clear text; ``None`` when that is not the case."""
    if tls is not None or not auth_required or is_loopback_host(host):
        return None
    return (f"warning: {what} listens on {host or '*'} beyond loopback without TLS: tokens and data cross the "
            "network unencrypted (give --tls-cert and --tls-key)")


def _readable(path: str, option: str) -> Path:
    found = Path(path).expanduser()
    try:
        with found.open("rb") as handle:
            handle.read(1)
    except FileNotFoundError:
        raise InvalidParameterValue(f"{option}: {path} does not exist") from None
    except IsADirectoryError:
        raise InvalidParameterValue(f"{option}: {path} is a directory, not a PEM file") from None
    except OSError as exc:
        raise InvalidParameterValue(f"{option}: cannot read {path}: {exc.strerror or exc}") from None
    return found.resolve()


def _no_password() -> bytes:
    """Password callback: refuses encrypted keys instead of prompting on the terminal."""
    raise ssl.SSLError("the private key is encrypted; give an unencrypted key")


def _reason(exc: ssl.SSLError) -> str:
    """OpenSSL's reason (``KEY_VALUES_MISMATCH`` -> ``key values mismatch``) without the C source location."""
    if exc.reason:
        return str(exc.reason).replace("_", " ").lower()
    text = str(exc.args[1] if len(exc.args) > 1 else exc)
    return text.split(" (_ssl.c", 1)[0].removeprefix("[SSL] ").lower()
