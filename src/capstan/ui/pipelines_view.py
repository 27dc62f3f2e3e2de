"""Read models of the pipelines pages: the runs list, a run's DAG (laid out here, drawn as SVG by the template) and a
step with its attempts, instances and log. The page handlers and their JSON twins (`capstan.ui.pages_pipelines`)
call the same functions; the live stream (`capstan.ui.pipelines_live`) sends what `summarize` computes.

Everything is read through `capstan.pipelines.storage.PipelineStore` and `capstan.pipelines.logs`, the same calls
``/api/v1/pipelines`` makes.
"""

from __future__ import annotations

import base64
import binascii
import threading
from collections import Counter, OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from capstan.errors import InvalidParameterValue, ResourceDoesNotExist
from capstan.ui.dag_layout import Layout, LayoutNode, PlacedEdge, Spacing, layered_layout
from capstan.ui.runs_view import DEFAULT_PAGE_SIZE, check_page_size

if TYPE_CHECKING:
    from capstan.pipelines.runner import PipelineRunner
    from capstan.pipelines.storage import AttemptRecord, PipelineStore, RunRecord, StepRecord

RUN_STATUSES = ("pending", "running", "succeeded", "failed", "cancelled")
FINISHED = frozenset({"succeeded", "failed", "cancelled"})
STATE_ORDER = ("succeeded", "cached", "running", "retrying", "queued", "pending", "failed", "skipped", "cancelled")
"""The order of a fan-out node's counts and of the segments of its bar."""
NODE_HEIGHT = 44.0
MAP_HEIGHT = 58.0
SPACING = Spacing()
LABEL_CHARS = 24
DETAIL_CHARS = 30
LOG_TAIL_BYTES = 256 * 1024
INSTANCE_PAGE = 100
STEP_LIST_PAGE = 100
LAYOUT_CACHE = 64


# -- runs list -----------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class RunsQuery:
    """The runs list's query: ``project``, ``pipeline`` (a name), ``status``, ``max_results``, ``page_token``."""

    project: str
    pipeline: str = ""
    status: str = ""
    max_results: int = DEFAULT_PAGE_SIZE
    page_token: str | None = None


@dataclass(frozen=True, slots=True)
class RunsList:
    """One page of pipeline runs, newest first."""

    query: RunsQuery
    runs: tuple[RunRecord, ...]
    next_page_token: str | None


def runs_query(project: str, params: Mapping[str, str]) -> RunsQuery:
    """Checked query parameters of the runs list (the page's and its twin's)."""
    status = params.get("status", "").strip()
    if status and status not in RUN_STATUSES:
        raise InvalidParameterValue(f"status: must be one of {', '.join(RUN_STATUSES)}, got {status[:40]!r}")
    pipeline = params.get("pipeline", "").strip()
    if len(pipeline) > 256:
        raise InvalidParameterValue("pipeline: a pipeline name has at most 256 characters")
    return RunsQuery(project, pipeline, status, check_page_size(params.get("max_results")),
                     params.get("page_token") or None)


def _encode_token(run: RunRecord) -> str:
    return base64.urlsafe_b64encode(orjson.dumps([run.created_at, run.id])).decode()


def _decode_token(token: str) -> tuple[int, str]:
    try:
        created, run_id = orjson.loads(base64.urlsafe_b64decode(token.encode()))
        if isinstance(created, int) and isinstance(run_id, str):
            return created, run_id
    except (ValueError, TypeError, binascii.Error):
        pass
    raise InvalidParameterValue("page_token: not a token this list gave out")


def runs_list(store: PipelineStore, query: RunsQuery) -> RunsList:
    """One page of the project's runs, filtered by pipeline name and status (one keyset query)."""
    after = _decode_token(query.page_token) if query.page_token else None
    found = store.list_runs(status=query.status or None, project=query.project, limit=query.max_results + 1,
                            name=query.pipeline or None, after=after)
    runs = tuple(found[:query.max_results])
    token = _encode_token(runs[-1]) if len(found) > query.max_results else None
    return RunsList(query, runs, token)


