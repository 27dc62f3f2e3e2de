"""``capstan describe`` as a real subprocess, locally and through a server's ``/api/v1/timeline`` (same output),
bad input as one line, and the route's project scoping."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
from troubleshoot_helpers import FailedRun

from helpers.server import ServerProcess, start_server


@pytest.fixture(scope="module")
def server(failed_run: FailedRun) -> Iterator[ServerProcess]:
    """A server on the failed run's home (single-user mode on loopback)."""
    with start_server(failed_run.settings.home) as srv:
        yield srv


def test_describe_prints_state_cause_peaks_events_and_the_log_tail(server: ServerProcess,
                                                                   failed_run: FailedRun) -> None:
    shown = server.cli("describe", f"step/{failed_run.run_id}/hog", "--events", "3", "--tail", "2").stdout
    lines = shown.splitlines()
    assert lines[0] == f"step/{failed_run.run_id}/hog  (project default)"
    assert lines[1].startswith("State:    failed  OOMKilled: MemoryError: step 'hog' (")
    assert any(line.startswith("Cause:    OOMKilled: ran out of memory: peak ") for line in lines)
    assert any(line.startswith("Hint:     raise the memory request") for line in lines)
    assert any(line.startswith("Peaks:    memory: ") and " of 100Mi (" in line and line.endswith(" in attempt 1")
               for line in lines)
    assert "Last 3 event(s)" in lines
    tail = lines[lines.index("Log tail (attempt 1 of step hog, last 2 line(s)):"):]
    assert tail[-1] == "  MemoryError"
    assert len(tail) == 3


def test_describe_through_the_server_prints_the_same(server: ServerProcess, failed_run: FailedRun) -> None:
    ref = f"step/{failed_run.run_id}/exits"
    local = json.loads(server.cli("describe", ref, "--json").stdout)
    remote = json.loads(server.remote_cli("describe", ref, "--json").stdout)
    assert remote == local
    assert remote["diagnosis"]["cause"] == "NonZeroExit"
    assert server.remote_cli("describe", ref).stdout == server.cli("describe", ref).stdout


def test_the_json_shape(server: ServerProcess, failed_run: FailedRun) -> None:
    body = httpx.get(f"{server.url}/api/v1/timeline/step/{failed_run.run_id}/broken", params={"tail": 1}).json()
    assert set(body) == {"kind", "id", "project", "state", "reason", "message", "created_ms", "started_ms",
                         "ended_ms", "diagnosis", "items", "truncated", "peaks", "log_tail", "log_source", "related"}
    assert set(body["diagnosis"]) == {"cause", "summary", "evidence", "hint", "data"}
    assert body["diagnosis"]["data"] == {"module": "not_a_module"}
    assert set(body["items"][0]) == {"at_ms", "kind", "source", "reason", "text", "level"}
    assert set(body["peaks"][0]) == {"resource", "used", "limit", "fraction", "source", "text"}
    assert body["log_tail"] == ["ModuleNotFoundError: No module named 'not_a_module'"]
    limited = httpx.get(f"{server.url}/api/v1/timeline/step/{failed_run.run_id}/broken", params={"limit": 2}).json()
    assert limited["truncated"] is True and limited["items"] == body["items"][-2:]


def test_another_projects_workload_does_not_exist_for_the_caller(server: ServerProcess,
                                                                failed_run: FailedRun) -> None:
    url = f"{server.url}/api/v1/timeline/pipeline-run/{failed_run.run_id}"
    assert httpx.get(url).status_code == 200
    other = httpx.get(url, headers={"X-Capstan-Project": "other"})
    assert other.status_code == 404
    assert other.json() == {"error_code": "RESOURCE_DOES_NOT_EXIST",  # what a missing run answers
                            "message": f"pipeline run {failed_run.run_id!r} does not exist"}
    bad = httpx.get(f"{server.url}/api/v1/timeline/pod/x")
    assert bad.status_code == 400
    assert bad.json()["message"].startswith("kind: unknown kind 'pod'")
    negative = httpx.get(f"{server.url}/api/v1/timeline/step/{failed_run.run_id}/x", params={"tail": -1})
    assert (negative.status_code, negative.json()["error_code"]) == (400, "INVALID_PARAMETER_VALUE")
    assert "tail" in negative.json()["message"]


@pytest.mark.parametrize(("where", "args", "message"), [
    ("local", ("describe", "pod/x"), "error: kind: unknown kind 'pod' (kinds: run, pipeline-run (pipeline, prun), "),
    ("local", ("describe", "job"), "error: KIND/ID: expected a kind and an id such as job/train-3f2a9c"),
    ("local", ("describe", "p/0123"), "error: pipeline run '0123' does not exist"),
    ("local", ("describe", "job/x", "--tail", "-1"), "error: Invalid value for '--tail'"),
    ("remote", ("describe", "job/nope-000000"), "error: job 'nope-000000' does not exist"),
    ("remote", ("describe", "deploy/nope"), "error: deployment 'nope' does not exist in project 'default'"),
])
def test_bad_input_is_one_line(server: ServerProcess, where: str, args: tuple[str, ...], message: str) -> None:
    result = server.cli(*args, check=False) if where == "local" else server.remote_cli(*args, check=False)
    assert result.returncode != 0
    assert result.stderr.startswith(message), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert result.stdout == ""
