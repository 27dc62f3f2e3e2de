"""Training jobs on the ``kubernetes`` backend get their code and their stores.

Code: with shipping on, each attempt uploads the job's folder as a code package and the pods run
``capstan worker run-code --code sha256:... -- python train.py``; the test plays the kubelet against the API
EMULATOR (tests/k8s/emulator.py) and runs each pod's command as a subprocess from an empty folder after the source
folder is gone, so the script can only come from the package. Stores: ``--env-from-secret`` /
``CAPSTAN_KUBE_ENV_FROM`` become the pods' ``envFrom``, in ``capstan train`` and ``capstan k8s render job``; every
rendering is validated strictly.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click
import pytest
import yaml
from click.testing import CliRunner
from emulator import Cluster, crds, ended_pod, job_done, open_cluster, running_pod

from capstan.cli import k8s_render, k8s_render_job
from capstan.errors import InvalidParameterValue
from capstan.k8s.client import connect
from capstan.k8s.crds import CrdSet, load_crds
from capstan.k8s.pods import ClaimMount, restricted_violations
from capstan.k8s.render_training import FORMATS, TrainingRenderOptions, render_training
from capstan.k8s.training_launcher import KubeGangLauncher, KubeTrainingOptions, attempt_job_name, kube_gang_launcher
from capstan.k8s.validate import check_documents, validate_documents
from capstan.pipelines.code_package import package_path, upload_package
from capstan.resources.local import LocalAdmission
from capstan.resources.machine import Capacity
from capstan.services import Services
from capstan.settings import Settings
from capstan.training.logs import read_logs
from capstan.training.runner import JobRunner
from capstan.training.spec import TrainingJobSpec, parse_job_spec
from helpers.server import capstan_command, clean_env

IMAGE = "registry.example/train:1"
CONTAINER = "trainer"
SECRET = "capstan-stores"
GIB = 2**30
SCRIPT = '''
import os
import helper
print(f"rank {os.environ['RANK']} runs in {os.path.basename(os.path.dirname(os.getcwd()))[:13]}: {helper.GREETING}")
'''


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """The emulator only: these flows play the kubelet."""
    yield from open_cluster("emulator", tmp_path)


def _spec(code: Path, **fields: object) -> TrainingJobSpec:
    data: dict[str, object] = {"name": "mnist", "entry": "train.py", "workers": 2, "working_dir": str(code),
                               "image": IMAGE, "restart_backoff_s": 0.05, "grace_s": 1.0}
    data.update(fields)
    return parse_job_spec(data)


def _wait(check: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def _pod_argv(container: dict[str, Any]) -> list[str]:
    """The container's command as this machine runs it: the test's ``capstan`` and interpreter."""
    command = list(container["command"])
    if command[0] == "capstan":
        command = [*capstan_command(), *command[1:]]
    return [sys.executable if part == "python" else part for part in command]


def _code_folder(root: Path) -> Path:
    code = root / "code"
    code.mkdir()
    (code / "train.py").write_text(textwrap.dedent(SCRIPT))
    (code / "helper.py").write_text('GREETING = "hello from the package"\n')
    return code


def test_shipped_code_runs_from_the_package_alone(cluster: Cluster, tmp_path: Path) -> None:
    emu = cluster.kubelet()
    settings = dataclasses.replace(Settings.for_home(tmp_path / "home"), backend="kubernetes")
    services = Services.open(settings, admission=LocalAdmission(Capacity(cpu=8, memory=16 * GIB)))
    api = connect(kubeconfig=str(cluster.kubeconfig))
    options = KubeTrainingOptions(watch_timeout_s=5, log_wait_s=2.0, delete_wait_s=5.0, ship_code=True,
                                  render=TrainingRenderOptions(env_from_secrets=(SECRET,)))
    launcher = KubeGangLauncher(lambda: api, home=settings.home, events=services.events, options=options,
                                artifacts=services.artifacts)
    runner = JobRunner(services.jobs, tracking=services.tracking, events=services.events,
                       admission=services.admission.get, settings=settings, clock=services.clock, poll_s=0.05,
                       launcher=launcher)
    code = _code_folder(tmp_path)
    done: list[Any] = []
    try:
        record = runner.submit(_spec(code), project="default", user="tester", hold=True)
        thread = threading.Thread(target=lambda: done.append(runner.run(record.id)), daemon=True)
        thread.start()
        name = attempt_job_name(record.id, 1, 2)
        job = emu.wait_for("jobs", name, timeout_s=20)
        shutil.rmtree(code)  # from here on the script exists only in the package
        container = job["spec"]["template"]["spec"]["containers"][0]
        ref = container["command"][4]
        assert container["command"] == ["capstan", "worker", "run-code", "--code", ref, "--", "python", "train.py"]
        assert services.artifacts.exists(package_path(ref.removeprefix("sha256:")))
        assert container["envFrom"] == [{"secretRef": {"name": SECRET}}]
        assert "workingDir" not in container
        clean = {k: v for k, v in job.items() if k != "status"}
        clean["metadata"] = {k: v for k, v in job["metadata"].items()
                             if k not in ("uid", "resourceVersion", "creationTimestamp", "generation",
                                          "managedFields")}
        assert check_documents([clean], crds=crds()).errors == []
        assert restricted_violations(job["spec"]["template"]["spec"]) == []
        empty = tmp_path / "empty"
        empty.mkdir()
        for index in range(2):
            pod = f"{name}-{index}-abcde"
            emu.add_pod(name, pod, running_pod(CONTAINER))
            env = {e["name"]: e.get("value", str(index)) for e in container["env"]}
            ran = subprocess.run(_pod_argv(container), cwd=empty, text=True, capture_output=True, timeout=120,
                                 env={"PATH": "/usr/bin:/bin", **settings.store_environment(), **env})
            assert ran.returncode == 0, ran.stderr
            emu.append_log(pod, ran.stdout + ran.stderr)
            emu.set_status("pods", pod, ended_pod(CONTAINER))
        emu.set_status("jobs", name, job_done())
        thread.join(60)
        assert done and done[-1].state == "Succeeded", done
        lines = [ln.text for ln in read_logs(settings.home, record.id, worker=1)]
        assert lines == ["rank 1 runs in capstan-code-: hello from the package"]
        created = next(e for e in services.events.list("job", record.id) if e.reason == "JobCreated")
        assert f"code package {ref}" in created.message
        assert list(empty.iterdir()) == []
    finally:
        api.close()
        services.close()


def test_shipping_checks_the_script_is_in_the_package(tmp_path: Path) -> None:
    services = Services.open(Settings.for_home(tmp_path / "home"))
    code = _code_folder(tmp_path)
    (code / ".hidden").mkdir()
    (code / ".hidden" / "train.py").write_text("print(1)\n")
    (tmp_path / "outside.py").write_text("print(1)\n")
    try:
        launcher = KubeGangLauncher(lambda: pytest.fail("no cluster is needed"), home=tmp_path, events=services.events,
                                    options=KubeTrainingOptions(ship_code=True), artifacts=services.artifacts)
        launcher.check(_spec(code, entry="./train.py"))
        job = launcher.render(_spec(code, entry=str(code / "train.py")), job_id="mnist-0a1b2c", attempt=1,
                              code="sha256:" + "0" * 64)[1]
        assert job["spec"]["template"]["spec"]["containers"][0]["command"][-2:] == ["python", "train.py"]
        for entry in (".hidden/train.py", "../outside.py"):
            with pytest.raises(InvalidParameterValue, match=rf"^job\.entry: script '{re.escape(entry)}' is not "
                                                            "among the files the code package"):
                launcher.check(_spec(code, entry=entry))
        launcher.check(_spec(code, entry="json.tool", entry_kind="module"))  # a module is found from the package
        with pytest.raises(InvalidParameterValue, match=r"^job\.image: .* that holds Capstan and the job's"):
            launcher.check(_spec(code, image=None))
        with pytest.raises(ValueError, match="artifact store"):
            KubeGangLauncher(lambda: pytest.fail("unused"), home=tmp_path, events=services.events,
                             options=KubeTrainingOptions(ship_code=True))
    finally:
        services.close()


def test_the_composition_root_ships_only_to_a_remote_artifact_store(tmp_path: Path) -> None:
    services = Services.open(Settings.for_home(tmp_path / "home"))
    try:
        local = Settings.for_home(tmp_path / "home", backend="kubernetes")
        remote = dataclasses.replace(local, artifacts="s3://bucket/capstan", kube_env_from=("stores", "s3-keys"))
        kwargs: dict[str, Any] = {"events": services.events, "artifacts": services.artifacts}
        assert kube_gang_launcher(settings=local, **kwargs).ship_code is False
        shipped = kube_gang_launcher(settings=remote, **kwargs)
        assert shipped.ship_code is True
        assert shipped.options.render.env_from_secrets == ("stores", "s3-keys")
        forced = kube_gang_launcher(settings=remote, options=KubeTrainingOptions(ship_code=False), **kwargs)
        assert forced.ship_code is False
        assert type(services.job_runner().launcher).__name__ == "LocalGangLauncher"
        kube = Services.open(local)
        try:
            launcher = kube.job_runner().launcher
            assert isinstance(launcher, KubeGangLauncher) and launcher.ship_code is False
        finally:
            kube.close()
    finally:
        services.close()
    read = Settings.from_env({"CAPSTAN_HOME": str(tmp_path), "CAPSTAN_KUBE_ENV_FROM": " stores, s3-keys ,"})
    assert read.kube_env_from == ("stores", "s3-keys")
    assert Settings.from_env({"CAPSTAN_HOME": str(tmp_path)}).kube_env_from == ()


def test_the_pods_mount_the_claims_of_capstan_kube_datasets(tmp_path: Path) -> None:
    services = Services.open(Settings.for_home(tmp_path / "home"))
    try:
        kwargs: dict[str, Any] = {"events": services.events, "artifacts": services.artifacts}
        base = Settings.for_home(tmp_path / "home", backend="kubernetes")
        mounted = kube_gang_launcher(settings=dataclasses.replace(
            base, kube_datasets=("digits:/data", "out:/results:rw")), **kwargs)
        assert mounted.options.render.claims == (ClaimMount("digits", "/data"),
                                                 ClaimMount("out", "/results", read_only=False))
        assert kube_gang_launcher(settings=base, **kwargs).options.render.claims == ()
        for bad, message in ((("digits",), "is not NAME:/mount/path"), (("a:/data", "b:/data/x"), "clashes"),
                             (("d:/tmp",), "clashes with the mount at /tmp")):
            with pytest.raises(InvalidParameterValue, match=f"^CAPSTAN_KUBE_DATASETS: .*{message}"):
                kube_gang_launcher(settings=dataclasses.replace(base, kube_datasets=bad), **kwargs)
    finally:
        services.close()
    read = Settings.from_env({"CAPSTAN_HOME": str(tmp_path), "CAPSTAN_KUBE_DATASETS": " digits:/data, out:/o:rw ,"})
    assert read.kube_datasets == ("digits:/data", "out:/o:rw")
    assert Settings.from_env({"CAPSTAN_HOME": str(tmp_path)}).kube_datasets == ()


# --- capstan worker run-code -----------------------------------------------------------------------------------------

@pytest.fixture
def stores(tmp_path: Path) -> Iterator[Services]:
    services = Services.open(Settings.for_home(tmp_path / "home"))
    yield services
    services.close()


def _run_code(stores: Services, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*capstan_command(), "worker", "run-code", *args], cwd=cwd, text=True,
                          capture_output=True, timeout=120, env=clean_env(stores.settings.home))


def test_run_code_execs_the_command_in_the_package(stores: Services, tmp_path: Path) -> None:
    code = tmp_path / "src"
    code.mkdir()
    (code / "data.txt").write_text("from the package\n")
    (code / "main.py").write_text(textwrap.dedent('''
        import os, signal, sys
        print(open("data.txt").read().strip())
        if sys.argv[1] == "term":
            os.kill(os.getpid(), signal.SIGTERM)
        sys.exit(int(sys.argv[1]))
    '''))
    ref = upload_package(stores.artifacts, code).ref
    shutil.rmtree(code)
    ok = _run_code(stores, "--code", ref, "--", sys.executable, "main.py", "7", cwd=tmp_path)
    assert (ok.returncode, ok.stdout) == (7, "from the package\n"), ok.stderr
    killed = _run_code(stores, "--code", ref, "--", sys.executable, "main.py", "term", cwd=tmp_path)
    assert killed.returncode == -signal.SIGTERM, killed.stderr  # no wrapper process translates the signal
    same_pid = subprocess.Popen([*capstan_command(), "worker", "run-code", "--code", ref, "--", sys.executable,
                                 "-c", "import os; print(os.getpid())"], cwd=tmp_path, text=True,
                                stdout=subprocess.PIPE, env=clean_env(stores.settings.home))
    out, _ = same_pid.communicate(timeout=120)
    assert int(out) == same_pid.pid  # exec: the command is the process the pod started


def test_run_code_bad_input_is_one_line_and_exit_status_2(stores: Services, tmp_path: Path) -> None:
    missing = "sha256:" + "0" * 64
    corrupt_digest = hashlib.sha256(b"other bytes").hexdigest()
    stores.artifacts.put_bytes(package_path(corrupt_digest), b"not the bytes of that digest")
    cases = {
        (missing, "python"): f"error: code package {missing} is not in the artifact store "
                             f"(code/{'0' * 64}.tar.gz)",
        ("sha256:xyz", "python"): "error: --code: 'sha256:xyz' is not a code package reference "
                                  "(sha256:<64 hex digits>)",
        (f"sha256:{corrupt_digest}", "python"): f"error: code package sha256:{corrupt_digest}: the stored bytes "
                                                "do not match the digest",
    }
    for (ref, command), expected in cases.items():
        result = _run_code(stores, "--code", ref, "--", command, cwd=tmp_path)
        assert (result.returncode, result.stderr.strip().splitlines()) == (2, [expected])
    none = _run_code(stores, "--code", missing, cwd=tmp_path)
    assert none.returncode == 2
    assert none.stderr.strip().splitlines() == ["error: no command: name it after --, e.g. capstan worker "
                                                "run-code --code sha256:HEX -- python train.py"]
    ref = upload_package(stores.artifacts, _code_folder(tmp_path)).ref
    unknown = _run_code(stores, "--code", ref, "--", "no-such-command-here", cwd=tmp_path)
    assert unknown.returncode == 127
    assert unknown.stderr.strip().splitlines() == ["error: no-such-command-here: No such file or directory"]


# --- env-from Secrets in the rendering -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def training_crds(k8s_crds_dir: Path) -> CrdSet:
    return load_crds([k8s_crds_dir / "kubeflow-training-operator", k8s_crds_dir / "kubeflow-trainer"])


@pytest.mark.parametrize("fmt", ["native", "pytorchjob"])
def test_env_from_secrets_reach_every_pod_and_validate(fmt: Any, tmp_path: Path, training_crds: CrdSet) -> None:
    spec = _spec(tmp_path, working_dir=None)
    docs = render_training(spec, TrainingRenderOptions(format=fmt, env_from_secrets=(SECRET, "s3.keys")))
    assert validate_documents(docs, crds=training_crds) == []
    templates = [d["spec"]["template"] for d in docs if d["kind"] == "Job"]
    templates += [r["template"] for d in docs if d["kind"] == "PyTorchJob"
                  for r in d["spec"]["pytorchReplicaSpecs"].values()]
    assert templates
    for template in templates:
        assert restricted_violations(template["spec"]) == []
        assert template["spec"]["containers"][0]["envFrom"] == [{"secretRef": {"name": SECRET}},
                                                                {"secretRef": {"name": "s3.keys"}}]
    assert "envFrom" not in yaml.safe_dump(render_training(spec, TrainingRenderOptions(format=fmt)))


def test_env_from_secrets_bad_input_names_the_field(tmp_path: Path) -> None:
    spec = _spec(tmp_path, working_dir=None)
    for names, message in ((("Stores",), "'Stores' is not a valid Secret name"),
                           (("a" * 254,), "is not a valid Secret name"), (("a", "a"), "a Secret is named twice")):
        with pytest.raises(InvalidParameterValue, match=rf"^env_from_secrets: .*{message}"):
            render_training(spec, TrainingRenderOptions(env_from_secrets=names))
    with pytest.raises(InvalidParameterValue, match=r"^env_from_secrets: a TrainJob's trainer has no envFrom"):
        render_training(spec, TrainingRenderOptions(format="trainjob", env_from_secrets=(SECRET,)))
    assert FORMATS == ("native", "pytorchjob", "trainjob")


def _k8s_group() -> click.Group:
    group = click.Group("k8s")
    k8s_render.register(group)
    k8s_render_job.register(group)
    return group


def test_render_job_env_from_secret(tmp_path: Path, training_crds: CrdSet) -> None:
    out = tmp_path / "manifests"
    result = CliRunner().invoke(_k8s_group(), [
        "render", "job", "train.py", "-o", str(out), "--image", IMAGE, "--workers", "2",
        "--env-from-secret", SECRET, "--env-from-secret", "s3-keys"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    docs = [yaml.safe_load(p.read_text(encoding="utf-8")) for p in sorted(out.iterdir())]
    assert validate_documents(docs, crds=training_crds) == []
    job = next(d for d in docs if d["kind"] == "Job")
    assert job["spec"]["template"]["spec"]["containers"][0]["envFrom"] == [
        {"secretRef": {"name": SECRET}}, {"secretRef": {"name": "s3-keys"}}]
    base = ["render", "job", "train.py", "-o", str(tmp_path / "bad"), "--image", IMAGE]
    with pytest.raises(InvalidParameterValue, match=r"^--env-from-secret: 'Bad_Name' is not a valid Secret name"):
        CliRunner().invoke(_k8s_group(), [*base, "--env-from-secret", "Bad_Name"], catch_exceptions=False)
    with pytest.raises(InvalidParameterValue, match=r"^--env-from-secret: a TrainJob's trainer has no envFrom"):
        CliRunner().invoke(_k8s_group(), [*base, "--format", "trainjob", "--env-from-secret", SECRET],
                           catch_exceptions=False)


# --- capstan train --env-from-secret -------------------------------------------------------------------------------

def test_capstan_train_env_from_secret(cluster: Cluster, tmp_path: Path) -> None:
    emu = cluster.kubelet()
    code = _code_folder(tmp_path)
    home = tmp_path / "home"
    command = [*capstan_command(), "train", "train.py", "--name", "cli", "--cpu", "0.5", "--image", IMAGE]
    local = subprocess.run([*command, "--env-from-secret", SECRET], cwd=code, env=clean_env(home), text=True,
                           capture_output=True, timeout=60)
    assert (local.returncode, local.stderr.strip().splitlines()) == (1, [
        "error: --env-from-secret: only the kubernetes backend runs pods (CAPSTAN_BACKEND=kubernetes)"])
    env = clean_env(home, {"CAPSTAN_BACKEND": "kubernetes", "KUBECONFIG": str(cluster.kubeconfig),
                           "CAPSTAN_KUBE_ENV_FROM": "from-the-environment"})
    bad = subprocess.run([*command, "--env-from-secret", "Bad_Name"], cwd=code, env=env, text=True,
                         capture_output=True, timeout=60)
    assert (bad.returncode, bad.stderr.strip().splitlines()) == (1, [
        "error: --env-from-secret: 'Bad_Name' is not a valid Secret name (lowercase letters, digits, '-' and '.')"])
    train = subprocess.Popen([*command, "--env-from-secret", SECRET], cwd=code, env=env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait(lambda: any(j["metadata"]["name"].startswith("cli-") for j in emu.objects("jobs")), timeout_s=60)
        job = next(j for j in emu.objects("jobs") if j["metadata"]["name"].startswith("cli-"))
        name = job["metadata"]["name"]
        container = job["spec"]["template"]["spec"]["containers"][0]
        assert container["envFrom"] == [{"secretRef": {"name": SECRET}}]  # the option wins over the variable
        assert container["command"] == ["python", "train.py"]  # a local artifact folder: the image holds the code
        emu.add_pod(name, f"{name}-0-abcde", running_pod(CONTAINER))
        emu.set_status("pods", f"{name}-0-abcde", ended_pod(CONTAINER))
        emu.set_status("jobs", name, job_done())
        _out, err = train.communicate(timeout=60)
    finally:
        if train.poll() is None:
            train.kill()
            train.communicate()
    assert train.returncode == 0, err
