"""Server and administration commands: ``server``, ``users``, ``tokens``, ``audit``, ``events``, ``gc``, ``db``.

``users``, ``tokens``, ``audit`` and ``events`` act on the local stores, or on the server named by ``CAPSTAN_URL``
(authenticating with ``CAPSTAN_TOKEN``) when it is set. ``server``, ``gc`` and ``db`` always act on the local
stores named by ``CAPSTAN_HOME`` / ``CAPSTAN_DB_URL``.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

import click

from capstan.cli.context import cli_services, cli_settings
from capstan.server.tls import tls_click_options

if TYPE_CHECKING:
    from capstan.artifacts.store import ArtifactStore
    from capstan.auth.policy import TokenScope
    from capstan.services import Services


# -- output helpers -----------------------------------------------------------------------------------------
def _when(ms: int | None) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000).strftime("%Y-%m-%d %H:%M:%S")


def _table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """Left-aligned columns separated by two spaces; the last column is not padded."""
    cells = [[str(h) for h in headers], *[["-" if c is None else str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(cell.ljust(widths[i]) if i < len(row) - 1 else cell for i, cell in enumerate(row))
             for row in cells]
    return "\n".join(line.rstrip() for line in lines)


def _print_json(value: object) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=True))


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


# -- where admin calls go: the local stores, or a server -------------------------------------------------------
class _Admin(Protocol):
    def list_users(self) -> list[dict[str, Any]]: ...
    def create_user(self, name: str, admin: bool) -> dict[str, Any]: ...
    def update_user(self, name: str, *, admin: bool | None = None,
                    disabled: bool | None = None) -> dict[str, Any]: ...
    def grant(self, name: str, project: str, role: str) -> dict[str, Any]: ...
    def revoke_role(self, name: str, project: str) -> None: ...
    def list_tokens(self, user: str | None) -> list[dict[str, Any]]: ...
    def create_token(self, user: str, name: str, expires: str | None,
                     scope: TokenScope | None = None) -> dict[str, Any]: ...
    def revoke_token(self, ref: str) -> dict[str, Any]: ...
    def audit(self, user: str | None, since: str | None, project: str | None,
              limit: int) -> list[dict[str, Any]]: ...
    def events(self, kind: str | None, object_id: str | None, since_id: int,
               limit: int) -> tuple[list[dict[str, Any]], int]: ...


class _LocalAdmin:
    """Admin calls straight against the metadata store (whoever can open the store is its administrator)."""

    def __init__(self, services: Services) -> None:
        self._svc = services

    def list_users(self) -> list[dict[str, Any]]:
        return [u.to_dict() for u in self._svc.auth.list_users()]

    def create_user(self, name: str, admin: bool) -> dict[str, Any]:
        return self._svc.auth.create_user(name, admin=admin).to_dict()

    def update_user(self, name: str, *, admin: bool | None = None, disabled: bool | None = None) -> dict[str, Any]:
        user = self._svc.auth.get_user(name)
        if admin is not None:
            user = self._svc.auth.set_admin(name, admin)
        if disabled is not None:
            user = self._svc.auth.set_disabled(name, disabled)
        return user.to_dict()

    def grant(self, name: str, project: str, role: str) -> dict[str, Any]:
        return self._svc.auth.grant(name, project, role).to_dict()

    def revoke_role(self, name: str, project: str) -> None:
        self._svc.auth.revoke_role(name, project)

    def list_tokens(self, user: str | None) -> list[dict[str, Any]]:
        now = self._svc.clock()
        return [t.to_dict(now) for t in self._svc.auth.list_tokens(user)]

    def create_token(self, user: str, name: str, expires: str | None,
                     scope: TokenScope | None = None) -> dict[str, Any]:
        from capstan.auth.durations import parse_duration

        expires_ms = parse_duration(expires, field_name="--expires") if expires else None
        issued = self._svc.auth.create_token(user, name=name, expires_in_ms=expires_ms,
                                             scope=str(scope) if scope else None)
        return {"token": issued.token.to_dict(self._svc.clock()), "secret": issued.secret}

    def revoke_token(self, ref: str) -> dict[str, Any]:
        return self._svc.auth.revoke_token(ref).to_dict(self._svc.clock())

    def audit(self, user: str | None, since: str | None, project: str | None, limit: int) -> list[dict[str, Any]]:
        from capstan.auth.durations import parse_duration

        since_ms = self._svc.clock() - parse_duration(since, field_name="--since") if since else None
        return [e.to_dict() for e in self._svc.auth.list_audit(user=user, since=since_ms, project=project,
                                                                limit=limit)]

    def events(self, kind: str | None, object_id: str | None, since_id: int,
               limit: int) -> tuple[list[dict[str, Any]], int]:
        from capstan.server.admin_api import event_to_dict

        found = self._svc.events.list(kind, object_id, since_id=since_id, limit=limit)
        return [event_to_dict(e) for e in found], (found[-1].id if found else since_id)


class _RemoteAdmin:
    """Admin calls through a server's ``/api/v1`` admin routes."""

    def __init__(self, url: str, token: str | None) -> None:
        import httpx

        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._client = httpx.Client(base_url=f"{url.rstrip('/')}/api/v1", headers=headers, timeout=30)

    def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        import httpx

        from capstan.errors import StoreUnavailable, error_from_body

        try:
            response = self._client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise StoreUnavailable(f"cannot reach the server at {self._client.base_url}: {exc}") from None
        try:
            body = response.json()
        except ValueError:
            body = {}
        if response.status_code >= 400:
            raise error_from_body(str(body.get("error_code", "INTERNAL_ERROR")),
                                  str(body.get("message", response.text[:200])), response.status_code)
        return body if isinstance(body, dict) else {}

    def list_users(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/users")["users"])

    def create_user(self, name: str, admin: bool) -> dict[str, Any]:
        return dict(self._call("POST", "/users", json={"name": name, "admin": admin})["user"])

    def update_user(self, name: str, *, admin: bool | None = None, disabled: bool | None = None) -> dict[str, Any]:
        body = {k: v for k, v in (("admin", admin), ("disabled", disabled)) if v is not None}
        return dict(self._call("PATCH", f"/users/{name}", json=body)["user"])

    def grant(self, name: str, project: str, role: str) -> dict[str, Any]:
        return dict(self._call("PUT", f"/projects/{project}/members/{name}", json={"role": role})["member"])

    def revoke_role(self, name: str, project: str) -> None:
        self._call("DELETE", f"/projects/{project}/members/{name}")

    def list_tokens(self, user: str | None) -> list[dict[str, Any]]:
        return list(self._call("GET", "/tokens", params={"user": user} if user else {})["tokens"])

    def create_token(self, user: str, name: str, expires: str | None,
                     scope: TokenScope | None = None) -> dict[str, Any]:
        if scope is None:
            return self._call("POST", "/tokens", json={"user": user, "name": name, "expires": expires})
        return self._call("POST", "/tokens", json={"user": user, "name": name, "expires": expires,
                                                   "deployment": scope.deployment},
                          headers={"X-Capstan-Project": scope.project})

    def revoke_token(self, ref: str) -> dict[str, Any]:
        from urllib.parse import quote

        from capstan.auth.tokens import display_prefix, looks_like_secret

        ref = ref.strip()
        if looks_like_secret(ref):  # a secret never goes into a URL: the server is asked by its prefix
            ref = display_prefix(ref)
        return dict(self._call("DELETE", f"/tokens/{quote(ref, safe='')}")["token"])

    def audit(self, user: str | None, since: str | None, project: str | None, limit: int) -> list[dict[str, Any]]:
        params = {k: v for k, v in (("user", user), ("since", since), ("project", project)) if v is not None}
        return list(self._call("GET", "/audit", params={**params, "limit": limit})["entries"])

    def events(self, kind: str | None, object_id: str | None, since_id: int,
               limit: int) -> tuple[list[dict[str, Any]], int]:
        params: dict[str, Any] = {"since_id": since_id, "limit": limit}
        if kind is not None:
            params["kind"] = kind
        if object_id is not None:
            params["object_id"] = object_id
        body = self._call("GET", "/events", params=params)
        return list(body["events"]), int(body["next_since_id"])


def _admin() -> _Admin:
    settings = cli_settings()
    if settings.url:
        return _RemoteAdmin(settings.url, settings.token)
    return _LocalAdmin(cli_services())


# -- capstan server -----------------------------------------------------------------------------------------
@click.command("server")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. Anything but a loopback address requires credentials on every call.")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535),
              help="TCP port (0 picks a free one and prints it).")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 256),
              help="Worker processes.")
