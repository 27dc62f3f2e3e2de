"""Peak memory of training jobs: the runner reads each rank's peak resident memory when it reaps the process, stores
it with the attempt, and `capstan jobs show`, ``GET /api/v1/jobs/ID``, the job's events, `capstan describe job/ID`
and the OOM diagnosis show it against the spec's per-worker memory."""

from __future__ import annotations

import json
import subprocess

import httpx
from training_helpers import Env, events_of

from capstan.resources.memory import vm_hwm
from capstan.troubleshoot.classify import Cause
from capstan.troubleshoot.sources import Scope
from helpers.server import capstan_command, clean_env, start_server

MI = 2**20


def cli(env: Env, *args: str) -> str:
    # wide enough that the peak column is not folded (folding is tested with the tables)
    result = subprocess.run([*capstan_command(), *args], env={**clean_env(env.settings.home), "COLUMNS": "200"},
                            text=True,
                            capture_output=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_each_ranks_peak_is_recorded_and_shown_against_the_limit(env: Env) -> None:
    spec = env.spec("hog.py", "200", "0", "1.0", workers=2, memory="1Gi", env={"HOG_RANK": "1"})
    record = env.submit_and_run(spec)
    assert record.state == "Succeeded", record.message
    [attempt] = env.services.jobs.attempts(record.id)
    small, big = attempt.rank_peak_memory
    assert big is not None and big >= 200 * MI, attempt.rank_peak_memory
    assert small is None or small < 150 * MI, "rank 0 allocated nothing (and may end before a sample)"
    assert (attempt.peak_memory, attempt.peak_rank) == (big, 1)
    finished = events_of(env, record.id)[-1]
    assert (finished.reason, finished.data["peak_memory"], finished.data["peak_rank"]) == ("Succeeded", big, 1)

    shown = json.loads(cli(env, "jobs", "show", record.id, "--json"))
    assert [(a["peak_memory"], a["peak_rank"], a["rank_peak_memory"]) for a in shown["attempts"]] == \
        [(big, 1, [small, big])]
    table = cli(env, "jobs", "show", record.id)
    assert "PEAK MEMORY" in table and " of 1Gi (" in table and "rank 1)" in table, table
    described = cli(env, "describe", f"job/{record.id}")
    [peaks] = [line for line in described.splitlines() if line.startswith("Peaks:")]
    assert peaks.startswith("Peaks:    memory: ") and " of 1Gi (" in peaks, peaks
    assert peaks.endswith(") in attempt 1, rank 1"), peaks
    with start_server(env.settings.home) as server:
        view = httpx.get(f"{server.url}/api/v1/jobs/{record.id}", timeout=30).json()
        timeline = httpx.get(f"{server.url}/api/v1/timeline/job/{record.id}", timeout=30).json()
    assert view["attempts"][0]["peak_memory"] == big
    [peak] = timeline["peaks"]
    assert (peak["used"], peak["limit"], peak["source"]) == (big, 2**30, "attempt 1, rank 1")


def test_an_oom_killed_attempt_shows_its_peak_against_the_limit(env: Env) -> None:
    # More than this process (the runner) holds, so the peak is wait4's exact figure, not a sample: the worker
    # exits as soon as it has allocated.
    runner_peak = vm_hwm()
    megabytes = max(200, (runner_peak or 0) // MI + 64)
    spec = env.spec("hog.py", str(megabytes), "137", memory="256Mi")
    record = env.submit_and_run(spec)
    assert (record.state, record.reason) == ("Failed", "OOMKilled")
    [attempt] = env.services.jobs.attempts(record.id)
    assert attempt.peak_memory is not None and attempt.peak_memory >= megabytes * MI
    failed = events_of(env, record.id)[-1]
    assert (failed.reason, failed.data["peak_memory"], failed.data["exit_code"]) == ("Failed", attempt.peak_memory,
                                                                                      137)
    found = env.services.timelines().describe(f"job/{record.id}", Scope(project="default", tail=10))
    assert found.diagnosis.cause is Cause.OOM_KILLED
    assert found.diagnosis.summary.startswith("ran out of memory: peak ")
    assert " of its 256Mi limit (" in found.diagnosis.summary, found.diagnosis.summary  # above 100%
    data = dict(found.diagnosis.data)
    assert (data["peak_memory"], data["memory_limit"]) == (attempt.peak_memory, 256 * MI)
    assert any(e.startswith("peak memory ") and " of a 256Mi limit (" in e for e in found.diagnosis.evidence)
    [ended] = [item.text for item in found.items if item.kind == "attempt"]
    assert "; peak memory " in ended and " of 256Mi (" in ended and ended.endswith(", rank 0)"), ended
    why = cli(env, "why", record.id)
    assert "(peak memory " in why and " of 256Mi (" in why, why


def test_several_processes_per_worker_are_summed_against_the_workers_limit(env: Env) -> None:
    spec = env.spec("hog.py", "120", "0", "1.0", nproc_per_worker=2, memory="512Mi", env={"HOG_RANK": "1"})
    record = env.submit_and_run(spec)
    [attempt] = env.services.jobs.attempts(record.id)
    [peak] = env.services.timelines().describe(f"job/{record.id}", Scope(project="default")).peaks
    assert peak.used == sum(p or 0 for p in attempt.rank_peak_memory) and peak.used >= 120 * MI
    assert (peak.limit, peak.source) == (512 * MI, "attempt 1, worker 0 (sum of its 2 processes)")
