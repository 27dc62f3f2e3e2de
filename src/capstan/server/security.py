"""Authentication, authorization and the audit log for the HTTP server.

Every request except ``GET /health`` and ``GET /`` passes `SecurityMiddleware`, which resolves the caller into a
`Principal` (or answers 401) and, once the response is sent, queues an audit entry for mutating calls. Handlers
then call `require` with the permission they need and the project of the object they touch:

    principal = require(request, "write", project, target=f"run/{run_id}")

Credentials: ``Authorization: Bearer <token>`` (MLflow's ``MLFLOW_TRACKING_TOKEN``, Capstan's ``CAPSTAN_TOKEN``)
or HTTP basic auth with the user name and a token as the password (``MLFLOW_TRACKING_USERNAME``/``PASSWORD``).
On ``/ui/...`` and ``/api/v1/...`` a request without an ``Authorization`` header may use the web UI's session
cookie instead (`capstan.ui.session`): a page request without a valid one is redirected to the login page, and a
mutating request authenticated by the cookie must carry the session's CSRF token (403 otherwise).

Token lookups are cached in-process for `CACHE_TTL_S` (one second), so a token that is revoked, or a user that is
disabled, stops working within a second in every server process, and at once in the process that served the
admin API call that made the change.

Outside it, `BrowserGuardMiddleware` keeps web pages from using the server through the user's browser: it checks
the ``Host`` header (DNS rebinding), refuses foreign ``Origin``s and cross-site ``Sec-Fetch-Site`` requests,
answers CORS preflights for allowed origins, and requires ``application/json`` on routes that parse JSON bodies.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from capstan.auth.audit import AuditWriter
from capstan.auth.policy import LOCAL_PRINCIPAL, Permission, Principal, auth_required, authorize, parse_token_scope
from capstan.auth.ports import AuthStore
from capstan.auth.records import AuditEntry, Credential
from capstan.auth.tokens import display_prefix, hash_secret
from capstan.clock import Clock
from capstan.errors import CapstanError, PermissionDenied, Unauthenticated
from capstan.server.asgi import ASGIApp, Message, Receive, Scope, Send
from capstan.server.metrics import StatusRecorder
from capstan.store.auth_sql import TOUCH_INTERVAL_MS
from capstan.ui import session as ui_session

log = logging.getLogger("capstan.server.security")

CACHE_TTL_S = 1.0
CACHE_MAX_ENTRIES = 10_000
PROJECT_HEADER = "x-capstan-project"
DEFAULT_PROJECT = "default"
PUBLIC_PATHS = frozenset({"/health", "/"})  # "/" only names the server and links to the docs
MUTATING_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})

PRINCIPAL_KEY = "capstan.principal"
PROJECT_KEY = "capstan.audit_project"
TARGET_KEY = "capstan.audit_target"
PERMISSIONS_KEY = "capstan.permissions"

_MISSING = ("authentication required: send 'Authorization: Bearer <token>' (CAPSTAN_TOKEN or MLFLOW_TRACKING_TOKEN)"
            " or HTTP basic auth with your user name and a token as the password")


@dataclass(frozen=True, slots=True)
class _Cached:
    principal: Principal | None  # None: the credential is invalid, ``reason`` says why
    reason: str
    expires_at: int | None  # token expiry (ms), re-checked on every hit
    valid_until: float  # monotonic time after which the entry must be re-read


def _parse_authorization(header: str | None) -> tuple[str, str | None]:
    """``(token, basic_user)`` from an Authorization header; `Unauthenticated` when it is absent or malformed."""
    if not header:
        raise Unauthenticated(_MISSING)
    scheme, _, value = header.strip().partition(" ")
    value = value.strip()
    if scheme.lower() == "bearer" and value:
        return value, None
    if scheme.lower() == "basic" and value:
        try:
            decoded = base64.b64decode(value, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise Unauthenticated("malformed basic auth credential") from None
        user, sep, token = decoded.partition(":")
        if not sep or not token:
            raise Unauthenticated("basic auth needs your user name and a token as the password")
        return token, user
    raise Unauthenticated(_MISSING)


class Authenticator:
    """Turns an Authorization header into a `Principal`, caching lookups briefly.

    ``fast`` answers from memory when it can; ``authenticate`` may query the store and is meant to run in a
    worker thread. Both raise `Unauthenticated` for a missing, unknown, expired or revoked credential.
    """

    def __init__(self, store: AuthStore, *, bind_host: str, clock: Clock,
                 monotonic: Callable[[], float] = time.monotonic, ttl_s: float = CACHE_TTL_S) -> None:
        self._store = store
        self.bind_host = bind_host
        self._clock = clock
        self._monotonic = monotonic
        self._ttl = ttl_s
        self._lock = threading.Lock()
        self._cache: dict[str, _Cached] = {}
        self._required: tuple[bool, float] | None = None

    def invalidate(self) -> None:
        """Forget every cached lookup (after users, roles or tokens changed through this process)."""
        with self._lock:
            self._cache.clear()
            self._required = None

    def auth_required(self) -> bool:
        """Whether credentials are needed right now (re-checked at most once per cache period)."""
        now = self._monotonic()
        cached = self._required
        if cached is not None and cached[1] > now:
            return cached[0]
        required = auth_required(bind_host=self.bind_host, users_exist=self._store.users_exist())
        self._required = (required, now + self._ttl)
        return required

    def fast(self, header: str | None) -> Principal | None:
        """The principal if it can be decided without I/O, else None (call `authenticate`)."""
        cached_mode = self._required
        if cached_mode is None or cached_mode[1] <= self._monotonic():
            return None
        if not cached_mode[0]:
            return LOCAL_PRINCIPAL
        token, user = _parse_authorization(header)
        entry = self._cache.get(self._key(token, user))
        if entry is None or entry.valid_until <= self._monotonic():
            return None
        return self._check(entry, token)

    def authenticate(self, header: str | None) -> Principal:
        """The principal for ``header``, reading the store when the cache cannot answer."""
        if not self.auth_required():
            return LOCAL_PRINCIPAL
        token, user = _parse_authorization(header)
        key = self._key(token, user)
        entry = self._cache.get(key)
        if entry is None or entry.valid_until <= self._monotonic():
            entry = self._load(token, user)
            with self._lock:
                if len(self._cache) >= CACHE_MAX_ENTRIES:
                    self._cache.clear()
                self._cache[key] = entry
        return self._check(entry, token)

    async def resolve(self, header: str | None) -> Principal:
        """`fast` when it can answer, else `authenticate` in a worker thread (for callers on the event loop)."""
        principal = self.fast(header)
        if principal is None:
            principal = await run_in_threadpool(self.authenticate, header)
        return principal

    def _load(self, token: str, user: str | None) -> _Cached:
        valid_until = self._monotonic() + self._ttl
        cred = self._store.credential(token)
        if cred is None or (user is not None and user != cred.user):
            reason = "invalid user name or token" if user is not None else "invalid token"
            return _Cached(None, reason, None, valid_until)
        if cred.disabled:
            return _Cached(None, f"user {cred.user!r} is disabled", None, valid_until)
        if cred.revoked_at is not None:
            return _Cached(None, f"token {display_prefix(token)}... has been revoked", None, valid_until)
        self._touch(cred)
        scope = parse_token_scope(cred.scope) if cred.scope else None
        principal = Principal(cred.user, is_admin=cred.is_admin, roles=cred.roles, scope=scope)
        return _Cached(principal, "", cred.expires_at, valid_until)

    def _touch(self, cred: Credential) -> None:
        now = self._clock()
        if cred.last_used_at is None or now - cred.last_used_at >= TOUCH_INTERVAL_MS:
            try:
                self._store.touch_token(cred.token_id)
            except Exception:  # last-used bookkeeping must never fail a request
                log.warning("could not record the last use of token %d", cred.token_id, exc_info=True)

    def _check(self, entry: _Cached, token: str) -> Principal:
        if entry.principal is None:
            raise Unauthenticated(entry.reason)
        if entry.expires_at is not None and entry.expires_at <= self._clock():
            raise Unauthenticated(f"token {display_prefix(token)}... has expired")
        return entry.principal

    @staticmethod
    def _key(token: str, user: str | None) -> str:
        return hash_secret(token) if user is None else f"{hash_secret(token)}:{user}"


# -- what handlers call -------------------------------------------------------------------------------------
def _state(request: Request) -> dict[str, Any]:
    state: dict[str, Any] = request.scope.setdefault("state", {})
    return state


def current_principal(request: Request) -> Principal:
    """The authenticated caller of ``request`` (resolving it now when no middleware did)."""
    state = _state(request)
    principal = state.get(PRINCIPAL_KEY)
    if isinstance(principal, Principal):
        return principal
    authenticator: Authenticator = request.app.state.authenticator
    principal = authenticator.authenticate(request.headers.get("authorization"))
    state[PRINCIPAL_KEY] = principal
    return principal


def require(request: Request, permission: Permission, project: str | None, *,
            target: str | None = None) -> Principal:
    """Check that the caller holds ``permission`` in ``project`` and return it.

    ``project=None`` names a server-level object (users, tokens, the audit log): only server admins pass. The
    project (and ``target``, e.g. ``"run/<id>"``, when given) is recorded for the audit log even when the check
    fails. Raises `Unauthenticated` (401) or `PermissionDenied` (403); the app turns both into JSON errors.
    """
    state = _state(request)
    if project is not None:
        state[PROJECT_KEY] = project
    if target is not None:
        state[TARGET_KEY] = target
    state.setdefault(PERMISSIONS_KEY, set()).add(permission)
    principal = current_principal(request)
    authorize(principal, permission, project)
    return principal


def check_token_scope(principal: Principal, path: str) -> None:
    """Raise `PermissionDenied` when ``principal`` holds a deployment-scoped token that does not reach ``path``."""
    if principal.scope is not None and not principal.scope.allows_path(path):
        raise PermissionDenied(f"the token is scoped to {principal.scope}: it reaches only "
                               f"/deployments/{principal.scope.deployment}/...")


def request_project(request: Request) -> str:
    """The project a call acts in: the ``X-Capstan-Project`` header, or ``default``."""
    return request.headers.get(PROJECT_HEADER, "").strip() or DEFAULT_PROJECT


# -- the middleware -----------------------------------------------------------------------------------------
class SecurityMiddleware:
    """ASGI middleware: authenticate every non-public request and audit mutating ones.

    A POST/PUT/PATCH/DELETE is audited unless its handler declared it read-only by requiring nothing but
    ``read`` (MLflow's search endpoints are POSTs that change nothing). Rejected attempts are audited too.
    """

    def __init__(self, app: ASGIApp, *, authenticator: Authenticator, audit: AuditWriter, clock: Clock,
                 route_label: Callable[[Scope], str]) -> None:
        self.app = app
        self._auth = authenticator
        self._audit = audit
        self._clock = clock
        self._route_label = route_label

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in PUBLIC_PATHS or ui_session.is_public(scope["path"]):
            await self.app(scope, receive, send)
            return
        state: dict[str, Any] = scope.setdefault("state", {})
        header = _header(scope, b"authorization")
        session = None  # the web UI's session token, when the cookie is the credential
        if header is None and ui_session.cookie_applies(scope["path"]):
            session = ui_session.session_secret(_header(scope, b"cookie"))
            header = None if session is None else f"Bearer {session}"
        try:
            principal = await self._auth.resolve(header)
        except Unauthenticated as exc:
            if (header is None or session is not None) and ui_session.is_page(scope["path"]):
                await ui_session.send_login_redirect(scope, send, clear_cookie=session is not None)
                return
            await _send_json(send, exc.http_status, exc.to_dict(),
                             extra_headers=[(b"www-authenticate", b'Bearer realm="capstan"')])
            if scope["method"] in MUTATING_METHODS:
                self._record(scope, state, "anonymous", exc.http_status, error=exc.message)
            return
        except CapstanError as exc:  # e.g. the store is unreachable: answer with the error's own status
            log.warning("cannot authenticate %s %s: %s", scope["method"], scope["path"], exc.message)
            await _send_json(send, exc.http_status, exc.to_dict())
            return
        state[PRINCIPAL_KEY] = principal
        try:
            check_token_scope(principal, scope["path"])
        except PermissionDenied as denied:
            await _send_json(send, denied.http_status, denied.to_dict())
            if scope["method"] in MUTATING_METHODS:
                self._record(scope, state, principal.name, denied.http_status, error=denied.message)
            return
        if scope["method"] not in MUTATING_METHODS:
            await self.app(scope, receive, send)
            return
        if session is not None and not principal.single_user:
            presented, receive = await ui_session.presented_csrf(dict(scope.get("headers", ())), receive)
            if not ui_session.csrf_matches(session, presented):
                refusal = PermissionDenied(f"CSRF token missing or wrong: a request authenticated by the web UI's "
                                           f"session cookie must send it in {ui_session.CSRF_HEADER} or the "
                                           f"{ui_session.CSRF_FIELD} form field")
                await _send_json(send, refusal.http_status, refusal.to_dict())
                self._record(scope, state, principal.name, refusal.http_status, error=refusal.message)
                return

        recorder = StatusRecorder(send)  # 500 when the app fails before starting a response
        try:
            await self.app(scope, receive, recorder)
        finally:
            permissions = state.get(PERMISSIONS_KEY)
            if not permissions or permissions - {"read"} or recorder.status in (401, 403):
                self._record(scope, state, principal.name, recorder.status)

    def _record(self, scope: Scope, state: dict[str, Any], user: str, status: int, *, error: str = "") -> None:
        detail: dict[str, object] = {"path": scope["path"]}
        client = scope.get("client")
        if client:
            detail["client"] = client[0]
        if error:
            detail["error"] = error
        self._audit.submit(AuditEntry(
            time=self._clock(), user=user, action=f"{scope['method']} {self._route_label(scope)}",
            target=str(state.get(TARGET_KEY) or scope["path"]), project=str(state.get(PROJECT_KEY) or ""),
            status=status, detail=detail))


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return bytes(value).decode("latin-1")
    return None


async def _send_json(send: Send, status: int, body: dict[str, str],
                     extra_headers: list[tuple[bytes, bytes]] | None = None) -> None:
    import orjson

    payload = orjson.dumps(body)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
               *(extra_headers or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


# -- browsers: Host, Origin, CORS and JSON bodies ------------------------------------------------------------
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "[::1]"})
UNGUARDED_PATHS = frozenset({"/health"})  # probes (Kubernetes, load balancers) send whatever Host they like
CORS_METHODS = "GET, HEAD, POST, PUT, PATCH, DELETE"
CORS_MAX_AGE_S = 600
BODY_METHODS = MUTATING_METHODS
_HEADER_TOKEN = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")


def _host_name(host: str) -> str:
    """``localhost`` from ``localhost:8080``, ``[::1]`` from ``[::1]:8080`` (lower case)."""
    host = host.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        return host[:end + 1] if end > 0 else host
    return host.partition(":")[0]


def _origin_netloc(origin: str) -> str | None:
    """``host[:port]`` of a browser's ``Origin`` header (``None`` for ``null`` and anything malformed)."""
    scheme, sep, rest = origin.strip().lower().partition("://")
    if not sep or scheme not in ("http", "https") or not rest or "/" in rest:
        return None
    return rest


class JsonRoutes:
    """Which requests carry a JSON body: FastAPI routes with a body model, and MLflow endpoints served by a JSON
    handler. Artifact uploads (raw bytes), the queue's YAML configuration and other raw routes are not."""

    def __init__(self) -> None:
        self._patterns: list[tuple[frozenset[str], re.Pattern[str]]] = []
        self._dispatchers: list[Any] = []

    def add_routes(self, routes: Iterable[Any], prefix: str = "") -> None:
        """Record the JSON routes among ``routes`` (an app's or router's ``.routes``) included under ``prefix``."""
        from starlette.routing import compile_path

        from capstan.server.mlflow_routing import Dispatcher

        for route in routes:
            nested = getattr(route, "original_router", None)
            if nested is not None:
                context = getattr(route, "include_context", None)
                self.add_routes(nested.routes, prefix + str(getattr(context, "prefix", "") or ""))
                continue
            owner = getattr(getattr(route, "endpoint", None), "__self__", None)
            if isinstance(owner, Dispatcher):
                self._dispatchers.append(owner)
            elif getattr(route, "body_field", None) is not None and isinstance(getattr(route, "path", None), str):
                self._patterns.append((frozenset(route.methods), compile_path(prefix + route.path)[0]))

    def __call__(self, method: str, path: str) -> bool:
        """True when ``method path`` is served by a handler that parses a JSON body."""
        for dispatcher in self._dispatchers:
            if path.startswith(dispatcher.prefix + "/"):
                try:
                    target, _ = dispatcher.resolve(method, path[len(dispatcher.prefix):])
                except CapstanError:
                    return False
                return target.route.handler is not None
        return any(method in methods and regex.match(path) for methods, regex in self._patterns)


@dataclass(frozen=True, slots=True)
class BrowserPolicy:
    """What `BrowserGuardMiddleware` accepts.

    Attributes:
        loopback: the server is bound to a loopback address (the Host header is then always checked).
        allowed_hosts: further ``Host`` values (``name`` matches any port, ``name:port`` only that port; ``*``
            turns the check off). Empty on a non-loopback bind: any host.
        allowed_origins: web origins besides the server's own that browsers may call from (``scheme://host[:port]``).
    """

    loopback: bool
    allowed_hosts: tuple[str, ...] = ()
    allowed_origins: tuple[str, ...] = ()

    def host_allowed(self, host: str, server_host: str | None) -> bool:
        """Whether a request with ``Host: host`` is answered (``server_host``: the address the socket is bound to)."""
        if "*" in self.allowed_hosts or (not self.loopback and not self.allowed_hosts):
            return True
        host = host.strip().lower()
        name = _host_name(host)
        if name in LOOPBACK_NAMES or (server_host is not None and name == _host_name(server_host)):
            return True
        # An entry with a port matches that host and port only; a bare name matches it on any port.
        return any(host == allowed if _host_name(allowed) != allowed else name == allowed
                   for allowed in self.allowed_hosts)

    def origin_allowed(self, origin: str, host: str) -> bool:
        """Whether a browser page at ``origin`` may call the server reached as ``host``: its own origin, or one
        of ``allowed_origins``."""
        netloc = _origin_netloc(origin)
        if netloc is None:
            return False
        if netloc == host.strip().lower():
            return True
        normalized = origin.strip().lower().rstrip("/")
        return normalized in self.allowed_origins


def _is_json(content_type: str) -> bool:
    media = content_type.partition(";")[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


class BrowserGuardMiddleware:
    """ASGI middleware that keeps web pages from driving the server through the user's browser.

    - ``Host``: a loopback server answers only to ``localhost``, ``127.0.0.1``, ``[::1]`` (any port) and its
      ``allowed_hosts``, which defeats DNS rebinding; a server on another address checks the header only when
      ``allowed_hosts`` is set. Refused: 400.
    - ``Origin``: a browser request from a page that is neither the server's own origin nor an allowed origin is
      refused (403), as is a request that ``Sec-Fetch-Site`` marks cross-site or same-site with no origin to
      check (top-level GET navigations excepted). Clients outside browsers send neither header.
    - CORS: a preflight (``OPTIONS`` with ``Access-Control-Request-Method``) from an allowed origin answers 204
      with the ``Access-Control-*`` headers; responses to allowed cross-origin calls carry
      ``Access-Control-Allow-Origin``.
    - JSON: a body sent to a JSON route must be ``application/json`` (415 otherwise; 400 on MLflow routes, as
      MLflow answers), so an HTML form or a ``text/plain`` fetch can never reach a JSON handler.

    Starlette's TrustedHostMiddleware and CORSMiddleware are not used: they answer in plain text, neither
    refuses a disallowed origin's actual request, and TrustedHost cannot tell a loopback server's names apart.
    """

    def __init__(self, app: ASGIApp, *, policy: BrowserPolicy, json_route: Callable[[str, str], bool]) -> None:
        self.app = app
        self._policy = policy
        self._json_route = json_route

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in UNGUARDED_PATHS:
            await self.app(scope, receive, send)
            return
        host = _header(scope, b"host") or ""
        server = scope.get("server")
        if not self._policy.host_allowed(host, str(server[0]) if server else None):
            await _send_json(send, 400, {"error_code": "INVALID_PARAMETER_VALUE", "message": (
                f"Host: {host!r} is not a name this server answers to; a server bound to a loopback address "
                "answers to localhost, 127.0.0.1 and [::1] (allow others with --allowed-host or "
                "CAPSTAN_ALLOWED_HOSTS)")})
            return
        method = scope["method"]
        origin = _header(scope, b"origin")
        cross_origin = False
        if origin is not None:
            if not self._policy.origin_allowed(origin, host):
                await _send_json(send, 403, {"error_code": "PERMISSION_DENIED", "message": (
                    f"Origin: cross-origin request from {origin!r} refused; allow a web origin with "
                    "--allowed-origin or CAPSTAN_ALLOWED_ORIGINS")}, extra_headers=[(b"vary", b"Origin")])
                return
            cross_origin = _origin_netloc(origin) != host.strip().lower()
            if method == "OPTIONS" and _header(scope, b"access-control-request-method") is not None:
                await self._preflight(scope, send, origin)
                return
        elif _header(scope, b"sec-fetch-site") in ("cross-site", "same-site") and not (
                method in ("GET", "HEAD") and _header(scope, b"sec-fetch-mode") == "navigate"):
            await _send_json(send, 403, {"error_code": "PERMISSION_DENIED", "message": (
                "Sec-Fetch-Site: cross-site request refused (it names no allowed origin)")})
            return
        if method in BODY_METHODS and _has_body(scope) and self._json_route(method, scope["path"]):
            content_type = _header(scope, b"content-type") or ""
            if not _is_json(content_type):
                await _send_json(send, *_content_type_refusal(scope["path"], content_type))
                return
        if not cross_origin:
            await self.app(scope, receive, send)
            return
        assert origin is not None

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", ()) if k.lower() != b"vary"]
                message["headers"] = [*headers, (b"access-control-allow-origin", origin.encode("latin-1")),
                                      (b"vary", b"Origin")]
            await send(message)

        await self.app(scope, receive, send_with_cors)

    async def _preflight(self, scope: Scope, send: Send, origin: str) -> None:
        requested = _header(scope, b"access-control-request-headers") or ""
        names = [name.strip().lower() for name in requested.split(",") if name.strip()]
        allowed = ", ".join(name for name in names if _HEADER_TOKEN.fullmatch(name))
        headers = [(b"access-control-allow-origin", origin.encode("latin-1")),
                   (b"access-control-allow-methods", CORS_METHODS.encode()),
                   (b"access-control-max-age", str(CORS_MAX_AGE_S).encode()), (b"vary", b"Origin")]
        if allowed:
            headers.append((b"access-control-allow-headers", allowed.encode("latin-1")))
        await send({"type": "http.response.start", "status": 204, "headers": headers})
        await send({"type": "http.response.body", "body": b""})


def _content_type_refusal(path: str, content_type: str) -> tuple[int, dict[str, str]]:
    """The status and body that refuse a non-JSON body on a JSON route.

    MLflow's REST routes answer as MLflow's own server does (400 ``INVALID_PARAMETER_VALUE`` with its wording), so
    MLflow clients see the error they know; ``/api/v1`` answers 415 Unsupported Media Type.
    """
    if "/mlflow/" in path:
        message = ("Bad Request. Content-Type header is missing." if not content_type
                   else "Bad Request. Content-Type must be one of ['application/json'].")
        return 400, {"error_code": "INVALID_PARAMETER_VALUE", "message": message}
    shown = content_type or "none"
    return 415, {"error_code": "BAD_REQUEST", "message": (
        f"Content-Type: this endpoint takes a JSON body; send 'Content-Type: application/json' (got {shown!r})")}


def _has_body(scope: Scope) -> bool:
    length = _header(scope, b"content-length")
    if length is not None:
        return length.strip() not in ("", "0")
    return _header(scope, b"transfer-encoding") is not None