@click.option("--access-log/--no-access-log", default=False, show_default=True, help="Log every request.")
@click.option("--log-level", default="warning", show_default=True,
              type=click.Choice(["critical", "error", "warning", "info", "debug"]), help="uvicorn's log level.")
@click.option("--allowed-origin", "allowed_origins", multiple=True, metavar="ORIGIN",
              help="A web origin (https://ui.example.com) whose pages may call the server (CORS); repeatable. "
                   "Adds to CAPSTAN_ALLOWED_ORIGINS.")
@click.option("--allowed-host", "allowed_hosts", multiple=True, metavar="HOST",
              help="A Host header value the server answers to (name or name:port, * for any); repeatable. "
                   "Adds to CAPSTAN_ALLOWED_HOSTS.")
@click.option("--grpc-port", default=None, type=click.IntRange(0, 65535),
              help="Also serve every deployment over OIP v2 gRPC on this port (0 picks a free one), with the same "
                   "TLS and auth. Needs the grpc extra.")
@tls_click_options
def server_cmd(host: str, port: int, workers: int, access_log: bool, log_level: str,
               allowed_origins: tuple[str, ...], allowed_hosts: tuple[str, ...], grpc_port: int | None,
               tls_cert: str | None, tls_key: str | None, tls_client_ca: str | None) -> None:
    """Serve the Capstan REST API (/api/v1), the MLflow-compatible API, /health and /metrics.

    A server on a loopback address with no users runs in single-user mode; otherwise every call except
    /health needs a token (`capstan tokens create`). Browser pages of other origins are refused unless allowed
    with --allowed-origin; a loopback server answers only to localhost, 127.0.0.1 and [::1] unless
    --allowed-host names more. With --tls-cert and --tls-key it serves HTTPS; --tls-client-ca also requires client
    certificates. Worker processes (--workers) are forked from one parent that keeps them running. With
    --grpc-port every worker also answers OIP v2 over gRPC for the deployments (model name = deployment name).
    """
    from dataclasses import replace

    from capstan.server.runner import free_tcp_port, serve
    from capstan.server.tls import TlsOptions
    from capstan.settings import parse_hosts, parse_origins

    tls = TlsOptions.from_cli(tls_cert, tls_key, tls_client_ca)
    grpc = None
    if grpc_port is not None:  # every worker listens on this one port (SO_REUSEPORT): port 0 is resolved here, once
        from capstan.serving.grpc_server import GrpcOptions

        grpc = GrpcOptions(port=free_tcp_port(host, grpc_port, what="gRPC"), host=host,
                           tls_cert=tls.cert if tls else None, tls_key=tls.key if tls else None,
                           tls_client_ca=tls.client_ca if tls else None)
        grpc.validate()  # a missing grpc extra is one line here, before anything listens
    settings = cli_settings()
    origins = parse_origins(",".join(allowed_origins), field_name="--allowed-origin")
    hosts = parse_hosts(",".join(allowed_hosts), field_name="--allowed-host")
    settings = replace(settings, allowed_origins=settings.allowed_origins + origins,
                       allowed_hosts=settings.allowed_hosts + hosts)
    serve(settings, host, port, workers, access_log=access_log, log_level=log_level, tls=tls, grpc=grpc)


