"""A training job submitted to ``capstan server`` (``CAPSTAN_URL``): the server's leader runs it, the SDK follows it
to its end, and the job's logs and events are there."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from training_helpers import SCRIPTS

import capstan
from capstan.services import Services
from capstan.settings import Settings
from helpers.server import ServerProcess


def test_a_job_submitted_to_the_server_runs_in_its_leader(server: ServerProcess, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    job = capstan.TrainingJob("rank_env.py", name="remote", workers=2, cpu=0.5, working_dir=str(SCRIPTS),
                              args=[str(out)], experiment="remote-jobs")
    states: list[str] = []
    settings = dataclasses.replace(Settings.for_home(tmp_path / "client"), url=server.url)
    record = job.run(settings=settings, progress=lambda r: states.append(r.state))
    assert record.state == "Succeeded" and states[0] == "Pending" and states[-1] == "Succeeded"
    assert sorted(p.name for p in out.iterdir()) == ["attempt-1-rank-0.json", "attempt-1-rank-1.json"]
    services = Services.open(Settings.for_home(server.home))
    try:
        stored = services.jobs.get(record.id)
        assert stored is not None and stored.owner is None and stored.run_id == record.run_id
        assert [e.reason for e in services.events.list("job", record.id)] == ["Submitted", "Started", "Succeeded"]
    finally:
        services.close()
    logs = server.cli("logs", record.id, "--worker", "1").stdout
    assert "hello from rank 1" in logs
