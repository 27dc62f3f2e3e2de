"""A study whose training-job trials run as their own Jobs (decision 0745), against the in-memory API EMULATOR
(tests/k8s/emulator.py: a real HTTP server the real lightkube client talks to, validating every object created).

The real `capstan.tuning.controller.StudyController` runs the study with the ``kubernetes`` backend as the
controller pod of `capstan.k8s.render_studies` does: its trials' jobs go through the real job runner and gang
launcher, and it listens for reports on TCP with a key it did not generate (``CAPSTAN_TRIAL_LISTEN``,
``CAPSTAN_TRIAL_KEY``). The test plays the kubelet: for each trial Job it runs the pod's own command (the user's
script, with the container's environment and the Secret's key as ``envFrom`` would give it) as a subprocess,
which reports to the controller over TCP, then marks the pod and the Job done. A second flow runs ``capstan tune
-f`` itself with the controller pod's environment, kills it while trials run, and runs it again. With
``CAPSTAN_TEST_KUBECONFIG`` the flows skip on a real cluster (they need the emulator to play the kubelet).
"""

from __future__ import annotations

import dataclasses
import secrets
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from emulator import ApiEmulator, Cluster, ended_pod, job_done, running_pod

from capstan.k8s.client import KubeApi, Listing, Propagation, Ref, WatchEvent, connect, ref_of
from capstan.k8s.kueue_admission import KueueAdmission
from capstan.k8s.pods import restricted_violations
from capstan.k8s.render_studies import STUDY_LABEL, TRIAL_LABEL
from capstan.k8s.render_study_trials import controller_rules
from capstan.k8s.training_launcher import KubeTrainingOptions, kube_gang_launcher
from capstan.services import Services
from capstan.settings import Settings
from capstan.training.runner import JobRunner
from capstan.tuning.controller import StudyController
from capstan.tuning.ports import StudyResult
from capstan.tuning.spec import StudySpec, parse_study_spec
from helpers.server import capstan_command, clean_env

IMAGE = "registry.example/digits:1"
CONTAINER = "trainer"
SECRET = "digits-trial-key"
SCRIPT = '''
import sys
import capstan
lr = float(sys.argv[sys.argv.index("--lr") + 1])
for step in range(3):
    capstan.report(round(1.0 - abs(lr - 0.05) - 0.01 * (2 - step), 6), step=step)
print(f"trained with lr={lr}")
'''


def _expected(lr: float) -> float:
    return round(1.0 - abs(lr - 0.05), 6)


class RecordingApi:
    """A `KubeApi` that records (API group, resource, verb) of every call, to hold them against the Role."""

    def __init__(self, api: KubeApi) -> None:
        self._api = api
        self.namespace = api.namespace
        self.calls: set[tuple[str, str, str]] = set()

    def _note(self, ref: Ref, verb: str) -> None:
        self.calls.add((ref.group, ref.plural, verb))

    def create(self, doc: Mapping[str, Any]) -> dict[str, Any]:
        self._note(ref_of(doc), "create")
        return self._api.create(doc)

    def apply(self, doc: Mapping[str, Any], *, force: bool = False) -> dict[str, Any]:
        self._note(ref_of(doc), "patch")
        return self._api.apply(doc, force=force)

    def get(self, ref: Ref, name: str, namespace: str | None = None) -> dict[str, Any]:
        self._note(ref, "get")
        return self._api.get(ref, name, namespace)

    def list(self, ref: Ref, *, namespace: str | None = None, labels: Mapping[str, str] | None = None) -> Listing:
        self._note(ref, "list")
        return self._api.list(ref, namespace=namespace, labels=labels)

    def watch(self, ref: Ref, resource_version: str, *, namespace: str | None = None,
              labels: Mapping[str, str] | None = None, timeout_s: int = 60) -> Iterator[WatchEvent]:
        self._note(ref, "watch")
        return self._api.watch(ref, resource_version, namespace=namespace, labels=labels, timeout_s=timeout_s)

    def merge_patch(self, ref: Ref, name: str, patch: Mapping[str, Any],
                    namespace: str | None = None) -> dict[str, Any]:
        self._note(ref, "patch")
        return self._api.merge_patch(ref, name, patch, namespace)

    def delete(self, ref: Ref, name: str, namespace: str | None = None,
               propagation: Propagation = "Background") -> None:
        self._note(ref, "delete")
        self._api.delete(ref, name, namespace, propagation)

    def logs(self, pod: str, *, container: str | None = None, namespace: str | None = None,
             follow: bool = False) -> Iterator[bytes]:
        self.calls.add(("", "pods/log", "get"))
        return self._api.logs(pod, container=container, namespace=namespace, follow=follow)

    def close(self) -> None:
        self._api.close()


