"""The pipeline DAG's layered layout (`capstan.ui.dag_layout`, pure): edges run left to right, boxes in a column
never overlap, long edges bend through every column they cross, crossings are removed where an order without them
exists, a parent sits level with its children, and bad input is refused."""

from __future__ import annotations

import itertools
import random

import pytest

from capstan.ui.dag_layout import Layout, LayoutNode, Spacing, layered_layout
from capstan.ui.pipelines_view import edge_path

SPACING = Spacing()


def lay(edges: list[tuple[str, str]], nodes: list[str] | None = None, **kw: object) -> Layout:
    names = nodes or list(dict.fromkeys(n for e in edges for n in e))
    return layered_layout([LayoutNode(n) for n in names], edges, Spacing(**kw) if kw else SPACING)  # type: ignore[arg-type]  # test-only keyword pass-through


def by_id(layout: Layout) -> dict[str, tuple[int, float, float]]:
    """Each node's layer and vertical centre (and left edge)."""
    return {p.id: (p.layer, p.y + p.height / 2, p.x) for p in layout.nodes}


def check_valid(layout: Layout, edges: list[tuple[str, str]]) -> None:
    placed = by_id(layout)
    for source, target in edges:
        assert placed[target][0] > placed[source][0], (source, target)
    columns: dict[int, list[tuple[float, float]]] = {}
    for p in layout.nodes:
        columns.setdefault(p.layer, []).append((p.y, p.y + p.height))
        assert p.x >= 0 and p.x + p.width <= layout.width and p.y >= 0 and p.y + p.height <= layout.height
    for boxes in columns.values():
        boxes.sort()
        for (_, bottom), (top, _) in itertools.pairwise(boxes):
            assert top - bottom >= SPACING.node_gap - 1e-6
    for edge in layout.edges:
        xs = [x for x, _ in edge.points]
        assert xs == sorted(xs)  # every segment goes right


def test_a_chain_is_one_straight_row() -> None:
    edges = [("a", "b"), ("b", "c")]
    layout = lay(edges)
    check_valid(layout, edges)
    placed = by_id(layout)
    assert [placed[n][0] for n in "abc"] == [0, 1, 2]
    assert len({placed[n][1] for n in "abc"}) == 1
    assert layout.layers == 3 and layout.crossings == 0
    assert layout.width == 2 * SPACING.margin + 3 * SPACING.node_width + 2 * SPACING.layer_gap


def test_a_parent_sits_level_with_the_middle_of_its_children() -> None:
    edges = [("a", "x"), ("a", "y"), ("a", "z")]
    placed = by_id(lay(edges))
    assert [placed[n][0] for n in "xyz"] == [1, 1, 1]
    assert placed["a"][1] == pytest.approx(placed["y"][1])
    assert placed["x"][1] < placed["y"][1] < placed["z"][1]


def test_a_diamond_has_no_crossing_and_is_symmetric() -> None:
    edges = [("a", "b"), ("a", "c"), ("b", "d"), ("c", "d")]
    layout = lay(edges)
    check_valid(layout, edges)
    placed = by_id(layout)
    assert layout.crossings == 0
    assert placed["a"][1] == pytest.approx(placed["d"][1])
    assert placed["a"][1] == pytest.approx((placed["b"][1] + placed["c"][1]) / 2)


def test_an_input_used_only_at_the_end_moves_next_to_its_consumer() -> None:
    edges = [("a", "b"), ("b", "c"), ("c", "d"), ("config", "d")]
    placed = by_id(lay(edges, ["config", "a", "b", "c", "d"]))
    assert placed["config"][0] == placed["d"][0] - 1 == 2


def test_a_long_edge_bends_through_each_column_it_crosses() -> None:
    edges = [("a", "b"), ("b", "c"), ("c", "d"), ("a", "d")]
    layout = lay(edges)
    check_valid(layout, edges)
    long = next(e for e in layout.edges if (e.source, e.target) == ("a", "d"))
    assert len(long.points) == 2 + 2 * 2  # start, two columns crossed (in and out), end
    short = next(e for e in layout.edges if (e.source, e.target) == ("a", "b"))
    assert len(short.points) == 2
    path = edge_path(long.points)
    assert path.startswith("M") and path.count("C") == 3 and path.count("H") == 2


def test_crossings_are_removed_when_an_order_without_them_exists() -> None:
    # given order: a, b over c, d with a->d and b->c crosses once; swapping c and d removes it
    edges = [("a", "d"), ("b", "c")]
    layout = lay(edges, ["a", "b", "c", "d"])
    placed = by_id(layout)
    assert layout.crossings == 0
    assert placed["a"][1] < placed["b"][1] and placed["d"][1] < placed["c"][1]


def test_many_long_edges_stay_within_the_bend_budget() -> None:
    n = 120
    names = [f"s{i}" for i in range(n)]
    edges = [(names[i], names[i + 1]) for i in range(n - 1)] + [(names[i], names[-1]) for i in range(n - 2)]
    layout = lay(edges, names, dummy_budget=1)
    check_valid(layout, edges)
    bends = sum((len(e.points) - 2) // 2 for e in layout.edges)
    assert bends <= 1 * n + 400
    assert any(len(e.points) == 2 and e.source == "s0" for e in layout.edges)  # the longest edge drawn as a curve


def test_a_random_dag_is_laid_out_validly_and_deterministically() -> None:
    rng = random.Random(7)
    names = [f"s{i}" for i in range(300)]
    edges = sorted({(names[rng.randrange(max(0, i - 20), i)], names[i]) for i in range(1, 300) for _ in range(2)})
    first = lay(edges, names)
    check_valid(first, edges)
    assert first == lay(edges, names)
    assert len(first.nodes) == 300 and len(first.edges) == len(edges)


def test_duplicates_self_loops_and_cycles_do_not_break_it() -> None:
    layout = lay([("a", "b"), ("a", "b"), ("b", "b"), ("b", "a")], ["a", "b"])
    assert [(e.source, e.target) for e in layout.edges] == [("a", "b"), ("b", "a")]
    assert {p.id for p in layout.nodes} == {"a", "b"}
    assert lay([], ["solo"]).nodes[0].layer == 0
    assert layered_layout([], []).nodes == ()


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown node"):
        layered_layout([LayoutNode("a")], [("a", "zz")])
    with pytest.raises(ValueError, match="unique"):
        layered_layout([LayoutNode("a"), LayoutNode("a")], [])


def test_taller_boxes_keep_their_gap() -> None:
    nodes = [LayoutNode("a"), LayoutNode("m", 58.0), LayoutNode("n", 58.0), LayoutNode("z")]
    edges = [("a", "m"), ("a", "n"), ("m", "z"), ("n", "z")]
    layout = layered_layout(nodes, edges)
    m, n = (next(p for p in layout.nodes if p.id == name) for name in "mn")
    upper, lower = sorted((m, n), key=lambda p: p.y)
    assert lower.y - (upper.y + upper.height) == pytest.approx(SPACING.node_gap)
