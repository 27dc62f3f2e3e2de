"""The HTTP plumbing of the serving app's inference routes, shared by its fast path and its Starlette routes.

The inference routes (``POST /v2/models/{name}[/versions/{version}]/infer``, ``POST /v1/models/{name}:predict``,
``POST /invocations``) are answered by handlers that read an `HttpCall` (the ASGI scope and ``receive``, the path
parameters and the request id) and return an `Answer` (status, body, content type, extra headers). The serving app
dispatches those routes itself, in front of Starlette's router and middleware (`inference_route` matches them as
the Starlette routes would), and sends the `Answer` as two ASGI messages; every other request, and any inference
request that reaches Starlette, goes through the same handlers with the `Answer` turned into a Starlette
`Response`. Both paths give a request its id with `assign_request_id`, so the two answer with the same bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from capstan.errors import CapstanError
from capstan.serving.core import RequestIds

__all__ = ["REQUEST_ID_HEADER", "REQUEST_ID_KEY", "Answer", "BodyTooLarge", "HttpCall", "InferenceRoute",
           "assign_request_id", "inference_route"]

REQUEST_ID_HEADER = "x-request-id"
REQUEST_ID_KEY = "capstan.request_id"
"""The scope key holding the request's id (the access log reads it too)."""

_REQUEST_ID = REQUEST_ID_HEADER.encode()
_CONTENT_LENGTH = b"content-length"

InferenceRoute = tuple[Literal["v2", "v1", "mlflow"], str, str | None]
"""An inference route: its protocol, the model name and the version (``None`` when the path names none)."""


class BodyTooLarge(CapstanError):
    """A request body over the app's ``max_body_bytes``."""

    code = "INVALID_PARAMETER_VALUE"
    http_status = 413


def assign_request_id(scope: Scope, ids: RequestIds) -> str:
    """The request's id (the client's last ``X-Request-Id`` when it is sane, else a new one), kept in the scope."""
    sent = ""
    for key, value in scope["headers"]:
        if key == _REQUEST_ID:
            sent = value.decode("latin-1")
    rid = ids.of(sent)
    scope[REQUEST_ID_KEY] = rid
    return rid


def inference_route(path: str) -> InferenceRoute | None:
    """The inference route ``path`` is, matched as Starlette matches the app's routes (a name or version is one or
    more characters other than ``/``), or ``None``."""
    if path.startswith("/v2/models/") and path.endswith("/infer"):
        parts = path[11:-6].split("/")
        if len(parts) == 1 and parts[0]:
            return "v2", parts[0], None
        if len(parts) == 3 and parts[0] and parts[1] == "versions" and parts[2]:
            return "v2", parts[0], parts[2]
        return None
    if path.startswith("/v1/models/") and path.endswith(":predict"):
        name = path[11:-8]
        return ("v1", name, None) if name and "/" not in name else None
    if path == "/invocations":
        return "mlflow", "", None
    return None


class HttpCall:
    """One inference request as its handler sees it: the ASGI scope and ``receive``, the model ``name`` and
    ``version`` of the path (``""`` and ``None`` where it names none) and its ``request_id``."""

    __slots__ = ("name", "receive", "request_id", "scope", "version")

    def __init__(self, scope: Scope, receive: Receive, name: str, version: str | None, request_id: str) -> None:
        self.scope = scope
        self.receive = receive
        self.name = name
        self.version = version
        self.request_id = request_id

    def header(self, name: bytes) -> str | None:
        """The first value of header ``name`` (lower case, as ASGI servers give them), or ``None``."""
        for key, value in self.scope["headers"]:
            if key == name:
                return str(value.decode("latin-1"))
        return None

    async def body(self, max_bytes: int) -> bytes:
        """The whole request body; `BodyTooLarge` beyond ``max_bytes`` (from ``Content-Length`` when it says so,
        before reading), `starlette.requests.ClientDisconnect` when the client goes away first."""
        declared = self.header(_CONTENT_LENGTH)
        if declared is not None and declared.isdigit() and int(declared) > max_bytes:
            raise BodyTooLarge(f"the request body ({declared} bytes) is over the limit of {max_bytes} bytes")
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                raise ClientDisconnect()
            if message["type"] != "http.request":
                continue
            chunk: bytes = message.get("body", b"")
            size += len(chunk)
            if size > max_bytes:
                raise BodyTooLarge(f"the request body is over the limit of {max_bytes} bytes")
            if not message.get("more_body", False):
                return b"".join(chunks) + chunk if chunks else chunk
            chunks.append(chunk)


class Answer:
    """A response of the serving app: ``status``, ``body``, its ``content_type`` and ``headers`` before
    ``Content-Length`` and ``Content-Type`` (names as given; they are sent in lower case)."""

    __slots__ = ("body", "content_type", "headers", "status")

    def __init__(self, body: bytes, *, status: int = 200, content_type: str = "application/json",
                 headers: Sequence[tuple[str, str]] = ()) -> None:
        self.body = body
        self.status = status
        self.content_type = content_type
        self.headers = headers

    def response(self) -> Response:
        """As a Starlette `Response` (the routes answered through Starlette)."""
        return Response(self.body, status_code=self.status, headers=dict(self.headers) or None,
                        media_type=self.content_type)

    async def send(self, send: Send, request_id: str) -> None:
        """Send it as ASGI messages, with the ``X-Request-Id`` header last (as the request-id middleware adds it),
        header for header what `response` sends through Starlette."""
        headers = [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in self.headers]
        headers += [(_CONTENT_LENGTH, b"%d" % len(self.body)), (b"content-type", self.content_type.encode("latin-1")),
                    (_REQUEST_ID, request_id.encode())]
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        await send({"type": "http.response.body", "body": self.body})
