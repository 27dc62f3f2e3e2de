"""`capstan.TrainingJob` in Python: its spec is checked when it is made, ``run()`` drives it with the local stores
and the workload queue, and inside a pipeline step the job's gang is admitted as the job's own workload."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from training_helpers import SCRIPTS

import capstan
from capstan.errors import InvalidParameterValue
from capstan.pipelines.loader import load_pipeline
from capstan.services import Services
from capstan.settings import Settings

PIPELINE = '''
import capstan
from capstan.settings import Settings


@capstan.step(resources={"cpu": 0})
def train(home: str, out: str) -> dict:
    """Waits for its job: the job's gang holds the quota, the step none."""
    record = capstan.TrainingJob("rank_env.py", name="piped", workers=2, cpu=0.5, working_dir=SCRIPTS,
                                 args=[out]).run(settings=Settings.for_home(home))
    return {"state": record.state, "job": record.id, "run_id": record.run_id}


@capstan.step(isolation="thread")
def report(result: dict) -> str:
    return result["state"]


@capstan.pipeline
def flow(home: str = ".", out: str = "."):
    return report(train(home, out))
'''


def test_the_spec_is_checked_when_the_job_is_made() -> None:
    job = capstan.TrainingJob("pkg/train.py", workers=2, memory="1Gi", args=["--lr", "0.1"])
    assert (job.spec.name, job.spec.entry_kind, job.spec.memory, job.spec.args) == ("train", "script", 2**30,
                                                                                   ("--lr", "0.1"))
    assert capstan.TrainingJob("pkg.train").spec.name == "pkg-train"
    with pytest.raises(InvalidParameterValue, match=r"^job\.workers: must be between 1 and 1024, got 0$"):
        capstan.TrainingJob("train.py", workers=0)
    with pytest.raises(InvalidParameterValue, match=r"^job\.env\.RANK: is set by Capstan"):
        capstan.TrainingJob("train.py", env={"RANK": "3"})


def test_run_drives_the_job_with_the_local_stores_and_queue(settings: Settings, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    job = capstan.TrainingJob("rank_env.py", workers=2, cpu=0.5, working_dir=str(SCRIPTS), args=[str(out)],
                              experiment="sdk-jobs")
    seen: list[str] = []
    record = job.run(settings=settings, progress=lambda r: seen.append(r.state))
    assert record.state == "Succeeded" and seen[-1] == "Succeeded" and "Running" in seen
    services = Services.open(settings)
    try:
        assert record.run_id is not None
        run = services.tracking.get_run(record.run_id)
        assert services.tracking.get_experiment(run.info.experiment_id).name == "sdk-jobs"
        workload = services.queue.get().get_workload(f"job/{record.id}")
        assert workload is not None and [p.count for p in workload.workload.pod_sets] == [2]
    finally:
        services.close()


def test_a_training_job_as_a_pipeline_step(settings: Settings, tmp_path: Path) -> None:
    from capstan.pipelines.executors import close_pools

    code = tmp_path / "code"
    code.mkdir()
    source = textwrap.dedent(PIPELINE).replace("SCRIPTS", repr(str(SCRIPTS)))
    (code / "jobflow.py").write_text(source)
    out = tmp_path / "out"
    out.mkdir()
    services = Services.open(settings)
    try:
        pipe, ref = load_pipeline(f"{code / 'jobflow.py'}:flow")
        result = services.pipelines.get().run(pipe, {"home": str(settings.home), "out": str(out)}, ref=ref)
        assert result.ok, result.run.message
        assert result.value() == "Succeeded"
        job_id = result.output("train")["job"]
        job = services.jobs.get(job_id)
        assert job is not None and (job.state, job.spec.workers) == ("Succeeded", 2)
        assert sorted(p.name for p in out.iterdir()) == ["attempt-1-rank-0.json", "attempt-1-rank-1.json"]
        workload = services.queue.get().get_workload(f"job/{job_id}")
        assert workload is not None and [p.count for p in workload.workload.pod_sets] == [2]
    finally:
        services.close()
        close_pools()