def runs_list_json(view: RunsList) -> dict[str, Any]:
    """The runs list's twin."""
    return {"runs": [r.to_json() for r in view.runs], "next_page_token": view.next_page_token}


def find_run(store: PipelineStore, text: str) -> RunRecord:
    """The run named by an id or a unique prefix; `ResourceDoesNotExist` for anything else that is not one."""
    if not text or not all(ch in "0123456789abcdef" for ch in text.lower()):
        raise ResourceDoesNotExist(f"pipeline run {text[:64]!r} does not exist")
    return store.get_run(store.resolve_run_id(text))


# -- node summaries (pure) -----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class NodeSummary:
    """What the DAG shows of one node; a fan-out (map or chunks) node sums up its instances."""

    id: str
    step: str
    state: str
    detail: str
    title: str
    retries: int
    cached: bool
    fan_out: bool
    counts: tuple[tuple[str, int], ...] = ()
    total: int = 0
    started_at: int | None = None
    finished_at: int | None = None

    def to_json(self) -> dict[str, Any]:
        """JSON form (the twin's nodes and the live stream's updates)."""
        return {"id": self.id, "step": self.step, "state": self.state, "detail": self.detail, "title": self.title,
                "retries": self.retries, "cached": self.cached, "fan_out": self.fan_out,
                "counts": dict(self.counts), "total": self.total, "started_at": self.started_at,
                "finished_at": self.finished_at}


