"""Building DAGs from step calls: options, parameters, fan-out, cycles and one-line definition errors."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Literal

import pytest

import capstan.pipelines as cp
from capstan.pipelines import Backoff, Chunk, PipelineDefinitionError, Resources
from capstan.pipelines.graph import call_args, decode

HERE = Path(__file__).name


@cp.step
def load(n: int) -> list[int]:
    return list(range(n))


@cp.step(retries=3, retry_backoff=Backoff(base_s=0.5, max_s=4), timeout=30, cache=False,
         resources={"cpu": 2, "memory": "512Mi", "gpu": 0.5, "gpu_flavor": "h100"}, env={"A": "1"},
         image="python:3.11")
def heavy(xs: list[int], scale: float = 1.0) -> float:
    return sum(xs) * scale


@cp.step(isolation="thread")
def pair(a: int, b: int) -> tuple[int, int]:
    return a, b


@cp.step(isolation="thread")
def join(*parts: object, sep: str = ",") -> str:
    return sep.join(map(str, parts))


@cp.step(isolation="thread")
def shard(chunk: Chunk, data: list[int]) -> list[int]:
    return [data[i] for i in chunk.slice(len(data))]


prep = cp.command_step(["python", "prep.py", "--rows", "{rows}", "--out", "{out}"], retries=1)


@cp.pipeline
def flow(n: int = 3, scale: float = 2.0, mode: Literal["fast", "slow"] = "fast", when: dt.date | None = None,
         tags: list[str] | None = None):
    xs = load(n)
    total = heavy(xs, scale=scale)
    a, b = pair(1, 2)
    parts = shard.map(cp.chunks(2), data=xs, max_parallel=1)
    return join(total, a, b, parts)


def test_options_are_recorded() -> None:
    assert load.options.retries == 0 and load.options.cache and load.options.isolation == "process"
    opts = heavy.options
    assert (opts.retries, opts.timeout, opts.cache, opts.image, dict(opts.env)) == (3, 30.0, False, "python:3.11",
                                                                                 {"A": "1"})
    assert opts.retry_backoff == Backoff(base_s=0.5, max_s=4)
    assert opts.resources == Resources(cpu=2.0, memory=512 * 2**20, gpu=0.5, gpu_flavor="h100")
    assert load.options.resources.cpu_for("process") == 1.0 and pair.options.resources.cpu_for("thread") == 0.0
    assert prep.kind == "command" and prep.name == "prep" and prep.options.retries == 1
    assert heavy.with_options(retries=5).options.retries == 5


def test_steps_called_outside_a_pipeline_just_run() -> None:
    assert load(3) == [0, 1, 2]
    assert heavy([1, 2], scale=3) == 9
    assert shard.map(cp.chunks(2), data=[1, 2, 3]) == [[1], [2, 3]]


def test_the_dag_comes_from_the_calls() -> None:
    graph = flow.build({"n": "4"})
    assert list(graph.nodes) == ["load", "heavy", "pair", "shard", "join"]
    assert graph.params == {"n": 4, "scale": 2.0, "mode": "fast", "when": None, "tags": None}
    assert graph.nodes["heavy"].deps == ["load"]
    assert graph.nodes["shard"].map is not None and graph.nodes["shard"].map.param == "chunk"
    assert graph.nodes["shard"].map.max_parallel == 1
    assert set(graph.nodes["join"].deps) == {"heavy", "pair", "shard"}
    assert graph.nodes["join"].args["parts"]["t"][1] == {"r": "pair", "p": [0]}
    assert re.search(rf"{HERE}:\d+", graph.nodes["join"].location)
    assert graph.fingerprint() == flow.build({"n": 4}).fingerprint() != flow.build({"n": 5}).fingerprint()


def test_parameters_are_converted_by_annotation() -> None:
    graph = flow.build({"n": "7", "scale": "0.5", "mode": "slow", "when": "2024-05-01", "tags": '["a","b"]'})
    assert graph.params == {"n": 7, "scale": 0.5, "mode": "slow", "when": dt.date(2024, 5, 1), "tags": ["a", "b"]}
    assert flow.build({"tags": "x,y", "when": "none"}).params["tags"] == ["x", "y"]


@pytest.mark.parametrize(("given", "message"), [
    ({"n": "many"}, r"parameter 'n' \(int\): 'many' is not an integer"),
    ({"mode": "medium"}, r"'medium' is not one of 'fast', 'slow'"),
    ({"when": "May"}, r"does not match"),
    ({"rows": 1}, r"has no parameter 'rows' \(it takes: n, scale, mode, when, tags\)"),
])
def test_bad_parameters_name_the_pipeline(given: dict[str, object], message: str) -> None:
    with pytest.raises(PipelineDefinitionError, match=message) as info:
        flow.build(given)
    assert re.search(rf"{HERE}:\d+: ", info.value.message)


def test_missing_parameter() -> None:
    @cp.pipeline
    def needs(rows: int):
        return load(rows)

    with pytest.raises(PipelineDefinitionError, match=r"missing parameter 'rows' \(int\); pass --param rows="):
        needs.build({})


def test_cycle_is_reported_with_places() -> None:
    @cp.pipeline
    def loop():
        a = pair(1, 2)
        b = pair(a[0], 3)
        a.after(b)
        return b

    with pytest.raises(PipelineDefinitionError, match=r"cycle in the pipeline: pair \(.*:\d+\) -> pair-2 \(.*:\d+\) "
                                                      r"-> pair"):
        loop.build({})


def test_self_dependency_and_bad_calls() -> None:
    @cp.pipeline
    def selfish():
        a = pair(1, 2)
        a.after(a)

    with pytest.raises(PipelineDefinitionError, match="cannot run after itself"):
        selfish.build({})

    @cp.pipeline
    def wrong_arity():
        return pair(1, 2, 3)

    with pytest.raises(PipelineDefinitionError, match=rf"{HERE}:\d+: step 'pair' .*too many positional"):
        wrong_arity.build({})

    @cp.pipeline
    def branches():
        if load(3):
            return None
        return None

    with pytest.raises(PipelineDefinitionError, match="not known while the pipeline is built"):
        branches.build({})

    @cp.pipeline
    def unpack():
        a, _b = load(3)
        return a

    with pytest.raises(PipelineDefinitionError, match="cannot unpack the output of 'load'"):
        unpack.build({})


def test_errors_raised_by_the_pipeline_body_name_their_line() -> None:
    @cp.pipeline
    def broken(n: int = 1):
        return load(n) + 1

    with pytest.raises(PipelineDefinitionError, match=rf"{HERE}:\d+: building pipeline 'broken' failed: TypeError"):
        broken.build({})


def test_command_step_placeholders_must_be_given() -> None:
    @cp.pipeline
    def missing():
        return prep(rows=3)

    with pytest.raises(PipelineDefinitionError, match=r"needs out= for its \{placeholders\}"):
        missing.build({})

    @cp.pipeline
    def fine():
        return prep.map([1, 2], rows=3, out="x")

    with pytest.raises(Exception, match="needs out="):
        cp.command_step(["echo", "{item}", "{out}"]).map([1], rows=2)  # outside a build it runs: fails here
    assert fine.build({}).nodes["prep"].map is not None


def test_option_validation_names_the_definition() -> None:
    with pytest.raises(PipelineDefinitionError, match=rf"{HERE}:\d+: step 'f': retries=-1"):
        @cp.step(retries=-1)
        def f() -> None: ...
    with pytest.raises(PipelineDefinitionError, match="isolation='docker' must be 'process' or 'thread'"):
        @cp.step(isolation="docker")  # type: ignore[call-overload]  # an isolation the DSL must refuse
        def g() -> None: ...
    with pytest.raises(PipelineDefinitionError, match=r"resources\.gpu: 1\.5: fractions are allowed below one GPU"):
        @cp.step(resources={"gpu": 1.5})
        def h() -> None: ...
    with pytest.raises(PipelineDefinitionError, match="unknown key"):
        @cp.step(resources={"disk": 1})
        def i() -> None: ...
    with pytest.raises(PipelineDefinitionError, match="env= needs isolation='process'"):
        @cp.step(isolation="thread", env={"A": "1"})
        def j() -> None: ...
    with pytest.raises(PipelineDefinitionError, match="non-empty list of strings"):
        cp.command_step([])


def test_process_steps_must_be_importable() -> None:
    @cp.step
    def local_step() -> int:
        return 1

    @cp.pipeline
    def uses_local():
        return local_step()

    with pytest.raises(PipelineDefinitionError, match="not defined at module level"):
        uses_local.build({})


def test_bindings_round_trip_and_call_args() -> None:
    graph = flow.build({})
    node = graph.nodes["join"]
    values = {"heavy": 6.0, "pair": (1, 2), "shard": [[0], [1, 2]]}
    decoded = {k: decode(b, values.__getitem__) for k, b in node.args.items()}
    assert call_args(node.step, decoded) == ((6.0, 1, 2, [[0], [1, 2]]), {})
    items = graph.map_items(graph.nodes["shard"], values.__getitem__)
    assert items == [{"c": [0, 2]}, {"c": [1, 2]}]
    children = graph.add_children(graph.nodes["shard"], items)
    assert [c.id for c in children] == ["shard[0]", "shard[1]"] and children[1].chunk == Chunk(1, 2)


def test_map_over_a_runtime_list_indexes_the_upstream_output() -> None:
    @cp.pipeline
    def fan():
        xs = load(3)
        return heavy.map(xs)

    graph = fan.build({})
    node = graph.nodes["heavy"]
    assert node.map is not None and node.map.param == "xs" and node.deps == ["load"]
    assert graph.map_items(node, {"load": [5, 6]}.__getitem__) == [{"r": "load", "p": [0]}, {"r": "load", "p": [1]}]
    with pytest.raises(PipelineDefinitionError, match="needs a list of items"):
        graph.map_items(node, {"load": 5}.__getitem__)


def test_memory_sizes() -> None:
    assert Resources.of({"memory": "2Gi"}).memory == 2 * 2**30
    assert Resources.of({"memory": "1.5GB"}).memory == 1_500_000_000
    assert Resources.of({"memory": 1024}).memory == 1024
    with pytest.raises(Exception, match="not a memory size"):
        Resources.of({"memory": "lots"})
