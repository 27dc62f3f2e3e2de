"""Read models of the pipelines pages on SQLite and PostgreSQL: the runs list pages by key (ties on the creation
time included) and filters by pipeline and status; node summaries fold fan-out instances; unknown runs are
`ResourceDoesNotExist`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from capstan.errors import InvalidParameterValue, ResourceDoesNotExist
from capstan.pipelines.runner import PipelineRunner
from capstan.pipelines.storage import StepRecord
from capstan.pipelines.tables import pipeline_runs
from capstan.settings import Settings
from capstan.ui import pipelines_view as pv
from helpers.pipelines import open_runner

FLOW = '''
import capstan.pipelines as cp


@cp.step(isolation="thread")
def one() -> int:
    return 1


@cp.pipeline
def alpha():
    return one()


@cp.pipeline
def beta():
    return one()
'''


@pytest.fixture
def runner(backend_settings: Settings, tmp_path: Path) -> Iterator[PipelineRunner]:
    opened = open_runner(backend_settings)
    try:
        yield opened
    finally:
        opened.close()


def _create(runner: PipelineRunner, folder: Path, names: list[str]) -> list[str]:
    """Stored (not started) runs; every third pair shares its creation time, so pages must break ties by id."""
    from capstan.pipelines.loader import load_pipeline

    (folder / "flow.py").write_text(FLOW)
    ids = []
    for i, name in enumerate(names):
        pipe, ref = load_pipeline(f"{folder / 'flow.py'}:{name}")
        run, _ = runner.create_run(pipe, {}, ref=ref)
        with runner.engine.begin() as conn:
            conn.execute(update(pipeline_runs).where(pipeline_runs.c.id == run.id)
                         .values(created_at=1_000 + (i // 2) * 10))
        ids.append(run.id)
    return ids


def _all_pages(runner: PipelineRunner, **params: str) -> list[str]:
    seen: list[str] = []
    token = ""
    while True:
        listing = pv.runs_list(runner.store, pv.runs_query("default", {**params, "page_token": token}))
        assert len(listing.runs) <= int(params.get("max_results", "50"))
        seen += [r.id for r in listing.runs]
        if listing.next_page_token is None:
            return seen
        token = listing.next_page_token


def test_runs_list_pages_by_key_and_filters(runner: PipelineRunner, tmp_path: Path) -> None:
    names = ["alpha", "beta", "alpha", "alpha", "beta", "alpha", "beta"]
    _create(runner, tmp_path, names)
    everything = [r.id for r in runner.store.list_runs(project="default", limit=100)]
    assert len(everything) == 7
    assert _all_pages(runner, max_results="2") == everything
    assert _all_pages(runner, max_results="3", pipeline="alpha") == [
        r.id for r in runner.store.list_runs(project="default", limit=100) if r.name == "alpha"]
    assert len(_all_pages(runner, pipeline="alpha")) == 4
    assert _all_pages(runner, status="pending", max_results="5") == everything
    assert _all_pages(runner, status="failed") == []
    assert _all_pages(runner, pipeline="gamma") == []
    for bad, field in (({"status": "sleepy"}, "status"), ({"max_results": "0"}, "max_results"),
                       ({"max_results": "501"}, "max_results")):
        with pytest.raises(InvalidParameterValue, match=field):
            pv.runs_query("default", bad)
    for token in ("garbage", "WzEsMl0=", "bm90IGpzb24="):  # not base64 JSON, [1, 2], "not json"
        with pytest.raises(InvalidParameterValue, match="page_token"):
            pv.runs_list(runner.store, pv.runs_query("default", {"page_token": token}))


def test_unknown_runs_are_not_found(runner: PipelineRunner, tmp_path: Path) -> None:
    (run_id,) = _create(runner, tmp_path, ["alpha"])
    assert pv.find_run(runner.store, run_id[:10]).id == run_id
    for text in ("0123abcd", "not-a-run", "", "../x"):
        with pytest.raises(ResourceDoesNotExist):
            pv.find_run(runner.store, text)


def _step(step_id: str, state: str, *, parent: str | None = None, retries: int = 0, attempt: int = 1,
          reason: str = "") -> StepRecord:
    return StepRecord("r", step_id, step_id.split("[")[0], 0, parent, None, state, attempt, retries, reason, "", None,
                      None, None, None, None, None)


def test_summaries_fold_fan_out_instances() -> None:
    graph: list[dict[str, Any]] = [{"id": "load", "step": "load", "deps": []},
             {"id": "square", "step": "square", "deps": ["load"], "map": {"items": {}, "param": "x"}},
             {"id": "waits", "step": "waits", "deps": [], "map": {"items": {}, "param": "x"}},
             {"id": "total", "step": "total", "deps": ["square"]}]
    steps = [_step("load", "cached"), _step("square", "running"),
             _step("square[0]", "succeeded", parent="square"), _step("square[1]", "cached", parent="square"),
             _step("square[2]", "failed", parent="square", retries=2, attempt=3, reason="NonZeroExit"),
             _step("square[3]", "running", parent="square", retries=1, attempt=2),
             _step("waits", "pending"), _step("total", "retrying", attempt=2, retries=1)]
    load, square, waits, total = pv.summarize(graph, steps)
    assert (load.state, load.cached, load.detail, load.fan_out) == ("cached", True, "cached", False)
    assert square.fan_out and square.total == 4 and square.retries == 3 and square.cached
    assert square.counts == (("succeeded", 1), ("cached", 1), ("running", 1), ("failed", 1))
    assert square.detail == "2/4 done · 1 failed"
    assert (waits.detail, waits.total, waits.counts) == ("waiting for items", 0, ())
    assert (total.state, total.detail, total.retries) == ("retrying", "retrying · attempt 2", 1)
    assert pv.bar_segments(square, 100) == [("succeeded", 0.0, 25.0), ("cached", 25.0, 25.0),
                                           ("running", 50.0, 25.0), ("failed", 75.0, 25.0)]
    assert pv.summarize([{"id": "gone", "step": "gone"}], [])[0].state == "pending"
    assert pv.state_counts((load, square, waits, total)) == (("cached", 1), ("running", 1), ("retrying", 1),
                                                            ("pending", 1))
