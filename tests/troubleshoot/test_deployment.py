"""A deployment whose model cannot be loaded, run by the real control plane (``capstan serve`` replica processes):
its timeline shows the crash loop with the replica's own output, and the diagnosis names the loader's error."""

from __future__ import annotations

import time
from pathlib import Path

from troubleshoot_helpers import describe

from capstan.sdk.client import Client
from capstan.services import Services
from capstan.serving.controller import DeploymentController
from capstan.serving.replicas import SubprocessLauncher
from capstan.serving.spec import parse_spec
from capstan.settings import Settings
from capstan.troubleshoot.classify import Cause


def test_a_model_that_fails_to_load_is_a_crash_loop_with_the_loaders_error(tmp_path: Path) -> None:
    settings = Settings.for_home(tmp_path / "home")
    with Client(settings) as client:
        run = client.create_run(client.create_experiment("serving"))
        client.set_terminated(run.info.run_id)
    services = Services.open(settings)
    controller = DeploymentController(services.deployments, events=services.events,
                                      launcher=SubprocessLauncher(settings), admission=services.admission.get,
                                      interval_s=0.1, drain_s=1.0)
    controller.start()
    try:
        spec = parse_spec({"name": "broken", "model": f"runs:/{run.info.run_id}/no-such-model"})
        services.deployment_manager().apply(spec, "default")
        deadline = time.monotonic() + 90
        while not any(e.reason == "ModelLoadFailed" for e in services.events.list("deployment", "default/broken")):
            assert time.monotonic() < deadline, "the replica never failed"
            time.sleep(0.1)
        found = describe(services, "deploy/broken")
    finally:
        controller.stop()
        services.close()
    assert found.kind == "deployment" and found.reason == "ModelLoadFailed"
    assert found.state == "failed" or found.state.startswith(("starting (crash loop", "pending (crash loop"))
    assert found.diagnosis.cause is Cause.NON_ZERO_EXIT
    assert "no-such-model" in found.diagnosis.summary
    assert found.log_tail and found.log_source.startswith("output of replica ")
    reasons = [item.reason for item in found.items]
    assert reasons[0] == "Created" and "ModelLoadFailed" in reasons
    assert next(i for i in found.items if i.reason == "ModelLoadFailed").level == "error"
