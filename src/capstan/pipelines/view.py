"""Showing runs: the live Rich view of ``capstan run`` and the tables of ``capstan pipelines show``."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from capstan.pipelines.state import StepState

if TYPE_CHECKING:
    from rich.console import Console, RenderableType

    from capstan.pipelines.orchestrator import Orchestrator
    from capstan.pipelines.storage import AttemptRecord, RunRecord, StepRecord

STYLES = {
    "pending": "dim", "queued": "cyan", "running": "bold yellow", "succeeded": "green", "failed": "bold red",
    "retrying": "magenta", "cached": "blue", "skipped": "dim red", "cancelled": "red",
}
MAX_ROWS = 40
MAX_REDRAWS_PER_S = 4


def _duration(ms: int | None) -> str:
    if ms is None:
        return ""
    if ms < 1000:
        return f"{ms} ms"
    if ms < 60_000:
        return f"{ms / 1000:.1f}s"
    return f"{ms // 60_000}m{(ms % 60_000) // 1000:02d}s"


class LiveView:
    """`capstan.pipelines.orchestrator.Observer` that redraws a table of steps when a step changes state (at most
    `MAX_REDRAWS_PER_S` times a second) and once a second for the clocks, fitted to the terminal's height, so a
    long run in a terminal writes a bounded amount per second, not a stream of frames."""

    def __init__(self, console: Console, title: str) -> None:
        from rich.live import Live

        self._console = console
        self._title = title
        self._orch: Orchestrator | None = None
        self._started = time.monotonic()
        self._shown: tuple[object, ...] = ()
        self._drawn_at = 0.0
        self._live = Live(self, console=console, refresh_per_second=1, transient=False, redirect_stdout=False,
                          redirect_stderr=False)

    def __enter__(self) -> LiveView:
        self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._orch is None:  # nothing ran (the command failed first): leave no "starting ..." line behind
            self._live.transient = True
        self._live.refresh()
        self._live.__exit__(None, None, None)
        if not self._console.is_terminal and self._orch is not None:
            self._console.line()

    def update(self, orchestrator: Orchestrator) -> None:
        """Remember the orchestrator and redraw when a step changed state (throttled); the Live thread also
        redraws once a second."""
        self._orch = orchestrator
        now = time.monotonic()
        if now - self._drawn_at < 1 / MAX_REDRAWS_PER_S:
            return
        try:
            shown = (orchestrator.status, *(rec.state for rec in orchestrator.recs.values()))
        except RuntimeError:  # another thread added map children meanwhile; the next update sees them
            return
        if shown != self._shown:
            self._shown, self._drawn_at = shown, now
            self._live.refresh()

    def __rich__(self) -> RenderableType:
        from rich.console import Group
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        orch = self._orch
        if orch is None:
            return Text(f"{self._title}: starting ...", style="dim")
        recs = []
        for _ in range(5):  # rounds on other threads may add map children while we copy
            try:
                recs = list(orch.recs.values())
                break
            except RuntimeError:
                continue
        table = Table(title=f"{self._title}  run {orch.run_id}", title_justify="left", expand=False)
        for header in ("step", "state", "attempt", "duration", "note"):
            table.add_column(header, no_wrap=True, justify="right" if header in ("attempt", "duration") else "left")
        now_ms = int(time.time() * 1000)
        # Keep the whole view on screen: title, three border lines, header, "more" row, bar and summary take 8.
        max_rows = max(3, min(MAX_ROWS, self._console.height - 9)) if self._console.is_terminal else MAX_ROWS
        shown = 0
        hidden = 0
        for rec in recs:
            node = rec.node
            if node.parent is not None:
                interesting = rec.state in (StepState.RUNNING, StepState.FAILED, StepState.RETRYING)
                if not interesting or shown >= max_rows:
                    hidden += 1
                    continue
            elif shown >= max_rows:
                hidden += 1
                continue
            shown += 1
            state = rec.state.value
            note = ""
            if node.map is not None and node.children:
                done = sum(1 for c in node.children if orch.recs[c].state in (StepState.SUCCEEDED,
                                                                               StepState.CACHED))
                cached = sum(1 for c in node.children if orch.recs[c].state is StepState.CACHED)
                note = f"{done}/{len(node.children)} items" + (f", {cached} cached" if cached else "")
            elif rec.state is StepState.CACHED:
                note = f"cache hit ({rec.cached_from})"
            elif rec.state is StepState.QUEUED and rec.reason:
                note = f"{rec.reason}: {rec.message}"[:100]  # why the workload queue has not admitted it yet
            elif rec.state is StepState.RETRYING and rec.next_attempt_at:
                note = f"{rec.reason}; retry in {max(0, rec.next_attempt_at - now_ms) / 1000:.1f}s"
            elif rec.state in (StepState.FAILED, StepState.SKIPPED, StepState.CANCELLED):
                note = f"{rec.reason}: {rec.message}"[:100]
            if rec.state is StepState.RUNNING and rec.attempt_started is not None and node.map is None:
                duration = _duration(now_ms - rec.attempt_started)
            elif rec.started_at is not None and rec.finished_at is not None:
                duration = _duration(rec.duration_ms if rec.duration_ms is not None
                                     else rec.finished_at - rec.started_at)
            else:
                duration = ""
            label = f"  └ {node.id}" if node.parent else node.id
            table.add_row(label, Text(state, style=STYLES.get(state, "")), str(rec.attempt or ""), duration, note)
        if hidden:
            table.add_row(f"… {hidden} more", "", "", "", "")
        total = len(recs)
        finished = sum(1 for r in recs if r.state in (StepState.SUCCEEDED, StepState.CACHED, StepState.FAILED,
                                                        StepState.SKIPPED, StepState.CANCELLED))
        cached = sum(1 for r in recs if r.state is StepState.CACHED)
        elapsed = time.monotonic() - self._started
        summary = Text(f" {finished}/{total} steps done, {cached} cached, {elapsed:.1f}s  status: {orch.status}")
        return Group(table, ProgressBar(total=max(total, 1), completed=finished, width=60), summary)


def steps_table(run: RunRecord, steps: Sequence[StepRecord], attempts: Sequence[AttemptRecord]) -> Any:
    """A Rich table of a stored run's DAG with states (``capstan pipelines show``)."""
    from rich.table import Table
    from rich.text import Text

    deps = {n["id"]: n.get("deps", []) for n in run.graph.get("nodes", [])}
    by_step: dict[str, list[AttemptRecord]] = {}
    for attempt in attempts:
        by_step.setdefault(attempt.step_id, []).append(attempt)
    table = Table(title_justify="left")
    for header in ("step", "state", "attempts", "duration", "peak mem", "needs", "note"):
        table.add_column(header, no_wrap=header != "note",
                         justify="right" if header in ("attempts", "duration", "peak mem") else "left")
    for step in steps:
        tries = by_step.get(step.step_id, [])
        last = tries[-1] if tries else None
        note = ""
        if step.state == "cached":
            note = f"cache hit ({step.cached_from})"
        elif step.reason:
            note = f"{step.reason}: {step.message}"[:120]
        duration = ""
        if last is not None and last.duration_ms is not None:
            duration = _duration(last.duration_ms)
        elif step.started_at is not None and step.finished_at is not None:
            duration = _duration(step.finished_at - step.started_at)
        peak = f"{last.peak_memory / 2**20:.0f} MiB" if last is not None and last.peak_memory else ""
        label = f"  └ {step.step_id}" if step.parent else step.step_id
        table.add_row(label, Text(step.state, style=STYLES.get(step.state, "")), str(len(tries) or ""), duration,
                      peak, ", ".join(deps.get(step.step_id, [])) if not step.parent else "", note)
    return table