class Kubelet:
    """Plays the Job controller and the kubelet for every trial Job: one pod per Job (one worker), running the
    container's command as a subprocess; records each Job as created and the most Jobs that existed at once."""

    def __init__(self, emu: ApiEmulator, code: Path, settings: Settings, key: str, *, run: bool = True) -> None:
        self.emu, self.code, self.settings, self.key = emu, code, settings, key
        self.run = run  # False: the Jobs are seen but their pods never start (a trial stays running)
        self.jobs: dict[str, dict[str, Any]] = {}
        self.most_at_once = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="test-kubelet")

    def __enter__(self) -> Kubelet:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _loop(self) -> None:
        while not self._stop.is_set():
            current = self.emu.objects("jobs")
            self.most_at_once = max(self.most_at_once, len(current))
            for job in current:
                name = job["metadata"]["name"]
                if name not in self.jobs:
                    self.jobs[name] = job
                    if self.run:
                        threading.Thread(target=self._run, args=(job,), daemon=True).start()
            time.sleep(0.05)

    def _run(self, job: dict[str, Any]) -> None:
        name = job["metadata"]["name"]
        pod = f"{name}-0-abcde"
        try:
            self.emu.add_pod(name, pod, running_pod(CONTAINER))
            container = job["spec"]["template"]["spec"]["containers"][0]
            env = {e["name"]: e.get("value", "0") for e in container["env"]}  # valueFrom: the completion index
            secrets_from = [s["secretRef"]["name"] for s in container.get("envFrom", [])]
            if SECRET in secrets_from:
                env["CAPSTAN_TRIAL_KEY"] = self.key  # what envFrom gives the pod from the Secret
            command = [sys.executable if container["command"][0] == "python" else container["command"][0],
                       *container["command"][1:]]
            done = subprocess.run(command, cwd=self.code, text=True, capture_output=True, timeout=60,
                                  env={"PATH": "/usr/bin:/bin", **self.settings.store_environment(), **env})
            self.emu.append_log(pod, done.stdout + done.stderr)
            self.emu.set_status("pods", pod, ended_pod(CONTAINER, code=done.returncode,
                                                       reason="Completed" if done.returncode == 0 else "Error"))
            if done.returncode == 0:
                self.emu.set_status("jobs", name, job_done())
            else:
                self.failures.append(done.stdout + done.stderr)
        except Exception as exc:  # noqa: BLE001  # recorded and asserted on: a kubelet error must fail the test
            self.failures.append(repr(exc))


def _spec(code: Path, **fields: Any) -> StudySpec:
    data: dict[str, Any] = {
        "name": "digits", "objective": {"metric": "accuracy"}, "max_trials": 4, "parallel_trials": 2,
        "algorithm": {"name": "random"}, "seed": 7,
        "parameters": {"lr": {"type": "float", "min": 0.001, "max": 0.1}},
        "trial": {"job": {"name": "trial", "entry": "train.py", "image": IMAGE, "workers": 1,
                          "args": ["--lr", "${params.lr}"], "grace_s": 1.0, "restart_backoff_s": 0.05}},
        "working_dir": str(code)}
    data.update(fields)
    return parse_study_spec(data)


def _run(controller: StudyController, timeout_s: float = 120.0) -> StudyResult:
    results: list[StudyResult] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            results.append(controller.run())
        except BaseException as exc:  # noqa: BLE001  # handed to the test thread below
            errors.append(exc)

    thread = threading.Thread(target=target, daemon=True, name="test-study")
    thread.start()
    thread.join(timeout_s)
    assert not thread.is_alive(), "the study did not finish"
    if errors:
        raise errors[0]
    return results[0]


