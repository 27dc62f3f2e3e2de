"""``capstan describe KIND/ID``: one workload's state, cause, last events, resource peaks and log tail on a screen.

Locally the timeline is read from the stores under ``CAPSTAN_HOME`` (`capstan.services.Services.timelines`); with
``CAPSTAN_URL`` set it comes from the server's ``GET /api/v1/timeline/KIND/ID`` (``CAPSTAN_TOKEN``,
``CAPSTAN_PROJECT``). Both print from the same JSON form, so the output is the same. See ``docs/troubleshooting.md``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from rich.console import Console

DEFAULT_EVENTS = 10
DEFAULT_TAIL = 20
_LEVEL_STYLES = {"error": "bold red", "warning": "yellow", "info": ""}
_CAUSE_STYLES = {"Succeeded": "green", "Running": "cyan", "Pending": "cyan", "Pruned": "blue"}
_LABEL = 10


def _when(ms: int | None) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")


def _local(kind: str, ident: str, tail: int, limit: int) -> dict[str, Any]:
    from capstan.cli.context import cli_services, cli_settings
    from capstan.troubleshoot.sources import Scope

    scope = Scope(project=cli_settings().project, tail=tail, limit=limit)
    return cli_services().timelines().timeline(kind, ident, scope).to_dict()


def _remote(kind: str, ident: str, tail: int, limit: int) -> dict[str, Any]:
    """The timeline from ``CAPSTAN_URL``; errors become the typed errors the server named."""
    from urllib.parse import quote

    import httpx

    from capstan.cli.context import cli_settings
    from capstan.errors import error_from_body

    settings = cli_settings()
    headers = {"X-Capstan-Project": settings.project}
    if settings.token:
        headers["Authorization"] = f"Bearer {settings.token}"
    url = f"{settings.url}/api/v1/timeline/{kind}/{quote(ident, safe='/')}"
    try:
        resp = httpx.get(url, params={"tail": tail, "limit": limit}, headers=headers, timeout=60)
    except httpx.HTTPError as exc:
        raise click.ClickException(f"cannot reach {settings.url}: {exc}") from None
    try:
        body = resp.json()
    except ValueError:
        raise click.ClickException(f"{settings.url} answered {resp.status_code}: {resp.text[:200]}") from None
    if resp.status_code >= 400:
        raise error_from_body(str(body.get("error_code", "")), str(body.get("message", resp.text[:200])),
                              resp.status_code)
    return dict(body)


def _field(out: Console, label: str, value: str, style: str = "") -> None:
    from rich.text import Text

    lines = value.splitlines() or [""]
    for i, line in enumerate(lines):
        head = f"{label}:".ljust(_LABEL) if i == 0 else " " * _LABEL
        out.print(Text.assemble((head, "bold"), (line, style)), soft_wrap=True)


def _duration(start: int | None, end: int | None) -> str:
    if start is None or end is None:
        return ""
    from capstan.troubleshoot.classify import format_duration

    return f" (took {format_duration(max(0, end - start))})"


def render(out: Console, data: Mapping[str, Any], *, events: int) -> None:
    """Print a timeline's JSON form for one screen: state, cause with evidence and hint, peaks, related workloads,
    the last ``events`` events and the log tail."""
    from rich.text import Text

    from capstan.cli.tables import TextTable

    title = f"{data['kind']}/{data['id']}"
    out.print(Text.assemble((title, "bold"), f"  (project {data.get('project')})"), soft_wrap=True)
    state = str(data.get("state", ""))
    detail = ": ".join(str(p) for p in (data.get("reason"), data.get("message")) if p)
    _field(out, "State", state + (f"  {detail}" if detail else ""))
    times = [f"created {_when(data.get('created_ms'))}"] if data.get("created_ms") else []
    if data.get("started_ms"):
        times.append(f"started {_when(data.get('started_ms'))}")
    if data.get("ended_ms"):
        times.append(f"ended {_when(data.get('ended_ms'))}{_duration(data.get('started_ms'), data.get('ended_ms'))}")
    if times:
        _field(out, "Times", ", ".join(times) + " UTC")
    diagnosis = data["diagnosis"]
    cause = str(diagnosis["cause"])
    _field(out, "Cause", f"{cause}: {diagnosis['summary']}", _CAUSE_STYLES.get(cause, "bold red"))
    if diagnosis.get("evidence"):
        _field(out, "Evidence", "\n".join(diagnosis["evidence"]))
    if diagnosis.get("hint"):
        _field(out, "Hint", str(diagnosis["hint"]), "cyan")
    if data.get("peaks"):
        _field(out, "Peaks", "\n".join(str(p["text"]) for p in data["peaks"]))
    if data.get("related"):
        _field(out, "Related", "\n".join(f"{r['kind']}/{r['id']} ({r['role']})" for r in data["related"]))
    shown = _recent(data.get("items") or [], events)
    if shown:
        out.print()
        table = TextTable("TIME", "SOURCE", "REASON", "MESSAGE", ids=("SOURCE",),
                          title=f"Last {len(shown)} event(s)")
        for item in shown:
            table.add_row(_when(item["at_ms"]), _short(item["source"], title, str(data["id"])), item.get("reason", ""),
                          item["text"],
                          style=_LEVEL_STYLES.get(item["level"]) or None)
        table.print(out)
    tail = data.get("log_tail") or []
    if tail:
        out.print()
        out.print(Text(f"Log tail ({data.get('log_source') or 'output'}, last {len(tail)} line(s)):", "bold"))
        for line in tail:
            out.print(Text("  " + line), soft_wrap=True)


def _short(source: str, own: str, ident: str) -> str:
    """``step`` for the described workload itself, ``workload`` for its queue workload, ``step/train`` for a step of
    a described pipeline run: the source without the id the title already shows."""
    if source == own:
        return own.split("/", 1)[0]
    return source.replace(f"/{ident}/", "/").replace(f"/{ident}", "")


def _recent(items: Sequence[Mapping[str, Any]], count: int) -> list[Mapping[str, Any]]:
    chosen = [i for i in items if i.get("kind") in ("event", "queue", "restart", "attempt", "log")]
    return chosen[-count:] if count > 0 else []


@click.command("describe")
@click.argument("ref", metavar="KIND/ID")
@click.option("--events", "events", default=DEFAULT_EVENTS, show_default=True, type=click.IntRange(0, 1000),
              help="How many of the latest events to list.")
@click.option("--tail", "tail", default=DEFAULT_TAIL, show_default=True, type=click.IntRange(0, 1000),
              help="How many lines of the log to show.")
@click.option("--json", "as_json", is_flag=True, help="Print the whole timeline as JSON (what /api/v1/timeline "
                                                      "answers).")
def describe_cmd(ref: str, events: int, tail: int, as_json: bool) -> None:
    """Why a workload is where it is: its state with reason and message, the cause named from what was recorded
    (OOMKilled with the peak memory against the limit, CUDA out of memory, an import error naming the module, a
    non-zero exit with its last error line, Unschedulable with the queue's reason, Timeout, Preempted), a hint, the
    last events, resource peaks against their limits and the log tail.

    KIND is one of run (a tracking run), pipeline-run (pipeline), step (RUN/STEP), job, trial (STUDY/NUMBER),
    workload or deployment; any unambiguous start works (pipe, dep, wl). Examples: `capstan describe job/train-3f2a9c`,
    `capstan describe step/3f2a9c/train`, `capstan describe trial/digits-mlp/4`.
    """
    from capstan.cli.context import cli_settings
    from capstan.cli.tables import console
    from capstan.troubleshoot.reader import parse_ref

    kind, ident = parse_ref(ref)
    limit = 500
    data = _remote(kind, ident, tail, limit) if cli_settings().url else _local(kind, ident, tail, limit)
    if as_json:
        click.echo(json.dumps(data, indent=2, default=str))
        return
    render(console(), data, events=events)


def register(cli: click.Group) -> None:
    """Add ``describe``."""
    cli.add_command(describe_cmd)