# -- capstan users ------------------------------------------------------------------------------------------
@click.group("users")
def users() -> None:
    """Manage users, server admins and project roles."""


@users.command("create")
@click.argument("name")
@click.option("--admin", is_flag=True, help="Make the user a server admin (every permission everywhere).")
def users_create(name: str, admin: bool) -> None:
    """Create user NAME (then issue a token with `capstan tokens create --user NAME`)."""
    user = _admin().create_user(name, admin)
    click.echo(f"created user {user['name']}" + (" (server admin)" if user["is_admin"] else ""))


@users.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def users_list(as_json: bool) -> None:
    """List users, their admin flag and their project roles."""
    found = _admin().list_users()
    if as_json:
        _print_json(found)
        return
    rows = [(u["name"], "yes" if u["is_admin"] else "no", "yes" if u["disabled"] else "no", _when(u["created_at"]),
             ", ".join(f"{p}:{r}" for p, r in sorted(u["roles"].items())) or "-") for u in found]
    click.echo(_table(("NAME", "ADMIN", "DISABLED", "CREATED", "ROLES"), rows))


@users.command("grant")
@click.argument("name")
@click.option("--project", required=True, help="Project the role applies to (created if needed).")
@click.option("--role", required=True, type=click.Choice(["viewer", "editor", "admin"]),
              help="viewer: read; editor: read and write; admin: everything in the project.")
