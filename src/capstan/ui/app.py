"""The web UI's routes and how ``capstan server`` mounts them.

`install` mounts our static files (``/ui/static``); `routers` lists the routers to include, in order: the core
pages of this module (``/ui`` itself, login and logout, the chart library), then each page module of the package
(every ``capstan/ui/pages_*.py``, by name: its ``pages`` router under ``/ui`` and its ``api`` router, the pages'
JSON twins, under ``/api/v1``), then the catch-all that answers any other ``/ui/...`` path with the 404 page.
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType
from typing import TYPE_CHECKING

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import FileResponse, RedirectResponse, Response

from capstan.auth.records import AuditEntry
from capstan.errors import CapstanError, InvalidParameterValue, Unauthenticated
from capstan.ui import session
from capstan.ui.render import NAV, PLOTLY_PATH, Crumb, error_page, page, plotly_file, render, services

if TYPE_CHECKING:
    from fastapi import FastAPI

API_V1_PREFIX = "/api/v1"
ASSET_MAX_AGE_S = 365 * 24 * 3600

core = APIRouter(include_in_schema=False)
fallback = APIRouter(include_in_schema=False)


def install(app: FastAPI) -> None:
    """Mount the UI's static files (before `routers` are included, so the catch-all does not shadow them)."""
    from starlette.staticfiles import StaticFiles

    from capstan.ui.render import STATIC_DIR

    app.mount(session.STATIC_PREFIX.rstrip("/"), StaticFiles(directory=STATIC_DIR), name="ui-static")


def page_modules() -> list[ModuleType]:
    """Every ``capstan.ui.pages_*`` module, in name order."""
    import capstan.ui

    names = sorted(info.name for info in pkgutil.iter_modules(capstan.ui.__path__) if info.name.startswith("pages_"))
    return [importlib.import_module(f"capstan.ui.{name}") for name in names]


def routers() -> list[tuple[APIRouter, str]]:
    """``(router, prefix)`` pairs for ``app.include_router``, in the order they must be included."""
    out: list[tuple[APIRouter, str]] = [(core, "")]
    for module in page_modules():
        out += [(module.pages, ""), (module.api, API_V1_PREFIX)]
    out.append((fallback, ""))
    return out


# -- core pages ---------------------------------------------------------------------------------------------
@core.get("/ui")
@core.get("/ui/")
def ui_root() -> Response:
    """The UI's front page is the experiments list."""
    return RedirectResponse(NAV[0].href, status_code=303)


@core.get(PLOTLY_PATH)
def plotly_bundle() -> Response:
    """plotly.js as bundled by the installed ``plotly`` package (never copied into this repository)."""
    return FileResponse(plotly_file(), media_type="text/javascript",
                        headers={"cache-control": f"public, max-age={ASSET_MAX_AGE_S}, immutable",
                                 "x-content-type-options": "nosniff"})


@core.get(session.LOGIN_PATH)
@page("experiments")
def login_page(request: Request) -> Response:
    """The login form (or, on a server without authentication, a note and a link to the UI)."""
    target = session.safe_next(request.query_params.get("next"))
    return _login_form(request, target, error="", status=200)


def _login_form(request: Request, target: str, *, error: str, status: int) -> Response:
    required = request.app.state.authenticator.auth_required()
    return render(request, "login.html", title="Log in", area="", crumbs=[Crumb("Log in")], status=status,
                  next=target, error=error, auth_required=required)


@core.post(session.LOGIN_PATH)
async def login_submit(request: Request) -> Response:
    """Check a token (with the user name for basic credentials) and start a session: a new short-lived token of
    that user in an HttpOnly, SameSite=Strict cookie."""
    form = await request.form()
    token = str(form.get("token") or "").strip()
    user = str(form.get("user") or "").strip()
    target = session.safe_next(str(form.get("next") or ""))
    try:
        if not token:
            raise InvalidParameterValue("token: enter an API token (capstan tokens create)")
        secret = await run_in_threadpool(_start_session, request, token, user)
    except CapstanError as exc:
        _audit_login(request, user or "anonymous", exc.http_status, exc.message)
        return await run_in_threadpool(_login_form, request, target, error=exc.message, status=exc.http_status)
    response = RedirectResponse(target, status_code=303)
    if secret is not None:
        response.headers.append("set-cookie", session.cookie_header(
            secret, secure=request.url.scheme == "https", max_age_s=session.SESSION_TTL_MS // 1000))
    return response


def _start_session(request: Request, token: str, user: str) -> str | None:
    """The new session's token secret (None when the server runs without authentication)."""
    import base64

    authenticator = request.app.state.authenticator
    header = (f"Basic {base64.b64encode(f'{user}:{token}'.encode()).decode()}" if user else f"Bearer {token}")
    principal = authenticator.authenticate(header)
    if principal.single_user:
        return None
    if principal.scope is not None:
        raise Unauthenticated(f"this token is scoped to {principal.scope}; log in with a token of your user")
    issued = services(request).auth.create_token(principal.name, name=session.SESSION_TOKEN_NAME,
                                                 expires_in_ms=session.SESSION_TTL_MS)
    _audit_login(request, principal.name, 200, "")
    return issued.secret


def _audit_login(request: Request, user: str, status: int, error: str) -> None:
    detail: dict[str, object] = {"path": request.url.path}
    if request.client is not None:
        detail["client"] = request.client.host
    if error:
        detail["error"] = error
    request.app.state.audit_writer.submit(AuditEntry(
        time=services(request).clock(), user=user, action=f"POST {session.LOGIN_PATH}", target="session",
        project="", status=status, detail=detail))


@core.post(session.LOGOUT_PATH)
def logout(request: Request) -> Response:
    """End the session: revoke its token and drop the cookie (the middleware has checked the CSRF token)."""
    secret = session.session_secret(request.headers.get("cookie"))
    secure = request.url.scheme == "https"
    response = RedirectResponse(session.LOGIN_PATH if secret else "/ui/", status_code=303)
    if secret is not None:
        services(request).auth.revoke_token(secret)
        request.app.state.authenticator.invalidate()  # at once in this process, within a second in the others
        response.headers.append("set-cookie", session.clear_cookie_header(secure=secure))
    return response


@fallback.get("/ui/{path:path}")
def not_found(request: Request, path: str) -> Response:
    """Any other ``/ui/...`` path: the 404 page with a link back."""
    area = path.split("/", 1)[0]
    return error_page(request, 404, f"There is no page at /ui/{path}.", area=area)
