"""A layered (Sugiyama-style) drawing of a DAG, computed on the server for the pipeline run page. Pure: no I/O.

`layered_layout` places nodes left to right in columns (layers) and returns boxes and edge polylines:

1. **Layers**: longest path from the sources, then every node moves as far right as its successors allow, so an
   input used only at the end sits next to its consumer instead of stretching a long edge across the page.
2. **Dummy nodes**: an edge spanning several layers gets one bend point per layer it crosses, so it takes part in
   crossing reduction and runs straight past the columns. Their number is capped (`Spacing.dummy_budget` per
   node); edges beyond the cap, shortest first kept, are drawn as one curve.
3. **Order**: alternate down and up barycenter sweeps (each layer sorted by its neighbours' mean position in the
   layer just placed), keeping the order with the fewest crossings (counted with a Fenwick tree).
4. **Coordinates**: each layer's vertical centres move towards their neighbours' mean, keeping the order and the
   minimum gaps: a least-squares fit solved exactly by pool-adjacent-violators (isotonic regression).

Every step is linear or ``n log n`` in the nodes, dummies and edges, times a fixed number of sweeps.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Sequence
from dataclasses import dataclass

Point = tuple[float, float]


@dataclass(frozen=True, slots=True)
class LayoutNode:
    """A node to place: its id and box height (all boxes share `Spacing.node_width`)."""

    id: str
    height: float = 40.0


@dataclass(frozen=True, slots=True)
class Spacing:
    """Sizes of the drawing, in pixels, and the effort spent on it."""

    node_width: float = 176.0
    layer_gap: float = 64.0
    node_gap: float = 16.0
    margin: float = 12.0
    sweeps: int = 6
    dummy_budget: int = 4
    """Bend points allowed per node (plus a fixed 400), so a dense DAG cannot blow up the drawing."""


@dataclass(frozen=True, slots=True)
class PlacedNode:
    """A node's box: ``x``/``y`` are its top-left corner; ``layer`` and ``order`` its column and rank in it."""

    id: str
    layer: int
    order: int
    x: float
    y: float
    width: float
    height: float


@dataclass(frozen=True, slots=True)
class PlacedEdge:
    """An edge as a polyline from the source's right side to the target's left side. Between those, each bend
    point comes as a pair (entering and leaving a column at the same height): curves join the pairs, straight
    segments cross the columns."""

    source: str
    target: str
    points: tuple[Point, ...]


@dataclass(frozen=True, slots=True)
class Layout:
    """The whole drawing: nodes in input order, edges in input order (duplicates and self-loops dropped)."""

    nodes: tuple[PlacedNode, ...]
    edges: tuple[PlacedEdge, ...]
    width: float
    height: float
    layers: int
    crossings: int


@dataclass(slots=True)
class _Graph:
    """The graph being laid out: real nodes first (0..n-1), then dummies; neighbours per node."""

    layer: list[int]
    height: list[float]
    preds: list[list[int]]
    succs: list[list[int]]
    chains: list[list[int]]  # per kept edge: source, its dummies, target


def layered_layout(nodes: Sequence[LayoutNode], edges: Sequence[tuple[str, str]],
                   spacing: Spacing = Spacing()) -> Layout:
    """Lay out the DAG ``nodes``/``edges`` (``(source, target)`` ids; every id must be a node). An edge that closes
    a cycle is drawn but does not constrain the layers."""
    index = {node.id: i for i, node in enumerate(nodes)}
    if len(index) != len(nodes):
        raise ValueError("node ids must be unique")
    pairs: list[tuple[int, int]] = []
    seen: set[tuple[int, int]] = set()
    for source, target in edges:
        if source not in index or target not in index:
            raise ValueError(f"edge {source!r} -> {target!r} names an unknown node")
        pair = (index[source], index[target])
        if pair[0] != pair[1] and pair not in seen:
            seen.add(pair)
            pairs.append(pair)
    n = len(nodes)
    order = _topological(n, pairs)
    rank = [0] * n
    for position, v in enumerate(order):
        rank[v] = position
    forward = [(u, w) for u, w in pairs if rank[u] < rank[w]]
    layer = _layers(n, order, forward)
    graph = _with_dummies(layer, [node.height for node in nodes], forward, budget=spacing.dummy_budget * n + 400)
    columns, crossings = _order(graph, order, spacing.sweeps)
    centres = _vertical(graph, columns, spacing)
    return _assemble(nodes, pairs, graph, columns, centres, crossings, spacing)


