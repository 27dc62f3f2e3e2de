"""Read models of the hyperparameter studies pages: what ``/ui/studies`` and ``/ui/studies/NAME`` show.

- `studies_page`: one server-side page of a project's studies, newest first, each with its counts of trials by
  state and its best trial: the same store calls and page tokens as ``GET /api/v1/studies`` (the list's twin);
- `study_detail`: a study with one page of its trials (by number), its best trial and the optimisation history
  (each trial's value, and the best value so far); ``GET /api/v1/views/studies/NAME`` is its twin
  (`study_detail_json`).

The history is built from every trial (the store returns a study's trials at once, and the best trial needs them
all anyway); only the trials table is paged. The caller's project is checked before a study is looked up; a study
of another project does not exist for it (as in the API).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

from capstan.errors import ResourceDoesNotExist
from capstan.server.security import DEFAULT_PROJECT
from capstan.tracking.search_syntax import decode_page_token, encode_page_token
from capstan.tuning.ports import StudyResult, StudyStore, TrialRecord
from capstan.ui.jobs_view import project_suffix
from capstan.ui.paging import page_size

__all__ = ["History", "StudiesPage", "StudyDetail", "check_page_size", "history", "studies_page", "study_detail",
           "study_detail_json"]

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
TRIAL_STATES = ("WAITING", "RUNNING", "COMPLETE", "PRUNED", "FAILED")


def check_page_size(value: str | int | None) -> int:
    """A page size between 1 and `MAX_PAGE_SIZE` (`DEFAULT_PAGE_SIZE` when not given); names ``max_results``."""
    return page_size(value, default=DEFAULT_PAGE_SIZE, maximum=MAX_PAGE_SIZE)


def _page_url(base: str, project: str, max_results: int, page_token: str | None) -> str:
    pairs: list[tuple[str, str]] = []
    if project != DEFAULT_PROJECT:
        pairs.append(("project", project))
    if max_results != DEFAULT_PAGE_SIZE:
        pairs.append(("max_results", str(max_results)))
    if page_token:
        pairs.append(("page_token", page_token))
    return base + (f"?{urlencode(pairs)}" if pairs else "")


# -- the list -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class StudiesPage:
    """One page of a project's studies (each with its trials, for the counts and the best trial)."""

    project: str
    studies: tuple[StudyResult, ...]
    max_results: int
    page_token: str | None
    next_page_token: str | None

    def url(self, page_token: str | None) -> str:
        """This list at another page (the first for None)."""
        return _page_url("/ui/studies", self.project, self.max_results, page_token)


def studies_page(store: StudyStore, project: str, max_results: int, page_token: str | None) -> StudiesPage:
    """The page of ``project``'s studies that ``page_token`` names (what ``GET /api/v1/studies`` answers)."""
    offset = decode_page_token(page_token)
    found = store.list(project=project, limit=offset + max_results + 1)
    page = found[offset:offset + max_results]
    more = len(found) > offset + max_results
    results = tuple(StudyResult(s, tuple(store.trials(s.project, s.name))) for s in page)
    return StudiesPage(project, results, max_results, page_token or None,
                       encode_page_token(offset + max_results) if more else None)


# -- one study ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class History:
    """The optimisation history: the value of each COMPLETE trial and the last reported value of each PRUNED one
    (by trial number), the best value so far over the COMPLETE trials, and the best trial's number."""

    metric: str
    goal: str
    complete: tuple[tuple[int, float], ...]
    pruned: tuple[tuple[int, float], ...]
    best_so_far: tuple[tuple[int, float], ...]
    best_number: int | None

    def to_dict(self) -> dict[str, Any]:
        """JSON form: each series as ``x`` (trial numbers) and ``y`` (values)."""
        def series(points: tuple[tuple[int, float], ...]) -> dict[str, list[Any]]:
            return {"x": [n for n, _ in points], "y": [v for _, v in points]}

        return {"metric": self.metric, "goal": self.goal, "complete": series(self.complete),
                "pruned": series(self.pruned), "best_so_far": series(self.best_so_far),
                "best_trial": self.best_number}


def history(result: StudyResult) -> History:
    """The optimisation history of ``result`` (what ``capstan tune --plot``'s history plot draws)."""
    objective = result.study.spec.objective
    trials = sorted(result.trials, key=lambda t: t.number)
    complete = tuple((t.number, t.value) for t in trials if t.state == "COMPLETE" and t.value is not None)
    pruned = tuple((t.number, t.value) for t in trials if t.state == "PRUNED" and t.value is not None)
    better = max if objective.goal == "maximize" else min
    best: list[tuple[int, float]] = []
    for number, value in complete:
        best.append((number, value if not best else better(best[-1][1], value)))
    top = result.best_trial
    return History(objective.metric, objective.goal, complete, pruned, tuple(best),
                   top.number if top is not None else None)


@dataclass(frozen=True, slots=True)
class StudyDetail:
    """A study, one page of its trials (by number), its best trial and its history."""

    result: StudyResult
    trials: tuple[TrialRecord, ...]
    max_results: int
    page_token: str | None
    next_page_token: str | None
    history: History

    @property
    def project(self) -> str:
        return self.result.study.project

    @property
    def best(self) -> TrialRecord | None:
        return self.result.best_trial

    @property
    def parameter_names(self) -> tuple[str, ...]:
        """The table's parameter columns: the spec's parameters, in sampling order."""
        return tuple(p.name for p in self.result.study.spec.parameters)

    @property
    def counts(self) -> dict[str, int]:
        return {state: self.result.count(state) for state in TRIAL_STATES}

    def url(self, page_token: str | None) -> str:
        """This study's page at another page of trials."""
        return _page_url(f"/ui/studies/{quote(self.result.study.name, safe='')}", self.project, self.max_results,
                         page_token)

    def trial_timeline_url(self, number: int) -> str:
        """The timeline page of one of its trials."""
        return (f"/ui/timeline/trial/{quote(self.result.study.name, safe='')}/{number}"
                f"{project_suffix(self.project)}")


def study_detail(store: StudyStore, project: str, name: str, max_results: int,
                 page_token: str | None) -> StudyDetail:
    """Study ``name`` of ``project`` with the page of trials ``page_token`` names; `ResourceDoesNotExist` (the
    API's message) when the project has no such study."""
    offset = decode_page_token(page_token)
    study = store.get(project, name)
    if study is None:
        raise ResourceDoesNotExist(f"study {name!r} does not exist in project {project!r}")
    result = StudyResult(study, tuple(store.trials(project, name)))
    page = result.trials[offset:offset + max_results]
    more = len(result.trials) > offset + max_results
    return StudyDetail(result, page, max_results, page_token or None,
                       encode_page_token(offset + max_results) if more else None, history(result))


def study_detail_json(detail: StudyDetail) -> dict[str, Any]:
    """The twin's body: the study as ``GET /api/v1/studies`` lists it (counts, best trial), the page of trials,
    the next page's token and the history."""
    return {"study": detail.result.to_dict(trials=False), "trials": [t.to_dict() for t in detail.trials],
            "next_page_token": detail.next_page_token, "history": detail.history.to_dict()}
