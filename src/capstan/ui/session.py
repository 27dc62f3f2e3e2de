"""Web UI sessions and CSRF protection, used by `capstan.server.security.SecurityMiddleware`.

A session is an ordinary API token of the user who logged in, created by ``POST /ui/login`` with a short expiry
(`SESSION_TTL_MS`) and the name `SESSION_TOKEN_NAME`; its secret travels in the `SESSION_COOKIE` cookie (HttpOnly,
SameSite=Strict, Secure over TLS) and is accepted as a credential on ``/ui/...`` and on ``/api/v1/...`` (the calls
the pages' scripts make). ``POST /ui/logout`` revokes it. See docs/decisions/0501-ui-sessions-and-csrf.md.

Every mutating request authenticated by the cookie must carry the session's CSRF token, in the `CSRF_HEADER`
header (scripts) or the `CSRF_FIELD` field of a urlencoded form; the token is derived from the session secret
(`csrf_token`), so there is nothing else to store and an attacker who cannot read the cookie cannot compute it.
Requests that bring their own ``Authorization`` header are not affected.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import MutableMapping
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

from capstan.server.asgi import Message, Receive, Send

SESSION_COOKIE = "capstan_session"
SESSION_TOKEN_NAME = "web-ui-session"
SESSION_TTL_MS = 12 * 3600 * 1000
"""How long a UI session lasts (twelve hours); logging in again starts a new one."""
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf_token"
UI_PREFIX = "/ui"
LOGIN_PATH = "/ui/login"
LOGOUT_PATH = "/ui/logout"
STATIC_PREFIX = "/ui/static/"
ASSETS_PREFIX = "/ui/assets/"
PUBLIC_PREFIXES = (STATIC_PREFIX, ASSETS_PREFIX)
FORM_BODY_LIMIT = 1024 * 1024
_CSRF_CONTEXT = b"capstan-ui-csrf\x00"


def is_page(path: str) -> bool:
    """True for the web UI's own paths (``/ui`` and below)."""
    return path == UI_PREFIX or path.startswith(UI_PREFIX + "/")


def is_public(path: str) -> bool:
    """Paths of the UI that need no credential: the login page, our static files and the chart library."""
    return path == LOGIN_PATH or path.startswith(PUBLIC_PREFIXES)


def cookie_applies(path: str) -> bool:
    """Where the session cookie counts as a credential: the UI and the native API its scripts call."""
    return is_page(path) or path.startswith("/api/v1/")


def session_secret(cookie_header: str | None) -> str | None:
    """The session token in a ``Cookie`` header, or None."""
    if not cookie_header:
        return None
    for part in cookie_header.split(";"):
        name, sep, value = part.strip().partition("=")
        if sep and name == SESSION_COOKIE and value:
            return value.strip('"')
    return None


def csrf_token(secret: str) -> str:
    """The CSRF token of the session whose token is ``secret``: a hash of it under a context of its own (so it
    is neither the secret nor the hash the auth store keeps)."""
    return hashlib.sha256(_CSRF_CONTEXT + secret.encode()).hexdigest()


def csrf_matches(secret: str, presented: str | None) -> bool:
    """Whether ``presented`` is the CSRF token of the session ``secret`` (compared in constant time)."""
    return presented is not None and hmac.compare_digest(csrf_token(secret).encode(), presented.encode())


def safe_next(target: str | None) -> str:
    """``target`` when it is a path of the UI on this server, else ``/ui/`` (no open redirects)."""
    if not target:
        return UI_PREFIX + "/"
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not is_page(parts.path) or target.startswith("//") or "\\" in target:
        return UI_PREFIX + "/"
    return target


def login_location(path: str, query: str) -> str:
    """Where an unauthenticated page request is sent: the login page, coming back to ``path?query`` after."""
    target = path + (f"?{query}" if query else "")
    return f"{LOGIN_PATH}?next={quote(target, safe='')}"


def cookie_header(secret: str, *, secure: bool, max_age_s: int) -> str:
    """The ``Set-Cookie`` value that stores a session."""
    flags = "; Secure" if secure else ""
    return f"{SESSION_COOKIE}={secret}; Path=/; Max-Age={max_age_s}; HttpOnly; SameSite=Strict{flags}"


def clear_cookie_header(*, secure: bool) -> str:
    """The ``Set-Cookie`` value that removes the session cookie."""
    flags = "; Secure" if secure else ""
    return f"{SESSION_COOKIE}=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict{flags}"


async def presented_csrf(headers: dict[bytes, bytes], receive: Receive) -> tuple[str | None, Receive]:
    """The CSRF token a request carries, and a ``receive`` that still yields its whole body.

    The header wins; otherwise a urlencoded form body (up to `FORM_BODY_LIMIT`) is read for `CSRF_FIELD` and
    replayed to the application unchanged.
    """
    header = headers.get(CSRF_HEADER.encode())
    if header is not None:
        return header.decode("latin-1"), receive
    content_type = headers.get(b"content-type", b"").decode("latin-1").partition(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        return None, receive
    chunks: list[Message] = []
    size = 0
    while True:
        message = await receive()
        chunks.append(message)
        if message["type"] != "http.request":
            break
        size += len(message.get("body", b""))
        if size > FORM_BODY_LIMIT or not message.get("more_body", False):
            break
    body = b"".join(m.get("body", b"") for m in chunks if m["type"] == "http.request")
    token = None
    if size <= FORM_BODY_LIMIT:
        values = parse_qs(body.decode("latin-1"), keep_blank_values=True).get(CSRF_FIELD)
        token = values[0] if values else None
    pending = list(chunks)

    async def replay() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return token, replay


async def send_login_redirect(scope: MutableMapping[str, Any], send: Send, *, clear_cookie: bool) -> None:
    """Answer an unauthenticated page request: 303 to the login page (dropping a stale session cookie).

    A top-level navigation from another site does not carry the SameSite=Strict cookie; it gets a page that
    reloads itself once from this site, which does carry it (and lands on the login page if it is no good).
    """
    headers = [(b"cache-control", b"no-store")]
    if clear_cookie:
        headers.append((b"set-cookie", clear_cookie_header(secure=scope.get("scheme") == "https").encode()))
    fetch_site = dict(scope.get("headers", ())).get(b"sec-fetch-site", b"")
    if fetch_site == b"cross-site" and scope.get("method") in ("GET", "HEAD") and not clear_cookie:
        body = (b'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Capstan</title>'
                b'<script src="/ui/static/reload.js"></script></head><body><p>Opening Capstan...</p></body></html>')
        headers += [(b"content-type", b"text/html; charset=utf-8"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        return
    query = scope.get("query_string", b"").decode("latin-1")
    location = login_location(scope["path"], query)
    headers += [(b"location", location.encode("latin-1")), (b"content-length", b"0")]
    await send({"type": "http.response.start", "status": 303, "headers": headers})
    await send({"type": "http.response.body", "body": b""})
