"""Deployment replicas' peak memory, measured by the real control plane on real ``capstan serve`` processes: the
running replica's row carries its ``VmHWM`` peak, its exit event carries the peak of the process that ended, and the
deployment's timeline (``capstan describe``) and ``capstan deployments status`` show them against the per-replica
memory request."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from capstan.resources.memory import vm_hwm
from capstan.sdk.client import Client
from capstan.services import Services
from capstan.serving.controller import DeploymentController
from capstan.serving.replicas import SubprocessLauncher, SubprocessReplica
from capstan.serving.spec import parse_spec
from capstan.settings import Settings
from capstan.troubleshoot.sources import Scope

pytestmark = pytest.mark.slow
MIB = 1 << 20


def wait_for(what: str, check: Callable[[], Any], timeout: float = 90) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_a_replica_process_peak_is_its_vmhwm_while_it_runs_and_ru_maxrss_at_exit() -> None:
    # A child that touches 64 MiB then waits: its sampled VmHWM and its reaped peak both see the 64 MiB.
    code = "import time; b = bytearray(64 << 20); b[::4096] = b'x' * len(b[::4096]); print('ready', flush=True); " \
           "time.sleep(60)"
    replica = SubprocessReplica([sys.executable, "-c", code], dict(os.environ))
    wait_for("the child to allocate", lambda: "ready" in replica.output_tail())
    sampled = replica.sample_peak()
    assert sampled is not None and sampled >= 64 * MIB, sampled
    assert replica.exit_code() is None
    replica.stop(grace_s=5)
    assert replica.wait(30) == -signal.SIGTERM
    assert (replica.sample_peak() or 0) >= sampled  # the exit does not lose the peak
    assert vm_hwm(replica.pid or 0) is None  # reaped: nothing left to read


def test_deployment_replicas_record_peaks_shown_by_the_timeline_and_status(tmp_path: Path) -> None:
    home = tmp_path / "home"
    settings = Settings.for_home(home)
    x, y = load_iris(return_X_y=True)
    with Client(settings) as client:
        run = client.create_run(client.create_experiment("peaks"))
        client.log_model(run.info.run_id, LogisticRegression(max_iter=300).fit(x, y), "model",
                         registered_model_name="iris")
        client.set_terminated(run.info.run_id)
    services = Services.open(settings)
    controller = DeploymentController(services.deployments, events=services.events,
                                      launcher=SubprocessLauncher(settings), admission=services.admission.get,
                                      interval_s=0.1, drain_s=1.0)
    controller.start()
    try:
        services.deployment_manager().apply(parse_spec({"name": "iris", "model": "models:/iris/1",
                                                        "resources": {"memory": "4Gi"}}), "default")

        def ready_with_peak() -> Any:
            return next((r for r in services.deployments.replicas("default", "iris")
                         if r.state == "ready" and r.peak_memory), None)

        try:
            replica = wait_for("a ready replica with a peak", ready_with_peak, timeout=40)
        except AssertionError:
            raise AssertionError(services.deployments.replicas("default", "iris")) from None
        assert 10 * MIB < replica.peak_memory < 4 << 30, replica.peak_memory
        assert replica.pid is not None and replica.peak_memory <= (vm_hwm(replica.pid) or 0)
        status = subprocess.run([sys.executable, "-m", "capstan", "deployments", "status", "iris"], text=True,
                                capture_output=True, env={**os.environ, "CAPSTAN_HOME": str(home)}, timeout=60)
        assert status.returncode == 0, status.stderr
        assert "PEAK MEMORY" in status.stdout and "of 4Gi (" in status.stdout, status.stdout

        os.kill(replica.pid, signal.SIGKILL)
        crashed = wait_for("the crash event", lambda: [e for e in services.events.list("deployment", "default/iris")
                                                       if e.reason == "ReplicaCrashed"])[0]
        assert isinstance(crashed.data["peak_memory"], int) and crashed.data["peak_memory"] >= replica.peak_memory
        assert "peak memory" in crashed.message
        timeline = services.timelines().describe("deployment/iris", Scope(project="default", tail=40))
    finally:
        controller.stop()
        services.close()
    ended = [p for p in timeline.peaks if "ReplicaCrashed" in p.source]
    assert ended and ended[0].used == crashed.data["peak_memory"] and ended[0].limit == 4 << 30, timeline.peaks
    assert ended[0].text().startswith("memory: ") and " of 4Gi" in ended[0].text()
