"""Queue pages (``/ui/queues``, ``/ui/queues/NAME``, ``/ui/usage``) and their JSON twins under ``/api/v1/views``.

The read models are in `capstan.ui.queues_view`; they work on the `QueueManager` of one locked queue session (the
same one every ``/api/v1/queue`` call uses). The usage page's twin is the existing ``GET /api/v1/queue/usage``
(same parameters, same report). As with ``/api/v1/queue``, the caller needs read in the project it acts in (the
page's ``?project=``, else ``X-Capstan-Project``, else ``default``); workloads, preemptions and usage of projects it
may not read are left out.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Annotated
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from capstan.auth.policy import Principal, allows
from capstan.errors import InvalidParameterValue, StoreUnavailable
from capstan.server.api_v1_common import render as render_json
from capstan.server.queue_api import ServerQueue
from capstan.server.security import request_project, require
from capstan.ui import queues_view as qv
from capstan.ui.render import Crumb, page, render, services, ui_project

pages = APIRouter(include_in_schema=False)
api = APIRouter(prefix="/views", tags=["web UI views"])

QUEUES = Crumb("Queues", "/ui/queues")
USAGE_GROUPS = ("project", "queue", "user")


def _server_queue(request: Request) -> ServerQueue:
    queue = getattr(request.app.state, "queue", None)
    if not isinstance(queue, ServerQueue):
        raise StoreUnavailable("the workload queue is not enabled on this server")
    return queue


def _may_read(principal: Principal) -> qv.MayRead:
    return lambda project: principal.is_admin or allows(principal, "read", project)


def _overview(request: Request, principal: Principal, preemptions: int) -> qv.QueuesOverview:
    with _server_queue(request).session() as mgr:
        return qv.queues_overview(mgr, services(request).events, _may_read(principal), preemptions=preemptions)


def _cluster_queue(request: Request, principal: Principal, name: str, query: qv.WorkloadsQuery) -> qv.ClusterQueueView:
    with _server_queue(request).session() as mgr:
        return qv.cluster_queue_view(mgr, services(request).events, _may_read(principal), name, query)


def _workloads_query(request: Request) -> qv.WorkloadsQuery:
    params = request.query_params
    return qv.WorkloadsQuery(
        qv.check_count(params.get("max_results"), field="max_results", default=qv.DEFAULT_PAGE_SIZE,
                       maximum=qv.MAX_PAGE_SIZE),
        params.get("pending_token") or None, params.get("admitted_token") or None)


@dataclass(frozen=True, slots=True)
class QueueLinks:
    """URLs of a ClusterQueue page that move one of its two lists to another page (keeping the other's)."""

    base: str
    project: str
    query: qv.WorkloadsQuery

    def _url(self, query: qv.WorkloadsQuery) -> str:
        pairs = [("project", self.project)] if self.project else []
        if query.max_results != qv.DEFAULT_PAGE_SIZE:
            pairs.append(("max_results", str(query.max_results)))
        pairs += [(k, v) for k, v in (("pending_token", query.pending_token),
                                      ("admitted_token", query.admitted_token)) if v]
        return f"{self.base}?{urlencode(pairs)}" if pairs else self.base

    def pending(self, token: str | None) -> str:
        """This page with the pending list at ``token`` (its first page for None)."""
        return self._url(replace(self.query, pending_token=token))

    def admitted(self, token: str | None) -> str:
        """This page with the admitted list at ``token`` (its first page for None)."""
        return self._url(replace(self.query, admitted_token=token))


# -- every queue ----------------------------------------------------------------------------------------------
@pages.get("/ui/queues")
@page("queues")
def queues_page(request: Request) -> Response:
    """Every ClusterQueue and cohort with quota bars, and the latest preemptions."""
    project = ui_project(request)
    principal = require(request, "read", project)
    count = qv.check_count(request.query_params.get("preemptions"), field="preemptions",
                           default=qv.DEFAULT_PREEMPTIONS, maximum=qv.MAX_PREEMPTIONS)
    view = _overview(request, principal, count)
    return render(request, "queues.html", title="Queues", area="queues", crumbs=[Crumb("Queues")], view=view,
                  project=project)


@api.get("/queues", summary="Every ClusterQueue and cohort with its quota, and the latest preemptions (web UI twin)")
def queues_json(request: Request,
                preemptions: Annotated[int, Query(ge=1, le=qv.MAX_PREEMPTIONS,
                                                  description="how many of the latest preemptions")]
                = qv.DEFAULT_PREEMPTIONS) -> Response:
    """What ``/ui/queues`` shows: each ClusterQueue's quota per flavor and resource (nominal, used, borrowed,
    lent), counts, head and LocalQueues; each cohort's pool and its members' use; the latest preemptions."""
    principal = require(request, "read", request_project(request))
    return render_json(_overview(request, principal, preemptions).to_dict())


# -- usage showback -------------------------------------------------------------------------------------------
@pages.get("/ui/usage")
@page("queues")
def usage_page(request: Request) -> Response:
    """Usage showback by project, LocalQueue or user, with costs when prices are given; a malformed window or
    price list shows the parser's message next to the form (the twin ``GET /api/v1/queue/usage`` answers 400)."""
    project = ui_project(request)
    principal = require(request, "read", project)
    params = request.query_params
    by, since, price = params.get("by", "project"), params.get("since", "7d"), params.get("price", "")
    queue = _server_queue(request)
    error = ""
    try:
        view: qv.UsageView | None = qv.usage_view(queue.store(), _may_read(principal), by=by, since=since,
                                                  price=price, now_ms=queue.clock_ms)
    except InvalidParameterValue as exc:
        view, error = None, exc.message
    return render(request, "queues_usage.html", title="Usage", area="queues", crumbs=[QUEUES, Crumb("Usage")],
                  view=view, error=error, by=by, since=since, price=price, groups=USAGE_GROUPS, project=project)


# -- one ClusterQueue -----------------------------------------------------------------------------------------
@pages.get("/ui/queues/{name}")
@page("queues")
def cluster_queue_page(request: Request, name: str) -> Response:
    """A ClusterQueue: quota bars, pending workloads in admission order with why, admitted workloads,
    preemptions."""
    project = ui_project(request)
    principal = require(request, "read", project, target=f"queue/{name}")
    query = _workloads_query(request)
    view = _cluster_queue(request, principal, name, query)
    return render(request, "queues_cluster.html", title=f"ClusterQueue {name}", area="queues",
                  crumbs=[QUEUES, Crumb(name)], view=view, q=view.queue, query=query, project=project,
                  links=QueueLinks(f"/ui/queues/{quote(name, safe='')}", request.query_params.get("project", ""),
                                   query))


@api.get("/queues/{name}", summary="A ClusterQueue with its pending and admitted workloads (web UI twin)")
def cluster_queue_json(request: Request, name: str,
                       max_results: Annotated[int, Query(ge=1, le=qv.MAX_PAGE_SIZE)] = qv.DEFAULT_PAGE_SIZE,
                       pending_token: Annotated[str | None, Query(max_length=12)] = None,
                       admitted_token: Annotated[str | None, Query(max_length=12)] = None) -> Response:
    """What ``/ui/queues/{name}`` shows: the queue's quota, one page of its pending workloads in admission order
    (each with its position and the queue's explanation, as ``capstan why``), one page of its admitted workloads,
    and its recent preemptions."""
    principal = require(request, "read", request_project(request), target=f"queue/{name}")
    query = qv.WorkloadsQuery(max_results, pending_token, admitted_token)
    return render_json(_cluster_queue(request, principal, name, query).to_dict())
