"""Read models of the training jobs pages: what ``/ui/jobs`` and ``/ui/jobs/ID`` show.

- `jobs_page`: one server-side page of a project's jobs, newest first, optionally in some states: the same store
  call, parameters and page tokens as ``GET /api/v1/jobs`` (the list's JSON twin);
- `job_detail`: a job with its attempts (``GET /api/v1/jobs/ID``, the page's twin), plus what the page derives from
  them: the spec's summary rows, the workers a log can be read from, the restarts line.

Jobs belong to a project; the caller's project is checked before a job is looked up, and a job of another project
does not exist for it (as in the API).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import quote, urlencode

from capstan.errors import InvalidParameterValue, ResourceDoesNotExist
from capstan.server.security import DEFAULT_PROJECT
from capstan.tracking.search_syntax import decode_page_token, encode_page_token
from capstan.training.job_views import attempt_summary
from capstan.training.ports import TERMINAL_STATES, JobAttempt, JobRecord, JobStore
from capstan.training.spec import TrainingJobSpec
from capstan.troubleshoot.classify import format_bytes
from capstan.ui.paging import page_size

__all__ = ["JOB_STATES", "JobDetail", "JobsPage", "JobsQuery", "job_detail", "jobs_page", "parse_jobs_query",
           "project_suffix"]

JOB_STATES = ("Pending", "Running", "Restarting", "Succeeded", "Failed", "Cancelled")
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


def project_suffix(project: str, first: str = "?") -> str:
    """``?project=P`` (or ``&project=P`` with ``first="&"``) for a project other than the default, else empty: UI
    links to objects of a project carry it, as the API's calls carry ``X-Capstan-Project``."""
    return "" if project == DEFAULT_PROJECT else f"{first}{urlencode({'project': project})}"


@dataclass(frozen=True, slots=True)
class JobsQuery:
    """Which jobs a list page shows: ``states`` (none: all), the page size and where the page starts."""

    states: tuple[str, ...] = ()
    max_results: int = DEFAULT_PAGE_SIZE
    page_token: str | None = None


def parse_jobs_query(states: Sequence[str], max_results: str | None, page_token: str | None) -> JobsQuery:
    """The list's query parameters (``state`` repeated, ``max_results``, ``page_token``) checked as the API checks
    them; `InvalidParameterValue` names the field."""
    chosen = tuple(dict.fromkeys(s.strip() for s in states if s.strip()))
    for name in chosen:
        if name not in JOB_STATES:
            raise InvalidParameterValue(f"state: must be one of {', '.join(JOB_STATES)}, got {name[:40]!r}")
    size = page_size(max_results, default=DEFAULT_PAGE_SIZE, maximum=MAX_PAGE_SIZE)
    token = page_token or None
    decode_page_token(token)  # a malformed token is refused before anything is read
    return JobsQuery(chosen, size, token)


@dataclass(frozen=True, slots=True)
class JobsPage:
    """One page of a project's jobs and the token of the next page (None on the last)."""

    project: str
    query: JobsQuery
    jobs: tuple[JobRecord, ...]
    next_page_token: str | None

    def url(self, *, states: Sequence[str] | None = None, page_token: str | None = None) -> str:
        """This list with other states or another page (the first page when ``page_token`` is None)."""
        pairs: list[tuple[str, str]] = []
        if self.project != DEFAULT_PROJECT:
            pairs.append(("project", self.project))
        pairs += [("state", s) for s in (self.query.states if states is None else states)]
        if self.query.max_results != DEFAULT_PAGE_SIZE:
            pairs.append(("max_results", str(self.query.max_results)))
        if page_token:
            pairs.append(("page_token", page_token))
        return "/ui/jobs" + (f"?{urlencode(pairs)}" if pairs else "")


