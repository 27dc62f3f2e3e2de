"""``GET /`` (a page that opens the web UI, public) and ``/api/v1/docs`` served with no CDN, in-process (the
fragment of an MLflow link is followed in real Chromium by tests/ui)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from capstan.server.app import create_app
from capstan.services import Services
from capstan.settings import Settings


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    svc = Services.open(Settings.for_home(tmp_path_factory.mktemp("home")))
    yield svc
    svc.close()


@pytest.fixture(scope="module")
def client(services: Services) -> Iterator[TestClient]:
    with TestClient(create_app(services.settings, services=services)) as test_client:
        yield test_client


class _Refs(HTMLParser):
    """Every URL an HTML page references through src, href or a url(...) in inline script/style."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [value for name, value in attrs if name in ("src", "href") and value]

    def handle_data(self, data: str) -> None:
        self.urls += re.findall(r"""url\s*:\s*['"]([^'"]+)['"]""", data)


def _refs(page: str) -> list[str]:
    parser = _Refs()
    parser.feed(page)
    return parser.urls


def test_root_is_an_html_page_naming_the_server(client: TestClient) -> None:
    from capstan.server.app import _version

    response = client.get("/", headers={"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    page = response.text
    assert "Capstan" in page and _version() in page
    links = _refs(page)
    for path in ("/api/v1/docs", "/api/v1/openapi.json", "/health", "/metrics"):
        assert path in links, path
    assert "#/experiments/" in page  # the mlflow client's links land here; the script opens their /ui page
    assert "/ui/static/home.js" in links and "/ui/" in links
    assert not [u for u in links if u.startswith(("http://", "https://", "//"))]
    for link in links:
        assert client.get(link).status_code == 200, link  # every link of the page works (single-user mode)
    script = client.get("/ui/static/home.js").text
    for fragment, page_path in (("experiments", "/ui/experiments/"), ("runs", "/ui/runs/"),
                                ("models", "/ui/models/"), ("versions", "/versions/")):
        assert fragment in script and page_path in script


def test_root_answers_json_when_asked(client: TestClient) -> None:
    from capstan.server.app import _version

    response = client.get("/", headers={"Accept": "application/json"})
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["name"] == "Capstan" and body["version"] == _version()
    assert {k: v["href"] for k, v in body["links"].items()} == {
        "api_docs": "/api/v1/docs", "openapi": "/api/v1/openapi.json", "health": "/health", "metrics": "/metrics",
        "web_ui": "/ui/"}
    assert "#/experiments/" in body["web_ui"]


def test_root_is_public_when_authentication_is_required(services: Services) -> None:
    with TestClient(create_app(services.settings, services=services, bind_host="0.0.0.0")) as client:
        assert client.get("/api/v1/whoami").status_code == 401  # auth is really on
        response = client.get("/", headers={"Accept": "application/json"})
        assert response.status_code == 200 and response.json()["name"] == "Capstan"
        assert client.get("/").headers["content-type"].startswith("text/html")


def test_docs_load_nothing_from_other_hosts(client: TestClient) -> None:
    response = client.get("/api/v1/docs")
    assert response.status_code == 200
    page = response.text
    assert not re.findall(r"https?://", page), "the docs page must not reference another host"
    refs = _refs(page)
    scripts = [u for u in refs if u.endswith(".js")]
    styles = [u for u in refs if u.endswith(".css")]
    assert scripts and styles and "/api/v1/openapi.json" in refs
    for url in refs:
        asset = client.get(url)
        assert asset.status_code == 200, url
        assert asset.content, url
    bundle = client.get(scripts[0])
    assert "javascript" in bundle.headers["content-type"] and b"SwaggerUIBundle" in bundle.content
    assert "css" in client.get(styles[0]).headers["content-type"]


def test_docs_assets_come_from_the_installed_package(client: TestClient) -> None:
    from capstan.server.home import ASSET_FILES, ASSETS_PATH, static_dir

    folder = static_dir()
    assert "fastapi_offline" in folder.parts  # from the dependency, not from files copied into this repository
    repo_src = Path(__file__).resolve().parents[2] / "src"
    assert not any(repo_src.rglob("swagger-ui-bundle.js"))
    for name in ASSET_FILES:
        assert client.get(f"{ASSETS_PATH}/{name}").content == (folder / name).read_bytes()
    assert client.get(f"{ASSETS_PATH}/../../health").status_code in (400, 404)  # no escaping the folder
    assert client.get(f"{ASSETS_PATH}/nope.js").status_code == 404