def test_each_trial_is_a_job_of_its_own_and_reports_over_tcp(cluster: Cluster, tmp_path: Path) -> None:
    emu = cluster.kubelet()
    key = secrets.token_hex(32)
    settings = dataclasses.replace(Settings.for_home(tmp_path / "home"), backend="kubernetes",
                                   kube_admission="none", kube_env_from=(SECRET,), trial_listen="127.0.0.1:0",
                                   trial_key=key, kube_datasets=("digits-data:/data",))
    services = Services.open(settings)
    assert isinstance(services.workload_admission.get(), KueueAdmission)  # "none": granted at once, no Kueue
    api = RecordingApi(connect(kubeconfig=str(cluster.kubeconfig)))
    code = tmp_path / "code"
    code.mkdir()
    (code / "train.py").write_text(textwrap.dedent(SCRIPT), encoding="utf-8")
    options = KubeTrainingOptions(watch_timeout_s=5, log_wait_s=2.0, stuck_after_s=30.0, delete_wait_s=5.0,
                                  ship_code=False)

    def jobs() -> JobRunner:
        return JobRunner(services.jobs, tracking=services.tracking, events=services.events,
                         admission=services.workload_admission.get, settings=settings, clock=services.clock,
                         poll_s=0.05, launcher=kube_gang_launcher(settings=settings, events=services.events,
                                                                  api=api, options=options))

    controller = StudyController(_spec(code), store=services.studies, admission=services.admission.get,
                                 tracking=_tracking(settings, services), settings=settings, jobs=jobs)
    try:
        with Kubelet(emu, code, settings, key) as kubelet:
            result = _run(controller)
            _wait(lambda: not emu.objects("jobs") and not emu.objects("services"))
        assert kubelet.failures == []
        # The study: four trials, each COMPLETE with the value its script reported last, the best one picked.
        assert result.study.state == "Succeeded", (result.study.reason, result.study.message)
        trials = sorted(result.trials, key=lambda t: t.number)
        assert [t.state for t in trials] == ["COMPLETE"] * 4, [(t.state, t.message) for t in trials]
        for trial in trials:
            assert trial.value == pytest.approx(_expected(float(trial.params["lr"])))
            assert [step for step, _ in trial.intermediate] == [0, 1, 2]
            assert trial.workload is not None and trial.workload.startswith("job/")
        best = max(trials, key=lambda t: t.value or 0.0)
        assert result.best_trial is not None and result.best_trial.number == best.number
        parent = services.tracking.get_run(str(result.study.parent_run_id))
        assert parent.data.tags["capstan.study.best_trial"] == str(best.number)
        # One Job per trial (never more than parallel_trials at once), labelled with the study and trial, with a
        # valid restricted pod that reaches the controller over TCP and gets the key from the Secret only.
        assert len(kubelet.jobs) == 4 and kubelet.most_at_once <= 2
        numbers = set()
        for job in kubelet.jobs.values():
            labels = job["metadata"]["labels"]
            assert labels[STUDY_LABEL] == "digits"
            numbers.add(int(labels[TRIAL_LABEL]))
            assert job["spec"]["template"]["metadata"]["labels"][TRIAL_LABEL] == labels[TRIAL_LABEL]
            assert "kueue.x-k8s.io/queue-name" not in labels and not job["spec"].get("suspend")
            pod = job["spec"]["template"]["spec"]
            assert restricted_violations(pod) == []
            container = pod["containers"][0]
            env = {e["name"]: e.get("value") for e in container["env"]}
            assert env["CAPSTAN_TRIAL_ADDRESS"].startswith("tcp://127.0.0.1:")
            assert "CAPSTAN_TRIAL_KEY" not in env and key not in str(job)
            assert container["envFrom"] == [{"secretRef": {"name": SECRET}}]
            # the study's datasets (CAPSTAN_KUBE_DATASETS in the controller pod), read-only
            data = [v["name"] for v in pod["volumes"]
                    if v.get("persistentVolumeClaim", {}).get("claimName") == "digits-data"]
            assert len(data) == 1 and {"name": data[0], "mountPath": "/data", "readOnly": True} in \
                container["volumeMounts"]
        assert numbers == {0, 1, 2, 3}
        # Every call the controller made is granted by the rendered Role (the nodes are cluster-wide: the
        # preflight skips them when a namespaced Role refuses).
        granted = {(group, resource, verb) for rule in controller_rules(kueue=False) for group in rule["apiGroups"]
                   for resource in rule["resources"] for verb in rule["verbs"]}
        assert api.calls - {("", "nodes", "list")} <= granted, sorted(api.calls - granted)
        assert ("batch", "jobs", "create") in api.calls and ("", "pods/log", "get") in api.calls
    finally:
        api.close()
        services.close()


