"""Capturing a pipeline's DAG from its step calls, and the DAG itself.

Arguments are stored as *bindings*, small JSON values that say where an argument comes from:
``{"v": value}`` a JSON literal, ``{"r": node, "p": [path]}`` another step's output (optionally indexed),
``{"l": [...]}`` / ``{"t": [...]}`` / ``{"d": [[key, binding]...]}`` containers holding outputs, ``{"c": [i, n]}``
a `Chunk` and ``{"x": base64}`` any other literal, pickled. The graph's JSON form (`Graph.spec`) is persisted with
the run; resuming rebuilds the graph from the pipeline and checks it still matches.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import heapq
import inspect
import math
import pickle
import sys
import traceback
import typing
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import orjson

from capstan.pipelines.dsl import (
    Chunk,
    Chunks,
    Pipeline,
    PipelineDefinitionError,
    Step,
    StepOutput,
    placeholders,
    where,
)

Binding = dict[str, Any]
_BUILDER: ContextVar[GraphBuilder | None] = ContextVar("capstan_pipeline_builder", default=None)


def current_builder() -> GraphBuilder | None:
    """The graph being built in this context, if any."""
    return _BUILDER.get()


@dataclass(frozen=True, slots=True)
class MapSpec:
    """How a map node fans out: over ``items`` (a binding, or ``{"chunks": n}``) into parameter ``param``."""

    items: Binding
    param: str
    max_parallel: int | None


@dataclass(slots=True)
class Node:
    """One node of the DAG: a step call (or a map over one), its argument bindings and upstream nodes."""

    id: str
    step: Step
    args: dict[str, Binding]
    deps: list[str]
    location: str
    seq: int
    map: MapSpec | None = None
    parent: str | None = None
    index: int | None = None
    chunk: Chunk | None = None
    children: list[str] = field(default_factory=list)
    _refs: tuple[str, ...] | None = None

    def refs(self) -> tuple[str, ...]:
        """Upstream nodes whose outputs the arguments read (not ordering-only dependencies), each once."""
        if self._refs is None:
            seen: dict[str, None] = {}
            for binding in self.args.values():
                for dep in refs(binding):
                    seen[dep] = None
            self._refs = tuple(seen)
        return self._refs

    def spec(self) -> dict[str, Any]:
        """JSON form of the node."""
        out: dict[str, Any] = {"id": self.id, "step": self.step.name, "kind": self.step.kind,
                               "deps": list(self.deps), "args": self.args, "location": self.location}
        if self.map is not None:
            out["map"] = {"items": self.map.items, "param": self.map.param, "max_parallel": self.map.max_parallel}
        return out


# -- bindings ---------------------------------------------------------------------------------------------------

def encode(value: Any, deps: list[str], here: str, builder: GraphBuilder | None = None) -> Binding:
    """The binding of an argument value, appending referenced nodes to ``deps``."""
    if isinstance(value, StepOutput):
        if builder is not None and value._builder is not builder:
            raise PipelineDefinitionError(f"{here}: {value!r} belongs to another pipeline build")
        if value.node_id not in deps:
            deps.append(value.node_id)
        return {"r": value.node_id, "p": list(value.path)}
    kind = type(value)
    if value is None or kind in (bool, str, int):
        return {"v": value}
    if kind is float:
        return {"v": value} if math.isfinite(value) else _pickled(value, here)
    if kind is Chunk:
        return {"c": [value.index, value.count]}
    if kind in (list, tuple):
        parts = [encode(v, deps, here, builder) for v in value]
        if kind is list and all("v" in p for p in parts):
            return {"v": [p["v"] for p in parts]}
        return {"l" if kind is list else "t": parts}
    if kind is dict and all(isinstance(k, str) for k in value):
        pairs = [[k, encode(v, deps, here, builder)] for k, v in value.items()]
        if all("v" in b for _k, b in pairs):
            return {"v": {k: b["v"] for k, b in pairs}}
        return {"d": pairs}
    return _pickled(value, here)


def _pickled(value: Any, here: str) -> Binding:
    try:
        data = pickle.dumps(value, protocol=5)
    except Exception as exc:  # noqa: BLE001  # any pickling failure is a definition error with its place
        raise PipelineDefinitionError(
            f"{here}: argument {type(value).__name__} cannot be stored with the run ({exc}); pass it from a step "
            "or as a JSON value") from None
    return {"x": base64.b64encode(data).decode()}


def decode(binding: Binding, lookup: Callable[[str], Any]) -> Any:
    """The value of a binding; ``lookup(node_id)`` gives an upstream node's output."""
    if "v" in binding:
        value = binding["v"]
        return copy.deepcopy(value) if isinstance(value, list | dict) else value
    if "r" in binding:
        return select(lookup(binding["r"]), binding.get("p") or ())
    if "l" in binding:
        return [decode(b, lookup) for b in binding["l"]]
    if "t" in binding:
        return tuple(decode(b, lookup) for b in binding["t"])
    if "d" in binding:
        return {k: decode(b, lookup) for k, b in binding["d"]}
    if "c" in binding:
        return Chunk(int(binding["c"][0]), int(binding["c"][1]))
    if "x" in binding:
        return pickle.loads(base64.b64decode(binding["x"]))
    raise PipelineDefinitionError(f"unknown binding {binding!r}")


