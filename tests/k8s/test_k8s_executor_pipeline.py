"""A whole pipeline run on the ``kubernetes`` backend, end to end, against the in-memory API EMULATOR
(tests/k8s/emulator.py) instead of a cluster: `capstan.services` picks the Kubernetes executor from the settings,
the orchestrator sends each attempt to it, it creates the Jobs in the emulator, and this test plays the kubelet by
running each Job's container command (the real ``capstan worker run-step``, a subprocess sharing the stores as pods
share the server's) with the container's environment, then writing the pod's and the Job's status and the
container's output as the pod log. Skipped on a real cluster (``CAPSTAN_TEST_KUBECONFIG``): there the pods would
need an image with this checkout in it.
"""

from __future__ import annotations

import dataclasses
import subprocess
import textwrap
import threading
from pathlib import Path

import pytest
from emulator import ApiEmulator, Cluster, ended_pod, job_done, running_pod

from capstan.pipelines.loader import load_pipeline
from capstan.services import Services
from capstan.settings import Settings
from helpers.pipelines import SQUARE_STEPS
from helpers.server import capstan_command

PIPELINE = SQUARE_STEPS + '''
@cp.pipeline
def squares(n: int = 6):
    return total(square.map(cp.chunks(2), xs=make(n)))
'''


class Kubelet:
    """Runs every admitted Job of the emulator once, as its pod would, until stopped."""

    def __init__(self, emu: ApiEmulator, settings: Settings, workdir: Path) -> None:
        self._emu = emu
        self._env = settings.store_environment()
        self._workdir = workdir
        self._done: set[str] = set()
        self._stop = threading.Event()
        self.errors: list[str] = []
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> Kubelet:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _loop(self) -> None:
        while not self._stop.wait(0.05):
            for job in self._emu.objects("jobs"):
                name = job["metadata"]["name"]
                if name in self._done or job["spec"].get("suspend") is not False:
                    continue
                self._done.add(name)
                try:
                    self._run(name, job)
                except Exception as exc:  # noqa: BLE001  # reported by the test
                    self.errors.append(f"{name}: {exc!r}")

    def _run(self, name: str, job: dict[str, object]) -> None:
        spec = job["spec"]["template"]["spec"]  # type: ignore[index]
        container = spec["containers"][0]
        pod = f"{name}-pod"
        self._emu.add_pod(name, pod, running_pod())
        env = {**self._env, **{e["name"]: e["value"] for e in container.get("env", []) if "value" in e}}
        command = [*capstan_command(), *container["command"][1:]]
        done = subprocess.run(command, cwd=self._workdir, env={"PATH": "/usr/bin:/bin", **env}, text=True,
                              capture_output=True, timeout=120)
        self._emu.append_log(pod, done.stdout)
        if done.returncode != 0:
            self.errors.append(f"{name}: exit {done.returncode}: {done.stderr[-2000:]}")
        self._emu.set_status("pods", pod, ended_pod(code=done.returncode, reason="Completed" if done.returncode == 0
                                                    else "Error"))
        self._emu.set_status("jobs", name, job_done(failed=None if done.returncode == 0 else "BackoffLimitExceeded"))


def test_a_pipeline_runs_end_to_end_on_the_kubernetes_backend(cluster: Cluster, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    emu = cluster.kubelet()
    source = tmp_path / "src"
    source.mkdir()
    (source / "squares.py").write_text(textwrap.dedent(PIPELINE))
    workdir = tmp_path / "pod"
    workdir.mkdir()
    monkeypatch.setenv("KUBECONFIG", str(cluster.kubeconfig))
    settings = dataclasses.replace(Settings.for_home(tmp_path / "home"), backend="kubernetes")
    services = Services.open(settings)
    runner = services.pipelines.get()
    pipe, canonical = load_pipeline(str(source / "squares.py"))
    with Kubelet(emu, settings, workdir) as kubelet:
        result = runner.run(pipe, {"n": 6}, ref=canonical)
    assert kubelet.errors == []
    assert result.ok, [(s.step_id, s.state, s.reason, s.message) for s in result.steps]
    run_id = result.run_id
    assert result.output("total") == sum(i * i for i in range(6))
    jobs = [d[1] for d in emu.deletions if d[0] == "jobs"]
    assert len(jobs) == 4  # make, square[0], square[1], total: each collected once finished
    attempt = runner.store.attempts(run_id, "square[1]")[-1]
    assert attempt.log_path is not None
    assert services.artifacts.read_bytes(attempt.log_path) == b"chunk 1 of 2\n"
    reasons = [e.reason for e in services.events.list("step", f"{run_id}/make")]
    for expected in ("JobCreated", "Admitted", "StepPodStarted", "StepPodSucceeded", "Succeeded"):
        assert expected in reasons, reasons


def test_the_backend_and_the_cluster_come_from_the_settings() -> None:
    from capstan.errors import InvalidParameterValue

    settings = Settings.from_env({"CAPSTAN_HOME": "/tmp/capstan-k8s-settings", "CAPSTAN_BACKEND": "Kubernetes",
                                  "CAPSTAN_KUBE_CONTEXT": "prod", "CAPSTAN_KUBE_NAMESPACE": "team-a"})
    assert (settings.backend, settings.kube_context, settings.kube_namespace) == ("kubernetes", "prod", "team-a")
    assert Settings.from_env({"CAPSTAN_HOME": "/tmp/capstan-k8s-settings"}).backend == "local"
    with pytest.raises(InvalidParameterValue, match="CAPSTAN_BACKEND: 'slurm' is not one of local, kubernetes"):
        Settings.from_env({"CAPSTAN_HOME": "/tmp/capstan-k8s-settings", "CAPSTAN_BACKEND": "slurm"})
