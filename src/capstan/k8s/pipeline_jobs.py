"""From a pipeline's DAG (`capstan.pipelines.graph.Graph`) to the `StepJob` records that
`capstan.k8s.render_pipelines` renders: one record per static node; a map becomes one indexed record.

A map's item count must be known before the run: chunks (``step.map(chunks(n))``) and literal lists are; a map
over another step's output is not, and needs its count from ``counts``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from capstan.errors import InvalidParameterValue
from capstan.k8s.pods import Resources
from capstan.k8s.render_pipelines import StepJob
from capstan.pipelines.graph import Graph, Node
from capstan.resources.quantity import MILLI


def _count(node: Node, counts: Mapping[str, int]) -> int:
    assert node.map is not None
    items = node.map.items
    if node.id in counts:
        return counts[node.id]
    if "chunks" in items:
        return int(items["chunks"])
    for key in ("v", "l", "t"):
        if key in items:
            return len(items[key])
    raise InvalidParameterValue(f"steps[{node.id}]: a map over another step's output has no item count before the "
                                f"run; give it (counts={{{node.id!r}: N}})")


def _resources(node: Node) -> Resources:
    res = node.step.options.resources
    # Every step is its own pod on a cluster, so a thread-isolated step gets the process default of one CPU.
    return Resources(cpu=round(res.cpu_for("process") * MILLI), memory=res.memory, gpu=round(res.gpu * MILLI))


def step_jobs(graph: Graph, pipeline_ref: str, counts: Mapping[str, int] | None = None,
              params: Mapping[str, str] | None = None) -> list[StepJob]:
    """A `StepJob` per static node of ``graph`` in DAG order; ``params`` are the run's parameters as given
    (``KEY=VALUE`` text, passed on to the worker); ``counts`` gives the item count of maps over another
    step's output (by node id). Raises `InvalidParameterValue` naming a map with no known count."""
    known = dict(counts or {})
    out = []
    for node in graph.nodes.values():
        if node.parent is not None:
            continue
        opts = node.step.options
        extra: dict[str, Any] = {}
        if node.map is not None:
            extra["completions"] = _count(node, known)
            extra["parallelism"] = node.map.max_parallel
        out.append(StepJob(pipeline=graph.pipeline.name, pipeline_ref=pipeline_ref, node=node.id,
                           step=node.step.name, params=dict(params or {}), image=opts.image,
                           depends_on=tuple(dict.fromkeys(node.deps)),
                           retries=opts.retries, timeout_s=opts.timeout, resources=_resources(node),
                           gpu_flavor=opts.resources.gpu_flavor, env=dict(opts.env), queue=opts.queue,
                           priority_class=opts.priority_class, **extra))
    return out
