"""A step's own SDK calls use the run's stores: with settings built in code (no ``CAPSTAN_HOME`` in the
environment), warm worker processes and command steps still get the run's ``CAPSTAN_*`` store variables, not the
user's ``~/.capstan``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pipeline_helpers import write_pipeline

from capstan.pipelines.loader import load_pipeline
from capstan.pipelines.runner import PipelineRunner
from capstan.settings import Settings

FLOW = '''
import json
import os
import sys

import capstan.pipelines as cp


@cp.step
def where() -> str:
    return os.environ.get("CAPSTAN_HOME", "")


echo_home = cp.command_step(
    [sys.executable, "-c",
     "import json, os; json.dump(os.environ.get('CAPSTAN_HOME', ''), open(os.environ['CAPSTAN_OUTPUT'], 'w'))"],
    name="echo_home")


@cp.pipeline
def homes():
    return {"process": where(), "command": echo_home()}
'''


def test_process_and_command_steps_see_the_runs_home(runner: PipelineRunner, settings: Settings, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CAPSTAN_HOME", raising=False)
    assert "CAPSTAN_HOME" not in os.environ
    flow = write_pipeline(tmp_path / "code", "flow", FLOW)
    pipe, ref = load_pipeline(f"{flow}:homes")
    result = runner.run(pipe, {}, ref=ref)
    assert result.ok, result.run.message
    assert result.value() == {"process": str(settings.home), "command": str(settings.home)}