def users_grant(name: str, project: str, role: str) -> None:
    """Give user NAME a role in a project (replacing the role it had there)."""
    member = _admin().grant(name, project, role)
    click.echo(f"{member['user']} is now {member['role']} in project {member['project']}")


@users.command("revoke")
@click.argument("name")
@click.option("--project", required=True, help="Project to remove the user from.")
def users_revoke(name: str, project: str) -> None:
    """Remove user NAME's role in a project."""
    _admin().revoke_role(name, project)
    click.echo(f"{name} no longer has a role in project {project}")


@users.command("set-admin")
@click.argument("name")
@click.option("--off", is_flag=True, help="Take server-admin rights away instead.")
def users_set_admin(name: str, off: bool) -> None:
    """Make user NAME a server admin (or, with --off, no longer one)."""
    _admin().update_user(name, admin=not off)
    click.echo(f"{name} is {'no longer' if off else 'now'} a server admin")


@users.command("disable")
@click.argument("name")
def users_disable(name: str) -> None:
    """Disable user NAME: all its tokens stop working (within a second on running servers)."""
    _admin().update_user(name, disabled=True)
    click.echo(f"disabled user {name}")


@users.command("enable")
@click.argument("name")
def users_enable(name: str) -> None:
    """Re-enable a disabled user."""
    _admin().update_user(name, disabled=False)
    click.echo(f"enabled user {name}")


# -- capstan tokens -----------------------------------------------------------------------------------------
@click.group("tokens")
def tokens() -> None:
    """Issue, list and revoke API tokens."""


@tokens.command("create")
@click.option("--user", "user", required=True, help="User the token acts as.")
@click.option("--name", default="", help="A label, e.g. the machine or job that uses the token.")
@click.option("--expires", default=None, help="Lifetime such as 30d, 12h or 1h30m (default: never expires).")
@click.option("--deployment", default=None,
              help="Scope the token to this deployment: it may then only call /deployments/NAME/... (inference "
                   "and feedback), and only with the user's own read access.")
@click.option("--project", default=None, help="The deployment's project (default: CAPSTAN_PROJECT).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (with the secret).")
def tokens_create(user: str, name: str, expires: str | None, deployment: str | None, project: str | None,
                  as_json: bool) -> None:
    """Issue a token. The secret is printed on stdout once and cannot be shown again."""
    from capstan.auth.policy import parse_token_scope

    if project is not None and deployment is None:
        raise click.BadParameter("only means something with --deployment", param_hint="--project")
    scope = None
    if deployment is not None:
        scope = parse_token_scope(f"deployment:{project or cli_settings().project}/{deployment}",
                                  field_name="--deployment")
    issued = _admin().create_token(user, name, expires, scope)
    if as_json:
        _print_json(issued)
        return
    token = issued["token"]
    click.echo(issued["secret"])
    expiry = f"expires {_when(token['expires_at'])}" if token["expires_at"] else "never expires"
    if token.get("scope"):
        expiry += f", scoped to {token['scope']} (only /deployments/{scope.deployment if scope else ''}/...)"
    click.echo(f"token {token['id']} ({token['prefix']}...) for user {token['user']}, {expiry}. Store it now: it "
               "is not shown again. Use it as CAPSTAN_TOKEN or MLFLOW_TRACKING_TOKEN, or as the basic-auth "
               f"password with MLFLOW_TRACKING_USERNAME={token['user']}.", err=True)


