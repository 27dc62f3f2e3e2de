"""What every page handler shares: the Jinja2 environment, the caller's context, error pages and response headers.

A page handler is a plain function decorated with `page`; it reads its data through a read-model function (the
same one its JSON twin under ``/api/v1`` calls) and returns `render(request, "template.html", ...)`::

    @pages.get("/ui/runs/{run_id}")
    @page("experiments")
    def run_page(request: Request, run_id: str) -> Response:
        detail = run_detail(services(request), run_id)      # raises ResourceDoesNotExist -> 404 page
        require(request, "read", detail.project)            # PermissionDenied -> 403 page
        return render(request, "run.html", title=..., area="experiments", crumbs=[...], detail=detail)

`page` turns a `CapstanError` into an HTML page with its status (404 with a link back for an unknown object) and
anything else into a logged 500 page; no page ever shows a traceback.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from capstan.auth.policy import Permission, Principal, allows
from capstan.errors import CapstanError
from capstan.server.security import DEFAULT_PROJECT, PRINCIPAL_KEY, request_project
from capstan.ui import session

if TYPE_CHECKING:
    import jinja2

    from capstan.services import Services

log = logging.getLogger("capstan.ui")

HERE = Path(__file__).resolve().parent
TEMPLATES_DIR = HERE / "templates"
STATIC_DIR = HERE / "static"
PLOTLY_PATH = f"{session.ASSETS_PREFIX}plotly.min.js"


@dataclass(frozen=True, slots=True)
class NavItem:
    """One entry of the top navigation: ``area`` names it for highlighting and error pages' links back."""

    area: str
    label: str
    href: str


NAV: tuple[NavItem, ...] = (
    NavItem("experiments", "Experiments", "/ui/experiments"),
    NavItem("models", "Models", "/ui/models"),
    NavItem("pipelines", "Pipelines", "/ui/pipelines"),
    NavItem("queues", "Queues", "/ui/queues"),
    NavItem("jobs", "Jobs", "/ui/jobs"),
    NavItem("studies", "Studies", "/ui/studies"),
    NavItem("deployments", "Deployments", "/ui/deployments"),
)
_NAV_BY_AREA = {item.area: item for item in NAV}
ANONYMOUS = Principal("")
"""The viewer of a public page: no name, no rights."""
SECURITY_HEADERS = {
    # Scripts only from this server (no inline script); plotly sets inline styles; images may be data: or blob:
    # URLs (artifact previews).
    "content-security-policy": ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
                                "img-src 'self' data: blob:; connect-src 'self'; frame-ancestors 'none'; "
                                "base-uri 'none'; form-action 'self'"),
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
}


@dataclass(frozen=True, slots=True)
class Crumb:
    """One breadcrumb; the last one of a page has no link."""

    label: str
    href: str | None = None


@dataclass(frozen=True, slots=True)
class Viewer:
    """Who looks at the page, for templates: name, whether a login session exists, and their rights."""

    principal: Principal
    csrf_token: str
    has_session: bool

    @property
    def name(self) -> str:
        return self.principal.name

    def can(self, permission: Permission, project: str | None) -> bool:
        """Whether buttons needing ``permission`` in ``project`` are shown (the API checks again on use)."""
        return allows(self.principal, permission, project)


def services(request: Request) -> Services:
    """The app's stores."""
    svc: Services = request.app.state.services
    return svc


def viewer(request: Request) -> Viewer:
    """The caller as templates see it (the security middleware has already authenticated it)."""
    state: dict[str, Any] = request.scope.setdefault("state", {})
    principal = state.get(PRINCIPAL_KEY)
    if not isinstance(principal, Principal):  # a public page (the login form): nobody, with no rights
        principal = ANONYMOUS
    secret = session.session_secret(request.headers.get("cookie"))
    token = session.csrf_token(secret) if secret is not None else ""
    return Viewer(principal, token, secret is not None and not principal.single_user)


