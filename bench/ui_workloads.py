"""Web UI benchmark of the jobs, studies and timeline pages (issue 12): server time of each page with large data.

Data, written straight into one temporary Capstan home (the stores' own calls, no runner):
  - --jobs training jobs (10,000; --quick 1,000), each with 2 attempts, one of them failed
  - one of them with --events events of its own (4,000; --quick 1,000), for its timeline (the page keeps the
    latest 500 items by default, as the JSON twin does)
  - one study of --trials trials (5,000; --quick 500): COMPLETE, PRUNED and FAILED, 3 parameters, 20
    intermediate values each

Then ``capstan server`` starts on it and each page is fetched --reps times (after one warm-up) with httpx; the
median wall time of the whole answer and its size are reported. The pages render on the server, so this is the
part that grows with the data: the list pages ask the store for one page (the first and the last page of jobs are
both measured), the study page reads every trial once (for the best trial and the history chart, whose points go
to the browser in the page) and renders one page of the trials table.

    python bench/ui_workloads.py            # full sizes (about a minute to write the data)
    python bench/ui_workloads.py --quick
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]  # bench/queue.py shadows `queue`
sys.path.insert(0, str(_HERE))

from _util import free_port, python, start, stop, table, wait_healthy  # noqa: E402  # after the path fix above

T0 = 1_700_000_000_000


def seed(home: Path, jobs: int, events: int, trials: int) -> str:
    """Write the data; returns the id of the job with many events."""
    from capstan.events.records import Event
    from capstan.services import Services
    from capstan.settings import Settings
    from capstan.training.ports import JobAttempt, JobRecord
    from capstan.training.spec import parse_job_spec
    from capstan.tuning.ports import StudyRecord, TrialRecord
    from capstan.tuning.spec import parse_study_spec

    services = Services.open(Settings.for_home(home))
    try:
        spec = parse_job_spec({"name": "bench", "entry": "train.py", "workers": 4, "nproc_per_worker": 2,
                               "cpu": 2, "memory": "8Gi", "max_restarts": 3})
        busy = ""
        for i in range(jobs):
            job_id = f"bench-{i:06x}"
            failed = i % 3 == 0
            services.jobs.create(JobRecord(
                id=job_id, project="default", spec=spec, state="Failed" if failed else "Succeeded",
                created_ms=T0 + i * 1000, user="bench", attempt=2, restarts=1, reason="WorkerFailed" if failed else
                "Succeeded", message="rank 3 exited with code 1", started_ms=T0 + i * 1000 + 50,
                ended_ms=T0 + i * 1000 + 900))
            for n in (1, 2):
                services.jobs.add_attempt(JobAttempt(job_id, n, T0 + i * 1000 + n * 100, 40000 + n, "/tmp/none"))
                services.jobs.end_attempt(JobAttempt(
                    job_id, n, T0 + i * 1000 + n * 100, 40000 + n, "/tmp/none", ended_ms=T0 + i * 1000 + n * 400,
                    reason="WorkerFailed" if n == 1 or failed else "Succeeded", rank=3 if n == 1 or failed else None,
                    exit_code=1 if n == 1 or failed else None))
            busy = job_id
        services.events.append_many([
            Event(0, T0 + k * 50, "job", busy, "Warning" if k % 7 == 0 else "Normal",
                  "WorkerFailed" if k % 7 == 0 else "Progress", f"event {k} of the busy job", "default")
            for k in range(events)])
        study = parse_study_spec({
            "name": "bench-study", "objective": {"metric": "score", "goal": "maximize"},
            "parameters": {"lr": {"type": "float", "min": 1e-4, "max": 1.0, "log": True},
                           "depth": {"type": "int", "min": 1, "max": 12},
                           "kind": {"type": "categorical", "values": ["a", "b", "c"]}},
            "trial": {"function": "objective:train"}, "max_trials": trials, "algorithm": "random"})
        services.studies.create(StudyRecord("default", "bench-study", study, "Succeeded", T0, T0 + trials * 1000,
                                            ended_ms=T0 + trials * 1000))
        for n in range(trials):
            state = "FAILED" if n % 11 == 0 else "PRUNED" if n % 3 == 0 else "COMPLETE"
            value = None if state == "FAILED" else (n * 7919 % 1000) / 1000
            services.studies.put_trial(TrialRecord(
                "default", "bench-study", n, state, T0 + n * 1000, params={"lr": 0.01, "depth": n % 12 + 1,
                                                                           "kind": "abc"[n % 3]},
                value=value, intermediate=tuple((s, s / 20) for s in range(20)), ended_ms=T0 + n * 1000 + 800,
                message="diverged" if state == "FAILED" else ""))
        return busy
    finally:
        services.close()


def measure(url: str, reps: int) -> tuple[float, int, int]:
    """Median seconds of ``reps`` GETs (after one warm-up), the answer's size and status."""
    response = httpx.get(url, timeout=120)
    times = []
    for _ in range(reps):
        started = time.perf_counter()
        response = httpx.get(url, timeout=120)
        times.append(time.perf_counter() - started)
    return statistics.median(times), len(response.content), response.status_code


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--jobs", type=int)
    parser.add_argument("--events", type=int)
    parser.add_argument("--trials", type=int)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    jobs = args.jobs or (1_000 if args.quick else 10_000)
    events = args.events or (1_000 if args.quick else 4_000)
    trials = args.trials or (500 if args.quick else 5_000)
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        started = time.perf_counter()
        busy = seed(home, jobs, events, trials)
        print(f"seeded {jobs} jobs, {events} events, {trials} trials in {time.perf_counter() - started:.1f}s")
        port = free_port()
        proc = start([python(), "-m", "capstan", "server", "--port", str(port)], {"CAPSTAN_HOME": str(home)},
                     Path(tmp) / "server.log")
        try:
            base = f"http://127.0.0.1:{port}"
            wait_healthy(f"{base}/health", proc)
            first = httpx.get(f"{base}/api/v1/jobs?max_results=100", timeout=60).json()
            last_token = first["next_page_token"]
            offset_pages = (jobs - 1) // 100
            pages = [("jobs list, first page (100 rows)", "/ui/jobs"),
                     ("jobs list, filtered to Failed", "/ui/jobs?state=Failed"),
                     ("jobs list, a page deep in the list", "/ui/jobs?page_token=" + _token(offset_pages * 100)
                      if last_token else "/ui/jobs"),
                     ("job page (2 attempts)", f"/ui/jobs/{busy}"),
                     (f"job timeline ({events} events, latest 500 drawn)", f"/ui/timeline/job/{busy}"),
                     ("job timeline, every item (limit=5000)", f"/ui/timeline/job/{busy}?limit=5000"),
                     ("studies list", "/ui/studies"),
                     (f"study page ({trials} trials, 100 in the table)", "/ui/studies/bench-study"),
                     ("study twin (JSON)", "/api/v1/views/studies/bench-study")]
            rows = []
            for label, path in pages:
                seconds, size, status = measure(base + path, args.reps)
                rows.append([label, str(status), f"{seconds * 1000:.0f} ms", f"{size / 1024:.0f} KiB"])
            print(table(rows, ["page", "status", "median", "size"]))
        finally:
            stop(proc)


def _token(offset: int) -> str:
    from capstan.tracking.search_syntax import encode_page_token

    return encode_page_token(offset)


if __name__ == "__main__":
    main()