# -- 1. layers ------------------------------------------------------------------------------------------------
def _topological(n: int, pairs: Sequence[tuple[int, int]]) -> list[int]:
    """Kahn's order, ties broken by input order; nodes left on a cycle follow in input order."""
    indegree = [0] * n
    succs: list[list[int]] = [[] for _ in range(n)]
    for u, w in pairs:
        succs[u].append(w)
        indegree[w] += 1
    ready = [v for v in range(n) if indegree[v] == 0]
    heapq.heapify(ready)
    out: list[int] = []
    while ready:
        v = heapq.heappop(ready)
        out.append(v)
        for w in succs[v]:
            indegree[w] -= 1
            if indegree[w] == 0:
                heapq.heappush(ready, w)
    if len(out) < n:
        placed = set(out)
        out += [v for v in range(n) if v not in placed]
    return out


def _layers(n: int, order: Sequence[int], forward: Sequence[tuple[int, int]]) -> list[int]:
    preds: list[list[int]] = [[] for _ in range(n)]
    succs: list[list[int]] = [[] for _ in range(n)]
    for u, w in forward:
        preds[w].append(u)
        succs[u].append(w)
    layer = [0] * n
    for v in order:
        if preds[v]:
            layer[v] = 1 + max(layer[u] for u in preds[v])
    for v in reversed(order):  # pull towards the successors: shorter edges, same number of layers
        if succs[v]:
            layer[v] = max(layer[v], min(layer[w] for w in succs[v]) - 1)
    return layer


def _with_dummies(layer: list[int], heights: list[float], forward: Sequence[tuple[int, int]], *,
                  budget: int) -> _Graph:
    """The graph with bend points on long edges (shortest spans first, while the budget lasts)."""
    graph = _Graph(list(layer), list(heights), [[] for _ in layer], [[] for _ in layer], [])
    spans = sorted(forward, key=lambda e: layer[e[1]] - layer[e[0]])
    for u, w in spans:
        span = layer[w] - layer[u]
        if span > 1 and span - 1 > budget:
            graph.chains.append([u, w])  # drawn as one curve; ignored by ordering and placement
            continue
        chain = [u]
        for step in range(1, span):
            dummy = len(graph.layer)
            graph.layer.append(layer[u] + step)
            graph.height.append(0.0)
            graph.preds.append([])
            graph.succs.append([])
            chain.append(dummy)
        budget -= span - 1
        chain.append(w)
        for a, b in itertools.pairwise(chain):
            graph.succs[a].append(b)
            graph.preds[b].append(a)
        graph.chains.append(chain)
    return graph


# -- 3. order within layers ----------------------------------------------------------------------------------
def _order(graph: _Graph, topo: Sequence[int], sweeps: int) -> tuple[list[list[int]], int]:
    """Nodes of each layer top to bottom, and the crossings of that order."""
    count = max(graph.layer, default=-1) + 1
    columns: list[list[int]] = [[] for _ in range(count)]
    rank = {v: i for i, v in enumerate(topo)}
    for v in sorted(range(len(graph.layer)), key=lambda v: rank.get(v, len(rank) + v)):
        columns[graph.layer[v]].append(v)
    position = [0.0] * len(graph.layer)
    _number(columns, position)
    _sweep(columns, position, graph.preds, range(1, count))  # a first pass from the input order
    best = [list(c) for c in columns]
    fewest = _crossings(columns, position, graph.succs)
    for sweep in range(sweeps):
        if fewest == 0:
            break
        if sweep % 2 == 0:
            _sweep(columns, position, graph.succs, range(count - 2, -1, -1))
        else:
            _sweep(columns, position, graph.preds, range(1, count))
        found = _crossings(columns, position, graph.succs)
        if found < fewest:
            fewest, best = found, [list(c) for c in columns]
    _number(best, position)
    return best, fewest


def _number(columns: Sequence[Sequence[int]], position: list[float]) -> None:
    for column in columns:
        for i, v in enumerate(column):
            position[v] = float(i)


def _sweep(columns: list[list[int]], position: list[float], neighbours: Sequence[Sequence[int]],
           layers: range) -> None:
    """Sort each layer in ``layers`` by the mean position of its ``neighbours`` (placed in the previous step of
    the sweep); a node without any keeps its place."""
    for i in layers:
        column = columns[i]

        def key(v: int) -> float:
            near = neighbours[v]
            return sum(position[u] for u in near) / len(near) if near else position[v]

        column.sort(key=key)
        for j, v in enumerate(column):
            position[v] = float(j)


