"""A tracking run started inside a pipeline step is tagged with that step (the lineage the web UI shows)."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline_helpers import capstan, write_pipeline

from capstan.sdk.client import Client
from capstan.sdk.fluent import PIPELINE_RUN_TAG, PIPELINE_STEP_TAG
from capstan.settings import Settings

SOURCE = '''
import capstan as cp

@cp.step
def train() -> str:
    with cp.start_run(experiment="lineage") as run:
        cp.log_metric("acc", 0.9)
        return run.info.run_id

@cp.step
def again(first: str) -> str:
    with cp.start_run(experiment="lineage") as run:
        return run.info.run_id

@cp.pipeline
def flow() -> str:
    return again(train())
'''


def test_runs_started_in_steps_name_their_step(tmp_path: Path) -> None:
    settings = Settings.for_home(tmp_path / "home")
    write_pipeline(tmp_path, "flow", SOURCE)
    done = capstan(settings, "run", "flow.py", "--json", cwd=tmp_path, check=True)
    pipeline_run = json.loads(done.stdout)["run"]["id"]
    with Client(settings) as client:
        runs = client.search_runs([client.get_experiment_by_name("lineage").experiment_id])
    steps = sorted(run.data.tags[PIPELINE_STEP_TAG] for run in runs)
    assert steps == ["again", "train"]  # both attempts ran in the same warm worker, each with its own step
    assert {run.data.tags[PIPELINE_RUN_TAG] for run in runs} == {pipeline_run}
