"""The pure parts of the jobs, studies and timeline pages: the timeline's layout on its time axis, peak bars,
links, the history of a study and the checks of query parameters (no server, no browser)."""

from __future__ import annotations

import pytest

from capstan.errors import InvalidParameterValue
from capstan.troubleshoot.classify import Cause, Diagnosis
from capstan.troubleshoot.timeline import Peak, Related, Timeline, TimelineItem
from capstan.tuning.ports import StudyRecord, StudyResult, TrialRecord
from capstan.tuning.spec import parse_study_spec
from capstan.ui import jobs_view as jv
from capstan.ui import studies_view as sv
from capstan.ui import timeline_view as tv

T0 = 1_700_000_000_000


def _timeline(items: list[TimelineItem], **times: int | None) -> Timeline:
    return Timeline("job", "train-1a2b3c", "default", "Failed", "WorkerFailed", "rank 1 exited with code 3",
                    Diagnosis(Cause.NON_ZERO_EXIT, "exited with code 3"), tuple(items), **times)


@pytest.mark.parametrize(("ms", "text"), [(0, "0s"), (-5, "0s"), (850, "+850ms"), (12_000, "+12s"),
                                          (12_500, "+12.5s"), (60_000, "+1m"), (90_000, "+1m30s"),
                                          (7_500_000, "+2h05m"), (3 * 86_400_000, "+3d"),
                                          (3 * 86_400_000 + 4 * 3_600_000, "+3d04h")])
def test_offsets_read_as_time_since_the_start(ms: int, text: str) -> None:
    assert tv.format_offset(ms) == text


def test_items_sit_on_their_lanes_in_time_order_and_crowded_ones_are_nudged() -> None:
    items = [TimelineItem(T0, "state", "job/x", "submitted"),
             TimelineItem(T0 + 1_000, "queue", "workload/job/x", "admitted"),
             TimelineItem(T0 + 1_001, "queue", "workload/job/x", "started"),
             TimelineItem(T0 + 30_000, "attempt", "job/x", "attempt 1 ended", "error", "WorkerFailed"),
             TimelineItem(T0 + 30_000, "log", "job/x", "ValueError: bad", "error", "LogExcerpt"),
             TimelineItem(T0 + 60_000, "event", "job/x", "failed", "error", "Failed")]
    chart = tv.chart(_timeline(items, created_ms=T0, started_ms=T0 + 2_000, ended_ms=T0 + 60_000))
    assert chart is not None
    assert [lane.label for lane in chart.lanes] == ["State", "Queue", "Attempts", "Events", "Logs"]
    lane_y = {lane.kind: lane.y for lane in chart.lanes}
    xs = [m.x for m in chart.markers]
    assert xs == sorted(xs) and xs[0] == chart.left and xs[-1] < chart.width - chart.right
    assert [m.index for m in chart.markers] == list(range(len(items)))
    queue = [m for m in chart.markers if m.item.kind == "queue"]
    assert queue[0].y == lane_y["queue"] and queue[1].y != lane_y["queue"]  # 1 ms apart: nudged off the lane
    assert chart.markers[3].y == lane_y["attempt"] and chart.markers[4].y == lane_y["log"]
    assert chart.markers[3].offset == "+30s"
    waiting, running = chart.bars
    assert (waiting.phase, running.phase, running.label) == ("waiting", "running", "Failed")
    assert waiting.x == chart.left and abs(waiting.x + waiting.width - running.x) < 1e-6
    labels = [t.label for t in chart.ticks]
    assert labels[0] == "0s" and 2 <= len(labels) <= tv.MAX_TICKS + 1 and "+30s" in labels


def test_a_timeline_with_nothing_timed_has_no_chart_and_a_lone_point_gets_an_axis() -> None:
    assert tv.chart(_timeline([])) is None
    chart = tv.chart(_timeline([], created_ms=T0))
    assert chart is not None and chart.end_ms - chart.start_ms >= tv.MIN_SPAN_MS
    assert [lane.kind for lane in chart.lanes] == ["state"] and len(chart.bars) == 1


def test_peak_bars_put_use_against_the_limit() -> None:
    over, near, unknown = tv.peak_bars([Peak("memory", 110, 100, "attempt 1"), Peak("memory", 95, 100, "attempt 2"),
                                        Peak("memory", None, 100, "each worker")])
    assert over.over and not over.near and over.used_pct == 100 and round(over.limit_pct or 0, 1) == 90.9
    assert near.near and not near.over and near.used_pct == 95 and near.limit_pct == 100
    assert unknown.used_pct is None and unknown.limit_pct == 100 and not (unknown.over or unknown.near)


def test_links_keep_the_project_and_the_slashes_of_ids() -> None:
    links = tv.related_links([Related("workload", "job/train-1", "queue workload"),
                              Related("run", "abc", "tracking run")], "alpha")
    assert links[0].timeline == "/ui/timeline/workload/job/train-1?project=alpha" and links[0].page is None
    assert links[1].page == "/ui/runs/abc"
    assert tv.object_page("trial", "my study/3", "default") == "/ui/studies/my%20study"
    assert tv.object_page("job", "train-1", "default") == "/ui/jobs/train-1"
    assert jv.project_suffix("default") == "" and jv.project_suffix("a b", "&") == "&project=a+b"


def test_query_parameters_name_the_field() -> None:
    assert jv.parse_jobs_query(["Failed", "Failed", " "], None, None).states == ("Failed",)
    with pytest.raises(InvalidParameterValue, match=r"^state: must be one of"):
        jv.parse_jobs_query(["Done"], None, None)
    with pytest.raises(InvalidParameterValue, match=r"^max_results: must be between 1 and 1000"):
        jv.parse_jobs_query([], "0", None)
    with pytest.raises(InvalidParameterValue, match="page_token"):
        jv.parse_jobs_query([], None, "not-a-token")
    with pytest.raises(InvalidParameterValue, match=r"^tail: must be a whole number"):
        tv.check_range("x", "tail", default=40, low=0, high=1000)
    assert tv.check_range("", "tail", default=40, low=0, high=1000) == 40
    with pytest.raises(InvalidParameterValue, match=r"^max_results"):
        sv.check_page_size("1001")


def test_the_history_takes_complete_trials_for_the_best_so_far_and_shows_pruned_ones() -> None:
    spec = parse_study_spec({"name": "s", "objective": {"metric": "loss", "goal": "minimize"},
                             "parameters": {"x": {"type": "float", "min": 0.0, "max": 1.0}},
                             "trial": {"function": "m:f"}})
    trials = (TrialRecord("default", "s", 0, "COMPLETE", T0, value=0.5),
              TrialRecord("default", "s", 1, "PRUNED", T0, value=0.1),
              TrialRecord("default", "s", 2, "COMPLETE", T0, value=0.7),
              TrialRecord("default", "s", 3, "FAILED", T0),
              TrialRecord("default", "s", 4, "COMPLETE", T0, value=0.2))
    history = sv.history(StudyResult(StudyRecord("default", "s", spec, "Succeeded", T0, T0), trials))
    assert history.complete == ((0, 0.5), (2, 0.7), (4, 0.2)) and history.pruned == ((1, 0.1),)
    assert history.best_so_far == ((0, 0.5), (2, 0.5), (4, 0.2)) and history.best_number == 4
    assert history.to_dict()["best_so_far"] == {"x": [0, 2, 4], "y": [0.5, 0.5, 0.2]}
