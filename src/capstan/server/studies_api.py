"""Hyperparameter studies over HTTP; `router` is mounted under ``/api/v1`` (so ``GET /api/v1/studies``).

Read-only: a study runs where its controller runs (``capstan tune`` or ``capstan.Study(...).run()`` on a machine
whose stores are this server's), and these routes show what it stored. Studies belong to the request's project
(``X-Capstan-Project``, ``read`` permission); a study of another project answers 404 as if it did not exist.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import orjson
from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from capstan.errors import ResourceDoesNotExist
from capstan.server.security import request_project, require

if TYPE_CHECKING:
    from capstan.services import Services

router = APIRouter(prefix="/studies", tags=["studies"])

MAX_PAGE = 1000


def _render(payload: Any) -> Response:
    return Response(orjson.dumps(payload), media_type="application/json")


def _services(request: Request) -> Services:
    return request.app.state.services  # type: ignore[no-any-return]  # app.state is untyped


@router.get("", summary="List hyperparameter studies")
def list_studies(request: Request, max_results: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
                 page_token: str | None = None) -> Response:
    """The project's studies, newest first, each with its state, spec, counts of trials by state and best trial;
    ``next_page_token`` asks for the next page."""
    from capstan.tracking.search_syntax import decode_page_token, encode_page_token
    from capstan.tuning.ports import StudyResult

    project = request_project(request)
    require(request, "read", project)
    offset = decode_page_token(page_token)
    store = _services(request).studies
    found = store.list(project=project, limit=offset + max_results + 1)
    page = found[offset:offset + max_results]
    more = len(found) > offset + max_results
    studies = [StudyResult(s, tuple(store.trials(s.project, s.name))).to_dict(trials=False) for s in page]
    return _render({"studies": studies, "next_page_token": encode_page_token(offset + max_results) if more else None})


@router.get("/{name}", summary="Show a hyperparameter study with its trials")
def show_study(request: Request, name: str) -> Response:
    """The study (state, spec, parent run, best trial) and every trial: state, parameters, objective value, final
    metrics, intermediate values, run id, workload, attempts and times."""
    from capstan.tuning.ports import StudyResult

    project = request_project(request)
    require(request, "read", project, target=f"study/{name}")
    store = _services(request).studies
    study = store.get(project, name)
    if study is None:
        raise ResourceDoesNotExist(f"study {name!r} does not exist in project {project!r}")
    return _render({"study": StudyResult(study, tuple(store.trials(project, name))).to_dict()})
