"""A workload's timeline over HTTP; `router` is mounted under ``/api/v1`` (so ``GET /api/v1/timeline/job/ID``).

The JSON twin of ``capstan describe`` and of the UI's timeline page. The caller needs ``read`` in the request's
project (``X-Capstan-Project``), checked before anything is looked up; a workload of another project answers 404 as
if it did not exist. Kinds and ids are those of `capstan.troubleshoot.reader`; the body is
`capstan.troubleshoot.timeline.Timeline.to_dict`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import orjson
from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from capstan.server.security import request_project, require
from capstan.troubleshoot.timeline import MAX_ITEMS

if TYPE_CHECKING:
    from capstan.services import Services

router = APIRouter(prefix="/timeline", tags=["troubleshooting"])


def _services(request: Request) -> Services:
    return request.app.state.services  # type: ignore[no-any-return]  # app.state is untyped


@router.get("/{kind}/{ident:path}", summary="A workload's timeline and diagnosis")
def timeline(request: Request, kind: str, ident: str,
                   tail: Annotated[int, Query(ge=0, le=1000, description="log lines to return")] = 40,
                   limit: Annotated[int, Query(ge=1, le=5000, description="items to return (the latest)")]
                   = MAX_ITEMS) -> Response:
    """State, reason and message, the diagnosis (cause, summary, evidence, hint), items on one time axis (state
    changes, events, queue decisions, attempts, restarts, log excerpts), resource peaks against their limits, the
    log tail and related workloads of ``kind``/``ident``: ``run``, ``pipeline-run``, ``step`` (``RUN/STEP``),
    ``job``, ``trial`` (``STUDY/NUMBER``), ``workload`` or ``deployment`` (aliases and unambiguous starts work).
    An unknown kind or a malformed id answers 400 naming it; an unknown id, 404."""
    from capstan.troubleshoot.reader import parse_ref
    from capstan.troubleshoot.sources import Scope

    project = request_project(request)
    require(request, "read", project, target=f"{kind}/{ident}")
    name, ident = parse_ref(f"{kind}/{ident}")
    scope = Scope(project=project, only_project=project, tail=tail, limit=limit)
    reader = _services(request).timelines()
    found = reader.timeline(name, ident, scope)
    return Response(orjson.dumps(found.to_dict()), media_type="application/json")
