"""The pipelines HTTP API (mounted the way the server mounts it) and the server-side service: submitted runs are
orchestrated in the server, bad pipelines get a 4xx naming the place, unfinished runs resume after a restart."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pipeline_helpers import write_pipeline

from capstan.pipelines.executors import close_pools
from capstan.pipelines.service import PipelineService
from capstan.server.app import create_app
from capstan.services import Services
from capstan.settings import Settings
from helpers.pipelines import open_runner

FLOW = '''
import capstan.pipelines as cp


@cp.step(isolation="thread")
def double(x: int) -> int:
    print("doubling", x)
    return 2 * x


@cp.step
def add(a: int, b: int) -> int:
    return a + b


@cp.pipeline
def math(x: int = 2):
    return add(double(x), double(x + 1))
'''


@pytest.fixture
def service(settings: Settings) -> Iterator[tuple[TestClient, PipelineService]]:
    services = Services.open(settings)
    app = create_app(settings, services=services)
    svc = PipelineService(services.pipelines.get(), scheduler_interval_s=0.2)
    app.state.pipelines = svc  # the app starts and stops it with its lifespan
    with TestClient(app) as client:
        yield client, svc
    services.close()
    close_pools()


def test_submit_list_show_logs(service: tuple[TestClient, PipelineService], tmp_path: Path) -> None:
    client, svc = service
    file = write_pipeline(tmp_path, "flow", FLOW)
    created = client.post("/api/v1/pipelines/runs", json={"pipeline": f"{file}:math", "params": {"x": "5"}})
    assert created.status_code == 201, created.text
    run = created.json()["run"]
    assert (run["status"], run["source"], run["params"]) == ("pending", "api", {"x": 5})
    svc.wait(run["id"], timeout=60)
    shown = client.get(f"/api/v1/pipelines/runs/{run['id']}").json()
    assert shown["run"]["status"] == "succeeded"
    steps = {s["step"]: s for s in shown["steps"]}
    assert steps["add"]["needs"] == ["double", "double-2"] and steps["add"]["attempts"][0]["exit_code"] == 0
    assert client.get("/api/v1/pipelines/runs", params={"status": "succeeded"}).json()["runs"][0]["id"] == run["id"]
    logs = client.get(f"/api/v1/pipelines/runs/{run['id']}/steps/double/logs")
    assert logs.status_code == 200 and logs.text == "doubling 5\n" and logs.headers["X-Capstan-Attempt"] == "1"
    again = client.post(f"/api/v1/pipelines/runs/{run['id']}/cancel")
    assert again.status_code == 400 and again.json()["error_code"] == "INVALID_STATE"


def test_bad_submissions_are_4xx_and_store_nothing(service: tuple[TestClient, PipelineService],
                                                   tmp_path: Path) -> None:
    client, svc = service
    file = write_pipeline(tmp_path, "flow", FLOW)
    bad = client.post("/api/v1/pipelines/runs", json={"pipeline": f"{file}:math", "params": {"x": "five"}})
    assert bad.status_code == 400
    assert bad.json()["error_code"] == "INVALID_PARAMETER_VALUE"
    assert "flow.py:" in bad.json()["message"] and "'five' is not an integer" in bad.json()["message"]
    missing = client.post("/api/v1/pipelines/runs", json={"pipeline": str(tmp_path / "nope.py")})
    assert missing.status_code == 400 and "does not exist" in missing.json()["message"]
    assert client.get("/api/v1/pipelines/runs/0123abcd").status_code == 404
    assert client.get("/api/v1/pipelines/runs", params={"status": "weird"}).status_code == 400
    assert svc.runner.store.list_runs() == []


def test_schedules_over_http(service: tuple[TestClient, PipelineService], tmp_path: Path) -> None:
    client, svc = service
    file = write_pipeline(tmp_path, "flow", FLOW)
    bad = client.post("/api/v1/pipelines/schedules", json={"name": "s", "pipeline": f"{file}:math", "cron": "nope"})
    assert bad.status_code == 400 and "--cron" in bad.json()["message"]
    made = client.post("/api/v1/pipelines/schedules",
                       json={"name": "s", "pipeline": f"{file}:math", "cron": "0 3 * * *", "params": {"x": 1}})
    assert made.status_code == 201, made.text
    assert [s["name"] for s in client.get("/api/v1/pipelines/schedules").json()["schedules"]] == ["s"]
    filled = client.post("/api/v1/pipelines/schedules/s/backfill", json={"from": "2024-01-01", "to": "2024-01-02"})
    slots = filled.json()["slots"]
    assert [s["slot"] for s in slots] == ["2024-01-01T03:00:00+00:00"] and slots[0]["run_id"]
    svc.wait(slots[0]["run_id"], timeout=60)
    assert svc.runner.store.get_run(slots[0]["run_id"]).status == "succeeded"
    assert client.delete("/api/v1/pipelines/schedules/s").status_code == 204
    assert client.delete("/api/v1/pipelines/schedules/s").status_code == 404


def test_the_server_resumes_its_unfinished_runs_after_a_restart(settings: Settings, tmp_path: Path) -> None:
    file = write_pipeline(tmp_path, "flow", FLOW)
    from capstan.pipelines.loader import load_pipeline

    runner = open_runner(settings)
    pipe, ref = load_pipeline(f"{file}:math")
    submitted, _ = runner.create_run(pipe, {"x": 1}, ref=ref, source="api")
    crashed, _ = runner.create_run(pipe, {"x": 2}, ref=ref, source="schedule")
    cli_run, _ = runner.create_run(pipe, {"x": 3}, ref=ref, source="cli")
    # A previous server died while orchestrating `crashed`.
    assert runner.store.claim(crashed.id, None, "some-host:999999:1")
    from sqlalchemy import update

    from capstan.pipelines.tables import pipeline_runs

    with runner.engine.begin() as conn:
        conn.execute(update(pipeline_runs).where(pipeline_runs.c.id == crashed.id)
                     .values(status="running", heartbeat_at=0))
    svc = PipelineService(runner, scheduler_interval_s=0.2)
    try:
        resumed = svc.start(schedules=False)
        assert set(resumed) == {submitted.id, crashed.id}
        for run_id in resumed:
            svc.wait(run_id, timeout=60)
        assert runner.store.get_run(submitted.id).status == "succeeded"
        assert runner.store.get_run(crashed.id).status == "succeeded"
        assert runner.result(crashed.id).value() == 10
        assert runner.store.get_run(cli_run.id).status == "pending", "runs started by the CLI are not taken over"
        # A run recorded for the server while it runs (`schedules backfill --submit-only`) is picked up too.
        later, _ = runner.create_run(pipe, {"x": 4}, ref=ref, source="backfill")
        assert svc.adopt_pending() == [later.id]
        assert svc.adopt_pending() == []
        svc.wait(later.id, timeout=60)
        assert runner.store.get_run(later.id).status == "succeeded"
    finally:
        svc.stop()
        runner.close()
        close_pools()


def test_real_server_orchestrates_submitted_runs(tmp_path: Path) -> None:
    """`capstan server` (two workers) mounts the pipelines API and runs what is submitted to it."""
    import time

    import httpx

    from helpers.server import start_server

    file = write_pipeline(tmp_path, "flow", FLOW)
    with start_server(tmp_path / "home", workers=2) as server:
        created = httpx.post(f"{server.url}/api/v1/pipelines/runs", json={"pipeline": f"{file}:math",
                                                                         "params": {"x": "5"}}, timeout=30)
        assert created.status_code in (200, 201), created.text
        run_id = created.json()["run"]["id"]
        deadline = time.monotonic() + 60
        status = ""
        while time.monotonic() < deadline:
            status = httpx.get(f"{server.url}/api/v1/pipelines/runs/{run_id}", timeout=10).json()["run"]["status"]
            if status in ("succeeded", "failed"):
                break
            time.sleep(0.2)
        assert status == "succeeded"
        # `capstan run` with CAPSTAN_URL submits to the server and follows the run there.
        via_cli = server.remote_cli("run", f"{file}:math", "-p", "x=1", "--json")
        final = json.loads(via_cli.stdout)  # nothing but the JSON document on stdout
        assert final["run"]["status"] == "succeeded" and final["run"]["source"] == "api"
        text = server.remote_cli("run", f"{file}:math", "-p", "x=0")
        assert f"run {text.stdout.split()[-2]} succeeded" in text.stdout
        failing = server.remote_cli("run", f"{file}:math", "-p", "x=oops", check=False)
        assert failing.returncode == 1 and "Traceback" not in failing.stderr
        assert failing.stderr.startswith("error: ")
        assert "parameter 'x' (int): 'oops' is not an integer" in failing.stderr