def ui_project(request: Request) -> str:
    """The project a list page shows: ``?project=``, else the ``X-Capstan-Project`` header, else ``default``."""
    return request.query_params.get("project", "").strip() or request_project(request) or DEFAULT_PROJECT


@functools.cache
def environment() -> jinja2.Environment:
    """The Jinja2 environment of the UI's templates (autoescaped; undefined names fail loudly)."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES_DIR), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["ms"] = format_ms
    env.filters["num"] = format_number
    env.filters["duration"] = format_duration
    env.globals["nav"] = NAV
    env.globals["static"] = static_url
    env.globals["plotly_url"] = plotly_url()
    return env


def plotly_file() -> str:
    """The path of ``plotly.min.js`` inside the installed ``plotly`` package."""
    from importlib.resources import files

    return str(files("plotly") / "package_data" / "plotly.min.js")


def plotly_url() -> str:
    """The chart library's URL, versioned so its long cache lifetime is safe."""
    from importlib.metadata import version

    return f"{PLOTLY_PATH}?v={version('plotly')}"


def static_url(name: str) -> str:
    """The URL of one of our static files, with the package version so a new release is never served stale."""
    from capstan.server.app import _version

    return f"{session.STATIC_PREFIX}{name}?v={_version()}"


def render(request: Request, template: str, *, title: str, area: str, crumbs: Sequence[Crumb] = (),
           status: int = 200, **context: Any) -> Response:
    """Render ``template`` inside the layout: ``area`` highlights the navigation, ``crumbs`` are the breadcrumbs."""
    body = environment().get_template(template).render(
        title=title, area=area, crumbs=list(crumbs), viewer=viewer(request), **context)
    return HTMLResponse(body, status_code=status, headers=SECURITY_HEADERS)


def error_page(request: Request, status: int, message: str, *, area: str) -> Response:
    """The page for a failed request: its status, what went wrong and a link back to the area's list."""
    back = _NAV_BY_AREA.get(area, NAV[0])
    titles = {400: "Bad request", 401: "Not logged in", 403: "Not allowed", 404: "Not found",
              503: "Unavailable"}
    title = titles.get(status, "Something went wrong")
    return render(request, "error.html", title=title, area=area, crumbs=[Crumb(back.label, back.href), Crumb(title)],
                  status=status, message=message, back=back)


P = ParamSpec("P")


def page(area: str) -> Callable[[Callable[P, Response]], Callable[P, Response]]:
    """Decorate a page handler of ``area``: typed errors become HTML pages with their status (404 for an unknown
    object, 403 for a missing right), anything unexpected a logged 500 page without a traceback."""

    def decorate(handler: Callable[P, Response]) -> Callable[P, Response]:
        @functools.wraps(handler)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> Response:
            request = kwargs.get("request")
            assert isinstance(request, Request), "page handlers take `request: Request` as a keyword"
            try:
                return handler(*args, **kwargs)
            except CapstanError as exc:
                return error_page(request, exc.http_status, exc.message, area=area)
            except Exception:  # the page must not show a traceback; the log keeps it
                log.exception("unexpected error rendering %s", request.url.path)
                return error_page(request, 500, "The server failed to build this page; its log has the details.",
                                  area=area)

        return wrapper

    return decorate


# -- formatting filters -----------------------------------------------------------------------------------
def format_ms(value: int | None) -> str:
    """Milliseconds since the epoch as ``2024-05-01 12:30:05`` (UTC); empty for None."""
    if value is None:
        return ""
    return datetime.fromtimestamp(value / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")


def format_number(value: object) -> str:
    """A metric or other value for a table cell: floats with up to 6 significant digits, others as text."""
    if value is None:
        return ""
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return f"{value:.6g}"
    return str(value)


def format_duration(start: int | None, end: int | None) -> str:
    """``end - start`` (milliseconds) as ``1h 02m``, ``3m 04s`` or ``5.2s``; empty when either is missing."""
    if start is None or end is None or end < start:
        return ""
    seconds = (end - start) / 1000
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, sec = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {sec:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"