def _crossings(columns: Sequence[Sequence[int]], position: Sequence[float],
               succs: Sequence[Sequence[int]]) -> int:
    """Edge crossings between adjacent layers: inversions of target positions, counted with a Fenwick tree."""
    total = 0
    for i in range(len(columns) - 1):
        size = len(columns[i + 1])
        ends = sorted((int(position[u]), int(position[w])) for u in columns[i] for w in succs[u])
        tree = [0] * (size + 1)
        for seen, (_, w) in enumerate(ends):
            j, below = w + 1, 0  # edges seen so far ending at or above w
            while j > 0:
                below += tree[j]
                j -= j & -j
            total += seen - below
            j = w + 1
            while j <= size:
                tree[j] += 1
                j += j & -j
    return total


# -- 4. vertical coordinates ---------------------------------------------------------------------------------
def _vertical(graph: _Graph, columns: Sequence[Sequence[int]], spacing: Spacing) -> list[float]:
    """Vertical centre of every node (real and dummy)."""
    centre = [0.0] * len(graph.layer)
    gaps = [_gaps(column, graph.height, spacing.node_gap) for column in columns]
    for column, gap in zip(columns, gaps, strict=True):
        y = 0.0
        for v, g in zip(column, gap, strict=True):
            y += g
            centre[v] = y
    count = len(columns)
    for sweep in range(max(2, spacing.sweeps)):
        down = sweep % 2 == 0
        neighbours = graph.preds if down else graph.succs
        for i in (range(1, count) if down else range(count - 2, -1, -1)):
            wanted = [sum(centre[u] for u in neighbours[v]) / len(neighbours[v]) if neighbours[v] else centre[v]
                      for v in columns[i]]
            for v, y in zip(columns[i], _fit(wanted, gaps[i]), strict=True):
                centre[v] = y
    return centre


def _gaps(column: Sequence[int], height: Sequence[float], node_gap: float) -> list[float]:
    """Minimum distance between each node's centre and the previous one's (0 for the first)."""
    out: list[float] = []
    for j, v in enumerate(column):
        if j == 0:
            out.append(0.0)
            continue
        u = column[j - 1]
        gap = node_gap if height[u] and height[v] else node_gap / 2
        out.append((height[u] + height[v]) / 2 + gap)
    return out


def _fit(wanted: Sequence[float], gaps: Sequence[float]) -> list[float]:
    """Centres closest to ``wanted`` (least squares) that keep at least ``gaps`` between neighbours: with the
    gaps subtracted the centres must not decrease, which pool-adjacent-violators solves in linear time."""
    offsets: list[float] = []
    total = 0.0
    for g in gaps:
        total += g
        offsets.append(total)
    blocks: list[list[float]] = []  # [sum, count] of merged targets
    for w, off in zip(wanted, offsets, strict=True):
        blocks.append([w - off, 1.0])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            s, c = blocks.pop()
            blocks[-1][0] += s
            blocks[-1][1] += c
    out: list[float] = []
    for s, c in blocks:
        out += [s / c] * int(c)
    return [z + off for z, off in zip(out, offsets, strict=True)]


# -- assembling -----------------------------------------------------------------------------------------------
def _assemble(nodes: Sequence[LayoutNode], pairs: Sequence[tuple[int, int]], graph: _Graph,
              columns: Sequence[Sequence[int]], centre: Sequence[float], crossings: int,
              spacing: Spacing) -> Layout:
    n = len(nodes)
    top = min((centre[v] - graph.height[v] / 2 for v in range(len(centre))), default=0.0)
    shift = spacing.margin - top
    step = spacing.node_width + spacing.layer_gap
    width = spacing.node_width

    def left(v: int) -> float:
        return spacing.margin + graph.layer[v] * step

    def mid(v: int) -> float:
        return round(centre[v] + shift, 1)

    order = [0] * len(graph.layer)
    for column in columns:
        for j, v in enumerate(column):
            order[v] = j
    placed = tuple(PlacedNode(node.id, graph.layer[v], order[v], left(v), round(centre[v] + shift - node.height / 2, 1),
                              width, node.height) for v, node in enumerate(nodes))
    chains = {(chain[0], chain[-1]): chain for chain in graph.chains}
    edges = []
    for u, w in pairs:
        chain = chains.get((u, w), [u, w])
        points: list[Point] = [(left(u) + width, mid(u))]
        for d in chain[1:-1]:
            points += [(left(d), mid(d)), (left(d) + width, mid(d))]
        points.append((left(w), mid(w)))
        edges.append(PlacedEdge(nodes[u].id, nodes[w].id, tuple(points)))
    layers = len(columns)
    bottom = max((p.y + p.height for p in placed), default=0.0)
    dummy_bottom = max((mid(v) for v in range(n, len(centre))), default=0.0)
    return Layout(placed, tuple(edges), width=2 * spacing.margin + max(0, layers * step - spacing.layer_gap),
                  height=max(bottom, dummy_bottom) + spacing.margin, layers=layers, crossings=crossings)
