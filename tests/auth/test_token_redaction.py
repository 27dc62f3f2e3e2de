"""Token secrets never reach the audit log, the access log or an error message, and never travel in a URL."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

import httpx
import pytest

from capstan.auth.audit import AuditWriter, redact_entry
from capstan.auth.records import AuditEntry
from capstan.auth.tokens import display_prefix, generate_secret, looks_like_secret, redact_secrets
from capstan.server.runner import RedactSecretsFilter, log_config
from helpers.server import ServerProcess, start_server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """An auth-enabled loopback server (users exist) that writes an access log."""
    home = tmp_path_factory.mktemp("redaction")
    with start_server(home, args=["--access-log", "--log-level", "info"]) as srv:
        srv.cli("users", "create", "root", "--admin")
        srv.cli("users", "create", "bob")
        srv.cli("users", "create", "carol")
        yield srv


def _token(server: ServerProcess, user: str) -> str:
    return server.cli("tokens", "create", "--user", user).stdout.strip()


def _bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def _audit(server: ServerProcess, root: str) -> list[dict[str, object]]:
    response = httpx.get(f"{server.url}/api/v1/audit", headers=_bearer(root), timeout=30)
    assert response.status_code == 200, response.text
    return list(response.json()["entries"])


@pytest.fixture(scope="module")
def root(server: ServerProcess) -> str:
    return _token(server, "root")


def test_redaction_keeps_the_prefix_and_drops_the_rest() -> None:
    secret = generate_secret()
    assert looks_like_secret(secret) and looks_like_secret(f"/api/v1/tokens/{secret}?x=1")
    assert not looks_like_secret(display_prefix(secret)) and not looks_like_secret("cap_experiment")
    redacted = redact_secrets(f"DELETE /api/v1/tokens/{secret} and again {secret}")
    assert secret not in redacted and redacted.count(display_prefix(secret) + "...[redacted]") == 2
    assert redact_secrets("/api/v1/tokens/17") == "/api/v1/tokens/17"


def test_audit_writer_redacts_target_and_nested_detail() -> None:
    secret = generate_secret()
    stored: list[AuditEntry] = []

    class Sink:
        def record_audit(self, entries: Sequence[AuditEntry]) -> None:
            stored.extend(entries)

    writer = AuditWriter(Sink())
    writer.submit(AuditEntry(1, "bob", "DELETE /api/v1/tokens/{ref}", f"/api/v1/tokens/{secret}", "", 403,
                             {"path": f"/api/v1/tokens/{secret}", "nested": {"args": [secret, 3]}}))
    writer.close()
    assert len(stored) == 1
    assert secret not in repr(stored[0])
    assert stored[0].detail["nested"] == {"args": [display_prefix(secret) + "...[redacted]", 3]}
    assert redact_entry(stored[0]) == stored[0]


def test_refused_revoke_by_secret_leaves_no_secret_in_the_audit_log(server: ServerProcess, root: str) -> None:
    bob, carol = _token(server, "bob"), _token(server, "carol")
    refused = httpx.delete(f"{server.url}/api/v1/tokens/{bob}", headers=_bearer(carol), timeout=30)
    assert refused.status_code == 403, refused.text
    anonymous = httpx.delete(f"{server.url}/api/v1/tokens/{bob}", timeout=30)
    assert anonymous.status_code == 401
    # bob's token still works, and nothing stored or logged holds it
    assert httpx.get(f"{server.url}/api/v1/whoami", headers=_bearer(bob), timeout=30).json()["name"] == "bob"
    entries = _audit(server, root)
    attempts = [e for e in entries if str(e["action"]).startswith("DELETE ")
                and str(e["detail"].get("path", "")).startswith("/api/v1/tokens/")]  # type: ignore[attr-defined]  # untyped JSON value
    assert {e["status"] for e in attempts} >= {401, 403}
    assert bob not in repr(entries)
    assert any(display_prefix(bob) in repr(e) for e in attempts)
    assert bob not in server.startup_text  # the access log line shows the prefix only
    assert f"/api/v1/tokens/{display_prefix(bob)}...[redacted]" in server.startup_text


def test_unknown_secret_is_not_echoed_in_the_error(server: ServerProcess, root: str) -> None:
    ghost = generate_secret()
    response = httpx.delete(f"{server.url}/api/v1/tokens/{ghost}", headers=_bearer(root), timeout=30)
    assert response.status_code == 404
    assert ghost not in response.text and display_prefix(ghost) in response.json()["message"]


def test_owner_revoking_by_secret_is_audited_by_token_id(server: ServerProcess, root: str) -> None:
    bob = _token(server, "bob")
    done = httpx.delete(f"{server.url}/api/v1/tokens/{bob}", headers=_bearer(bob), timeout=30)
    assert done.status_code == 200, done.text
    token_id = done.json()["token"]["id"]
    mine = [e for e in _audit(server, root) if e["target"] == f"token/{token_id}"]
    assert mine and mine[-1]["status"] == 200 and mine[-1]["user"] == "bob"
    assert bob not in repr(mine)


def test_cli_revoke_sends_only_the_prefix(server: ServerProcess, root: str) -> None:
    bob = _token(server, "bob")
    result = server.remote_cli("tokens", "revoke", bob, token=bob)
    assert "revoked token" in result.stdout
    assert httpx.get(f"{server.url}/api/v1/whoami", headers=_bearer(bob), timeout=30).status_code == 401
    assert bob not in server.startup_text
    assert f"/api/v1/tokens/{display_prefix(bob)} " in server.startup_text  # the request line carried the prefix


def test_local_cli_revokes_by_secret(server: ServerProcess) -> None:
    secret = _token(server, "carol")
    assert "revoked token" in server.cli("tokens", "revoke", secret).stdout
    listed = server.cli("tokens", "list", "--user", "carol", "--json").stdout
    assert secret not in listed and '"revoked"' in listed


def test_log_filter_redacts_access_log_arguments() -> None:
    secret = generate_secret()
    record = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
                               ("127.0.0.1:5", "DELETE", f"/api/v1/tokens/{secret}", "1.1", 403), None)
    assert RedactSecretsFilter().filter(record)
    assert secret not in record.getMessage() and display_prefix(secret) in record.getMessage()
    config = log_config("info")
    assert all("redact_secrets" in h["filters"] for h in config["handlers"].values())