@tokens.command("list")
@click.option("--user", default=None, help="Only this user's tokens (default: all tokens; on a remote server, "
                                           "your own).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def tokens_list(user: str | None, as_json: bool) -> None:
    """List tokens (never their secrets)."""
    found = _admin().list_tokens(user)
    if as_json:
        _print_json(found)
        return
    rows = [(t["id"], f"{t['prefix']}...", t["user"], t["name"] or "-", _when(t["created_at"]),
             _when(t["expires_at"]) if t["expires_at"] else "never", _when(t["last_used_at"]), t["state"])
            for t in found]
    click.echo(_table(("ID", "PREFIX", "USER", "NAME", "CREATED", "EXPIRES", "LAST USED", "STATE"), rows))


@tokens.command("revoke")
@click.argument("token_ref", metavar="TOKEN_ID_OR_PREFIX")
def tokens_revoke(token_ref: str) -> None:
    """Revoke a token by its id or its prefix (cap_...). Given the secret itself, only its prefix is sent to a
    server (secrets never travel in URLs); against the local stores the secret names the token exactly."""
    token = _admin().revoke_token(token_ref)
    click.echo(f"revoked token {token['id']} ({token['prefix']}...) of user {token['user']}")


# -- capstan audit ------------------------------------------------------------------------------------------
@click.command("audit")
@click.option("--user", default=None, help="Only calls by this user.")
@click.option("--since", default=None, help="Only the last period, e.g. 1d, 12h, 30m.")
@click.option("--project", default=None, help="Only calls in this project.")
@click.option("--limit", default=1000, show_default=True, type=click.IntRange(1, 100_000),
              help="Show at most this many (the newest).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def audit(user: str | None, since: str | None, project: str | None, limit: int, as_json: bool) -> None:
    """Show the audit log of mutating API calls, oldest first."""
    entries = _admin().audit(user, since, project, limit)
    if as_json:
        _print_json(entries)
        return
    rows = [(_when(e["time"]), e["user"], e["action"], e["target"], e["project"] or "-", e["status"])
            for e in entries]
    click.echo(_table(("TIME", "USER", "ACTION", "TARGET", "PROJECT", "STATUS"), rows))


# -- capstan events -----------------------------------------------------------------------------------------
EVENT_KINDS = ("experiment", "run", "model", "workload", "pipeline-run", "step", "schedule")
"""Every kind of object the event log holds events for (tracking, registry, queue, pipelines, schedules)."""
_EVENT_HEADERS = ("TIME", "TYPE", "REASON", "MESSAGE")
_FOLLOW_WIDTHS = (19, 7, 22)


def _event_row(event: dict[str, Any], with_object: bool) -> list[str]:
    row = [_when(event["time"]), event["type"], event["reason"], event["message"]]
    if with_object:
        row.insert(1, f"{event['kind']}/{event['object_id']}")
    return row


@click.command("events")
@click.argument("ref", metavar="KIND[/ID]")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (one object per line with --follow).")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new events until interrupted.")
@click.option("--limit", default=1000, show_default=True, type=click.IntRange(1, 10_000),
              help="Events per read.")
@click.option("--interval", default=1.0, show_default=True, type=click.FloatRange(0.05, 60),
              help="Seconds between reads with --follow.")
def events(ref: str, as_json: bool, follow: bool, limit: int, interval: float) -> None:
    """Show the event timeline of an object, e.g. `capstan events run/3f2a...` (or of every object of a KIND)."""
    kind, _, object_id = ref.partition("/")
    if not kind:
        raise click.UsageError("KIND[/ID] must name a kind, e.g. run/<run id>")
    if kind not in EVENT_KINDS:
        raise click.UsageError(f"unknown event kind {kind!r} (kinds: {', '.join(EVENT_KINDS)}), e.g. run/<run id>")
    admin = _admin()
    found, since_id = admin.events(kind, object_id or None, 0, limit)
    with_object = not object_id
    headers = list(_EVENT_HEADERS)
    if with_object:
        headers.insert(1, "OBJECT")
    if not follow:
        if as_json:
            _print_json(found)
        elif not found:
            click.echo(f"no events for {ref}", err=True)
        else:
            click.echo(_table(headers, (_event_row(e, with_object) for e in found)))
        return
    widths = list(_FOLLOW_WIDTHS) if not with_object else [_FOLLOW_WIDTHS[0], 30, *_FOLLOW_WIDTHS[1:]]

    def emit(batch: list[dict[str, Any]]) -> None:
        for event in batch:
            if as_json:
                click.echo(json.dumps(event, sort_keys=True))
            else:
                row = _event_row(event, with_object)
                click.echo("  ".join([*(c.ljust(w) for c, w in zip(row, widths, strict=False)), row[-1]]))
        sys.stdout.flush()

    if not as_json:
        click.echo("  ".join([*(h.ljust(w) for h, w in zip(headers, widths, strict=False)), headers[-1]]))
    try:
        emit(found)
        while True:
            time.sleep(interval)
            found, since_id = admin.events(kind, object_id or None, since_id, limit)
            emit(found)
    except KeyboardInterrupt:
        return


# -- capstan gc ---------------------------------------------------------------------------------------------
def _covers(outer: str, inner: str) -> bool:
    return inner == outer or inner.startswith(outer + "/")


def _artifact_plan(store: ArtifactStore, prefixes: Sequence[str],
                   keep: Sequence[str]) -> tuple[list[str], list[str], int]:
    """(paths or prefixes to delete, prefixes kept because model versions use them, files to delete)."""
    delete: list[str] = []
    kept: list[str] = []
    files = 0
    for prefix in prefixes:
        if any(_covers(k, prefix) for k in keep):
            kept.append(prefix)
            continue
        inside = [k for k in keep if _covers(prefix, k)]
        listing = store.list(prefix, recursive=True)
        if not inside:
            delete.append(prefix)
            files += len(listing)
            continue
        kept.extend(inside)
        for item in listing:
            if not any(_covers(k, item.path) for k in inside):
                delete.append(item.path)
                files += 1
    return delete, kept, files


def _format_bytes(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TB"  # pragma: no cover - the loop returns at GB


@click.command("gc")
@click.option("--older-than", default=None,
              help="Only purge what was deleted at least this long ago, e.g. 30d (default: everything deleted).")
@click.option("--dry-run", is_flag=True, help="Show what would be removed without removing anything.")
def gc(older_than: str | None, dry_run: bool) -> None:
    """Permanently remove soft-deleted experiments and runs, then the artifacts nothing references any more.

    Artifacts that registered model versions still point at are kept.
    """
    from capstan.auth.durations import parse_duration

    age_ms = parse_duration(older_than, field_name="--older-than") if older_than else None
    services = cli_services()
    report = services.tracking.purge_deleted(older_than_ms=age_ms, dry_run=dry_run)
    keep = services.registry.referenced_artifact_prefixes()
    delete, kept, files = _artifact_plan(services.artifacts, report.artifact_prefixes, keep)
    verb = "would remove" if dry_run else "removed"
    click.echo(f"{verb} {report.experiments} experiment(s) and {report.runs} run(s)")
    if not dry_run:
        for path in delete:
            services.artifacts.delete_prefix(path)
    if kept:
        click.echo(f"kept artifacts under {len(kept)} prefix(es) still used by model versions: "
                   + ", ".join(sorted(set(kept))))
    click.echo(f"{verb} {files} artifact file(s) under {len(report.artifact_prefixes)} prefix(es)")
    if dry_run:
        preview = services.artifacts.preview_garbage(delete)
        click.echo(f"would free {preview.blobs_removed} stored blob(s), {_format_bytes(preview.bytes_freed)}")
        return
    freed = services.artifacts.collect_garbage()
    click.echo(f"freed {freed.blobs_removed} stored blob(s), {_format_bytes(freed.bytes_freed)}")


# -- capstan db ---------------------------------------------------------------------------------------------
@click.group("db")
def db() -> None:
    """Metadata-store maintenance."""


@db.command("upgrade")
def db_upgrade() -> None:
    """Apply pending schema migrations and print the current revisions."""
    from sqlalchemy.engine import make_url

    from capstan.store.engine import create_store_engine, current_revisions, script_heads, upgrade

    settings = cli_settings()
    engine = create_store_engine(settings, migrate=False)
    try:
        before = current_revisions(engine)
        applied = upgrade(engine, settings)
        after = current_revisions(engine)
    finally:
        engine.dispose()
    click.echo(f"metadata store: {make_url(settings.db_url).render_as_string(hide_password=True)}")
    if applied:
        click.echo(f"applied migrations: {', '.join(sorted(after - before)) or 'heads moved'}")
    else:
        click.echo("already up to date")
    click.echo(f"current revisions: {', '.join(sorted(after)) or '-'} (heads: {', '.join(sorted(script_heads()))})")


def register(cli: click.Group) -> None:
    """Add this module's commands to ``cli``."""
    for command in (server_cmd, users, tokens, audit, events, gc, db):
        cli.add_command(command)

