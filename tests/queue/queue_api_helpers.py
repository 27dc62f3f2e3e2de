"""A real ``capstan server`` with auth for the queue HTTP API tests: users ``root`` (admin), ``ed`` (editor of p1),
``vera`` (viewer of p1) and ``olga`` (editor of p2), their tokens, and a caller that checks answers."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from capstan.services import Services
from capstan.settings import Settings
from helpers.server import ServerProcess, start_server

Q = "/api/v1/queue"


@dataclass
class Api:
    """The server and the users' bearer tokens by user name."""

    server: ServerProcess
    tokens: dict[str, str]

    def call(self, method: str, path: str, *, who: str | None, project: str = "p1",
             **kwargs: Any) -> httpx.Response:
        headers = {"X-Capstan-Project": project, **kwargs.pop("headers", {})}
        if who is not None:
            headers["Authorization"] = f"Bearer {self.tokens[who]}"
        return httpx.request(method, f"{self.server.url}{path}", headers=headers, timeout=30, **kwargs)

    def ok(self, method: str, path: str, *, who: str, status: int = 200, **kwargs: Any) -> dict[str, Any]:
        response = self.call(method, path, who=who, **kwargs)
        assert response.status_code == status, response.text
        body: dict[str, Any] = response.json()
        return body

    def client_env(self, who: str, project: str = "p1") -> dict[str, str]:
        """The environment of a client process (SDK or CLI) of ``who`` in ``project``."""
        return {"CAPSTAN_URL": self.server.url, "CAPSTAN_TOKEN": self.tokens[who], "CAPSTAN_PROJECT": project}

    def cli(self, *args: str, who: str, project: str = "p1", check: bool = True) -> Any:
        return self.server.cli(*args, env=self.client_env(who, project), check=check)


def error(response: httpx.Response, status: int, code: str) -> str:
    """The message of an error answer, after checking its status and error code."""
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error_code"] == code, body
    return str(body["message"])


def serve_queue(tmp_path_factory: pytest.TempPathFactory, name: str, config: str,
                scoped: dict[str, tuple[str, str]] | None = None) -> Iterator[Api]:
    """A server over a fresh home with the users above and the queue ``config`` applied; ``scoped`` adds tokens
    by name: ``{"ed-scoped": ("ed", "deployment:p1/serve")}``."""
    home = tmp_path_factory.mktemp(name) / "home"
    services = Services.open(Settings.for_home(home))
    auth = services.auth
    auth.create_user("root", admin=True)
    for user, project, role in (("ed", "p1", "editor"), ("vera", "p1", "viewer"), ("olga", "p2", "editor")):
        auth.create_user(user)
        auth.grant(user, project, role)
    tokens = {user: auth.create_token(user).secret for user in ("root", "ed", "vera", "olga")}
    for token_name, (user, scope) in (scoped or {}).items():
        tokens[token_name] = auth.create_token(user, scope=scope).secret
    services.close()
    with start_server(home) as server:
        api = Api(server, tokens)
        api.ok("POST", f"{Q}/config", who="root", content=config, headers={"Content-Type": "application/yaml"})
        yield api