def duration_text(ms: int | None) -> str:
    """A duration in milliseconds as ``850 ms``, ``12.4s`` or ``3m 05s``; empty for None."""
    if ms is None:
        return ""
    if ms < 1000:
        return f"{ms} ms"
    if ms < 60_000:
        return f"{ms / 1000:.1f}s"
    minutes, seconds = divmod(ms // 1000, 60)
    return f"{minutes}m {seconds:02d}s" if minutes < 60 else f"{minutes // 60}h {minutes % 60:02d}m"


def span_text(start: int | None, end: int | None) -> str:
    """`duration_text` of ``end - start``; empty when either is missing."""
    return duration_text(end - start) if start is not None and end is not None and end >= start else ""


def _clip(text: str, size: int) -> str:
    return text if len(text) <= size else text[:size - 1] + "…"


def _step_detail(step: StepRecord) -> str:
    state = step.state
    if state == "cached":
        return "cached"
    if state in ("running", "retrying") and step.attempt > 1:
        return f"{state} · attempt {step.attempt}"
    if state in ("queued", "failed", "skipped", "cancelled") and step.reason:
        return f"{state}: {step.reason}"
    return state


def summarize(graph_nodes: Sequence[Mapping[str, Any]], steps: Sequence[StepRecord]) -> tuple[NodeSummary, ...]:
    """One summary per node of the run's stored graph, in graph order, from its step rows (instances of a
    fan-out folded into their node: counts per state, retries summed, cached when any is)."""
    top: dict[str, StepRecord] = {}
    instances: dict[str, list[StepRecord]] = {}
    for row in steps:
        if row.parent is None:
            top[row.step_id] = row
        else:
            instances.setdefault(row.parent, []).append(row)
    out = []
    for node in graph_nodes:
        node_id = str(node["id"])
        step = top.get(node_id)
        state = step.state if step else "pending"
        message = f"{step.reason}: {step.message}" if step and step.reason else ""
        times = (step.started_at, step.finished_at) if step else (None, None)
        title = f"{node_id} ({node.get('step', node_id)}): {state}" + (f" — {message}" if message else "")
        if "map" not in node:
            detail = _step_detail(step) if step else state
            retries = step.retries_used if step else 0
            out.append(NodeSummary(node_id, str(node.get("step", node_id)), state, _clip(detail, DETAIL_CHARS),
                                   _clip(title, 400), retries, state == "cached", False, (), 0, *times))
            continue
        children = instances.get(node_id, [])
        counts = Counter(c.state for c in children)
        ordered = tuple((s, counts[s]) for s in STATE_ORDER if counts[s])
        done = counts["succeeded"] + counts["cached"]
        if children:
            detail = f"{done}/{len(children)} done" + (f" · {counts['failed']} failed" if counts["failed"] else "")
        else:
            detail = "waiting for items" if state in ("pending", "queued") else state
        retries = sum(c.retries_used for c in children) + (step.retries_used if step else 0)
        out.append(NodeSummary(node_id, str(node.get("step", node_id)), state, _clip(detail, DETAIL_CHARS),
                               _clip(title, 400), retries, state == "cached" or counts["cached"] > 0, True,
                               ordered, len(children), *times))
    return tuple(out)


def state_counts(nodes: Sequence[NodeSummary]) -> tuple[tuple[str, int], ...]:
    """How many nodes are in each state, in `STATE_ORDER`."""
    counts = Counter(n.state for n in nodes)
    return tuple((s, counts[s]) for s in STATE_ORDER if counts[s])


# -- the DAG -------------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class DrawnNode:
    """A node as the SVG draws it: its box, its summary and its short label."""

    x: float
    y: float
    width: float
    height: float
    summary: NodeSummary
    label: str


@dataclass(frozen=True, slots=True)
class RunGraph:
    """A run, its nodes' summaries and the laid-out DAG."""

    run: RunRecord
    nodes: tuple[NodeSummary, ...]
    drawn: tuple[DrawnNode, ...]
    edges: tuple[PlacedEdge, ...]
    layout: Layout

    @property
    def finished(self) -> bool:
        return self.run.status in FINISHED


_layouts: OrderedDict[str, Layout] = OrderedDict()
_layouts_lock = threading.Lock()


def graph_layout(run: RunRecord) -> Layout:
    """The laid-out DAG of a run's stored graph (kept for the last `LAYOUT_CACHE` runs: a run's graph never
    changes, its fan-out instances are folded into their node)."""
    with _layouts_lock:
        if run.id in _layouts:
            _layouts.move_to_end(run.id)
            return _layouts[run.id]
    nodes = run.graph.get("nodes", [])
    boxes = [LayoutNode(str(n["id"]), MAP_HEIGHT if "map" in n else NODE_HEIGHT) for n in nodes]
    known = {b.id for b in boxes}
    edges = [(str(dep), str(n["id"])) for n in nodes for dep in n.get("deps", []) if str(dep) in known]
    layout = layered_layout(boxes, edges, SPACING)
    with _layouts_lock:
        _layouts[run.id] = layout
        while len(_layouts) > LAYOUT_CACHE:
            _layouts.popitem(last=False)
    return layout


def run_graph(store: PipelineStore, run: RunRecord) -> RunGraph:
    """A run's DAG with each node's state, for ``/ui/pipelines/runs/{run_id}`` and its twin."""
    steps = store.steps(run.id, run.project)
    nodes = summarize(run.graph.get("nodes", []), steps)
    layout = graph_layout(run)
    drawn = tuple(DrawnNode(p.x, p.y, p.width, p.height, s, _clip(s.id, LABEL_CHARS))
                  for p, s in zip(layout.nodes, nodes, strict=True))
    return RunGraph(run, nodes, drawn, layout.edges, layout)


def list_page(items: Sequence[Any], token: str | None, size: int) -> tuple[tuple[Any, ...], str | None]:
    """One page of an in-memory list (the step list under the DAG, a fan-out's instances) and the next token."""
    start = _offset(token)
    more = str(start + size) if start + size < len(items) else None
    return tuple(items[start:start + size]), more


def edge_path(points: Sequence[tuple[float, float]]) -> str:
    """SVG path data of an edge: curves between columns, straight lines across the columns it passes."""
    (x0, y0), rest = points[0], points[1:]
    parts = [f"M{x0:g} {y0:g}"]
    for i, (x, y) in enumerate(rest):
        if i % 2 == 1:  # leaving a column at the height it entered
            parts.append(f"H{x:g}")
        else:
            mid = (x0 + x) / 2
            parts.append(f"C{mid:g} {y0:g} {mid:g} {y:g} {x:g} {y:g}")
        x0, y0 = x, y
    return "".join(parts)


def bar_segments(summary: NodeSummary, width: float) -> list[tuple[str, float, float]]:
    """``(state, x, width)`` of a fan-out node's bar: one segment per state, proportional to its count."""
    if not summary.total:
        return []
    out, x = [], 0.0
    for state, count in summary.counts:
        w = round(width * count / summary.total, 1)
        out.append((state, round(x, 1), w))
        x += w
    return out


def run_graph_json(view: RunGraph) -> dict[str, Any]:
    """The run page's twin: the run, every node with its state and box, every edge with its points."""
    return {"run": view.run.to_json(), "width": view.layout.width, "height": view.layout.height,
            "nodes": [{**d.summary.to_json(), "x": d.x, "y": d.y, "width": d.width, "height": d.height}
                      for d in view.drawn],
            "edges": [{"source": e.source, "target": e.target, "points": [list(p) for p in e.points]}
                      for e in view.edges],
            "counts": dict(state_counts(view.nodes))}


# -- a step ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class StepView:
    """A step: its row, what it needs, its attempts with the shown attempt's log, and (for a fan-out node) one
    page of its instances."""

    run: RunRecord
    step: StepRecord
    fan_out: bool
    needs: tuple[str, ...]
    attempts: tuple[AttemptRecord, ...]
    shown: AttemptRecord | None
    log_text: str
    log_size: int
    instances: tuple[StepRecord, ...]
    instance_counts: tuple[tuple[str, int], ...]
    instance_total: int
    next_page_token: str | None

    @property
    def live(self) -> bool:
        """Whether the shown attempt is still running (its log grows)."""
        return self.shown is not None and self.shown.finished_at is None

    @property
    def log_truncated(self) -> bool:
        """Whether the page shows only the log's last `LOG_TAIL_BYTES`."""
        return self.log_size > LOG_TAIL_BYTES


def _offset(token: str | None) -> int:
    if not token:
        return 0
    if not token.isdigit() or len(token) > 9:
        raise InvalidParameterValue("page_token: not a token this list gave out")
    return int(token)


def step_view(runner: PipelineRunner, run: RunRecord, step_id: str, *, attempt: int | None = None,
              page_token: str | None = None) -> StepView:
    """The step page's data; `ResourceDoesNotExist` for an unknown step or attempt."""
    from capstan.pipelines.logs import read_log

    store = runner.store
    steps = store.steps(run.id, run.project)
    step = next((s for s in steps if s.step_id == step_id), None)
    if step is None:
        raise ResourceDoesNotExist(f"run {run.id} has no step {step_id[:256]!r}")
    nodes = {str(n["id"]): n for n in run.graph.get("nodes", [])}
    spec = nodes.get(step.step_id, {})
    needs = tuple(str(d) for d in nodes.get(step.parent or step.step_id, {}).get("deps", []))
    attempts = tuple(store.attempts(run.id, step.step_id))
    shown = attempts[-1] if attempts and attempt is None else next((a for a in attempts if a.attempt == attempt), None)
    if attempt is not None and shown is None:
        raise ResourceDoesNotExist(f"step {step_id!r} of run {run.id} has no attempt {attempt}")
    log_text, log_size = "", 0
    if shown is not None and shown.finished_at is not None:
        data = read_log(runner, shown)
        log_size = len(data)
        log_text = data[-LOG_TAIL_BYTES:].decode("utf-8", "replace")
    children = [s for s in steps if s.parent == step.step_id]
    page, more = list_page(children, page_token, INSTANCE_PAGE)
    counts = Counter(c.state for c in children)
    return StepView(run, step, "map" in spec, needs, attempts, shown, log_text, log_size, page,
                    tuple((s, counts[s]) for s in STATE_ORDER if counts[s]), len(children), more)


def step_view_json(view: StepView) -> dict[str, Any]:
    """The step page's twin (the log itself is ``GET /api/v1/pipelines/runs/{run}/steps/{step}/logs``)."""
    return {"run": view.run.to_json(), "step": view.step.to_json(), "fan_out": view.fan_out,
            "needs": list(view.needs),
            "attempts": [a.to_json() for a in view.attempts],
            "shown_attempt": view.shown.attempt if view.shown else None,
            "instances": [s.to_json() for s in view.instances], "instance_counts": dict(view.instance_counts),
            "instance_total": view.instance_total, "next_page_token": view.next_page_token}
