"""Timelines and diagnoses of pipeline steps that really failed (``scripts/failing_flow.py``, run once through the
workload queue): out of memory with the peak against the limit, a missing module, a non-zero exit with its last
error line, a timeout, a request the queue can never admit; the run names the step that failed it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from troubleshoot_helpers import FailedRun, describe

from capstan.errors import InvalidParameterValue, ResourceDoesNotExist
from capstan.services import Services
from capstan.troubleshoot.classify import Cause
from capstan.troubleshoot.timeline import Timeline

MI = 2**20


@pytest.fixture(scope="module")
def services(failed_run: FailedRun) -> Iterator[Services]:
    opened = Services.open(failed_run.settings)
    yield opened
    opened.close()


def step(services: Services, failed_run: FailedRun, name: str) -> Timeline:
    return describe(services, f"step/{failed_run.run_id}/{name}")


def reasons(timeline: Timeline, source: str) -> list[str]:
    return [item.reason for item in timeline.items if item.source == source]


def test_a_step_past_its_memory_request_is_oom_killed_with_its_peak_against_the_limit(
        services: Services, failed_run: FailedRun) -> None:
    found = step(services, failed_run, "hog")
    diagnosis = dict(found.diagnosis.data)
    assert (found.state, found.reason, found.diagnosis.cause) == ("failed", "OOMKilled", Cause.OOM_KILLED)
    assert diagnosis["memory_limit"] == 100 * MI  # what the step's workload asked the queue for
    assert diagnosis["peak_memory"] > 50 * MI  # the worker's peak RSS while the 8 MiB blocks piled up
    assert found.diagnosis.summary.startswith("ran out of memory: peak ")
    assert "of its 100Mi limit" in found.diagnosis.summary
    assert [(p.resource, p.used, p.limit, p.source) for p in found.peaks] == \
        [("memory", diagnosis["peak_memory"], 100 * MI, "attempt 1")]
    assert any("exceeded its memory request of 100Mi" in line for line in found.diagnosis.evidence)
    assert "exit code 137" in found.diagnosis.evidence
    assert found.diagnosis.hint.startswith("raise the memory request (e.g. ")
    assert found.log_tail[-1] == "MemoryError"
    workload = f"{failed_run.run_id}/hog"
    assert reasons(found, f"workload/{workload}") == ["Submitted", "Admitted", "Finished"]
    assert {"StepStarted", "OOMKilled", "StepFailed"} <= set(reasons(found, f"step/{workload}"))
    times = [item.at_ms for item in found.items]
    assert times == sorted(times)
    assert ("workload", workload) in {(r.kind, r.id) for r in found.related}


def test_a_missing_module_is_an_import_error_naming_it(services: Services, failed_run: FailedRun) -> None:
    found = step(services, failed_run, "broken")
    assert found.diagnosis.cause is Cause.IMPORT_ERROR
    assert found.diagnosis.summary == "could not import module 'not_a_module'"
    assert dict(found.diagnosis.data)["module"] == "not_a_module"
    assert "pip install not_a_module" in found.diagnosis.hint
    assert found.log_tail[-1] == "ModuleNotFoundError: No module named 'not_a_module'"
    excerpts = [item for item in found.items if item.kind == "log"]
    assert [(e.text, e.level) for e in excerpts] == \
        [("attempt 1 log: ModuleNotFoundError: No module named 'not_a_module'", "error")]


def test_a_non_zero_exit_names_the_last_error_line(services: Services, failed_run: FailedRun) -> None:
    found = step(services, failed_run, "exits")
    assert found.diagnosis.cause is Cause.NON_ZERO_EXIT
    assert found.diagnosis.summary == "exited with code 3: fatal: shard 7 is corrupt"
    assert dict(found.diagnosis.data)["exit_code"] == 3
    assert found.log_tail == ("loading the shards", "fatal: shard 7 is corrupt")


def test_a_step_past_its_timeout(services: Services, failed_run: FailedRun) -> None:
    found = step(services, failed_run, "slow")
    assert (found.reason, found.diagnosis.cause) == ("Timeout", Cause.TIMEOUT)
    assert found.diagnosis.summary == "ran past its time limit of 1s and was stopped"
    assert dict(found.diagnosis.data)["timeout_s"] == 1.0


def test_a_request_the_queue_can_never_admit_is_unschedulable_with_its_reason(
        services: Services, failed_run: FailedRun) -> None:
    found = step(services, failed_run, "greedy")
    assert found.diagnosis.cause is Cause.UNSCHEDULABLE
    assert found.diagnosis.summary.startswith("the queue can never admit it: step 'greedy' requests 64 GPU(s)")
    assert "has no quota for gpu" in found.diagnosis.summary


def test_a_succeeded_step_shows_its_output_and_peak(services: Services, failed_run: FailedRun) -> None:
    found = step(services, failed_run, "fine")
    assert (found.state, found.diagnosis.cause, found.log_tail) == ("succeeded", Cause.SUCCEEDED, ("all good",))
    assert [p.limit for p in found.peaks] == [None] and found.peaks[0].used


def test_the_run_names_the_step_that_failed_it(services: Services, failed_run: FailedRun) -> None:
    found = describe(services, f"pipe/{failed_run.run_id[:10]}")  # a short kind and an id prefix
    assert (found.kind, found.id, found.state) == ("pipeline-run", failed_run.run_id, "failed")
    culprit = found.related[0].id.split("/", 1)[1]
    assert f"step '{culprit}' failed" in found.message
    assert found.diagnosis.summary.startswith(f"step {culprit}: ")
    others = next(line for line in found.diagnosis.evidence if line.startswith("other failed steps: "))
    assert sorted(others.removeprefix("other failed steps: ").split(", ")) == \
        sorted({"hog", "broken", "exits", "slow", "greedy"} - {culprit})
    assert {"PipelineRunStarted", "PipelineRunFailed"} <= {item.reason for item in found.items}


def test_a_finished_workload_takes_its_owners_diagnosis(services: Services, failed_run: FailedRun) -> None:
    found = describe(services, f"wl/{failed_run.run_id}/broken")
    assert (found.kind, found.state) == ("workload", "Finished")
    assert [(r.kind, r.id) for r in found.related] == [("step", f"{failed_run.run_id}/broken")]
    assert found.diagnosis.cause is Cause.IMPORT_ERROR
    assert [item.reason for item in found.items] == ["Submitted", "Admitted", "Finished"]


@pytest.mark.parametrize(("ref", "error", "message"), [
    ("step/{run}", InvalidParameterValue, "id: a step is named RUN/STEP"),
    ("step/{run}/nope", ResourceDoesNotExist, "has no step 'nope' (steps: broken, exits, fine, greedy, hog, slow)"),
    ("pipeline-run/0000000000", ResourceDoesNotExist, "pipeline run '0000000000' does not exist"),
    ("pipeline-run/xyz", InvalidParameterValue, "run id: 'xyz' is not a run id"),
    ("job/nope-000000", ResourceDoesNotExist, "job 'nope-000000' does not exist"),
    ("workload/nope", ResourceDoesNotExist, "workload 'nope' does not exist"),
    ("trial/study", InvalidParameterValue, "id: a trial is named STUDY/NUMBER"),
    ("trial/study/1", ResourceDoesNotExist, "study 'study' does not exist in project 'default'"),
    ("deployment/nope", ResourceDoesNotExist, "deployment 'nope' does not exist in project 'default'"),
    ("run/" + "0" * 32, ResourceDoesNotExist, f"run {'0' * 32!r} does not exist"),
    ("pod/x", InvalidParameterValue, "kind: unknown kind 'pod' (kinds: run, pipeline-run (pipeline, prun), step"),
    ("job", InvalidParameterValue, "KIND/ID: expected a kind and an id"),
])
def test_bad_names_and_unknown_ids_are_one_typed_error(services: Services, failed_run: FailedRun, ref: str,
                                                       error: type[Exception], message: str) -> None:
    with pytest.raises(error) as caught:
        describe(services, ref.format(run=failed_run.run_id))
    assert message in str(caught.value)