def select(value: Any, path: typing.Sequence[int | str]) -> Any:
    """``value[p0][p1]...``, with a clear error when the path does not fit the value."""
    for part in path:
        try:
            value = value[part]
        except (KeyError, IndexError, TypeError) as exc:
            raise PipelineDefinitionError(
                f"cannot select [{part!r}] from a {type(value).__name__}: {type(exc).__name__}: {exc}") from None
    return value


def refs(binding: Binding) -> list[str]:
    """Node ids a binding reads, in order."""
    if "r" in binding:
        return [binding["r"]]
    out: list[str] = []
    for key in ("l", "t"):
        for b in binding.get(key, ()):
            out.extend(refs(b))
    for _k, b in binding.get("d", ()):
        out.extend(refs(b))
    return out


_POS_ONLY = inspect.Parameter.POSITIONAL_ONLY
_POS_OR_KW = inspect.Parameter.POSITIONAL_OR_KEYWORD
_VAR_POS = inspect.Parameter.VAR_POSITIONAL
_KW_ONLY = inspect.Parameter.KEYWORD_ONLY
_VAR_KW = inspect.Parameter.VAR_KEYWORD


def call_args(step: Step, args: Mapping[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Positional and keyword arguments for calling ``step.fn`` with decoded argument values by name (what
    `inspect.BoundArguments` computes, without building one for every call)."""
    if step.fn is None:
        return (), dict(args)
    positional: list[Any] = []
    keywords: dict[str, Any] = {}
    in_order = True
    for name, kind in step.call_plan():
        if kind is _KW_ONLY or kind is _VAR_KW:
            in_order = False
        if name not in args:
            if kind is _POS_ONLY or kind is _POS_OR_KW:
                in_order = False
            continue
        value = args[name]
        if kind is _VAR_POS:
            positional.extend(value)
        elif kind is _VAR_KW:
            keywords.update(value)
        elif in_order and (kind is _POS_ONLY or kind is _POS_OR_KW):
            positional.append(value)
        else:
            keywords[name] = value
    return tuple(positional), keywords


# -- the graph --------------------------------------------------------------------------------------------------

class Graph:
    """The DAG of one pipeline run: nodes in a topological order, the parameters it was built with and the
    binding of the pipeline's return value."""

    def __init__(self, pipeline: Pipeline, params: dict[str, Any], nodes: dict[str, Node],
                 result: Binding | None) -> None:
        self.pipeline = pipeline
        self.params = params
        self.nodes = nodes
        self.result = result

    @property
    def steps(self) -> dict[str, Step]:
        """Step objects by name."""
        return {n.step.name: n.step for n in self.nodes.values()}

    def spec(self) -> dict[str, Any]:
        """JSON form persisted with the run (static nodes only; map children are recreated at run time)."""
        return {"version": 1, "pipeline": self.pipeline.name,
                "nodes": [n.spec() for n in self.nodes.values() if n.parent is None], "result": self.result}

    def fingerprint(self) -> str:
        """sha256 of `spec`: equal fingerprints mean the same DAG with the same arguments."""
        return hashlib.sha256(orjson.dumps(self.spec(), option=orjson.OPT_SORT_KEYS)).hexdigest()

    def map_items(self, node: Node, lookup: Callable[[str], Any]) -> list[Binding]:
        """The item binding of each child of map node ``node``, once its items are known."""
        assert node.map is not None
        items = node.map.items
        if "chunks" in items:
            count = int(items["chunks"])
            return [{"c": [i, count]} for i in range(count)]
        if "v" in items:
            return [{"v": v} for v in items["v"]]
        if "l" in items:
            return list(items["l"])
        if "t" in items:
            return list(items["t"])
        value = decode(items, lookup)
        if not isinstance(value, list | tuple):
            raise PipelineDefinitionError(
                f"{node.location}: {node.id}.map() needs a list of items, but the upstream value is a "
                f"{type(value).__name__}")
        base = items.get("p") or []
        return [{"r": items["r"], "p": [*base, i]} for i in range(len(value))]

    def add_children(self, node: Node, item_bindings: list[Binding]) -> list[Node]:
        """Create (or return the existing) child nodes of map node ``node``."""
        assert node.map is not None
        if node.children:
            return [self.nodes[c] for c in node.children]
        out = []
        for i, item in enumerate(item_bindings):
            args = dict(node.args)
            args[node.map.param] = item
            child = Node(id=f"{node.id}[{i}]", step=node.step, args=args, deps=list(node.deps),
                         location=node.location, seq=node.seq, parent=node.id, index=i,
                         chunk=Chunk(*item["c"]) if "c" in item else None)
            self.nodes[child.id] = child
            node.children.append(child.id)
            out.append(child)
        return out


class GraphBuilder:
    """Collects nodes while a pipeline function runs."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.nodes: dict[str, Node] = {}
        self._counts: dict[str, int] = {}

    def _new_id(self, name: str) -> str:
        n = self._counts.get(name, 0) + 1
        self._counts[name] = n
        node_id = name if n == 1 else f"{name}-{n}"
        while node_id in self.nodes:
            n += 1
            self._counts[name] = n
            node_id = f"{name}-{n}"
        return node_id

    def _bind(self, step: Step, args: tuple[Any, ...], kwargs: dict[str, Any], here: str, *,
              mapped: str | None = None) -> dict[str, Any]:
        if step.fn is None:
            if args:
                raise PipelineDefinitionError(f"{here}: command step {step.name!r} takes keyword arguments only")
            needed = placeholders(step.command or ()) - set(kwargs) - ({mapped} if mapped else set())
            if needed:
                raise PipelineDefinitionError(
                    f"{here}: command step {step.name!r} needs {', '.join(sorted(needed))}= for its "
                    "{placeholders}")
            return dict(kwargs)
        sig = step.signature
        try:
            bound = sig.bind_partial(*args, **kwargs) if mapped is not None else sig.bind(*args, **kwargs)
        except TypeError as exc:
            raise PipelineDefinitionError(f"{here}: step {step.name!r} ({step.location}): {exc}") from None
        return dict(bound.arguments)

    def add_call(self, step: Step, args: tuple[Any, ...], kwargs: dict[str, Any], here: str) -> StepOutput:
        """Record a call of ``step``."""
        values = self._bind(step, args, kwargs, here)
        deps: list[str] = []
        bindings = {name: encode(v, deps, here, self) for name, v in values.items()}
        node = Node(id=self._new_id(step.name), step=step, args=bindings, deps=deps, location=here,
                    seq=len(self.nodes))
        self.nodes[node.id] = node
        return StepOutput(self, node.id)

    def add_map(self, step: Step, items: Any, args: tuple[Any, ...], kwargs: dict[str, Any],
                max_parallel: int | None, here: str) -> StepOutput:
        """Record ``step.map(items, ...)``."""
        if step.fn is None:
            param = "item"
        else:
            given = self._bind(step, args, kwargs, here, mapped="?")
            free = [p.name for p in step.signature.parameters.values()
                    if p.name not in given and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
            if not free:
                raise PipelineDefinitionError(
                    f"{here}: step {step.name!r}.map(): every parameter is already given; one must receive the "
                    "items")
            param = free[0]
            try:
                step.signature.bind(**{**given, param: None})
            except TypeError as exc:
                raise PipelineDefinitionError(f"{here}: step {step.name!r}.map(): {exc}") from None
            kwargs = given
        values = self._bind(step, (), kwargs, here, mapped=param) if step.fn is None else kwargs
        deps: list[str] = []
        if isinstance(items, Chunks):
            item_binding: Binding = {"chunks": items.count}
        elif isinstance(items, StepOutput) or type(items) in (list, tuple):
            item_binding = encode(items, deps, here, self)
        else:
            raise PipelineDefinitionError(
                f"{here}: {step.name}.map() takes a list, another step's output or capstan.chunks(n); got "
                f"{type(items).__name__}")
        bindings = {name: encode(v, deps, here, self) for name, v in values.items()}
        node = Node(id=self._new_id(step.name), step=step, args=bindings, deps=deps, location=here,
                    seq=len(self.nodes), map=MapSpec(item_binding, param, max_parallel))
        self.nodes[node.id] = node
        return StepOutput(self, node.id)

    def add_after(self, node_id: str, others: tuple[StepOutput, ...], here: str) -> None:
        """Add ordering-only edges ``others -> node_id``."""
        node = self.nodes.get(node_id)
        if node is None:
            raise PipelineDefinitionError(f"{here}: .after() on an output of another pipeline build")
        for other in others:
            if not isinstance(other, StepOutput) or other._builder is not self:
                raise PipelineDefinitionError(f"{here}: .after() takes outputs of steps of this pipeline")
            if other.node_id == node_id:
                raise PipelineDefinitionError(f"{here}: cycle: step {node_id!r} cannot run after itself")
            if other.node_id not in node.deps:
                node.deps.append(other.node_id)

    def tuple_size(self, node_id: str) -> int | None:
        """The length of the tuple a step is annotated to return, if fixed."""
        node = self.nodes[node_id]
        if node.map is not None or node.step.fn is None:
            return None
        ann = node.step.return_annotation()
        if typing.get_origin(ann) is tuple:
            args = typing.get_args(ann)
            if args and Ellipsis not in args:
                return len(args)
        return None

    def finish(self, result: Any) -> Graph:
        """Check the DAG (no cycle, importable process steps) and return it in topological order."""
        deps: list[str] = []
        result_binding = encode(result, deps, self.pipeline.location, self) if result is not None else None
        order = _toposort(self.nodes)
        for node in self.nodes.values():
            st = node.step
            if st.fn is not None and st.options.isolation == "process" and (
                    "<locals>" in st.qualname or "<lambda>" in st.qualname or not st.module):
                raise PipelineDefinitionError(
                    f"{st.location}: step {st.name!r} is not defined at module level, so a worker process cannot "
                    "import it; move it to module level or use isolation='thread'")
        nodes = {node_id: self.nodes[node_id] for node_id in order}
        for seq, node in enumerate(nodes.values()):
            node.seq = seq
        return Graph(self.pipeline, {}, nodes, result_binding)


def _toposort(nodes: dict[str, Node]) -> list[str]:
    indegree = {n: 0 for n in nodes}
    children: dict[str, list[str]] = {n: [] for n in nodes}
    for node in nodes.values():
        for dep in node.deps:
            indegree[node.id] += 1
            children[dep].append(node.id)
    # Among the nodes that are ready, always take the one called first: the order stays the call order
    # whenever the edges allow it.
    ready = [(nodes[n].seq, n) for n in nodes if indegree[n] == 0]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        _seq, current = heapq.heappop(ready)
        order.append(current)
        for child in children[current]:
            indegree[child] -= 1
            if indegree[child] == 0:
                heapq.heappush(ready, (nodes[child].seq, child))
    if len(order) == len(nodes):
        return order
    cycle = _find_cycle(nodes, {n for n, d in indegree.items() if d > 0})
    path = " -> ".join(f"{n} ({nodes[n].location})" for n in cycle)
    raise PipelineDefinitionError(f"{nodes[cycle[0]].location}: cycle in the pipeline: {path}")


def _find_cycle(nodes: dict[str, Node], candidates: set[str]) -> list[str]:
    start = min(candidates, key=lambda n: nodes[n].seq)
    seen: list[str] = []
    current = start
    while current not in seen:
        seen.append(current)
        current = next(d for d in nodes[current].deps if d in candidates)
    return [*seen[seen.index(current):], current]


def build_graph(pipe: Pipeline, given: dict[str, Any]) -> Graph:
    """Run ``pipe``'s function in build mode with checked parameters and return its DAG."""
    from capstan.pipelines.params import resolve_params

    values = resolve_params(pipe, given)
    builder = GraphBuilder(pipe)
    token = _BUILDER.set(builder)
    try:
        result = pipe.fn(**values)
    except PipelineDefinitionError:
        raise
    except Exception as exc:  # noqa: BLE001  # user code failed while building: one line with its place
        raise PipelineDefinitionError(f"{_user_place(exc, pipe)}: building pipeline {pipe.name!r} failed: "
                                      f"{type(exc).__name__}: {exc}") from None
    finally:
        _BUILDER.reset(token)
    graph = builder.finish(result)
    graph.params = values
    return graph


def _user_place(exc: BaseException, pipe: Pipeline) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    here = __file__
    dsl_file = sys.modules[Step.__module__].__file__
    user = [f for f in frames if f.filename not in (here, dsl_file)]
    if user:
        return where(user[-1].filename, user[-1].lineno or 0)
    return pipe.location
