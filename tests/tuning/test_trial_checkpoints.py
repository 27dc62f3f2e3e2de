"""A study's script trial runs inside its queue workload: `capstan.checkpoint.save` in the trial reports each save
to that workload (``CAPSTAN_WORKLOAD_ID`` from the trial's lease), through a real ``capstan tune``."""

from __future__ import annotations

import subprocess
from pathlib import Path

from capstan.services import Services
from capstan.settings import Settings
from helpers.server import capstan_command, clean_env

SCRIPT = """
import os, capstan, capstan.checkpoint
print("workload", os.environ.get("CAPSTAN_WORKLOAD_ID"))
for step in range(2):
    assert capstan.checkpoint.save({"step": step}, step)
print("score=1")
"""

STUDY = """
name: ckpt
objective: {metric: score, goal: maximize}
parameters:
  x: {type: float, min: 0.5, max: 1.5}
max_trials: 1
trial:
  script: train.py
"""


def test_a_script_trial_reports_its_checkpoints_to_its_workload(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text(SCRIPT)
    (tmp_path / "study.yaml").write_text(STUDY)
    home = tmp_path / "home"
    done = subprocess.run([*capstan_command(), "tune", "-f", "study.yaml"], cwd=tmp_path, env=clean_env(home),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    log = (home / "studies" / "default" / "ckpt" / "trial-0.log").read_text()
    assert "workload study/ckpt/trial-0" in log and "not told" not in log, log
    services = Services.open(Settings.for_home(home))
    try:
        record = services.queue.get().get_workload("study/ckpt/trial-0")
    finally:
        services.close()
    assert record is not None and record.state == "Finished"
    assert record.checkpoint_step == 1 and record.checkpointed_at is not None
