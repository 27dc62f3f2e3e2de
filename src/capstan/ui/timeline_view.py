"""The workload timeline page's drawing, laid out on the server: items on one horizontal time axis as SVG.

Pure: a `capstan.troubleshoot.timeline.Timeline` in, a `TimelineChart` out (positions in the SVG's own units, tick
labels, peak bars, links), no I/O and no clock. The page (``/ui/timeline/KIND/ID``) reads the timeline with the
same reader and scope as ``GET /api/v1/timeline/KIND/ID``, its JSON twin, and renders this chart, the diagnosis, the
items in time order, the peaks, the log tail and the related workloads.

Each item kind has a lane (a row of the chart); items of a lane that would overlap are nudged up and down. The
workload's own life is a bar in the state lane: waiting from its creation to its start, then running to its end
(or to the last thing recorded while it still runs).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import quote

from capstan.errors import InvalidParameterValue
from capstan.troubleshoot.timeline import Peak, Related, Timeline, TimelineItem
from capstan.ui.jobs_view import project_suffix

__all__ = ["LANES", "Bar", "Lane", "Link", "Marker", "PeakBar", "Tick", "TimelineChart", "chart", "check_range",
           "format_offset", "object_page", "peak_bars", "related_links", "timeline_url"]

LANES: tuple[tuple[str, str], ...] = (("state", "State"), ("queue", "Queue"), ("attempt", "Attempts"),
                                      ("restart", "Restarts"), ("event", "Events"), ("log", "Logs"))
WIDTH = 1000
LEFT = 92
RIGHT = 24
TOP = 8
LANE_HEIGHT = 34
AXIS_HEIGHT = 34
NUDGE_PX = 7
_STEPS_MS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 15_000, 30_000, 60_000, 120_000,
             300_000, 600_000, 900_000, 1_800_000, 3_600_000, 7_200_000, 10_800_000, 21_600_000, 43_200_000,
             86_400_000, 172_800_000, 604_800_000, 2_592_000_000)
MAX_TICKS = 8
MIN_SPAN_MS = 100
PAD_FRACTION = 0.03


@dataclass(frozen=True, slots=True)
class Lane:
    """A row of the chart: its item kind, label and vertical centre."""

    kind: str
    label: str
    y: float


@dataclass(frozen=True, slots=True)
class Marker:
    """One item on the axis; ``index`` is its row in the list below (``#item-INDEX``)."""

    index: int
    x: float
    y: float
    item: TimelineItem
    offset: str


@dataclass(frozen=True, slots=True)
class Bar:
    """A stretch of the workload's life in the state lane: ``waiting`` or ``running`` (``outcome`` colours it)."""

    x: float
    width: float
    y: float
    phase: str
    label: str


@dataclass(frozen=True, slots=True)
class Tick:
    """A tick of the time axis, labelled with the time since the axis' start."""

    x: float
    label: str


@dataclass(frozen=True, slots=True)
class TimelineChart:
    """Everything the SVG draws: its size, lanes, bars, markers and ticks; ``start_ms`` is the axis' origin."""

    width: int
    height: int
    left: int
    right: int
    start_ms: int
    end_ms: float
    lanes: tuple[Lane, ...]
    bars: tuple[Bar, ...]
    markers: tuple[Marker, ...]
    ticks: tuple[Tick, ...]

    @property
    def axis_y(self) -> float:
        return self.height - AXIS_HEIGHT + 4

    def offset(self, at_ms: int | None) -> str:
        """``+1m30s``: how long after the axis' start ``at_ms`` is (empty for None)."""
        return "" if at_ms is None else format_offset(at_ms - self.start_ms)


def format_offset(ms: int) -> str:
    """A time since the axis' start: ``0s``, ``+850ms``, ``+12.5s``, ``+1m30s``, ``+2h05m``, ``+3d04h``."""
    if ms <= 0:
        return "0s"
    if ms < 1000:
        return f"+{ms}ms"
    if ms < 60_000:
        seconds = ms / 1000
        return f"+{seconds:.0f}s" if ms % 1000 == 0 else f"+{seconds:.1f}s"
    if ms < 3_600_000:
        minutes, seconds = divmod(ms // 1000, 60)
        return f"+{minutes}m" if seconds == 0 else f"+{minutes}m{seconds:02d}s"
    if ms < 86_400_000:
        hours, minutes = divmod(ms // 60_000, 60)
        return f"+{hours}h" if minutes == 0 else f"+{hours}h{minutes:02d}m"
    days, hours = divmod(ms // 3_600_000, 24)
    return f"+{days}d" if hours == 0 else f"+{days}d{hours:02d}h"


def _span(timeline: Timeline) -> tuple[int, float] | None:
    times = [t for t in (timeline.created_ms, timeline.started_ms, timeline.ended_ms) if t is not None]
    times += [item.at_ms for item in timeline.items]
    if not times:
        return None
    start, end = min(times), max(times)
    # a little room after the last point, and at least MIN_SPAN_MS, so a lone point sits on a readable axis
    return start, max(end + (end - start) * PAD_FRACTION, start + MIN_SPAN_MS)


def _ticks(start: int, end: float, scale: float) -> tuple[Tick, ...]:
    span = end - start
    step = next((s for s in _STEPS_MS if span / s <= MAX_TICKS), _STEPS_MS[-1])
    count = int(span // step)
    return tuple(Tick(LEFT + i * step * scale, format_offset(i * step)) for i in range(count + 1))


def _markers(items: Sequence[TimelineItem], lanes: dict[str, Lane], start: int, scale: float) -> tuple[Marker, ...]:
    out = []
    last_x: dict[str, float] = {}
    crowd: dict[str, int] = {}
    for index, item in enumerate(items):
        lane = lanes.get(item.kind, lanes["state"])  # every ItemKind has a lane; anything else goes with the state
        x = LEFT + (item.at_ms - start) * scale
        crowd[lane.kind] = crowd.get(lane.kind, 0) + 1 if x - last_x.get(lane.kind, -1e9) < NUDGE_PX else 0
        last_x[lane.kind] = x
        nudge = (0, -1, 1)[crowd[lane.kind] % 3] * NUDGE_PX
        out.append(Marker(index, round(x, 2), lane.y + nudge, item, format_offset(item.at_ms - start)))
    return tuple(out)


def _bars(timeline: Timeline, lane: Lane, start: int, end: float, scale: float) -> tuple[Bar, ...]:
    bars = []
    created, started, ended = timeline.created_ms, timeline.started_ms, timeline.ended_ms
    if created is not None:
        until = started if started is not None else ended if ended is not None else end
        bars.append(Bar(LEFT + (created - start) * scale, max(1.0, (until - created) * scale), lane.y, "waiting",
                        "waiting"))
    if started is not None:
        until = ended if ended is not None else end
        bars.append(Bar(LEFT + (started - start) * scale, max(1.0, (until - started) * scale), lane.y, "running",
                        timeline.state))
    return tuple(bars)


def chart(timeline: Timeline) -> TimelineChart | None:
    """The chart of ``timeline`` (None when nothing with a time was recorded)."""
    span = _span(timeline)
    if span is None:
        return None
    start, end = span
    used = {item.kind for item in timeline.items} | {"state"}
    kinds = [(kind, label) for kind, label in LANES if kind in used]
    lanes = {kind: Lane(kind, label, TOP + LANE_HEIGHT * (i + 0.5)) for i, (kind, label) in enumerate(kinds)}
    height = TOP + LANE_HEIGHT * len(kinds) + AXIS_HEIGHT
    scale = (WIDTH - LEFT - RIGHT) / (end - start)
    return TimelineChart(WIDTH, height, LEFT, RIGHT, start, end, tuple(lanes[k] for k, _ in kinds),
                         _bars(timeline, lanes["state"], start, end, scale),
                         _markers(timeline.items, lanes, start, scale), _ticks(start, end, scale))


# -- peaks ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class PeakBar:
    """A resource peak as a bar against its limit: percentages of the bar's track (the larger of the two is the
    whole track), whether it went over (``over``) or close (``near``, 90% or more)."""

    peak: Peak
    used_pct: float | None
    limit_pct: float | None
    over: bool
    near: bool


def peak_bars(peaks: Sequence[Peak]) -> tuple[PeakBar, ...]:
    """The bars of ``peaks``."""
    out = []
    for peak in peaks:
        track = max(peak.used or 0, peak.limit or 0)
        used = 100 * peak.used / track if peak.used is not None and track else None
        limit = 100 * peak.limit / track if peak.limit and track else None
        fraction = peak.fraction
        out.append(PeakBar(peak, used, limit, fraction is not None and fraction > 1,
                           fraction is not None and 0.9 <= fraction <= 1))
    return tuple(out)


# -- links ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Link:
    """A related workload: how it is tied, its name, its timeline and (where the UI has one) its own page."""

    role: str
    label: str
    timeline: str
    page: str | None


def timeline_url(kind: str, ident: str, project: str) -> str:
    """The timeline page of ``kind``/``ident`` (slashes of step and trial ids stay path separators)."""
    return f"/ui/timeline/{quote(kind, safe='')}/{quote(ident, safe='/')}{project_suffix(project)}"


def object_page(kind: str, ident: str, project: str) -> str | None:
    """The UI page of the object itself, for the kinds this UI has one for."""
    if kind == "run":
        return f"/ui/runs/{quote(ident, safe='')}"
    if kind == "job":
        return f"/ui/jobs/{quote(ident, safe='')}{project_suffix(project)}"
    if kind == "trial":
        study, _, _number = ident.rpartition("/")
        return f"/ui/studies/{quote(study, safe='')}{project_suffix(project)}" if study else None
    return None


def related_links(related: Sequence[Related], project: str) -> tuple[Link, ...]:
    """Links to the timelines (and pages) of the related workloads."""
    return tuple(Link(r.role, f"{r.kind}/{r.id}", timeline_url(r.kind, r.id, project),
                      object_page(r.kind, r.id, project)) for r in related)


def check_range(value: str | None, name: str, *, default: int, low: int, high: int) -> int:
    """A whole-number query parameter between ``low`` and ``high`` (``default`` when absent); names the field."""
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except ValueError:
        raise InvalidParameterValue(f"{name}: must be a whole number, got {value[:40]!r}") from None
    if not low <= number <= high:
        raise InvalidParameterValue(f"{name}: must be between {low} and {high}, got {number}")
    return number