def jobs_page(store: JobStore, project: str, query: JobsQuery) -> JobsPage:
    """The page of ``project``'s jobs that ``query`` names (what ``GET /api/v1/jobs`` answers, with the same page
    tokens): one query of ``max_results + 1`` jobs from the token's offset, however deep the page."""
    offset = decode_page_token(query.page_token)
    found = store.list(project=project, states=query.states, limit=query.max_results + 1, offset=offset)
    more = len(found) > query.max_results
    return JobsPage(project, query, tuple(found[:query.max_results]),
                    encode_page_token(offset + query.max_results) if more else None)


@dataclass(frozen=True, slots=True)
class AttemptRow:
    """One attempt as the page shows it: the record and how it ended, in words."""

    attempt: JobAttempt
    summary: str
    failed: bool


@dataclass(frozen=True, slots=True)
class JobDetail:
    """A job, its attempts (first first) and what the page derives from them."""

    job: JobRecord
    attempts: tuple[AttemptRow, ...]

    @property
    def project(self) -> str:
        return self.job.project

    @property
    def active(self) -> bool:
        """Whether the job may still change (its logs are followed, a cancel makes sense)."""
        return self.job.state not in TERMINAL_STATES

    @property
    def workers(self) -> range:
        """The worker (pod) indexes whose logs can be read."""
        return range(self.job.spec.workers)

    @property
    def restarts_text(self) -> str:
        """``1 of 3 allowed; 1 preemption (not counted)``."""
        text = f"{self.job.restarts} of {self.job.spec.max_restarts} allowed"
        if self.job.preemptions:
            text += f"; {self.job.preemptions} preemption{'s' if self.job.preemptions != 1 else ''} (not counted)"
        return text

    @property
    def timeline_url(self) -> str:
        return f"/ui/timeline/job/{quote(self.job.id, safe='')}{project_suffix(self.project)}"

    @property
    def spec_rows(self) -> tuple[tuple[str, str], ...]:
        """The spec as label/value rows (environment variables by name only: their values may be secrets)."""
        return spec_rows(self.job.spec)


def spec_rows(spec: TrainingJobSpec) -> tuple[tuple[str, str], ...]:
    """What the job runs and with what, one row per field that is set."""
    per_worker = [f"{spec.cpu:g} CPU"]
    if spec.memory:
        per_worker.append(f"{format_bytes(spec.memory)} memory")
    if spec.gpus:
        per_worker.append(f"{spec.gpus:g} GPU" + (f" ({spec.gpu_flavor})" if spec.gpu_flavor else ""))
    rows = [("Entry", f"{spec.entry} ({spec.entry_kind})"),
            ("Gang", f"{spec.workers} worker(s) x {spec.nproc_per_worker} process(es), world size "
                     f"{spec.world_size}"),
            ("Per worker", ", ".join(per_worker))]
    if spec.args:
        rows.append(("Arguments", " ".join(spec.args)))
    rows.append(("Restarts allowed", f"{spec.max_restarts} (back-off from {spec.restart_backoff_s:g}s)"))
    optional = (("Queue", spec.queue), ("Priority", spec.priority), ("Experiment", spec.experiment),
                ("Working directory", spec.working_dir), ("Image", spec.image))
    rows += [(label, value) for label, value in optional if value]
    if spec.env:
        rows.append(("Environment", ", ".join(name for name, _ in spec.env)))
    return tuple(rows)


def job_detail(store: JobStore, project: str, job_id: str) -> JobDetail:
    """Job ``job_id`` of ``project`` with its attempts; `ResourceDoesNotExist` (the API's message) otherwise."""
    record = store.get(job_id)
    if record is None or record.project != project:
        raise ResourceDoesNotExist(f"job {job_id!r} does not exist in project {project!r}")
    rows = []
    for attempt in store.attempts(record.id):
        summary = attempt_summary({"reason": attempt.reason, "rank": attempt.rank, "exit_code": attempt.exit_code,
                                   "message": attempt.message, "ended_ms": attempt.ended_ms})
        rows.append(AttemptRow(attempt, summary, attempt.reason in ("WorkerFailed", "OOMKilled", "NodeLost")))
    return JobDetail(record, tuple(rows))
