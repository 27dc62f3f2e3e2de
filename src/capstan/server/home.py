"""The server's front door: ``GET /`` and the interactive API docs at ``/api/v1/docs``, served without a CDN.

``GET /`` is public, like ``/health``: a small HTML page naming the server, its version and where to go next
(JSON with the same content for ``Accept: application/json``). The MLflow client prints links such as
``http://host:5000/#/experiments/1/runs/abc``; the fragment never reaches the server, so those land here, and the
page tells the reader which ``capstan`` command shows that object until the web UI serves them.

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
WEB_UI_NOTE = ("Links such as #/experiments/ID/runs/RUN_ID, which the MLflow client prints, are for the web UI, "
               "which this server does not serve yet. Meanwhile: `capstan experiments list`, "
               "`capstan runs list -e NAME`, `capstan runs show RUN_ID`, `capstan models show NAME` "
               "(with CAPSTAN_URL set to this server).")

# Reads the fragment (never sent to the server) and names the matching CLI command; textContent only, so the
# fragment is never parsed as HTML.
_FRAGMENT_SCRIPT = """<script>
(function () {
  var hash = window.location.hash || "";
  var run = hash.match(/runs\\/([0-9A-Za-z_-]+)/);
  var exp = hash.match(/experiments\\/([0-9A-Za-z_-]+)/);
  var model = hash.match(/models\\/([^\\/?#]+)/);
  var cmd = run ? "capstan runs show " + run[1]
          : model ? "capstan models show " + decodeURIComponent(model[1])
          : exp ? "capstan experiments list --view all (experiment " + exp[1] + ")" : "";
  if (!cmd) { return; }
  var box = document.getElementById("fragment");
  box.hidden = false;
  document.getElementById("fragment-link").textContent = hash;
  document.getElementById("fragment-cmd").textContent = cmd;
})();
</script>"""


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
    return {"name": "Capstan", "version": version,
            "links": {key: {"href": prefix + path, "title": title} for key, path, title in LINKS},
            "mlflow_tracking_uri": prefix or "/", "web_ui": WEB_UI_NOTE}


def home_response(request: Request, version: str) -> Response:
    """``GET /``: HTML for browsers, JSON for ``Accept: application/json``."""
    from starlette.responses import HTMLResponse, JSONResponse

    document = home_document(_prefix(request), version)
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
  <style>body {{ font-family: system-ui, sans-serif; max-width: 46rem; margin: 2rem auto; padding: 0 1rem; }}
  code {{ background: #f3f3f3; padding: 0 .25rem; }}</style>
</head>
<body>
  <h1>Capstan server</h1>
  <p>Version {esc(version)}. Experiment tracking, model registry, pipelines and a workload queue; MLflow clients
  use this address as their tracking URI.</p>
  <ul>
{items}
  </ul>
  <p id="web-ui">{esc(WEB_UI_NOTE)}</p>
  <p id="fragment" hidden>You followed <code id="fragment-link"></code>; try <code id="fragment-cmd"></code>.</p>
{_FRAGMENT_SCRIPT}
</body>
</html>
"""
    return HTMLResponse(page)


def docs_response(request: Request) -> Response:
    """The Swagger UI page, loading its script, style and icon from this server."""
    from fastapi.openapi.docs import get_swagger_ui_html

    prefix = _prefix(request)
    assets = prefix + ASSETS_PATH
    return get_swagger_ui_html(openapi_url=prefix + OPENAPI_PATH, title="Capstan API - Swagger UI",
                               swagger_js_url=f"{assets}/swagger-ui-bundle.js",
                               swagger_css_url=f"{assets}/swagger-ui.css",
                               swagger_favicon_url=f"{assets}/favicon.png")
