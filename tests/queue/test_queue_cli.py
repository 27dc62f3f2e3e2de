"""The queue CLI against a real SQLite metadata store in a temporary CAPSTAN_HOME."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]


def capstan(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CAPSTAN_HOME": str(home)}
    env.pop("CAPSTAN_URL", None)
    env.pop("CAPSTAN_DB_URL", None)
    entry = "import sys; from capstan.cli.main import main; main(sys.argv[1:])"
    return subprocess.run([sys.executable, "-c", entry, *args], capture_output=True, text=True, env=env,
                          timeout=120, cwd=ROOT)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("capstan-home")
    r = capstan(home, "queue", "apply", "-f", str(ROOT / "examples" / "queues" / "teams.yaml"))
    assert r.returncode == 0, r.stderr
    assert "3 ClusterQueues" in r.stdout
    return home


def test_submit_status_why_usage(home: Path) -> None:
    r = capstan(home, "queue", "submit", "big", "-q", "vision", "--gpu", "6", "--user", "ann")
    assert r.returncode == 0, r.stderr
    assert "big: Admitted" in r.stdout
    r = capstan(home, "queue", "submit", "more", "-q", "vision", "--gpu", "6", "--count", "3")
    assert r.returncode != 0 and "can never be admitted" in r.stderr and "Traceback" not in r.stderr
    r = capstan(home, "queue", "submit", "wait", "-q", "serving", "--gpu", "4")
    assert "wait: Admitted" in r.stdout
    r = capstan(home, "queue", "submit", "blocked", "-q", "serving", "--gpu", "1")
    assert "blocked: Pending (WaitingForQuota)" in r.stdout
    r = capstan(home, "why", "blocked")
    assert r.returncode == 0, r.stderr
    assert "Reason:    WaitingForQuota" in r.stdout
    assert "needs 1 a100 GPUs; ClusterQueue production uses 4/4 nominal" in r.stdout
    r = capstan(home, "why", "blocked", "--json")
    assert json.loads(r.stdout)["reason"] == "WaitingForQuota"
    r = capstan(home, "queue", "status")
    assert r.returncode == 0 and "production" in r.stdout and "blocked" in r.stdout
    status = json.loads(capstan(home, "queue", "status", "--json").stdout)
    team_b = next(s for s in status if s["cluster_queue"] == "team-b")
    assert team_b["admitted"] == 1 and team_b["quota"][2]["used"] == 6
    r = capstan(home, "queue", "finish", "big")
    assert r.returncode == 0, r.stderr
    r = capstan(home, "usage", "--by", "user", "--since", "1d", "--price", "gpu=2.5", "--json")
    rows = json.loads(r.stdout)
    assert rows[0]["key"] == "ann" and rows[0]["gpu_hours"] >= 0
    r = capstan(home, "usage", "--by", "user", "--price", "gpu=two")
    assert r.returncode != 0 and r.stderr.startswith("error: --price: gpu: 'two' is not a number")


def test_errors_are_one_line(home: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("clusterQueues:\n  - name: x\n    cohort: nowhere\n    resourceGroups: []\n")
    r = capstan(home, "queue", "apply", "-f", str(bad))
    assert r.returncode != 0
    assert r.stderr.strip() == ("error: clusterQueues[0].cohort: cohort 'nowhere' does not exist "
                                "(declared: none)")
    r = capstan(home, "why", "ghost")
    assert r.returncode != 0 and r.stderr.strip() == "error: workload 'ghost' does not exist"
    for args in (("queue", "--help"), ("why", "--help"), ("usage", "--help"), ("simulate", "--help"),
                 ("queue", "submit", "--help")):
        assert capstan(home, *args).returncode == 0