def test_capstan_tune_in_the_pod_resumes_and_deletes_the_interrupted_trials_jobs(cluster: Cluster,
                                                                                 tmp_path: Path) -> None:
    """``capstan tune -f`` as the controller pod runs it (the environment `render_study` gives it, the cluster of
    the kubeconfig): killed while two trial Jobs exist, a second controller deletes them, re-runs both trials as new
    Jobs and finishes the study."""
    emu = cluster.kubelet()
    key = secrets.token_hex(32)
    home, code = tmp_path / "home", tmp_path / "code"
    code.mkdir()
    (code / "train.py").write_text(textwrap.dedent(SCRIPT), encoding="utf-8")
    data = _spec(code, max_trials=3).to_dict()
    data.pop("working_dir")  # the study file's folder
    (code / "study.yaml").write_text(yaml.safe_dump({"study": data}), encoding="utf-8")
    env = clean_env(home, {"KUBECONFIG": str(cluster.kubeconfig), "CAPSTAN_BACKEND": "kubernetes",
                           "CAPSTAN_KUBE_ADMISSION": "none", "CAPSTAN_KUBE_ENV_FROM": SECRET,
                           "CAPSTAN_TRIAL_LISTEN": "127.0.0.1:0", "CAPSTAN_TRIAL_KEY": key})
    command = [*capstan_command(), "tune", "-f", str(code / "study.yaml")]
    settings = Settings.for_home(home)
    with Kubelet(emu, code, settings, key, run=False) as kubelet:
        first = subprocess.Popen(command, cwd=code, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 text=True)
        try:
            _wait(lambda: len(kubelet.jobs) == 2 or first.poll() is not None, timeout_s=60)
        finally:
            first.kill()  # SIGKILL: the controller dies with both trials running
            output = first.communicate(timeout=30)[0]
        assert len(kubelet.jobs) == 2, output
        orphans = set(kubelet.jobs)
        assert {n for n in orphans if emu.get("jobs", n) is not None} == orphans  # left behind by the dead one
        kubelet.run = True  # the next Jobs' pods run
        done = subprocess.run(command, cwd=code, env=env, capture_output=True, text=True, timeout=240)
        assert done.returncode == 0, done.stdout + done.stderr
    assert kubelet.failures == []
    assert all(("jobs", n, "Foreground") in emu.deletions for n in orphans)  # stopped, never run
    assert len(kubelet.jobs) == 5  # two orphans, then the two re-runs and the third trial
    services = Services.open(settings)
    try:
        trials = sorted(services.studies.trials("default", "digits"), key=lambda t: t.number)
        assert [(t.number, t.state) for t in trials] == [(0, "COMPLETE"), (1, "COMPLETE"), (2, "COMPLETE")]
        assert [t.attempts for t in trials] == [2, 2, 1]
        for trial in trials:
            assert trial.value == pytest.approx(_expected(float(trial.params["lr"])))
    finally:
        services.close()


def test_a_controller_listening_on_tcp_needs_the_key_from_its_environment(tmp_path: Path) -> None:
    settings = dataclasses.replace(Settings.for_home(tmp_path / "home"), backend="kubernetes",
                                   kube_admission="none", trial_listen="127.0.0.1:0")
    services = Services.open(settings)
    code = tmp_path / "code"
    code.mkdir()
    (code / "train.py").write_text("print('accuracy=1')\n", encoding="utf-8")
    controller = StudyController(_spec(code), store=services.studies, admission=services.admission.get,
                                 tracking=_tracking(settings, services), settings=settings,
                                 jobs=lambda: pytest.fail("no trial may start"))
    try:
        with pytest.raises(Exception, match="CAPSTAN_TRIAL_KEY: a controller listening on TCP"):
            controller.run()
        assert services.studies.get("default", "digits") is None  # refused before the study was created
    finally:
        services.close()


def _tracking(settings: Settings, services: Services) -> Any:
    from capstan.sdk.backends_local import LocalBackend

    return LocalBackend(settings, services=services)


def _wait(check: Any, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)
