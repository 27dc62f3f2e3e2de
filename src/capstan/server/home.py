"""The server's front door: ``GET /`` and the interactive API docs at ``/api/v1/docs``, served without a CDN.

``GET /`` is public, like ``/health``: for browsers a tiny page whose script (``/ui/static/home.js``) opens the
web UI (`capstan.ui`); JSON naming the server, its version and where to go next for ``Accept:
application/json``. The MLflow client prints links such as ``http://host:5000/#/experiments/1/runs/abc``; the
fragment never reaches the server, so those land here and the script opens the matching ``/ui/...`` page.

The docs page is FastAPI's Swagger UI page pointed at the Swagger UI files of the ``fastapi-offline`` package,
served by this server under `ASSETS_PATH`, so it works with no network access.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response

if TYPE_CHECKING:
    from fastapi import FastAPI

API_V1_PREFIX = "/api/v1"
DOCS_PATH = f"{API_V1_PREFIX}/docs"
OPENAPI_PATH = f"{API_V1_PREFIX}/openapi.json"
ASSETS_PATH = f"{DOCS_PATH}/assets"
ASSET_FILES = ("swagger-ui-bundle.js", "swagger-ui.css", "favicon.png")
"""The files of ``fastapi_offline/static`` the docs page loads."""

LINKS = (
    ("api_docs", DOCS_PATH, "Interactive docs of the native REST API"),
    ("openapi", OPENAPI_PATH, "OpenAPI document of the native REST API"),
    ("health", "/health", "Health check (public)"),
    ("metrics", "/metrics", "Prometheus metrics (needs a credential when authentication is on)"),
)
WEB_UI_PATH = "/ui/"
WEB_UI_NOTE = ("The web UI is at /ui/. Links such as #/experiments/ID/runs/RUN_ID and #/models/NAME/versions/N, "
               "which the MLflow client prints, open the matching page of the web UI.")
HOME_SCRIPT = "/ui/static/home.js"
"""Maps the fragment of an MLflow link to its ``/ui/...`` page, or goes to ``/ui/`` (`capstan.ui` static file)."""


def static_dir() -> Path:
    """The folder of Swagger UI files shipped by the ``fastapi-offline`` package."""
    import importlib.util

    spec = importlib.util.find_spec("fastapi_offline")
    if spec is None or spec.origin is None:  # pragma: no cover - a declared dependency of capstan
        from capstan.errors import InvalidState

        raise InvalidState("the fastapi-offline package (Swagger UI files for /api/v1/docs) is not installed")
    return Path(spec.origin).parent / "static"


def install(app: FastAPI, *, version: str) -> None:
    """Add ``GET /``, ``GET /api/v1/docs`` and its asset files to ``app`` (created with ``docs_url=None``)."""
    from starlette.staticfiles import StaticFiles

    folder = static_dir()
    missing = [name for name in ASSET_FILES if not (folder / name).is_file()]
    if missing:  # pragma: no cover - a broken installation
        from capstan.errors import InvalidState

        raise InvalidState(f"fastapi-offline lacks {', '.join(missing)} in {folder}")

    def root(request: Request) -> Response:
        return home_response(request, version)

    def docs(request: Request) -> Response:
        return docs_response(request)

    app.add_api_route("/", root, methods=["GET"], include_in_schema=False)
    app.add_api_route(DOCS_PATH, docs, methods=["GET"], include_in_schema=False)
    app.mount(ASSETS_PATH, StaticFiles(directory=folder), name="docs-assets")


def _prefix(request: Request) -> str:
    return str(request.scope.get("root_path") or "").rstrip("/")


def _wants_json(request: Request) -> bool:
    accept = request.headers.get("accept", "").lower()
    return "application/json" in accept and "text/html" not in accept


def home_document(prefix: str, version: str) -> dict[str, Any]:
    """What ``GET /`` says, as data."""
    links = {key: {"href": prefix + path, "title": title} for key, path, title in LINKS}
    links["web_ui"] = {"href": prefix + WEB_UI_PATH, "title": "The web UI"}
    return {"name": "Capstan", "version": version, "links": links, "mlflow_tracking_uri": prefix or "/",
            "web_ui": WEB_UI_NOTE}


def home_response(request: Request, version: str) -> Response:
    """``GET /``: for browsers a page that opens the web UI (the page an MLflow link names); JSON for
    ``Accept: application/json``."""
    from starlette.responses import HTMLResponse, JSONResponse

    prefix = _prefix(request)
    document = home_document(prefix, version)
    if _wants_json(request):
        return JSONResponse(document)
    esc = html.escape
    items = "\n".join(f'    <li><a href="{esc(link["href"])}">{esc(link["href"])}</a> &mdash; {esc(link["title"])}</li>'
                      for link in document["links"].values())
    page = f"""<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>Capstan {esc(version)}</title>
  <script src="{esc(prefix + HOME_SCRIPT)}"></script>
</head>
<body>
  <h1>Capstan server</h1>
  <p>Version {esc(version)}. <a id="web-ui-link" href="{esc(prefix + WEB_UI_PATH)}">Open the web UI</a>.</p>
  <ul>
{items}
  </ul>
  <p id="web-ui">{esc(WEB_UI_NOTE)}</p>
</body>
</html>
"""
    return HTMLResponse(page, headers={"cache-control": "no-store"})


def docs_response(request: Request) -> Response:
    """The Swagger UI page, loading its script, style and icon from this server."""
    from fastapi.openapi.docs import get_swagger_ui_html

    prefix = _prefix(request)
    assets = prefix + ASSETS_PATH
    return get_swagger_ui_html(openapi_url=prefix + OPENAPI_PATH, title="Capstan API - Swagger UI",
                               swagger_js_url=f"{assets}/swagger-ui-bundle.js",
                               swagger_css_url=f"{assets}/swagger-ui.css",
                               swagger_favicon_url=f"{assets}/favicon.png")
